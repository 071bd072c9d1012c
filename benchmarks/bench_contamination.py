"""Contamination scan: the audit's hashed, vectorized n-gram check vs a plain Python set of n-gram tuples.

Both scan the same training shards (real masking-stage output, 2048-token rows, from the shared Pile and WuDao
samples when present, else built-in text) for the same English and Chinese evaluation sets, one process, one
core. Both restore the masked spans the same way (`restore_segments`); from there the baseline decodes every
text piece with the tokenizer, splits it into units with a regular expression and looks up tuples of unit
strings in a Python set, while ours spells the text by a byte gather (`VocabText`), hashes units and n-grams in
numpy and probes a sorted uint64 array. Reported: training tokens/s per core, memory per indexed n-gram
(ours: `NgramIndex.memory`; baseline: tracemalloc over building its set), and the contaminated examples each
finds (the planted ones are known). A third row runs the audit's Ray path (`scan_rows_on_ray`, 2 workers) on the
same rows and says whether its report equals the single-process one; at this size Ray's per-task costs are a
large part of the scan, which is why the audit keeps scans under `RAY_MIN_ROWS` rows in one process.
"""

from __future__ import annotations

import random
import re
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import format_table, shared_corpus
from mip.contamination import NgramIndex, VocabText, restore_segments, scan_rows
from mip.eval_sets import EvalExample, EvalSet

NGRAM = 13
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNITS = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
"""The baseline's units: a CJK character, or a run of word characters (what a plain implementation writes)."""


def _read_texts(quick: bool) -> tuple[list[str], list[str]]:
    """(English documents, Chinese documents): the shared Pile/WuDao samples, else built-in text."""
    english: list[str] = []
    chinese: list[str] = []
    pile = shared_corpus("pile", "pile_sample.jsonl.zst")
    wudao = shared_corpus("wudao", "wudao_sample.json")
    if pile is not None and wudao is not None:
        import io

        import orjson
        import zstandard

        with open(pile, "rb") as handle:
            lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(handle), encoding="utf-8")
            english = [orjson.loads(line)["text"] for line in lines if line.strip()]
        chinese = [record["content"] for record in orjson.loads(wudao.read_bytes()) if record.get("content")]
    else:
        from pydoc_data.topics import topics

        rng = random.Random(0)
        base = [topics[name] for name in sorted(topics)]
        english = [" ".join(rng.sample(text.split(), len(text.split()))) for text in base for _ in range(4)]
        hanzi = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研质"
        chinese = [
            "".join(rng.choice(hanzi) for _ in range(rng.randint(200, 2000))) + "。" for _ in range(600)
        ]
    limit = 150 if quick else len(english)
    return english[:limit], chinese[: (100 if quick else len(chinese))]


def _eval_sets(
    english: list[str], chinese: list[str], rng: random.Random
) -> tuple[list[EvalSet], list[str], list[str]]:
    """Held-out documents cut into examples, plus passages planted from the training documents (known hits)."""
    sets = []
    training: dict[str, list[str]] = {}
    for name, docs, unit in (("en", english, " "), ("zh", chinese, "")):
        docs = list(docs)
        rng.shuffle(docs)
        held = max(1, len(docs) // 10)
        held_out, train = docs[:held], docs[held:]
        training[name] = train
        examples = []
        for number, doc in enumerate(held_out):
            pieces = doc.split(unit) if unit else list(doc)
            for start in range(0, min(len(pieces), 2000), 200):
                examples.append(
                    EvalExample(f"{name}-{number}-{start}", [unit.join(pieces[start : start + 200])])
                )
        planted = 0
        for doc in rng.sample(train, max(1, len(train) // 20)):
            pieces = doc.split(unit) if unit else list(doc)
            if len(pieces) > 3 * NGRAM:
                start = rng.randrange(len(pieces) - 2 * NGRAM)
                examples.append(
                    EvalExample(f"{name}-planted-{planted}", [unit.join(pieces[start : start + 2 * NGRAM])])
                )
                planted += 1
        sets.append(EvalSet(name=name, path="<bench>", format="jsonl", examples=examples))
    return sets, training["en"], training["zh"]


def _build_run(root: Path, english: list[str], chinese: list[str], quick: bool) -> tuple[Any, Path]:
    from masking.config import MaskingConfig
    from masking.stage import run_masking
    from pipeline.special_tokens import EOD
    from pipeline.tokenizer import GLMTokenizer, train_tokenizer
    from shards.token_shards import TokenShardWriter

    corpus = root / "corpus.txt"
    sample = english[: len(english) // 3] + chinese[: len(chinese) // 3]
    corpus.write_text("\n".join(sample), encoding="utf-8")
    train_tokenizer(
        [corpus],
        root / "ice_text.model",
        vocab_size=2000 if quick else 8000,
        input_sentence_size=20_000 if quick else 100_000,
    )
    tokenizer = GLMTokenizer(root / "ice_text.model")
    for source, docs in (("pile", english), ("wudao", chinese)):
        encoded = tokenizer.encode_batch(docs)
        with TokenShardWriter(root / "tokens" / source / f"{source}-00000") as writer:
            for number, ids in enumerate(encoded):
                writer.add(
                    np.append(ids, np.int32(EOD)),
                    doc_id=f"{source}:{number}",
                    source=source,
                    input_file="bench",
                    offset=number,
                )
    run_masking(root / "tokens", root / "train", MaskingConfig(), progress=False)
    return tokenizer, root / "train"


def _ray_scan(
    train: Path, rows: np.ndarray, eval_sets: list[EvalSet], vocab: VocabText, expected: dict[str, Any]
) -> dict[str, Any]:
    """The audit's Ray path (2 workers, 4 row ranges) on the same rows, Ray already started (its start-up is
    not counted; task start and the object-store copy of the index are). Per core = wall rate / 2."""
    from mip.contamination import scan_rows_on_ray
    from pipeline.ray_runtime import ensure_ray

    ensure_ray(2)
    index = NgramIndex.build(eval_sets, n=NGRAM)
    scan_rows_on_ray(str(train), rows[:8], index, vocab, workers=2)  # warm-up: worker processes, imports
    index = NgramIndex.build(eval_sets, n=NGRAM)
    started = time.perf_counter()
    stats, ranges = scan_rows_on_ray(str(train), rows, index, vocab, workers=2)
    seconds = time.perf_counter() - started
    report = index.report()
    same = all(report[name] == expected[name] for name in expected)
    return {
        "implementation": f"ours on Ray, 2 workers, {ranges} ranges (report identical: {'yes' if same else 'NO'})",
        "contaminated (en/zh)": f"{report['en']['contaminated']}/{report['zh']['contaminated']}",
        "tokens/s per core": stats.tokens / seconds / 2,
        "tokens/s (wall)": stats.tokens / seconds,
        "indexed n-grams": index.memory["ngrams"],
        "bytes per n-gram": index.memory["bytes_per_ngram"],
        "memory ratio": None,
    }


class PythonSetBaseline:
    """The plain implementation: decode each text piece, regex units, a set of unit-string tuples."""

    def __init__(self, eval_sets: list[EvalSet], n: int) -> None:
        self.n = n
        self.owners: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        grams: set[tuple[str, ...]] = set()
        for eval_set in eval_sets:
            for example in eval_set.examples:
                for text in example.texts:
                    units = _UNITS.findall(text.lower())
                    for i in range(len(units) - n + 1):
                        gram = tuple(units[i : i + n])
                        grams.add(gram)
                        self.owners.setdefault(gram, []).append((eval_set.name, example.id))
        self.bytes = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        self.grams = grams
        self.found: set[tuple[str, str]] = set()

    def scan(
        self, shards: Any, rows: np.ndarray, tokenizer: Any, vocab: VocabText, batch_rows: int = 64
    ) -> int:
        from pipeline.special_tokens import EOD

        tokens = 0
        for lo in range(0, len(rows), batch_rows):
            recipes, _, _ = shards.recipes(rows[lo : lo + batch_rows])
            tokens += int(recipes.tokens.size)
            restored = restore_segments(recipes, EOD)
            cuts = np.flatnonzero(vocab.is_boundary[restored.ids])
            for piece in np.split(restored.ids, cuts):
                piece = piece[1:] if len(piece) and vocab.is_boundary[piece[0]] else piece
                if len(piece) < self.n:
                    continue
                units = _UNITS.findall(tokenizer.decode(piece).lower())
                for i in range(len(units) - self.n + 1):
                    gram = tuple(units[i : i + self.n])
                    if gram in self.grams:
                        self.found.update(self.owners[gram])
        return tokens


def run(quick: bool = False) -> list[dict[str, Any]]:
    from shards.training_shards import TrainingShards

    rng = random.Random(1)
    english, chinese = _read_texts(quick)
    eval_sets, english_train, chinese_train = _eval_sets(english, chinese, rng)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, train = _build_run(Path(tmp), english_train, chinese_train, quick)
        shards = TrainingShards(train)
        rows = np.arange(len(shards))
        vocab = VocabText(tokenizer)

        index = NgramIndex.build(eval_sets, n=NGRAM)
        scan_rows(shards, rows[:8], index, vocab)  # warm-up: tables, page cache
        index = NgramIndex.build(eval_sets, n=NGRAM)
        started = time.perf_counter()
        stats = scan_rows(shards, rows, index, vocab)
        ours_seconds = time.perf_counter() - started
        ours_report = index.report()
        memory = index.memory

        ray_row = _ray_scan(train, rows, eval_sets, vocab, ours_report)

        baseline = PythonSetBaseline(eval_sets, NGRAM)
        started = time.perf_counter()
        baseline_tokens = baseline.scan(shards, rows, tokenizer, vocab)
        baseline_seconds = time.perf_counter() - started

    planted = {s.name: sum("planted" in e.id for e in s.examples) for s in eval_sets}
    examples = {s.name: len(s.examples) for s in eval_sets}
    found_baseline = {s.name: sum(1 for name, _ in baseline.found if name == s.name) for s in eval_sets}
    common = {
        "training tokens": stats.tokens,
        "rows": stats.rows,
        "eval examples (en/zh)": f"{examples['en']}/{examples['zh']}",
        "planted (en/zh)": f"{planted['en']}/{planted['zh']}",
    }
    ours_rate = stats.tokens / ours_seconds
    baseline_rate = baseline_tokens / baseline_seconds
    return [
        {
            "implementation": "ours: hashed n-grams, numpy (mip.contamination)",
            **common,
            "contaminated (en/zh)": f"{ours_report['en']['contaminated']}/{ours_report['zh']['contaminated']}",
            "tokens/s per core": ours_rate,
            "tokens/s (wall)": ours_rate,
            "indexed n-grams": memory["ngrams"],
            "bytes per n-gram": memory["bytes_per_ngram"],
            "speed ratio": ours_rate / baseline_rate,
            "memory ratio": memory["bytes_per_ngram"] / (baseline.bytes / max(len(baseline.grams), 1)),
        },
        {**ray_row, **common, "speed ratio": ray_row["tokens/s per core"] / baseline_rate},
        {
            "implementation": "baseline: decode + regex + set of tuples",
            **common,
            "contaminated (en/zh)": f"{found_baseline['en']}/{found_baseline['zh']}",
            "tokens/s per core": baseline_rate,
            "tokens/s (wall)": baseline_rate,
            "indexed n-grams": len(baseline.grams),
            "bytes per n-gram": baseline.bytes / max(len(baseline.grams), 1),
            "speed ratio": 1.0,
            "memory ratio": 1.0,
        },
    ]


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
