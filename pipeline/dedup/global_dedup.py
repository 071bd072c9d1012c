"""Global dedup over the ingest stage's per-file work shards, on Ray.

Documents are numbered in the order of the work shards given (the ingest stage passes them by source
priority, then path; records in file order); that number is the `doc_order` of every rule below, so the result is the same whatever the number of workers or
partitions. Exact duplicates (same xxh3-128 of the normalized text) keep their first occurrence;
near duplicates (MinHash LSH, pipeline.dedup.cluster) keep the survivor of their cluster (highest
quality, then longest, then first). The two never disagree: copies of one text have equal quality and
length, so a near cluster's survivor is always the first copy, which exact dedup keeps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.atomic import atomic_path
from common.progress import Progress
from pipeline.dedup.cluster import ConcatenatedSignatures, run_near_dedup
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.exact import DROP_REASON as EXACT_REASON
from pipeline.dedup.exact import digests_to_keys, exact_duplicates

NEAR_REASON = "duplicate_near"
LISTING = "dropped.parquet"


def ray_map(workers: int) -> Callable[[Callable[[Any], Any], Iterable[Any]], list[Any]]:
    """A `map` whose calls run as Ray tasks; results come back in input order (deterministic)."""
    from pipeline.ray_runtime import ensure_ray

    ray = ensure_ray(workers)
    apply = ray.remote(num_cpus=1)(_apply)

    def mapper(function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        function_ref = ray.put(function)
        return ray.get([apply.remote(function_ref, item) for item in items])

    return mapper


def _apply(function: Callable[[Any], Any], item: Any) -> Any:
    return function(item)


def deduplicate_work_shards(
    config: DedupConfig,
    work_dirs: Sequence[Path],
    sources: Sequence[str],
    out: Path,
    workers: int = 1,
    progress: bool = True,
    map_fn: Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]] | None = None,
) -> dict[str, Any]:
    """Decide which documents of the work shards survive; write the listing of dropped ones."""
    tables = [pq.read_table(Path(w) / "docs.provenance.parquet",
                            columns=["doc_id", "text_hash", "quality", "text_chars"]) for w in work_dirs]
    counts = np.array([t.num_rows for t in tables], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    n = int(starts[-1])
    doc_source = np.repeat(np.arange(len(sources)), counts)
    doc_ids = [doc_id for t in tables for doc_id in t.column("doc_id").to_pylist()]
    distributed = workers > 1 and n >= config.distributed_min_docs
    mapper = map_fn or (ray_map(workers) if distributed else map)

    reason = np.full(n, "", dtype=object)
    cluster = np.full(n, -1, dtype=np.int64)
    survivor_of = np.arange(n, dtype=np.int64)
    similarity = np.ones(n, dtype=np.float32)
    summary: dict[str, Any] = {"enabled": True, "docs": n}

    if config.exact and n:
        digests = [b for t in tables for b in t.column("text_hash").to_pylist()]
        with Progress("dedup exact", total=n, unit="doc", enabled=progress) as bar:
            exact = exact_duplicates(digests_to_keys(digests), partitions=config.partitions, map_fn=mapper)
            bar.update(n)
        dropped = exact.dropped_doc.astype(np.int64)
        reason[dropped] = EXACT_REASON
        survivor_of[dropped] = exact.survivor.astype(np.int64)
        cluster[dropped] = exact.survivor.astype(np.int64)
        cluster[exact.survivor.astype(np.int64)] = exact.survivor.astype(np.int64)
        summary["exact_dropped"] = len(dropped)

    if config.near and n:
        quality = np.concatenate([t.column("quality").to_numpy() for t in tables]).astype(np.float64)
        length = np.concatenate([t.column("text_chars").to_numpy() for t in tables]).astype(np.int64)
        signatures = ConcatenatedSignatures([Path(w) / "signatures.npy" for w in work_dirs])
        with Progress("dedup near", total=n, unit="doc", enabled=progress) as bar:
            near = run_near_dedup(
                signatures, config.threshold,
                bands=config.bands or None, rows=config.rows or None,
                partitions=config.partitions, map_fn=mapper, verify=config.verify,
                quality=quality, length=length, chunk_docs=config.chunk_docs,
                false_positive_weight=config.false_positive_weight,
                false_negative_weight=config.false_negative_weight,
            )
            bar.update(n)
        labels = near.cluster_of()
        in_cluster = labels >= 0
        cluster[in_cluster] = labels[in_cluster]
        dropped = near.dropped_doc.astype(np.int64)
        fresh = reason[dropped] == ""
        reason[dropped[fresh]] = NEAR_REASON
        survivor_of[dropped[fresh]] = near.survivor.astype(np.int64)[fresh]
        similarity[dropped[fresh]] = near.similarity[fresh]
        summary["near"] = near.summary()
        summary["near_dropped"] = int(fresh.sum())

    dropped_docs = np.flatnonzero(reason != "")
    cross = Counter()
    for d in dropped_docs:
        s = survivor_of[d]
        if doc_source[d] != doc_source[s]:
            cross[f"{sources[doc_source[d]]} duplicates {sources[doc_source[s]]}"] += 1
    summary["cross_source"] = dict(sorted(cross.items()))
    summary["dropped_by_source"] = {
        name: dict(Counter(reason[dropped_docs][doc_source[dropped_docs] == i]))
        for i, name in enumerate(sources) if (doc_source[dropped_docs] == i).any()
    }
    listing = pa.table({
        "doc_id": [doc_ids[d] for d in dropped_docs],
        "source": [sources[doc_source[d]] for d in dropped_docs],
        "reason": [reason[d] for d in dropped_docs],
        "cluster_id": cluster[dropped_docs],
        "survivor_doc_id": [doc_ids[survivor_of[d]] for d in dropped_docs],
        "survivor_source": [sources[doc_source[survivor_of[d]]] for d in dropped_docs],
        "similarity": similarity[dropped_docs],
    })
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / LISTING) as tmp:
        pq.write_table(listing, tmp, compression="zstd")
    summary["listing"] = str(out / LISTING)

    keep, clusters, masks = [], [], []
    for i in range(len(work_dirs)):
        part = slice(int(starts[i]), int(starts[i + 1]))
        keep.append(reason[part] == "")
        clusters.append(cluster[part])
        masks.append({EXACT_REASON: reason[part] == EXACT_REASON, NEAR_REASON: reason[part] == NEAR_REASON})
    return {"keep": keep, "cluster_id": clusters, "dropped_masks": masks, "summary": summary}
