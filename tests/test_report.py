"""`glm-corpus report`: a self-contained HTML page from whatever a run directory holds.

The run directories here are synthetic: small JSON files with the keys the real stages write
(tokens/manifest.json, tokens/dedup/dropped.parquet, mip/mip-plan.json, train/stats.json, audit.json,
checkpoints/), so these tests need no pipeline run and take a few seconds (matplotlib rendering).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.errors import GLMCorpusError
from report.html_report import REPORT_FILE, build_report, truncated_poisson

ALL_TITLES = (
    "Overview",
    "Documents and tokens per source",
    "Drop reasons",
    "Language mix",
    "Deduplication",
    "Masking (GLM blank infilling)",
    "MIP datasets and caps",
    "Audit: violations and contamination",
    "Training",
)


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(obj))


def manifest() -> dict:
    """tokens/manifest.json as pipeline/ingest.py writes it (two sources, drops, dedup summary)."""
    def source(docs_in: int, docs_out: int, dropped: dict, langs: dict, tokens: int) -> dict:
        kept_by_steps = docs_out + dropped.get("duplicate_near", 0) + dropped.get("duplicate_exact", 0)
        return {
            "docs_in": docs_in, "docs_out": docs_out, "dropped": dropped, "bytes_in": 1000 * docs_in,
            "tokens_out": tokens, "langs": langs, "files": ["x"], "shards": ["s/s-00000"],
            "stages": {
                "normalize": {"docs_in": docs_in - 1, "docs_out": docs_in - 1, "seconds": 0.01},
                "langid": {"docs_in": docs_in - 1, "docs_out": docs_in - 1, "seconds": 0.2},
                "quality": {"docs_in": docs_in - 1, "docs_out": kept_by_steps, "seconds": 0.05},
            },
        }

    return {
        "out": "/somewhere/tokens",
        "tokenizer": "/somewhere/ice_text.model",
        "sources": {
            "pile": source(50, 40, {"invalid_json": 1, "too_short": 7, "duplicate_exact": 2}, {"en": 40}, 40000),
            "wudao": source(30, 25, {"empty_text": 1, "too_short": 1, "duplicate_near": 3}, {"zh": 24, "ja": 1},
                            30000),
        },
        "totals": {"docs_in": 80, "docs_out": 65, "bytes_in": 80000, "tokens_out": 70000},
        "drop_examples": {"pile.jsonl.zst": {"invalid_json": [{"offset": 77, "detail": "unexpected end"}]}},
        "dedup": {
            "enabled": True, "docs": 72, "exact_dropped": 2, "near_dropped": 3,
            "near": {"bands": 9, "rows": 13, "threshold": 0.8, "num_perm": 128, "clusters": 2,
                     "candidate_edges": 4, "verified_edges": 3},
            "cross_source": {"wudao duplicates pile": 1},
            "dropped_by_source": {"pile": {"duplicate_exact": 2}, "wudao": {"duplicate_near": 3}},
        },
        "config": {"dedup": {"threshold": 0.8, "num_perm": 128, "near": True}},
        "inputs": [{"path": "/raw/pile.jsonl.zst", "format": "pile", "source": "pile", "size": 50000},
                   {"path": "/raw/wudao.json", "format": "wudao", "source": "wudao", "size": 30000}],
    }


def stats() -> dict:
    """train/stats.json as masking/stats.py writes it (trimmed to the keys the report reads)."""
    pmf = truncated_poisson(3.0, 39)
    histogram = [round(p * 500) for p in pmf]
    return {
        "seed": 1234,
        "config": {"row_length": 2048, "span_lambda": 3.0, "mask_fraction": 0.3},
        "rows": 8, "tokens": 16384, "padding_tokens": 0, "padding_fraction": 0.0,
        "segments": {"mask": 5, "gmask": 9, "mip": 4},
        "text_tokens": {"mask": 4400, "gmask": 10300, "total": 14700, "mask_fraction": 0.299,
                        "target_mask_fraction": 0.3},
        "masked_ratio": {"observed": 0.151, "target": 0.15, "masked_tokens": 664, "window_tokens": 4400},
        "span_lengths": {"count": sum(histogram), "mean": 3.15, "expected_mean": 3.157, "histogram": histogram,
                         "expected_fraction": pmf, "law": "Poisson(3.0) truncated to 1..39",
                         "chi_square": 2.0, "dof": 8, "p_value": 0.98},
        "gmask_suffix": {"law": "uniform", "segments": 9, "bins": 10, "observed": [1, 1, 0, 2, 1, 1, 0, 1, 1, 1],
                         "expected": [0.9] * 10, "chi_square": 3.0, "dof": 9, "p_value": 0.96},
        "tokens_per_source": {"pile": 9000, "wudao": 5700},
        "mip": {"share": 0.05, "target_share": 0.05, "slots": 820, "segments": 4, "exhausted": False,
                "examples_per_dataset": {"super_glue/rte": 3, "deepstruct/conll04": 1},
                "tokens_per_dataset": {"super_glue/rte": 600, "deepstruct/conll04": 210}},
        "seconds": 0.4,
        "bytes_per_token": 4.1,
    }


def mip_plan() -> dict:
    return {
        "format": "glm-corpus/mip-plan", "version": 1, "token_ratio": 0.05,
        "datasets": {
            "super_glue/rte": {"family": "T0++", "cap": 100000, "available": 250, "selected": 250, "written": 248,
                               "planned": True, "do_not_evaluate": True, "eval": False},
            "deepstruct/conll04": {"family": "DeepStruct", "cap": 200000, "available": 90, "selected": 90,
                                   "written": 90, "planned": True, "do_not_evaluate": False, "eval": False},
        },
        "totals": {"datasets": 2, "written": 338, "tokens": 51000},
    }


def audit() -> dict:
    """audit.json in DESIGN §6's `audit --json` shape, with one violation and one contamination entry."""
    return {
        "steps": [0, 4],
        "mip_token_ratio": 0.049,
        "datasets": {
            "super_glue/rte": {"samples": 3, "tokens": 600, "cap": 100000, "planned": True, "do_not_evaluate": True},
            "deepstruct/conll04": {"samples": 1, "tokens": 210, "cap": 200000, "planned": True,
                                   "do_not_evaluate": False},
        },
        "violations": [
            {"kind": "do_not_evaluate", "dataset": "super_glue/rte", "detail": "on the GLM-130B MIP list",
             "fails": False},
            {"kind": "contamination", "dataset": "lambada", "detail": "2 of 100 examples", "fails": True},
        ],
        "contamination": {"lambada": {"examples": 100, "contaminated": 2, "fraction": 0.02}},
        # Extra keys mip/audit.py writes beside DESIGN §6's.
        "failed": True,
        "ratio": {"observed": 0.049, "target": 0.05, "tolerance": 0.01},
        "windows": [{"steps": [0, 2], "mip_token_ratio": 0.04, "tolerance": 0.02},
                    {"steps": [2, 4], "mip_token_ratio": 0.058, "tolerance": 0.02}],
        "do_not_evaluate_seen": ["super_glue/rte"],
    }


def make_full_run(run: Path) -> Path:
    """A run directory with every input the report reads."""
    write_json(run / "tokens" / "manifest.json", manifest())
    listing = pa.table({
        "doc_id": ["a", "b", "c", "d", "e"],
        "source": ["pile", "pile", "wudao", "wudao", "wudao"],
        "reason": ["duplicate_exact", "duplicate_exact", "duplicate_near", "duplicate_near", "duplicate_near"],
        "cluster_id": [3, 4, 7, 7, 7],
        "survivor_doc_id": ["x"] * 5, "survivor_source": ["pile"] * 5,
        "similarity": pa.array([1.0, 1.0, 0.9, 0.85, 0.95], pa.float32()),
    })
    (run / "tokens" / "dedup").mkdir(parents=True)
    pq.write_table(listing, run / "tokens" / "dedup" / "dropped.parquet")
    write_json(run / "mip" / "mip-plan.json", mip_plan())
    write_json(run / "mip" / "manifest.json", {"sources": {"super_glue/rte": {
        "docs_in": 250, "docs_out": 248, "dropped": {"too_long": 2}}}})
    write_json(run / "train" / "stats.json", stats())
    write_json(run / "audit.json", audit())
    checkpoints = run / "checkpoints"
    write_json(checkpoints / "step_00000005" / "meta.json",
               {"step": 5, "consumed_samples": 10, "global_batch_size": 2, "tp": 1, "dp": 1,
                "config": {"precision": "fp32", "model": {"num_layers": 2, "hidden_size": 64, "num_heads": 4}}})
    (checkpoints / "latest").write_text("step_00000005\n")
    lines = [orjson.dumps({"step": s, "loss": 12.0 - s * 0.5, "step_time_s": 0.1}).decode() for s in range(5)]
    (checkpoints / "train_log.jsonl").write_text("\n".join(lines) + "\n{\"step\": 5, \"lo")  # torn last line
    write_json(run / "run.json", {"stages": {"ingest": {"status": "ran", "seconds": 12.5, "detail": ""},
                                             "audit": {"status": "not configured", "seconds": 0.0}}})
    return run


@pytest.fixture
def full_run(tmp_path: Path) -> Path:
    return make_full_run(tmp_path / "run")


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[dict, str]:
    """The report of the full synthetic run, rendered once for the tests that only read it."""
    run = make_full_run(tmp_path_factory.mktemp("report") / "run")
    summary = build_report(run)
    return summary, Path(summary["path"]).read_text(encoding="utf-8")


def assert_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<link" not in page.lower() and "<script" not in page.lower()
    assert "@import" not in page


def section_html(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, re.DOTALL)
    assert match, f"no section {key}"
    return match.group(1)


def test_full_run_renders_every_section_with_embedded_plots(full_report: tuple[dict, str]) -> None:
    summary, page = full_report
    assert summary["path"].endswith("/run/" + REPORT_FILE)
    assert page.startswith("<!DOCTYPE html>")
    assert_self_contained(page)
    for title in ALL_TITLES:
        assert f"<h2>{title}</h2>" in page
    assert summary["sections"] == {key: "rendered" for key in summary["sections"]}
    assert len(summary["sections"]) == len(ALL_TITLES)
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == summary["images"] >= 13
    import base64

    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    # Each section with data to plot has its plots.
    for key, least in (("documents", 3), ("drops", 1), ("languages", 1), ("dedup", 2), ("masking", 3),
                       ("mip", 1), ("audit", 1), ("training", 1)):
        assert section_html(page, key).count("<img ") >= least, key


def test_full_run_numbers_reach_the_page(full_report: tuple[dict, str]) -> None:
    _, page = full_report
    drops = section_html(page, "drops")
    assert "too_short" in drops and "invalid_json" in drops and "Every record is accounted for" in drops
    dedup = section_html(page, "dedup")
    assert "9 x 13" in dedup
    assert "3 clusters with at least one dropped document (5 dropped)" in dedup
    audit_html = section_html(page, "audit")
    assert "The audit fails" in audit_html and "1 failing finding(s) of 2" in audit_html
    assert "do_not_evaluate" in audit_html and "lambada" in audit_html and "2.00%" in audit_html
    assert "<img " in audit_html  # the MIP ratio per step window
    training = section_html(page, "training")
    assert "5 steps from train_log.jsonl" in training and "first 12.0000, last 10.0000" in training
    masking = section_html(page, "masking")
    assert "29.90% (target 30%)" in masking
    assert '<td class="num">' in page  # numbers are right-aligned
    overview = section_html(page, "overview")
    assert "12.5" in overview  # the run.json timing


def test_a_run_with_only_the_manifest_says_which_stages_did_not_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_json(run / "tokens" / "manifest.json", manifest())
    out = tmp_path / "elsewhere" / "page.html"

    summary = build_report(run, out)

    assert summary["path"] == str(out) and out.exists() and not (run / REPORT_FILE).exists()
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    for title in ALL_TITLES:
        assert f"<h2>{title}</h2>" in page
    assert summary["sections"]["documents"] == "rendered"
    assert summary["sections"]["dedup"] == "rendered"  # the S-curve needs only the manifest
    for key in ("masking", "mip", "audit", "training"):
        assert summary["sections"][key] == "not run"
        assert "Stage not run" in section_html(page, key)
    assert "No tokens/dedup/dropped.parquet" in section_html(page, "dedup")
    assert summary["images"] >= 5


def test_disabled_dedup_and_a_missing_trainer_log_are_notes_not_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    data = manifest()
    data["dedup"] = {"enabled": False}
    write_json(run / "tokens" / "manifest.json", data)
    (run / "checkpoints").mkdir()
    build_report(run)
    page = (run / REPORT_FILE).read_text(encoding="utf-8")
    assert "Dedup was disabled" in section_html(page, "dedup")
    assert "no loss curve" in section_html(page, "training")


def test_the_printed_trainer_lines_are_a_log_too(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "train.log").write_text(
        "step     0 | loss 11.9379 | lr 0.00075 | grad norm 0.219\nstep     1 | loss 11.5 | lr 0.0015\n")
    build_report(run)
    training = section_html((run / REPORT_FILE).read_text(encoding="utf-8"), "training")
    assert "2 steps from train.log" in training and "<img " in training


@pytest.mark.parametrize("relative", ["tokens/manifest.json", "train/stats.json", "audit.json"])
def test_corrupt_json_is_a_clear_error(full_run: Path, relative: str) -> None:
    (full_run / relative).write_text('{"truncated": ')
    with pytest.raises(GLMCorpusError, match=re.escape(relative.split("/")[-1]) + ".*not valid JSON"):
        build_report(full_run)


def test_corrupt_dedup_listing_is_a_clear_error(full_run: Path) -> None:
    (full_run / "tokens" / "dedup" / "dropped.parquet").write_bytes(b"not parquet")
    with pytest.raises(GLMCorpusError, match="dropped.parquet.*Parquet"):
        build_report(full_run)


def test_an_unexpected_shape_fails_only_its_own_section(full_run: Path) -> None:
    data = stats()
    data["span_lengths"] = {"histogram": "not a list"}
    data["text_tokens"] = ["wrong"]
    write_json(full_run / "train" / "stats.json", data)
    summary = build_report(full_run)
    assert summary["sections"]["masking"] == "failed"
    assert summary["sections"]["documents"] == "rendered"
    assert "could not be rendered" in section_html((full_run / REPORT_FILE).read_text(encoding="utf-8"), "masking")


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(GLMCorpusError, match="is not a directory"):
        build_report(tmp_path / "missing")
    with pytest.raises(GLMCorpusError, match="is it a run directory"):
        build_report(tmp_path)


def test_cli_report_writes_the_page_and_a_json_summary(tmp_path: Path, capsys) -> None:
    from cli import main

    run = tmp_path / "run"
    write_json(run / "tokens" / "manifest.json", manifest())
    assert main(["report", str(run), "--out", str(tmp_path / "r.html"), "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["path"] == str(tmp_path / "r.html") and summary["sections"]["documents"] == "rendered"
    assert summary["sections"]["training"] == "not run"
    (run / "audit.json").write_text("[1, 2")
    assert main(["report", str(run)]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_truncated_poisson_matches_the_law() -> None:
    pmf = truncated_poisson(3.0, 39)
    assert pmf[0] == 0.0 and math.isclose(sum(pmf), 1.0)
    assert math.isclose(pmf[2] / pmf[1], 3.0 / 2) and math.isclose(pmf[3] / pmf[2], 1.0)
