"""Global dedup over the ingest stage's per-file work shards, as partitioned tasks with an on-disk shuffle.

Documents are numbered in the order of the work shards given (the ingest stage passes them by source
priority, then path; records in file order); that number is the `doc_order` of every rule below, so the
result is the same whatever the number of workers or partitions. Exact duplicates (same xxh3-128 of the
normalized text) keep their first occurrence; near duplicates (MinHash LSH, pipeline.dedup.cluster) keep
the survivor of their cluster (highest quality, then longest, then first). The two never disagree: copies
of one text have equal quality and length, so a near cluster's survivor is always the first copy, which
exact dedup keeps.

The pass is five rounds of tasks (Ray tasks, or calls in this process for a small corpus), and no
process holds anything per document of the whole corpus; the driver holds per-file numbers only:

1. **map**, one task per work shard: its exact keys (digest halves, doc number, record offset) and its
   LSH band keys, each written to the shuffle (`pipeline.dedup.shuffle`) by partition.
2. **exact reduce**, one task per digest partition: groups of equal digests; writes the members of every
   group of two or more (doc, survivor, survivor's offset), sorted by doc.
3. **near reduce**, one task per band-key partition: candidate edges band by band, verified on the
   signatures (memory-mapped), shrunk to a spanning forest, written to disk.
4. **near components**, one task: merges the forests, labels clusters, picks survivors. It holds one edge
   and a few numbers per *clustered* document (a few percent of a corpus), not per document.
5. **decide**, one task per work shard: that file's drop reason and cluster id per document
   (`<work>/dedup.npz`, what the final-shard writers read) and its rows of the dropped listing.

The driver then streams the listing parts into `dedup/dropped.parquet`, one row group per file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.atomic import atomic_path
from common.errors import GLMCorpusError
from common.memory import releasing_map
from common.progress import Progress
from pipeline.dedup import shuffle
from pipeline.dedup.cluster import (
    ConcatenatedSignatures,
    band_keys,
    candidate_edges,
    choose_survivors,
    components,
    equal_rows,
    merge_forests,
    spanning_forest,
    unique_edges,
    verify_edges,
)
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.exact import DROP_REASON as EXACT_REASON
from pipeline.dedup.lsh import banding

NEAR_REASON = "duplicate_near"
LISTING = "dropped.parquet"
DECISIONS = "dedup.npz"
"""Per work shard: `reason` (uint8, REASONS) and `cluster` (int64, -1 outside any cluster) per document."""
REASONS = ("", EXACT_REASON, NEAR_REASON)
"""Drop reason codes as stored in DECISIONS: 0 kept, 1 exact duplicate, 2 near duplicate."""
EXACT_ENTRY_BYTES = 32
NEAR_ENTRY_BYTES = 12
LISTING_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("cluster_id", pa.int64()),
    ("survivor_doc_id", pa.string()), ("survivor_source", pa.string()), ("similarity", pa.float32()),
])
_EXACT_COLUMNS = {"hi": np.uint64, "lo": np.uint64, "doc": np.uint64, "offset": np.int64}
_NEAR_COLUMNS = {"keys": np.uint64, "docs": np.uint32}
_MEMBER_COLUMNS = {"doc": np.uint64, "label": np.uint64, "survivor": np.uint64, "survivor_offset": np.int64,
                   "dropped": np.uint8, "similarity": np.float32}

MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]


def ray_map(workers: int) -> MapFn:
    """A `map` whose calls run as Ray tasks, at most 2 per worker in flight; results in input order."""
    from pipeline.ray_runtime import ensure_ray

    ray = ensure_ray(workers)
    apply = ray.remote(num_cpus=1)(_apply)
    window = 2 * max(1, workers)

    def mapper(function: Callable[[Any], Any], items: Iterable[Any]) -> Iterable[Any]:
        function_ref = ray.put(function)
        pending: list[Any] = []
        for item in items:
            pending.append(apply.remote(function_ref, item))
            if len(pending) >= window:
                yield ray.get(pending.pop(0))
        while pending:
            yield ray.get(pending.pop(0))

    return mapper


def _apply(function: Callable[[Any], Any], item: Any) -> Any:
    return function(item)


@dataclasses.dataclass(frozen=True)
class DedupPlan:
    """What every task needs: where the work shards and the shuffle are, and the numbering (per file)."""

    work_dirs: tuple[str, ...]
    sources: tuple[str, ...]
    starts: np.ndarray  # int64 [files + 1]: first global doc number of each work shard
    scratch: str
    exact: bool
    near: bool
    exact_partitions: int
    near_partitions: int
    bands: int
    rows: int
    num_perm: int
    threshold: float
    verify: bool
    doc_prefixes: tuple[str, ...] = ()
    """Per file, what its doc ids start with (`source:input_file:`); a doc id is the prefix + offset."""

    @property
    def files(self) -> int:
        return len(self.work_dirs)

    def rows_of(self, i: int) -> int:
        return int(self.starts[i + 1] - self.starts[i])

    def file_of(self, docs: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, np.asarray(docs, dtype=np.int64), side="right") - 1

    def signatures(self) -> ConcatenatedSignatures:
        return ConcatenatedSignatures([Path(w) / "signatures.npy" for w in self.work_dirs],
                                      sizes=np.diff(self.starts), num_perm=self.num_perm)

    def directory(self, name: str) -> Path:
        return Path(self.scratch) / name


def deduplicate_work_shards(
    config: DedupConfig,
    work_dirs: Sequence[Path],
    sources: Sequence[str],
    out: Path,
    workers: int = 1,
    progress: bool = True,
    map_fn: MapFn | None = None,
) -> dict[str, Any]:
    """Decide which documents of the work shards survive; write each shard's decisions
    (`<work>/dedup.npz`, read back with `read_decisions`) and the listing of dropped documents; return
    the summary for the manifest."""
    counts = np.array([pq.read_metadata(Path(w) / "docs.provenance.parquet").num_rows for w in work_dirs],
                      dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(starts[-1])
    distributed = workers > 1 and n >= config.distributed_min_docs
    mapper = map_fn or (ray_map(workers) if distributed else releasing_map)
    params = banding(config.threshold, config.num_perm, config.bands or None, config.rows or None,
                     config.false_positive_weight, config.false_negative_weight)
    budget = max(1, config.partition_mb) << 20
    scratch = Path(out) / ".shuffle"
    shutil.rmtree(scratch, ignore_errors=True)
    plan = DedupPlan(
        work_dirs=tuple(str(w) for w in work_dirs), sources=tuple(sources), starts=starts, scratch=str(scratch),
        exact=config.exact and n > 0, near=config.near and n > 0,
        exact_partitions=max(config.partitions, math.ceil(n * EXACT_ENTRY_BYTES / budget)),
        near_partitions=max(config.partitions, math.ceil(n * params.bands * NEAR_ENTRY_BYTES / budget)),
        bands=params.bands, rows=params.rows, num_perm=config.num_perm, threshold=config.threshold,
        verify=config.verify,
    )
    summary: dict[str, Any] = {"enabled": True, "docs": n,
                               "partitions": {"exact": plan.exact_partitions, "near": plan.near_partitions}}
    files = range(plan.files)
    with Progress("dedup", total=2 * plan.files, unit="file", enabled=progress) as bar:
        prefixes = []
        for result in mapper(functools.partial(map_shard, plan), files):
            prefixes.append(result)
            bar.update(1)
        plan = dataclasses.replace(plan, doc_prefixes=tuple(prefixes))
        if plan.exact:
            summary["exact_dropped"] = sum(mapper(functools.partial(reduce_exact, plan),
                                                  range(plan.exact_partitions)))
        if plan.near:
            totals: Counter[str] = Counter()
            for result in mapper(functools.partial(reduce_near, plan), range(plan.near_partitions)):
                totals.update(result)
            near = next(iter(mapper(near_components, [plan])))
            summary["near"] = {"docs": n, "threshold": params.threshold, "num_perm": params.num_perm,
                               "bands": params.bands, "rows": params.rows, "partitions": plan.near_partitions,
                               **near, **dict(totals)}
        dropped_by_source: dict[str, Counter[str]] = {}
        cross: Counter[str] = Counter()
        near_dropped = 0
        for i, result in enumerate(mapper(functools.partial(decide_file, plan), files)):
            bar.update(1)
            if result["dropped"]:
                dropped_by_source.setdefault(plan.sources[i], Counter()).update(result["dropped"])
            cross.update(result["cross_source"])
            near_dropped += result["dropped"].get(NEAR_REASON, 0)
    if plan.near:
        summary["near_dropped"] = near_dropped
    summary["cross_source"] = dict(sorted(cross.items()))
    summary["dropped_by_source"] = {name: dict(sorted(c.items())) for name, c in sorted(dropped_by_source.items())}
    summary["listing"] = str(Path(out) / LISTING)
    _write_listing(plan, Path(out) / LISTING)
    shutil.rmtree(scratch, ignore_errors=True)
    return summary


def read_decisions(work_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(reason codes uint8, cluster ids int64) of one work shard's documents, as `deduplicate_work_shards`
    wrote them."""
    with np.load(Path(work_dir) / DECISIONS) as data:
        return data["reason"], data["cluster"]


# ---------------------------------------------------------------------------------------------------
# The tasks (module functions of a frozen plan and an index, so Ray pickles them by reference)


def _digest_halves(column: pa.ChunkedArray) -> np.ndarray:
    """uint64 [n, 2] (high, low) halves of a fixed_size_binary(16) column, without Python bytes objects."""
    array = column.combine_chunks()
    raw = np.frombuffer(array.buffers()[1], dtype=">u8", count=2 * len(array), offset=array.offset * 16)
    return raw.astype(np.uint64).reshape(-1, 2)


def map_shard(plan: DedupPlan, i: int) -> str:
    """Map task: write work shard i's exact keys and band keys to the shuffle; return its doc id prefix."""
    work = Path(plan.work_dirs[i])
    table = pq.read_table(work / "docs.provenance.parquet", columns=["doc_id", "text_hash", "offset"])
    n = table.num_rows
    prefix = ""
    if n:
        first = table.column("doc_id")[0].as_py()
        prefix = first[: len(first) - len(str(table.column("offset")[0].as_py()))]
        if not pc.all(pc.starts_with(table.column("doc_id"), prefix)).as_py():
            raise GLMCorpusError(f"{work}: document ids of one work shard must share the prefix {prefix!r}")
    docs = np.arange(plan.starts[i], plan.starts[i + 1], dtype=np.uint64)
    if plan.exact:
        keys = _digest_halves(table.column("text_hash"))
        order, offsets = shuffle.partition_order(keys[:, 0] % np.uint64(plan.exact_partitions), plan.exact_partitions)
        shuffle.write_runs(plan.directory("exact"), i, {
            "hi": keys[order, 0], "lo": keys[order, 1], "doc": docs[order],
            "offset": table.column("offset").to_numpy().astype(np.int64)[order],
        }, offsets)
    if plan.near:
        signatures = np.load(work / "signatures.npy", mmap_mode="r")
        flat = np.ascontiguousarray(band_keys(np.asarray(signatures), plan.bands, plan.rows).T).ravel()
        order, offsets = shuffle.partition_order(flat % np.uint64(plan.near_partitions), plan.near_partitions,
                                                 groups=plan.bands)
        shuffle.write_runs(plan.directory("near"), i, {
            "keys": flat[order], "docs": (order % max(n, 1)).astype(np.uint32),
        }, offsets)
    return prefix


def reduce_exact(plan: DedupPlan, p: int) -> int:
    """Exact reduce task: the groups of equal digests in partition p; returns the number of drops."""
    parts = [shuffle.read_partition(plan.directory("exact"), i, p, _EXACT_COLUMNS)[0] for i in range(plan.files)]
    hi, lo, doc, offset = (np.concatenate([part[c] for part in parts]) for c in _EXACT_COLUMNS)
    del parts
    order = np.lexsort((doc, lo, hi))
    hi, lo, doc, offset = hi[order], lo[order], doc[order], offset[order]
    first = np.ones(len(doc), dtype=bool)
    first[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    group = np.cumsum(first) - 1
    size = np.bincount(group)
    member = size[group] >= 2
    head = np.flatnonzero(first)[group]  # position of each entry's survivor (its group's smallest doc)
    members = np.flatnonzero(member)
    survivor = doc[head[members]]
    _write_members(plan.directory("exact-out"), p, doc[members], survivor, survivor, offset[head[members]],
                   ~first[members], np.ones(len(members), np.float32))
    return int((~first).sum())


def reduce_near(plan: DedupPlan, p: int) -> dict[str, int]:
    """Near reduce task: candidate edges of partition p band by band, verified; saves its spanning forest."""
    per_band: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(plan.bands)]
    for i in range(plan.files):
        columns, offsets = shuffle.read_partition(plan.directory("near"), i, p, _NEAR_COLUMNS)
        first = np.uint64(plan.starts[i])
        for j in range(plan.bands):
            lo, hi = int(offsets[j]), int(offsets[j + 1])
            if hi > lo:
                per_band[j].append((columns["docs"][lo:hi].astype(np.uint64) + first, columns["keys"][lo:hi]))
    edges, entries = [], 0
    for j in range(plan.bands):
        if per_band[j]:
            docs = np.concatenate([d for d, _ in per_band[j]])
            keys = np.concatenate([k for _, k in per_band[j]])
            entries += len(keys)
            edges.append(candidate_edges(docs, keys))
        per_band[j] = []
    candidates = unique_edges(np.concatenate(edges)) if edges else np.zeros((0, 2), np.uint64)
    verified = candidates
    if plan.verify and len(candidates):
        verified, _ = verify_edges(candidates, plan.signatures(), plan.threshold)
    forest = spanning_forest(verified)
    path = plan.directory("forest") / f"{p:08d}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, forest.astype(np.uint64))
    return {"band_entries": entries, "candidate_edges": len(candidates), "verified_edges": len(verified),
            "partition_forest_edges": len(forest)}


def near_components(plan: DedupPlan) -> dict[str, int]:
    """The one task that sees every clustered document: merge forests, label clusters, choose survivors."""
    forest = np.zeros((0, 2), dtype=np.uint64)
    for p in range(plan.near_partitions):
        forest = merge_forests([forest, np.load(plan.directory("forest") / f"{p:08d}.npy")])
    nodes, labels = components(forest)
    del forest
    quality = np.zeros(len(nodes), np.float64)
    length = np.zeros(len(nodes), np.int64)
    offset = np.zeros(len(nodes), np.int64)
    which = plan.file_of(nodes)
    bounds = np.searchsorted(which, np.arange(plan.files + 1))
    for f in np.unique(which):
        sel = slice(int(bounds[f]), int(bounds[f + 1]))  # nodes are sorted, so a file's nodes are a run
        rows = (nodes[sel] - np.uint64(plan.starts[f])).astype(np.int64)
        table = pq.read_table(Path(plan.work_dirs[f]) / "docs.provenance.parquet",
                              columns=["quality", "text_chars", "offset"])
        quality[sel] = table.column("quality").to_numpy().astype(np.float64)[rows]
        length[sel] = table.column("text_chars").to_numpy()[rows]
        offset[sel] = table.column("offset").to_numpy()[rows]
    keep, survivor = choose_survivors(labels, quality, length, nodes)
    similarity = np.ones(len(nodes), dtype=np.float32)
    dropped = np.flatnonzero(~keep)
    source = plan.signatures()
    for start in range(0, len(dropped), 8192):
        part = dropped[start : start + 8192]
        equal = equal_rows(source.take(nodes[part]), source.take(survivor[part]))
        similarity[part] = equal / plan.num_perm
    _write_members(plan.directory("near-out"), 0, nodes, labels, survivor,
                   offset[np.searchsorted(nodes, survivor)], ~keep, similarity)
    return {"clusters": int(len(np.unique(labels))), "clustered_docs": int(len(nodes)), "dropped": int(len(dropped))}


def _write_members(directory: Path, index: int, doc: np.ndarray, label: np.ndarray, survivor: np.ndarray,
                   survivor_offset: np.ndarray, dropped: np.ndarray, similarity: np.ndarray) -> None:
    """Save cluster members sorted by doc (a one-partition run file), for `decide_file`'s range lookups."""
    order = np.argsort(doc, kind="stable")
    columns = {"doc": doc, "label": label, "survivor": survivor, "survivor_offset": survivor_offset,
               "dropped": dropped.astype(np.uint8), "similarity": similarity}
    shuffle.write_runs(directory, index, {name: np.asarray(values, dtype=_MEMBER_COLUMNS[name])[order]
                                          for name, values in columns.items()},
                       np.array([[0, len(doc)]], dtype=np.int64))


def _members_in(directory: Path, index: int, lo: int, hi: int) -> dict[str, np.ndarray]:
    """The members with lo <= doc < hi of one members file, found by binary search on a memory map."""
    path = shuffle.map_file(directory, index, "doc")
    if not path.stat().st_size:
        return {name: np.zeros(0, dtype) for name, dtype in _MEMBER_COLUMNS.items()}
    docs = np.memmap(path, dtype="<u8", mode="r")
    a, b = (int(x) for x in np.searchsorted(docs, [lo, hi]))
    del docs
    out = {}
    for name, dtype in _MEMBER_COLUMNS.items():
        dtype = np.dtype(dtype).newbyteorder("<")
        out[name] = np.fromfile(shuffle.map_file(directory, index, name), dtype=dtype, count=b - a,
                                offset=a * dtype.itemsize)
    return out


def decide_file(plan: DedupPlan, i: int) -> dict[str, Any]:
    """Decide task: work shard i's reason and cluster per document, and its rows of the dropped listing."""
    start, n = int(plan.starts[i]), plan.rows_of(i)
    reason = np.zeros(n, dtype=np.uint8)
    cluster = np.full(n, -1, dtype=np.int64)
    survivor = np.arange(start, start + n, dtype=np.int64)
    survivor_offset = np.full(n, -1, dtype=np.int64)
    similarity = np.ones(n, dtype=np.float32)
    sets = []
    if plan.exact:
        sets += [(plan.directory("exact-out"), p, 1) for p in range(plan.exact_partitions)]
    if plan.near:
        sets.append((plan.directory("near-out"), 0, 2))
    for directory, index, code in sets:
        members = _members_in(directory, index, start, start + n)
        rows = (members["doc"] - np.uint64(start)).astype(np.int64)
        cluster[rows] = members["label"].astype(np.int64)  # near labels, read last, override exact ones
        drop = members["dropped"].astype(bool) & (reason[rows] == 0)
        rows = rows[drop]
        reason[rows] = code
        survivor[rows] = members["survivor"][drop].astype(np.int64)
        survivor_offset[rows] = members["survivor_offset"][drop]
        similarity[rows] = members["similarity"][drop]
    work = Path(plan.work_dirs[i])
    with atomic_path(work / DECISIONS) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, reason=reason, cluster=cluster)

    dropped = np.flatnonzero(reason)
    result: dict[str, Any] = {"dropped": {}, "cross_source": {}}
    if not len(dropped):
        return result
    survivor_file = plan.file_of(survivor[dropped])
    survivor_source = [plan.sources[f] for f in survivor_file]
    names = [REASONS[r] for r in reason[dropped]]
    doc_ids = pq.read_table(work / "docs.provenance.parquet", columns=["doc_id"]).column("doc_id").take(dropped)
    listing = pa.table({
        "doc_id": doc_ids,
        "source": [plan.sources[i]] * len(dropped),
        "reason": names,
        "cluster_id": cluster[dropped],
        "survivor_doc_id": [f"{plan.doc_prefixes[f]}{o}" for f, o in zip(survivor_file, survivor_offset[dropped])],
        "survivor_source": survivor_source,
        "similarity": similarity[dropped],
    }, schema=LISTING_SCHEMA)
    path = plan.directory("listing") / f"{i:08d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(listing, tmp, compression="zstd")
    result["dropped"] = dict(Counter(names))
    result["cross_source"] = dict(Counter(f"{plan.sources[i]} duplicates {s}" for s in survivor_source
                                          if s != plan.sources[i]))
    return result


def _write_listing(plan: DedupPlan, path: Path) -> None:
    """Concatenate the decide tasks' listing parts, in doc order, one row group per part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, LISTING_SCHEMA, compression="zstd")
        try:
            for i in range(plan.files):
                part = plan.directory("listing") / f"{i:08d}.parquet"
                if part.exists():
                    writer.write_table(pq.read_table(part, schema=LISTING_SCHEMA))
        finally:
            writer.close()
