"""`glm-corpus audit`: step-range accounting against the MIP plan, and n-gram contamination.

The runs here go through the real stages: a tiny tokenizer trained on this file's text, text token shards
written with `TokenShardWriter`, MIP token shards and plans from `mip.stage.run_mip`, and training shards from
`masking.stage.run_masking` (256-token rows, so a run is a few dozen rows).
"""

from __future__ import annotations

import io
import random
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import orjson
import pytest

from masking.config import MaskingConfig
from masking.stage import run_masking
from mip.audit import AuditConfig, parse_steps, ratio_tolerance, render_audit, run_audit
from mip.contamination import (
    NgramIndex,
    VocabText,
    codepoint_units,
    ngram_hashes,
    reference_unit_hash,
    reference_units,
    restore_segments,
    text_units,
)
from mip.eval_sets import read_eval_set, read_eval_sets
from mip.stage import MipConfig, run_mip
from pipeline.special_tokens import EOD
from pipeline.tokenizer import GLMTokenizer, train_tokenizer
from shards.token_shards import TokenShards, TokenShardWriter
from shards.training_shards import TrainingShards
from trainer.data import rows_for_steps

ROW_LENGTH = 256
MIP_RATIO = 0.2  # a large share keeps the runs small: every MIP example fits in a few dozen rows
GLOBAL_BATCH = 4
SEED = 1234

WORDS = (
    "river stone lantern quiet orbit maple copper violet harbor meadow signal thunder pocket velvet candle "
    "marble silver garden window engine ribbon falcon canyon pepper winter summer shadow crystal feather "
    "compass island mirror bridge forest planet rocket saddle tunnel valley whistle anchor blanket cactus"
).split()
HANZI = "山水天地日月风云花草木石金火土雨雪春夏秋冬东南西北上下左右中大小多少高低长短红黄蓝白黑青"

# Evaluation examples planted in the training text (English, Chinese) and in a MIP prompt (SuperGLUE-style).
PLANTED_EN = (
    "The old lighthouse keeper climbed the spiral stairs every evening to light the lamp that "
    "guided fishing boats safely home through the fog"
)
PLANTED_ZH = "北京是中华人民共和国的首都也是全国的政治中心和文化中心有着三千多年的建城史"
PLANTED_PREMISE = (
    "A group of volunteers planted three hundred oak trees along the riverbank on a cold "
    "Saturday morning in November"
)


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def _hanzi(rng: random.Random, chars: int) -> str:
    return "".join(rng.choice(HANZI) for _ in range(chars)) + "。"


def _write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records))
    return path


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> GLMTokenizer:
    folder = tmp_path_factory.mktemp("tokenizer")
    rng = random.Random(0)
    from pydoc_data.topics import topics

    lines = [topics[name] for name in sorted(topics)[:30]]
    lines += [_sentence(rng, 12) for _ in range(300)] + [_hanzi(rng, 20) for _ in range(300)]
    lines += [PLANTED_EN, PLANTED_ZH, PLANTED_PREMISE, "中华人民共和国 首都 政治 文化 历史 北京"]
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(lines), encoding="utf-8")
    train_tokenizer([corpus], folder / "ice_text.model", vocab_size=1000)
    return GLMTokenizer(folder / "ice_text.model")


def _text_shards(root: Path, tokenizer: GLMTokenizer, documents: dict[str, list[str]]) -> Path:
    for source, texts in documents.items():
        with TokenShardWriter(root / source / f"{source}-00000") as writer:
            for number, text in enumerate(texts):
                ids = np.append(np.asarray(tokenizer.encode(text), dtype=np.int32), np.int32(EOD))
                writer.add(
                    ids, doc_id=f"{source}:{number}", source=source, input_file=f"{source}.txt", offset=number
                )
    return root


def _p3(root: Path, folder: str, prompts: list[str], target: str = "yes") -> None:
    _write_jsonl(
        root / folder / "train.jsonl",
        [{"inputs_pretokenized": p, "targets_pretokenized": target} for p in prompts],
    )


def _mip_inputs(root: Path, ag_news: int, imdb: int, conll04: int, planted: bool = False) -> list[str]:
    rng = random.Random(1)
    prompts = [f"Topic of: {_sentence(rng, 6)}" for _ in range(ag_news)]
    if planted:
        prompts[0] = f"Topic of: {PLANTED_PREMISE}."
    _p3(root / "p3", "ag_news_classify_question_first", prompts, "World")
    _p3(
        root / "p3",
        "imdb_Movie_Expressed_Sentiment",
        [f"Review: {_sentence(rng, 6)}" for _ in range(imdb)],
        "good",
    )
    inputs = [str(root / "p3")]
    if conll04:
        _write_jsonl(
            root / "deepstruct" / "conll04_train.jsonl",
            [
                {
                    "source": f"Dataset : conll04 Task : NER Sentence : {_sentence(rng, 5)}",
                    "target": "( x ; instance of ; human )",
                    "task": "conll04",
                }
                for _ in range(conll04)
            ],
        )
        inputs.append(str(root / "deepstruct"))
    return inputs


def _mask(tokens: Path, mip: Path, out: Path, **overrides) -> Path:
    config = MaskingConfig(
        **{
            "row_length": ROW_LENGTH,
            "rows_per_block": 16,
            "rows_per_shard": 32,
            "mip_share": MIP_RATIO,
            **overrides,
        }
    )
    run_masking(tokens, out, config, mip=mip, progress=False)
    return out


def _audit(train: Path, plan: Path | None, **kwargs) -> dict:
    config = AuditConfig(
        train=str(train), plan=str(plan) if plan else None, global_batch=GLOBAL_BATCH, seed=SEED, **kwargs
    )
    return run_audit(config)


@pytest.fixture(scope="module")
def incident(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """GLM-130B's incident in small: the plan caps the T0 datasets and plans DeepStruct (conll04), but the MIP
    shards that reached the masking stage hold ag_news uncapped (60 examples, cap 10) and no DeepStruct."""
    root = tmp_path_factory.mktemp("incident")
    model = str(tokenizer.path)
    intended = run_mip(
        MipConfig(
            inputs=_mip_inputs(root / "in-plan", 60, 20, 30),
            out=str(root / "mip-plan"),
            tokenizer=model,
            token_ratio=MIP_RATIO,
            caps={"ag_news": 10, "imdb": 10},
        ),
        progress=False,
    )
    assert intended["examples_out"] == 10 + 10 + 30
    actual = run_mip(
        MipConfig(
            inputs=_mip_inputs(root / "in-actual", 60, 20, 0),
            out=str(root / "mip-actual"),
            tokenizer=model,
            token_ratio=MIP_RATIO,
            caps={"ag_news": None, "imdb": 10},
        ),
        progress=False,
    )
    assert actual["examples_out"] == 60 + 10
    rng = random.Random(2)
    # About 4 text tokens per MIP token, so the run holds MIP at the planned 20% until the examples run out.
    tokens = _text_shards(root / "tokens", tokenizer, {"prose": [_sentence(rng, 40) for _ in range(130)]})
    train = _mask(tokens, root / "mip-actual", root / "train")
    return {
        "root": root,
        "train": train,
        "plan": root / "mip-plan" / "mip-plan.json",
        "actual_plan": root / "mip-actual" / "mip-plan.json",
    }


def _epoch_steps(train: Path) -> int:
    return -(-len(TrainingShards(train)) // GLOBAL_BATCH)


# ------------------------------------------------------------------------------- the GLM-130B incident


def test_incident_uncapped_dataset_and_missing_deepstruct_fail_the_audit(incident):
    steps = _epoch_steps(incident["train"])
    summary = _audit(incident["train"], incident["plan"], steps=(0, steps))

    assert summary["steps"] == [0, steps]
    failing = sorted((v["kind"], v["dataset"]) for v in summary["violations"] if v["fails"])
    assert failing == [("over_cap", "ag_news"), ("planned_absent", "conll04")]
    assert [v for v in summary["violations"] if not v["fails"]] == []
    assert summary["failed"] and summary["exit_code"] == 1

    datasets = summary["datasets"]
    assert set(datasets) == {"ag_news", "imdb", "conll04"}
    assert datasets["ag_news"]["distinct"] > datasets["ag_news"]["cap"] == 10
    assert datasets["ag_news"]["planned"] and datasets["ag_news"]["do_not_evaluate"]
    assert datasets["conll04"] == {
        **datasets["conll04"],
        "samples": 0,
        "tokens": 0,
        "planned": True,
        "cap": 200_000,
    }
    assert datasets["imdb"]["distinct"] <= 10
    assert "ag_news" in summary["do_not_evaluate_seen"]  # a flag, not a violation: the plan does not say so
    assert summary["do_not_evaluate_list"] == "GLM-130B MIP list"
    assert summary["contamination"] == {}

    text = render_audit(summary)
    assert (
        "FAIL over_cap ag_news" in text and "FAIL planned_absent conll04" in text and "audit FAILED" in text
    )


def test_incident_is_reported_for_the_step_range_that_has_it(incident):
    steps = _epoch_steps(incident["train"])
    # The first half of the run already has both findings.
    half = _audit(incident["train"], incident["plan"], steps=(0, steps // 2))
    assert half["steps"] == [0, steps // 2]
    assert {(v["kind"], v["dataset"]) for v in half["violations"] if v["fails"]} == {
        ("over_cap", "ag_news"),
        ("planned_absent", "conll04"),
    }
    # One step sees four rows: a finding there only when that step's own numbers make it one.
    plan = orjson.loads(Path(incident["plan"]).read_bytes())
    planned_tokens = sum(e["tokens"] for e in plan["datasets"].values() if e.get("planned"))
    passing_steps = 0
    for step in range(steps):
        one = _audit(incident["train"], incident["plan"], steps=(step, step + 1))
        found = {(v["kind"], v["dataset"]) for v in one["violations"]}
        ag_news, conll04 = one["datasets"]["ag_news"], one["datasets"]["conll04"]
        assert (("over_cap", "ag_news") in found) == (ag_news["distinct"] > 10)
        mip_samples = sum(entry["samples"] for entry in one["datasets"].values())
        # written x max(plan share of the MIP samples seen, plan share of the MIP tokens the plan puts there)
        assert conll04["expected_samples"] == pytest.approx(
            30 * max(mip_samples / 50, plan["token_ratio"] * one["ratio"]["tokens"] / planned_tokens), rel=1e-9
        )
        assert (("planned_absent", "conll04") in found) == (conll04["expected_samples"] >= 5)
        passing_steps += one["exit_code"] == 0
        # `min_expected` 0 reports every planned dataset missing from the step.
        strict = _audit(incident["train"], incident["plan"], steps=(step, step + 1), min_expected=0)
        absent = {name for name, entry in strict["datasets"].items() if entry["samples"] == 0}
        assert "conll04" in absent
        assert {v["dataset"] for v in strict["violations"] if v["kind"] == "planned_absent"} == absent
    assert passing_steps > 0  # e.g. steps with text rows only: nothing was expected there


def test_audit_counts_are_what_the_trainer_sampled(incident):
    train = TrainingShards(incident["train"])
    steps = (2, 2 + _epoch_steps(incident["train"]))  # crosses into the second epoch: rows repeat
    summary = _audit(incident["train"], incident["plan"], steps=steps)
    rows = rows_for_steps(len(train), *steps, GLOBAL_BATCH, SEED).reshape(-1)
    batch = train.batch(rows)
    samples: dict[str, int] = {}
    tokens: dict[str, int] = {}
    distinct: dict[str, set] = {}
    mip_tokens = all_tokens = 0
    for row_segments, row_provenance in zip(batch["segments"], batch["provenance"]):
        for (start, _, end), entry in zip(row_segments[row_segments[:, 0] >= 0], row_provenance):
            all_tokens += int(end - start)
            if entry["kind"] == "mip":
                samples[entry["source"]] = samples.get(entry["source"], 0) + 1
                tokens[entry["source"]] = tokens.get(entry["source"], 0) + int(end - start)
                distinct.setdefault(entry["source"], set()).update(entry["doc_ids"])
                mip_tokens += int(end - start)
    for name, entry in summary["datasets"].items():
        assert entry["samples"] == samples.get(name, 0)
        assert entry["tokens"] == tokens.get(name, 0)
        assert entry["distinct"] == len(distinct.get(name, ()))
    assert summary["rows"]["samples"] == len(rows) and summary["rows"]["distinct"] < len(rows)  # repeats
    assert summary["mip_token_ratio"] == pytest.approx(mip_tokens / all_tokens)
    assert summary["ratio"]["tokens"] == all_tokens
    assert sum(w["tokens"] for w in summary["windows"]) == all_tokens


def test_the_plan_that_matches_the_data_passes(incident):
    summary = _audit(incident["train"], incident["actual_plan"])
    assert summary["violations"] == [] and summary["exit_code"] == 0
    assert summary["datasets"]["ag_news"]["cap"] is None  # the actual run uncapped it
    assert summary["steps"] == [0, _epoch_steps(incident["train"])]  # default: one epoch


def test_policy_switches_relax_findings(incident, tmp_path):
    plan = orjson.loads(incident["plan"].read_bytes())
    plan["policy"]["fail_on_over_cap"] = False
    plan["policy"]["fail_on_do_not_evaluate"] = True
    relaxed_plan = tmp_path / "mip-plan.json"
    relaxed_plan.write_bytes(orjson.dumps(plan))
    steps = (0, _epoch_steps(incident["train"]))
    summary = _audit(incident["train"], relaxed_plan, steps=steps)
    kinds = {(v["kind"], v["dataset"]): v["fails"] for v in summary["violations"]}
    assert kinds[("over_cap", "ag_news")] is False  # still reported
    assert kinds[("do_not_evaluate", "ag_news")] is True  # the plan made the flag a violation
    assert kinds[("planned_absent", "conll04")] is True
    summary = _audit(
        incident["train"], relaxed_plan, steps=steps, no_fail_on=["planned_absent", "do_not_evaluate"]
    )
    assert not summary["failed"] and summary["exit_code"] == 0 and summary["violations"]


def test_cli_prints_the_design_json_and_exits_nonzero(incident, tmp_path):
    from cli import main

    output = tmp_path / "audit.json"
    argv = [
        "audit",
        "--train",
        str(incident["train"]),
        "--plan",
        str(incident["plan"]),
        "--steps",
        f"0:{_epoch_steps(incident['train'])}",
        "--global-batch",
        str(GLOBAL_BATCH),
        "--seed",
        str(SEED),
        "--output",
        str(output),
        "--json",
        "--no-progress",
    ]
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        code = main(argv)
    assert code == 1
    printed = orjson.loads(stdout.getvalue())
    assert orjson.loads(output.read_bytes()) == printed
    assert {"steps", "mip_token_ratio", "datasets", "violations", "contamination"} <= set(printed)
    for entry in printed["datasets"].values():
        assert {"samples", "tokens", "cap", "planned", "do_not_evaluate"} <= set(entry)
    for violation in printed["violations"]:
        assert {"kind", "dataset", "detail"} <= set(violation) and isinstance(violation["dataset"], str)
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert main(argv[:-2] + ["--no-progress"]) == 1  # the table
    assert "dataset" in stdout.getvalue() and "over_cap" in stdout.getvalue()


def test_the_masking_run_records_where_its_plan_is(incident):
    # No --plan: the plan beside the MIP shards the masking stage read (mip-actual) is used.
    summary = _audit(incident["train"], None)
    assert summary["plan"] is not None and Path(summary["plan"]).parent.name == "mip-actual"
    assert summary["plan_checks"] and summary["exit_code"] == 0


def test_trainer_config_gives_batch_seed_and_steps(incident, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("train:\n  global_batch_size: 3\n  data_seed: 7\n  steps: 5\n")
    summary = run_audit(
        AuditConfig(train=str(incident["train"]), plan=str(incident["plan"]), train_config=str(config))
    )
    assert (
        summary["steps"] == [0, 5]
        and summary["sampler"]["global_batch"] == 3
        and summary["sampler"]["seed"] == 7
    )
    assert summary["rows"]["samples"] == 15


def test_parse_steps_and_ratio_tolerance():
    assert parse_steps("10:20") == (10, 20) and parse_steps("5:") == (5, None) and parse_steps("7") == (0, 7)
    assert parse_steps(None) is None
    assert ratio_tolerance(0.05, 10**12, 2048) == pytest.approx(0.0005, rel=0.2)  # the slack dominates
    assert ratio_tolerance(0.05, 2048 * 100, 2048) > 0.06  # 100 rows: the MIP share is a noisy estimate


def test_ratio_violation_when_training_lacks_the_planned_mip_share(tmp_path, tokenizer):
    run_mip(
        MipConfig(
            inputs=_mip_inputs(tmp_path / "in", 30, 0, 0),
            out=str(tmp_path / "mip"),
            tokenizer=str(tokenizer.path),
            token_ratio=MIP_RATIO,
        ),
        progress=False,
    )
    rng = random.Random(5)
    tokens = _text_shards(tmp_path / "tokens", tokenizer, {"prose": [_sentence(rng, 40) for _ in range(600)]})
    train = _mask(tokens, tmp_path / "mip", tmp_path / "train", mip_share=0.0)  # MIP left out entirely
    summary = _audit(train, tmp_path / "mip", no_fail_on=["planned_absent"])
    assert summary["mip_token_ratio"] == 0
    assert ("ratio", "*") in {(v["kind"], v["dataset"]) for v in summary["violations"]}
    assert not summary["failed"]  # ratio is reported, not failing, unless the policy says so
    assert _audit(train, tmp_path / "mip", fail_on=["ratio"], no_fail_on=["planned_absent"])["exit_code"] == 1


# -------------------------------------------------------------------------------------- contamination


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """A run whose text holds one English and one Chinese evaluation example, and whose MIP holds a third."""
    root = tmp_path_factory.mktemp("planted")
    rng = random.Random(3)
    english = [_sentence(rng, 40) for _ in range(120)]
    english[37] = f"{_sentence(rng, 10)} {PLANTED_EN}. {_sentence(rng, 10)}"
    chinese = [_hanzi(rng, 60) for _ in range(150)]
    chinese[11] = f"{_hanzi(rng, 8)}{PLANTED_ZH}。{_hanzi(rng, 8)}"
    tokens = _text_shards(root / "tokens", tokenizer, {"en": english, "zh": chinese})
    run_mip(
        MipConfig(
            inputs=_mip_inputs(root / "in", 12, 0, 0, planted=True),
            out=str(root / "mip"),
            tokenizer=str(tokenizer.path),
            token_ratio=MIP_RATIO,
        ),
        progress=False,
    )
    train = _mask(tokens, root / "mip", root / "train", mip_repeat=True)
    return {"root": root, "train": train, "tokenizer": Path(tokenizer.path)}


def _eval_files(root: Path) -> dict[str, Path]:
    rng = random.Random(4)
    lambada = _write_jsonl(
        root / "lambada_test.jsonl",
        [{"eval_name": "lambada"}]
        + [{"text": _sentence(rng, 30)} for _ in range(8)]
        + [{"text": PLANTED_EN + " again"}],
    )
    clue = _write_jsonl(
        root / "c3_dev.json",
        [{"id": f"zh-{i}", "sentence": _hanzi(rng, 30), "label": "1"} for i in range(6)]
        + [{"id": "zh-planted", "sentence": f"请问：{PLANTED_ZH}？", "label": "0"}],
    )
    rte = _write_jsonl(
        root / "rte_val.jsonl",
        [
            {"idx": i, "premise": _sentence(rng, 20), "hypothesis": _sentence(rng, 8), "label": "entailment"}
            for i in range(5)
        ]
        + [
            {
                "idx": 99,
                "premise": PLANTED_PREMISE,
                "hypothesis": "Trees were planted.",
                "label": "entailment",
            }
        ],
    )
    clean_en = _write_jsonl(root / "clean_en.jsonl", [{"text": _sentence(rng, 30)} for _ in range(10)])
    clean_zh = root / "clean_zh.json"
    clean_zh.write_bytes(orjson.dumps({"data": [{"content": _hanzi(rng, 40)} for _ in range(10)]}))
    return {"lambada": lambada, "clue": clue, "rte": rte, "clean_en": clean_en, "clean_zh": clean_zh}


def test_planted_examples_are_found_in_english_chinese_and_mip_segments(planted, tmp_path):
    files = _eval_files(tmp_path)
    steps = _epoch_steps(planted["train"])
    summary = _audit(
        planted["train"],
        planted["root"] / "mip",
        steps=(0, steps),
        eval=[str(p) for p in files.values()],
        tokenizer=str(planted["tokenizer"]),
    )
    report = summary["contamination"]
    assert set(report) == {"lambada", "c3_dev", "rte_val", "clean_en", "clean_zh"}  # lambada names itself
    assert report["lambada"]["contaminated"] == 1 and report["lambada"]["first_contaminated_ids"] == ["10"]
    assert report["c3_dev"]["contaminated"] == 1 and report["c3_dev"]["first_contaminated_ids"] == [
        "zh-planted"
    ]
    assert report["rte_val"]["contaminated"] == 1 and report["rte_val"]["first_contaminated_ids"] == ["99"]
    assert report["clean_en"]["contaminated"] == 0 and report["clean_zh"]["contaminated"] == 0
    assert report["clean_en"]["examples"] == report["clean_zh"]["examples"] == 10
    assert report["lambada"]["fraction"] == pytest.approx(1 / 9)
    matches = {
        name: {(m["kind"], m["source"]) for m in report[name]["training_matches"]}
        for name in ("lambada", "c3_dev", "rte_val")
    }
    assert {source for _, source in matches["lambada"]} == {"en"}
    assert {source for _, source in matches["c3_dev"]} == {"zh"}
    assert matches["rte_val"] == {("mip", "ag_news")}
    assert [m["doc_id"] for m in report["lambada"]["training_matches"]] == ["en:37"] * len(
        report["lambada"]["training_matches"]
    )
    violations = {(v["kind"], v["dataset"]) for v in summary["violations"] if v["fails"]}
    assert violations == {
        ("contamination", "lambada"),
        ("contamination", "c3_dev"),
        ("contamination", "rte_val"),
    }
    assert summary["exit_code"] == 1
    scan = summary["contamination_scan"]
    assert scan["ngram"] == 13 and scan["rows"] == summary["rows"]["distinct"]
    assert 8 <= scan["index"]["bytes_per_ngram"] < 40


def test_unrelated_corpus_reports_no_contamination(planted, tmp_path):
    files = _eval_files(tmp_path)
    summary = _audit(
        planted["train"],
        planted["root"] / "mip",
        eval=[f"english={files['clean_en']}", str(files["clean_zh"])],
        tokenizer=str(planted["tokenizer"]),
    )
    assert summary["contamination"]["english"]["contaminated"] == 0
    assert summary["contamination"]["clean_zh"]["contaminated"] == 0
    assert summary["exit_code"] == 0


def test_a_longer_ngram_than_the_overlap_finds_nothing(planted, tmp_path):
    files = _eval_files(tmp_path)
    summary = _audit(
        planted["train"],
        planted["root"] / "mip",
        eval=[str(files["clue"])],
        ngram=60,
        tokenizer=str(planted["tokenizer"]),
    )
    assert summary["contamination"]["c3_dev"]["contaminated"] == 0  # the planted text is 37 characters


SCAN_COUNTS = ("rows", "segments", "tokens", "ngrams", "matched_ngrams")


def test_contamination_scan_on_ray_equals_the_single_process_scan(planted, tmp_path, ray_session):
    """`workers=2`: the rows go to Ray tasks in contiguous ranges; the report is the one-process report exactly,
    the first matching training segments per set included (2 kept per set, from rows spread over the ranges)."""
    files = _eval_files(tmp_path)
    common = {
        "steps": (0, _epoch_steps(planted["train"])),
        "eval": [str(p) for p in files.values()],
        "tokenizer": str(planted["tokenizer"]),
        "batch_rows": 4,
        "first_ids": 2,
    }
    single = _audit(planted["train"], planted["root"] / "mip", **common)
    on_ray = _audit(planted["train"], planted["root"] / "mip", workers=2, ray_min_rows=0, **common)

    assert single["contamination_scan"]["engine"] == "in-process"
    assert on_ray["contamination_scan"]["engine"] == "ray (2 workers, 4 row ranges)"
    assert on_ray["contamination"] == single["contamination"]
    found = {name: entry["first_contaminated_ids"] for name, entry in single["contamination"].items()}
    assert found == {
        "lambada": ["10"],
        "c3_dev": ["zh-planted"],
        "rte_val": ["99"],
        "clean_en": [],
        "clean_zh": [],
    }
    rte_rows = [m["row"] for m in single["contamination"]["rte_val"]["training_matches"]]
    assert len(rte_rows) == 2 and rte_rows == sorted(rte_rows)  # the first two in row order
    for key in SCAN_COUNTS:
        assert on_ray["contamination_scan"][key] == single["contamination_scan"][key], key
    assert on_ray["violations"] == single["violations"] and on_ray["exit_code"] == single["exit_code"] == 1

    # Below the row threshold Ray is not worth starting, whatever the workers.
    few = _audit(planted["train"], planted["root"] / "mip", workers=2, ray_min_rows=10**6, **common)
    assert few["contamination_scan"]["engine"] == "in-process"


def test_ray_ranges_merge_in_row_order_whatever_the_split(planted, tmp_path, ray_session):
    """Any number of ranges (1, uneven, one row each) gives the single scan's hit flags, matches and counts."""
    from mip.audit import _SegmentDescriber
    from mip.contamination import row_ranges, scan_rows, scan_rows_on_ray

    files = _eval_files(tmp_path)
    eval_sets = read_eval_sets([str(files["lambada"]), str(files["clue"]), str(files["rte"])])
    shards = TrainingShards(planted["train"])
    vocab = VocabText(GLMTokenizer(planted["tokenizer"]))
    rows = np.arange(len(shards))[::-1].copy()  # any row order: ranges follow the order given
    single = NgramIndex.build(eval_sets)
    stats = scan_rows(shards, rows, single, vocab, batch_rows=3, describe_segment=_SegmentDescriber(shards),
                      match_limit=3)  # fmt: skip
    assert single.hit.any() and len(single.matches[2]) == 3
    for ranges in (1, 3, 7, len(rows)):
        merged = NgramIndex.build(eval_sets)
        ray_stats, used = scan_rows_on_ray(
            str(planted["train"]), rows, merged, vocab, workers=2, ranges=ranges, batch_rows=3,
            describe_factory=_SegmentDescriber, match_limit=3,
        )  # fmt: skip
        assert used == ranges
        np.testing.assert_array_equal(merged.hit, single.hit)
        assert merged.matches == single.matches and merged.report() == single.report()
        assert (merged.probed, merged.matched) == (single.probed, single.matched)
        assert [getattr(ray_stats, k) for k in SCAN_COUNTS] == [getattr(stats, k) for k in SCAN_COUNTS]
    assert row_ranges(10, 3) == [(0, 3), (3, 7), (7, 10)] and row_ranges(2, 5) == [(0, 1), (1, 2)]


def test_restored_segments_are_the_original_documents(planted):
    shards = TrainingShards(planted["train"])
    recipes, owner_shard, owner_index = shards.recipes(np.arange(len(shards)))
    restored = restore_segments(recipes, boundary_id=-1)
    sources = {
        "en": TokenShards(planted["root"] / "tokens" / "en"),
        "zh": TokenShards(planted["root"] / "tokens" / "zh"),
        "mip": TokenShards(planted["root"] / "mip" / "shards"),
    }
    position = {
        name: {d: i for i, d in enumerate(s.provenance.column("doc_id").to_pylist())}
        for name, s in sources.items()
    }
    batch = shards.batch(np.arange(len(shards)))
    segments = [entry for row in batch["provenance"] for entry in row]
    assert len(segments) == len(owner_index)
    for number, entry in enumerate(segments):
        store = "mip" if entry["kind"] == "mip" else entry["source"]
        expected = np.concatenate(
            [
                sources[store][position[store][d]][o : o + n]
                for d, o, n in zip(entry["doc_ids"], entry["doc_offsets"], entry["doc_tokens"])
            ]
        )
        ids = restored.ids[restored.segment_of_id == number]
        assert ids[0] == -1 and np.array_equal(ids[1:], expected), entry


# --------------------------------------------------------------------------------------------- units


def test_units_words_and_cjk_characters_match_the_plain_reference():
    texts = [
        "Ｈｅｌｌｏ, World! 用Python分析数据 naïve café x2",
        "ひらがなとカタカナ and 한국어 text",
        "tab\tnew\nline  ",
        "",
        "e\u0301t\u00e9",
    ]
    assert reference_units(texts[0]) == [
        "hello",
        "world",
        "用",
        "python",
        "分",
        "析",
        "数",
        "据",
        "naïve",
        "café",
        "x2",
    ]
    assert reference_units(texts[4]) == ["été"]  # NFC first
    hashes, text_of_unit = text_units(texts)
    expected = [(reference_unit_hash(u), t) for t, text in enumerate(texts) for u in reference_units(text)]
    assert list(zip(hashes.tolist(), text_of_unit.tolist())) == expected


def test_ngrams_never_span_two_texts():
    hashes, text_of_unit = text_units(["one two three", "four five six seven"])
    grams, grams_text = ngram_hashes(hashes, text_of_unit, 3)
    assert grams_text.tolist() == [0, 1, 1]
    same, _ = ngram_hashes(*text_units(["x one two three y"]), 3)
    assert grams[0] in same


def test_vocab_text_spells_what_the_tokenizer_decodes(tokenizer):
    vocab = VocabText(tokenizer)
    text = "Tab\there,  two spaces\nnew line 中华人民共和国 emoji \U0001f600 <n> done"
    ids = np.asarray(tokenizer.encode(text))
    spelled = vocab.text(ids)
    decoded = tokenizer.decode(ids)
    assert spelled.lstrip(" ") == decoded.lstrip(" ")  # SentencePiece drops the dummy-prefix space
    units, _ = codepoint_units(vocab.codepoints(ids))
    assert units.tolist() == text_units([decoded])[0].tolist()
    assert vocab.text(np.array([EOD])) == "\x00"


def test_index_memory_and_probe(tmp_path):
    path = _write_jsonl(
        tmp_path / "set.jsonl", [{"text": "a b c d e f"}, {"text": "c d e f g h"}, {"text": "short"}]
    )
    index = NgramIndex.build(read_eval_sets([str(path)]), n=4)
    memory = index.memory
    assert memory["ngrams"] == 5 and memory["pairs"] == 6  # "c d e f" is shared by two examples
    assert memory["bytes_per_ngram"] == memory["bytes"] / 5
    probe, _ = ngram_hashes(*text_units(["x c d e f y", "unrelated words only here"]), 4)
    assert index.probe(probe).sum() == 1
    report = index.report()["set"]
    assert (
        report["contaminated"] == 2
        and report["too_short"] == 1
        and report["first_contaminated_ids"] == ["1", "2"]
    )


# ------------------------------------------------------------------------------------------ eval files


def test_eval_readers_superglue_lambada_clue_and_squad(tmp_path):
    superglue = read_eval_set(
        _write_jsonl(
            tmp_path / "BoolQ" / "val.jsonl",
            [
                {"idx": 0, "question": "is it blue", "passage": "The sky is blue.", "label": True},
                {
                    "idx": 1,
                    "passage": {
                        "text": "Nested passage.",
                        "questions": [{"question": "why", "answers": [{"text": "because", "label": 1}]}],
                    },
                    "label": False,
                },
            ],
        )
    )
    assert superglue.name == "val" and superglue.format == "jsonl"
    assert [(e.id, e.texts) for e in superglue.examples] == [
        ("0", ["is it blue", "The sky is blue."]),
        ("1", ["Nested passage.", "why", "because"]),
    ]

    lambada = read_eval_set(
        _write_jsonl(tmp_path / "lambada.jsonl", [{"text": "one"}, b"{broken", {"text": "two"}])
    )
    assert [e.texts for e in lambada.examples] == [["one"], ["two"]] and [e.id for e in lambada.examples] == [
        "1",
        "3",
    ]
    assert lambada.skipped == {"invalid_json": 1} and lambada.first_skipped.startswith(
        f"{tmp_path}/lambada.jsonl:2:"
    )

    clue_list = tmp_path / "c3.json"
    clue_list.write_text(
        '[[["第一句。", "第二句。"], [{"question": "问题？", "choice": ["甲", "乙"], "answer": "甲"}], "m1"]]',
        encoding="utf-8",
    )
    c3 = read_eval_set(clue_list)
    assert c3.format == "json" and c3.examples[0].texts == [
        "第一句。",
        "第二句。",
        "问题？",
        "甲",
        "乙",
        "甲",
        "m1",
    ]

    squad = tmp_path / "cmrc.json"
    squad.write_bytes(
        orjson.dumps(
            {
                "version": "v1",
                "eval_name": "cmrc2018",
                "data": [
                    {
                        "title": "T",
                        "paragraphs": [
                            {
                                "context": "上下文。",
                                "qas": [
                                    {
                                        "id": "q1",
                                        "question": "问？",
                                        "answers": [{"text": "答", "answer_start": 0}],
                                    },
                                    {"id": "q2", "question": "又问？", "answers": []},
                                ],
                            }
                        ],
                    }
                ],
            }
        )
    )
    cmrc = read_eval_set(squad)
    assert cmrc.name == "cmrc2018" and cmrc.named_by == "file" and cmrc.format == "squad"
    assert [(e.id, e.texts) for e in cmrc.examples] == [
        ("q1", ["上下文。", "问？", "答"]),
        ("q2", ["上下文。", "又问？"]),
    ]

    named = read_eval_sets([f"boolq={tmp_path / 'BoolQ' / 'val.jsonl'}", str(tmp_path / "lambada.jsonl")])
    assert [s.name for s in named] == ["boolq", "lambada"] and named[0].named_by == "argument"


def test_eval_sets_with_one_name_are_an_error(tmp_path):
    from common.errors import ConfigError

    _write_jsonl(tmp_path / "a" / "dev.jsonl", [{"text": "x"}])
    _write_jsonl(tmp_path / "b" / "dev.jsonl", [{"text": "y"}])
    with pytest.raises(ConfigError, match="two evaluation sets are named 'dev'"):
        read_eval_sets([str(tmp_path)])
    with pytest.raises(ConfigError, match="no examples"):
        read_eval_set(_write_jsonl(tmp_path / "empty.jsonl", [{"eval_name": "nothing"}]))
