"""Near-dedup recall and precision on generated near duplicates, against the S-curve's prediction.

Bases: distinct windows of real text, the Pile sample (English, 100 words) and the WuDao sample
(Chinese, 100 characters, whitespace removed) from ../shared/corpora when present, otherwise the built-in
corpora (Python's pydoc topics, People's Daily). At most 32 windows per document; a window sharing over 5%
of its shingles with earlier ones is skipped, so different bases are unrelated. Each base gets one edited
copy (units substituted, deleted or inserted at a rate aimed at a Jaccard similarity spread evenly over
0.6-0.97; `tests/test_dedup.py::controlled_pairs`), and each pair's true Jaccard is that of its shingle
sets. A pair is a positive when its true Jaccard is >= the threshold; recall = positives caught /
positives, precision = positives caught / pairs caught. The prediction sums each pair's probability of
being caught at its true Jaccard: the S-curve 1 - (1 - J^r)^b without verification, and with
verification the probability that a band agrees and at least ceil(t * num_perm) rows agree; z is
(measured - predicted) / sigma of the sum of independent Bernoullis.

Baseline: datasketch's MinHashLSH with the same threshold and num_perm (hence the same bands x rows) on
the same pairs, with datasketch's own MinHash.bulk (sha1) signatures: no verification, so its
prediction is the plain S-curve. Seconds: signatures + clustering (ours) or bulk + insert + query.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import chinese_texts, english_texts
from kernels.shingles import shingles
from pipeline.dedup import cluster, lsh
from pipeline.dedup.cluster import run_near_dedup
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.signatures import SignatureMaker

# The prediction and the pair generator are the ones the acceptance test uses (one definition of each).
from tests.test_dedup import Quality, controlled_pairs, jaccard

WINDOWS_PER_DOC = 32


def _windows(documents: list[list[str]], size: int, count: int, joiner: str) -> list[list[str]]:
    """Up to `count` windows of `size` units, at most WINDOWS_PER_DOC per document, each sharing at most
    5% of its shingles with the windows taken before it."""
    seen: set[bytes] = set()
    out: list[list[str]] = []
    for units in documents:
        for start in range(0, min(len(units) - size + 1, WINDOWS_PER_DOC * size), size):
            window = units[start : start + size]
            grams = set(shingles(joiner.join(window)))
            if len(grams & seen) > 0.05 * len(grams):
                continue
            seen |= grams
            out.append(window)
            if len(out) == count:
                return out
    return out


def _pairs(language: str, count: int, seed: int) -> tuple[str, list[tuple[str, str]]]:
    if language == "en":
        name, texts = english_texts(10**9)
        documents, size, joiner = [t.split() for t in texts], 100, " "
    else:
        name, texts = chinese_texts(10**9)
        documents, size, joiner = [list("".join(t.split())) for t in texts], 100, ""
    vocabulary = [unit for units in documents for unit in units]
    bases = _windows(documents, size, count, joiner)
    return f"{language} ({name})", controlled_pairs(bases, vocabulary, joiner, seed)


def _pair_outcome(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(caught per pair, documents clustered with a document of another pair) for docs 2i, 2i+1."""
    own_pair = np.repeat(np.arange(0, len(labels), 2), 2)
    caught = (labels[0::2] == labels[1::2]) & (labels[0::2] >= 0)
    return caught, int(np.sum((labels >= 0) & (labels != own_pair)))


def _datasketch(
    pairs: list[tuple[str, str]], threshold: float, num_perm: int
) -> tuple[np.ndarray, int, tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    texts = [text for pair in pairs for text in pair]
    minhashes = MinHash.bulk([shingles(t) for t in texts], num_perm=num_perm, seed=1)
    index = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for doc, minhash in enumerate(minhashes):
        index.insert(doc, minhash)
    caught = np.zeros(len(pairs), dtype=bool)
    foreign = 0
    for doc, minhash in enumerate(minhashes):
        found = set(index.query(minhash)) - {doc}
        if doc % 2 == 0:
            caught[doc // 2] = doc + 1 in found
        foreign += bool(found - {doc ^ 1})
    return caught, foreign, (index.b, index.r)


def _bench_language(language: str, count: int, seed: int) -> list[dict[str, Any]]:
    config = DedupConfig()
    threshold, num_perm = config.threshold, config.num_perm
    name, pairs = _pairs(language, count, seed)
    truth = np.array([jaccard(a, b) for a, b in pairs])
    params = lsh.banding(threshold, num_perm, config.bands or None, config.rows or None,
                         config.false_positive_weight, config.false_negative_weight)
    s_curve = lsh.candidate_probability(truth, params.bands, params.rows)
    need = cluster.min_equal_rows(threshold, num_perm)
    verified = lsh.verified_catch_probability(truth, params.bands, params.rows, num_perm, need)

    def row(implementation: str, banding: tuple[int, int], caught: np.ndarray, predicted: np.ndarray,
            foreign: int, seconds: float) -> dict[str, Any]:
        q = Quality.measure(caught, truth, predicted, threshold)
        return {
            "text": name,
            "pairs": len(pairs),
            "J >= t": q.positives,
            "threshold": threshold,
            "bands x rows": f"{banding[0]} x {banding[1]}",
            "implementation": implementation,
            "recall": round(q.recall, 3),
            "predicted recall": round(q.predicted_recall, 3),
            "z recall": round(q.recall_z(), 2),
            "precision": round(q.precision, 3),
            "predicted precision": round(q.predicted_precision, 3),
            "z precision": round(q.precision_z(), 2),
            "cross-pair links": foreign,
            "seconds": round(seconds, 2),
        }

    rows = []
    texts = [text for pair in pairs for text in pair]
    for verify, predicted in ((False, s_curve), (True, verified)):
        started = time.perf_counter()
        signatures = SignatureMaker(config).signatures(texts)
        result = run_near_dedup(signatures, threshold, bands=params.bands, rows=params.rows,
                                verify=verify, partitions=config.partitions)
        seconds = time.perf_counter() - started
        caught, foreign = _pair_outcome(result.cluster_of())
        label = "glm-corpus, verified (default)" if verify else "glm-corpus, unverified"
        rows.append(row(label, (params.bands, params.rows), caught, predicted, foreign, seconds))
    started = time.perf_counter()
    caught, foreign, banding = _datasketch(pairs, threshold, num_perm)
    seconds = time.perf_counter() - started
    predicted = lsh.candidate_probability(truth, *banding)
    label = "datasketch MinHashLSH (sha1 MinHash.bulk)"
    rows.append(row(label, banding, caught, predicted, foreign, seconds))
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    count = 400 if quick else 5000
    rows: list[dict[str, Any]] = []
    for language, seed in (("en", 41), ("zh", 42)):
        rows += _bench_language(language, count, seed)
    return rows


if __name__ == "__main__":
    import sys

    from benchmarks.common import format_table

    all_rows = run(quick="--quick" in sys.argv)
    for text in dict.fromkeys(r["text"] for r in all_rows):  # one table per language
        print(f"\n{text}\n" + format_table([r for r in all_rows if r["text"] == text]))
