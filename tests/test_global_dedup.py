"""The partitioned global dedup (pipeline.dedup.global_dedup) against an in-memory reference.

Work shards are built directly (token ids are irrelevant to dedup): three files of two sources with
planted exact copies, near copies (within and across files and sources) and clusters of three. The
reference is the whole-corpus computation the partitioned pass replaces: `exact_duplicates` and
`run_near_dedup` over every signature at once, combined by the documented rules. Decisions, the listing
and the summary must be equal for one partition, for many (tiny `partition_mb`), and on Ray.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.dedup.cluster import ArraySignatures, run_near_dedup
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.exact import digests_to_keys, exact_duplicates, text_hash
from pipeline.dedup.global_dedup import REASONS, deduplicate_work_shards, read_decisions
from pipeline.dedup.signatures import SignatureMaker
from pipeline.ingest import WORK_EXTRA_SCHEMA
from shards.token_shards import TokenShardWriter
from tests.test_dedup import english_words


def _corpus(seed: int = 5) -> list[tuple[str, str, list[tuple[str, float]]]]:
    """[(source, file name, [(text, quality)])]: 3 files, with exact and near copies planted across them."""
    rng = random.Random(seed)
    words = english_words()

    def fresh() -> list[str]:
        return [rng.choice(words) for _ in range(120)]

    def near(units: list[str]) -> list[str]:
        return [rng.choice(words) if rng.random() < 0.01 else u for u in units]

    files: list[list[tuple[str, float]]] = [[], [], []]
    bases: list[list[str]] = []
    for f in range(3):
        for _ in range(60):
            units = fresh()
            bases.append(units)
            files[f].append((" ".join(units), round(rng.random(), 3)))
    for f in range(3):
        for k in range(25):
            base = rng.choice(bases)
            kind = k % 3
            if kind == 0:  # exact copy, quality equal to nothing in particular: exact keeps the first
                files[f].append((" ".join(base), round(rng.random(), 3)))
            else:  # near copy, sometimes of a near copy (a cluster of three or more)
                files[f].append((" ".join(near(base)), round(rng.random(), 3)))
                if kind == 2:
                    bases.append(near(base))
    for f in range(3):
        rng.shuffle(files[f])
    return [("wudao", "a.json", files[0]), ("pile", "b.jsonl", files[1]), ("pile", "c.jsonl", files[2])]


def _write_work_shards(root: Path, config: DedupConfig) -> tuple[list[Path], list[str], list[list[str]]]:
    signer = SignatureMaker(config)
    work_dirs, sources, ids = [], [], []
    for source, name, docs in _corpus():
        work = root / name
        writer = TokenShardWriter(work / "docs", extra_schema=WORK_EXTRA_SCHEMA)
        doc_ids = []
        for k, (text, quality) in enumerate(docs):
            offset = 1000 + 17 * k
            doc_id = f"{source}:/data/{name}:{offset}"
            doc_ids.append(doc_id)
            writer.add(np.arange(1 + k % 7, dtype=np.int32), doc_id=doc_id, source=source,
                       input_file=f"/data/{name}", offset=offset, lang="en", quality=quality,
                       text_hash=text_hash(text), text_chars=len(text), meta="{}")
        writer.close()
        np.save(work / "signatures.npy", signer.signatures([text for text, _ in docs]))
        work_dirs.append(work)
        sources.append(source)
        ids.append(doc_ids)
    return work_dirs, sources, ids


def _reference(work_dirs: list[Path], config: DedupConfig) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, float]]]:
    """(reason codes, cluster ids, {dropped doc: (survivor, similarity)}) over the whole corpus at once."""
    tables = [pq.read_table(w / "docs.provenance.parquet") for w in work_dirs]
    digests = [b for t in tables for b in t.column("text_hash").to_pylist()]
    quality = np.concatenate([t.column("quality").to_numpy() for t in tables]).astype(np.float64)
    length = np.concatenate([t.column("text_chars").to_numpy() for t in tables]).astype(np.int64)
    signatures = np.concatenate([np.load(w / "signatures.npy") for w in work_dirs])
    n = len(digests)
    reason = np.zeros(n, np.uint8)
    cluster = np.full(n, -1, np.int64)
    survivor: dict[int, tuple[int, float]] = {}
    exact = exact_duplicates(digests_to_keys(digests))
    for d, s in zip(exact.dropped_doc.astype(int), exact.survivor.astype(int)):
        reason[d], cluster[d], cluster[s] = 1, s, s
        survivor[d] = (s, 1.0)
    near = run_near_dedup(ArraySignatures(signatures), config.threshold, quality=quality, length=length)
    labels = near.cluster_of()
    cluster[labels >= 0] = labels[labels >= 0]
    for d, s, sim in zip(near.dropped_doc.astype(int), near.survivor.astype(int), near.similarity):
        if reason[d] == 0:
            reason[d] = 2
            survivor[d] = (s, float(sim))
    return reason, cluster, survivor


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    config = DedupConfig()
    root = tmp_path_factory.mktemp("global-dedup")
    work_dirs, sources, ids = _write_work_shards(root, config)
    return root, work_dirs, sources, ids, _reference(work_dirs, config)


def _run(work, tmp_path, **overrides):
    root, work_dirs, sources, ids, _ = work
    config = DedupConfig(**overrides.pop("config", {}))
    summary = deduplicate_work_shards(config, work_dirs, sources, out=tmp_path / "dedup", progress=False, **overrides)
    reasons = [read_decisions(w) for w in work_dirs]
    listing = pq.read_table(tmp_path / "dedup" / "dropped.parquet").to_pylist()
    return summary, reasons, listing


def _check_against_reference(work, reasons, listing):
    _, work_dirs, sources, ids, (ref_reason, ref_cluster, ref_survivor) = work
    reason = np.concatenate([r for r, _ in reasons])
    cluster = np.concatenate([c for _, c in reasons])
    assert (ref_reason == 1).sum() >= 10 and (ref_reason == 2).sum() >= 20, "the corpus plants too few copies"
    np.testing.assert_array_equal(reason, ref_reason)
    np.testing.assert_array_equal(cluster, ref_cluster)
    flat_ids = [d for file_ids in ids for d in file_ids]
    flat_sources = [s for s, file_ids in zip(sources, ids) for _ in file_ids]
    expected = [
        {"doc_id": flat_ids[d], "source": flat_sources[d], "reason": REASONS[ref_reason[d]],
         "cluster_id": int(ref_cluster[d]), "survivor_doc_id": flat_ids[s], "survivor_source": flat_sources[s]}
        for d in np.flatnonzero(ref_reason) for s in [ref_survivor[int(d)][0]]
    ]
    assert [{k: v for k, v in row.items() if k != "similarity"} for row in listing] == expected
    similarities = np.array([row["similarity"] for row in listing])
    np.testing.assert_allclose(similarities, [ref_survivor[int(d)][1] for d in np.flatnonzero(ref_reason)],
                               atol=1e-6)


def test_one_partition_matches_the_whole_corpus_reference(work, tmp_path):
    summary, reasons, listing = _run(work, tmp_path, config={"partitions": 1})
    _check_against_reference(work, reasons, listing)
    ref_reason = work[4][0]
    assert summary["exact_dropped"] == int((ref_reason == 1).sum())
    assert summary["near_dropped"] == int((ref_reason == 2).sum())
    assert summary["partitions"] == {"exact": 1, "near": 1}
    assert not (tmp_path / "dedup" / ".shuffle").exists(), "the shuffle is scratch: removed at the end"


def test_partition_count_grows_with_the_corpus_and_changes_nothing(work, tmp_path):
    one_partition = _run(work, tmp_path / "a", config={"partitions": 1})
    # 1 MB per partition: 285 docs x 9 bands x 12 B is 30 kB, so only the configured minimum counts; with
    # partitions=13 every partition still has some entries, and any bucket lands whole in one.
    many = _run(work, tmp_path / "b", config={"partitions": 13, "partition_mb": 1})
    _check_against_reference(work, many[1], many[2])
    assert many[0]["partitions"]["near"] == 13
    for key in ("exact_dropped", "near_dropped", "cross_source", "dropped_by_source"):
        assert many[0][key] == one_partition[0][key]
    assert many[0]["cross_source"], "the corpus plants cross-source copies"


def test_ray_tasks_decide_like_the_driver(work, tmp_path, ray_session):
    from pipeline.dedup.global_dedup import ray_map

    driver = _run(work, tmp_path / "driver", config={"partitions": 3})
    on_ray = _run(work, tmp_path / "ray", config={"partitions": 3}, map_fn=ray_map(2))
    for (r1, c1), (r2, c2) in zip(driver[1], on_ray[1]):
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(c1, c2)
    assert driver[2] == on_ray[2]
    assert (tmp_path / "driver" / "dedup" / "dropped.parquet").read_bytes() == \
        (tmp_path / "ray" / "dedup" / "dropped.parquet").read_bytes()
