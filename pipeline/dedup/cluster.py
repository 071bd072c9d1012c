"""Near-duplicate clustering over MinHash signatures, partitioned so that memory per process is bounded.

The flow (every step is a pure function of numpy arrays, so the lead's Ray tasks can run any of them):

1. `band_keys(signatures, bands, rows)`: one uint64 key per (document, band): a hash of the band's
   rows, salted with the band number so equal rows in different bands never meet.
2. `scatter_band_keys(keys, first_doc, partitions)`: the shuffle. Entry (doc, band) goes to partition
   `key % partitions`, so a bucket (all documents with one key) lands whole in one partition. Blocks are
   grouped by band, and doc numbers are stored as uint32 offsets from the chunk's first document.
3. `reduce_partition(blocks, ...)`, per partition and band by band: `candidate_edges` turns every bucket
   of k >= 2 documents into a star of k - 1 edges (smallest doc id, other doc), never k^2 pairs;
   `verify_edges` keeps the edges whose estimated Jaccard (equal signature rows / num_perm) reaches the
   threshold; `spanning_forest` shrinks them to at most one edge per clustered document.
4. Merge: `merge_forests` folds the partitions' forests into one as they arrive (a spanning forest of
   a union of graphs has the components of the union, so partitioning changes nothing), then
   `components` labels every clustered document with the smallest doc index of its component.
5. `choose_survivors`: in each cluster keep the document with the highest quality, then the longest text,
   then the smallest doc index (the earliest in the deterministic input order).

The kept set is therefore a function of the signatures alone, whatever the number of partitions and
whatever order a parallel `map_fn` runs the tasks in. `run_near_dedup` is the in-process reference driver.

Memory (see docs/DEDUP.md for measurements): the scatter output is 12 bytes per (document, band) in
total, spread over the partitions (in memory, or on disk with `spill_dir`); a reducer holds one band of
one partition at a time (about 32 bytes per entry while sorting), plus edges of clustered documents only;
the merge holds at most one edge per clustered document. Signatures are read through a
`SignatureSource` in chunks and by doc index, never gathered into one dict.

Known approximation: verification checks each document against the smallest id of its bucket only (the
star centre). Two documents similar to each other but not to the centre stay unlinked in that band; they
are usually linked through another band, where the centre differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from kernels.minhash import fmix64
from pipeline.dedup.lsh import BandingParams, banding

DROP_REASON = "duplicate_near"
"""The drop reason of documents removed as near duplicates (a policy drop, not bad input)."""

MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]

_ROW_MULTIPLIER_SEED = 0x5EED_BA4D
_LOW32 = np.uint64(0xFFFFFFFF)
_HIGH32 = np.uint64(0xFFFFFFFF00000000)
_VERIFY_CHUNK = 8192  # edges verified per step: 2 * 8192 signatures in memory at once


# ---------------------------------------------------------------------------------------------------
# Signature access


class SignatureSource(Protocol):
    """Read access to a [n_docs, num_perm] signature matrix that need not be in memory."""

    n_docs: int
    num_perm: int

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Signatures of docs start..stop-1."""

    def take(self, doc_ids: np.ndarray) -> np.ndarray:
        """Signatures of the given doc indices, in that order."""


class ArraySignatures:
    """A `SignatureSource` over one array (in memory or a memmap)."""

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim != 2:
            raise ValueError(f"signatures must be a 2-D [n_docs, num_perm] array, got shape {array.shape}")
        self.array = array
        self.n_docs, self.num_perm = array.shape

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop])

    def take(self, doc_ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[np.asarray(doc_ids, dtype=np.int64)])


class ConcatenatedSignatures:
    """A `SignatureSource` over several `.npy` files (e.g. one per work shard), in order, memory-mapped.

    Files are opened when first read (a task that verifies a few edges touches a few files), and
    `sizes`/`num_perm`, when the caller knows them, spare opening every file up front. Pickles as its
    file paths, so a Ray task reopens the files instead of receiving their contents.
    """

    def __init__(
        self, paths: Sequence[str | os.PathLike[str]], sizes: Sequence[int] | None = None, num_perm: int | None = None
    ) -> None:
        self.paths = [str(p) for p in paths]
        self._arrays: dict[int, np.ndarray] = {}
        if sizes is None or num_perm is None:
            sizes = []
            for f in range(len(self.paths)):
                array = self._array(f)
                sizes.append(len(array))
                num_perm = array.shape[1] if array.ndim == 2 else num_perm
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.n_docs = int(self.offsets[-1])
        self.num_perm = int(num_perm or 0)

    def _array(self, f: int) -> np.ndarray:
        if f not in self._arrays:
            self._arrays[f] = np.load(self.paths[f], mmap_mode="r")
        return self._arrays[f]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.take(np.arange(start, stop, dtype=np.int64))

    def take(self, doc_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(doc_ids, dtype=np.int64)
        which = np.searchsorted(self.offsets, ids, side="right") - 1
        files = np.unique(which)
        dtype = self._array(int(files[0])).dtype if len(files) else np.uint32
        out = np.empty((len(ids), self.num_perm), dtype=dtype)
        for f in files:
            sel = which == f
            out[sel] = self._array(int(f))[ids[sel] - self.offsets[f]]
        return out


def as_signature_source(signatures: np.ndarray | SignatureSource) -> SignatureSource:
    return ArraySignatures(signatures) if isinstance(signatures, np.ndarray) else signatures


# ---------------------------------------------------------------------------------------------------
# Band keys and the shuffle


@functools.lru_cache(maxsize=8)
def _row_multipliers(n_rows: int) -> np.ndarray:
    rng = np.random.RandomState(_ROW_MULTIPLIER_SEED)
    return rng.randint(0, 1 << 63, n_rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 [n_docs, bands]: key of band j = fmix64(sum_t row_t * K_t + j * SALT), rows j*r .. j*r+r-1.

    The odd multipliers K_t are fixed, so keys are the same in every process and every run. Equal
    bands give equal keys; different bands collide with probability about 2**-64.
    """
    n, num_perm = signatures.shape
    if bands * rows > num_perm:
        raise ValueError(f"bands x rows = {bands} x {rows} exceeds the {num_perm} signature rows")
    multipliers = _row_multipliers(bands * rows).reshape(bands, rows)
    keys = np.empty((n, bands), dtype=np.uint64)
    for j in range(bands):  # one band at a time: the uint64 temporary is [n, rows], not [n, bands * rows]
        values = signatures[:, j * rows : (j + 1) * rows].astype(np.uint64)
        values *= multipliers[j]
        values.sum(axis=1, dtype=np.uint64, out=keys[:, j])
    keys += np.arange(1, bands + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return fmix64(keys)


@dataclasses.dataclass
class BandBlock:
    """The entries of one chunk of documents that fall in one partition, grouped by band.

    Entries of band j are `keys[band_offsets[j]:band_offsets[j+1]]` for documents
    `first_doc + doc_offsets[...]`. Either held in memory or saved to `path`.keys / `path`.docs.
    """

    first_doc: int
    band_offsets: np.ndarray  # int64 [bands + 1]
    keys: np.ndarray | None = None  # uint64
    doc_offsets: np.ndarray | None = None  # uint32
    path: str | None = None

    @property
    def bands(self) -> int:
        return len(self.band_offsets) - 1

    def __len__(self) -> int:
        return int(self.band_offsets[-1])

    def band(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(doc indices uint64, keys uint64) of band j."""
        lo, hi = int(self.band_offsets[j]), int(self.band_offsets[j + 1])
        if self.path is not None:  # read just this band's slice of the raw files
            keys_j = np.fromfile(self.path + ".keys", dtype="<u8", count=hi - lo, offset=lo * 8)
            docs_j = np.fromfile(self.path + ".docs", dtype="<u4", count=hi - lo, offset=lo * 4)
        else:
            keys_j, docs_j = self.keys[lo:hi], self.doc_offsets[lo:hi]
        return docs_j.astype(np.uint64) + np.uint64(self.first_doc), keys_j.astype(np.uint64, copy=False)

    def spill(self, path: str) -> BandBlock:
        """Save to `path`.keys and `path`.docs (raw little-endian uint64 / uint32) and return the on-disk block."""
        self.keys.astype("<u8", copy=False).tofile(path + ".keys")
        self.doc_offsets.astype("<u4", copy=False).tofile(path + ".docs")
        return BandBlock(self.first_doc, self.band_offsets, path=path)


def scatter_band_keys(keys: np.ndarray, first_doc: int, partitions: int) -> list[BandBlock]:
    """Split the [n, bands] keys of docs first_doc.. into one `BandBlock` per partition (key % partitions)."""
    n, bands = keys.shape
    if n >= 1 << 32:
        raise ValueError("a chunk of band keys must hold fewer than 2**32 documents")
    flat = np.ascontiguousarray(keys.T).ravel()  # band-major: entry = band * n + doc
    part = (flat % np.uint64(partitions)).astype(np.uint16 if partitions <= 1 << 16 else np.uint32)
    order = np.argsort(part, kind="stable")  # by partition, then band, then doc (a radix sort)
    counts = np.stack(
        [np.bincount(part[j * n : (j + 1) * n], minlength=partitions) for j in range(bands)], axis=1
    )
    blocks = []
    start = 0
    for p in range(partitions):
        size = int(counts[p].sum())
        idx = order[start : start + size]
        start += size
        band_offsets = np.zeros(bands + 1, dtype=np.int64)
        np.cumsum(counts[p], out=band_offsets[1:])
        blocks.append(BandBlock(first_doc, band_offsets, flat[idx], (idx % n).astype(np.uint32)))
    return blocks


# ---------------------------------------------------------------------------------------------------
# Candidate edges, verification, components


def candidate_edges(doc_index: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Star edges uint64 [e, 2] (centre, other) of every bucket of >= 2 docs sharing a key; centre < other.

    The centre is the smallest doc index of the bucket. Memory: one uint64 per entry besides the
    inputs: entries are sorted as (high 32 bits of the key | entry number), a plain SIMD sort; only the
    few entries whose high halves repeat are then grouped by their full key.
    """
    doc_index = np.asarray(doc_index, dtype=np.uint64)
    keys = np.asarray(keys, dtype=np.uint64)
    m = len(keys)
    if m < 2:
        return np.zeros((0, 2), dtype=np.uint64)
    if m >= 1 << 32:
        raise ValueError("candidate_edges takes fewer than 2**32 entries at a time; use more partitions")
    packed = keys & _HIGH32
    packed |= np.arange(m, dtype=np.uint64)
    packed.sort()
    high = packed.view(np.uint32)[1::2] if sys.byteorder == "little" else (packed >> np.uint64(32))
    repeat = np.flatnonzero(high[1:] == high[:-1])
    if not len(repeat):
        return np.zeros((0, 2), dtype=np.uint64)
    members = np.union1d(repeat, repeat + 1)
    entry = (packed[members] & _LOW32).astype(np.int64)
    del packed, high
    full = keys[entry]
    docs = doc_index[entry]
    order = np.lexsort((docs, full))
    full, docs = full[order], docs[order]
    run_start = np.ones(len(full), dtype=bool)
    run_start[1:] = full[1:] != full[:-1]
    starts = np.flatnonzero(run_start)
    centre = docs[starts][np.cumsum(run_start) - 1]
    mask = ~run_start & (centre != docs)  # every entry but the first (smallest doc) of its run
    return np.stack([centre[mask], docs[mask]], axis=1)


def unique_edges(edges: np.ndarray) -> np.ndarray:
    """Edges sorted and without repeats (the same pair often collides in several bands)."""
    if len(edges) < 2:
        return edges
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    edges = edges[order]
    keep = np.ones(len(edges), dtype=bool)
    keep[1:] = (edges[1:] != edges[:-1]).any(axis=1)
    return edges[keep]


def equal_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of equal signature rows per pair of rows of a and b."""
    return np.count_nonzero(a == b, axis=1)


def min_equal_rows(threshold: float, num_perm: int) -> int:
    """The smallest count of equal rows whose estimate count / num_perm reaches `threshold`."""
    return max(0, math.ceil(threshold * num_perm - 1e-9))


def verify_edges(
    edges: np.ndarray, source: SignatureSource, threshold: float, chunk: int = _VERIFY_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """The edges whose estimated Jaccard (equal rows / num_perm) is >= threshold, and those estimates."""
    need = min_equal_rows(threshold, source.num_perm)
    keep = np.zeros(len(edges), dtype=bool)
    similarity = np.zeros(len(edges), dtype=np.float32)
    for start in range(0, len(edges), chunk):
        part = edges[start : start + chunk]
        equal = equal_rows(source.take(part[:, 0]), source.take(part[:, 1]))
        keep[start : start + chunk] = equal >= need
        similarity[start : start + chunk] = equal / source.num_perm
    return edges[keep], similarity[keep]


def _union_find(left: np.ndarray, right: np.ndarray, n: int) -> np.ndarray:
    """Roots (the smallest node of each component) of nodes 0..n-1 joined by the edges (left, right).

    Vectorized union-find: every round hooks the larger root of each still-split edge under the smallest
    root it is offered (parents only ever decrease, so no cycles), then compresses every path fully.
    Each round removes at least one root per split component, and in practice a handful of rounds suffice.
    """
    parent = np.arange(n, dtype=np.int64)
    while len(left):
        root_l, root_r = parent[left], parent[right]
        split = root_l != root_r
        if not split.any():
            break
        left, right, root_l, root_r = left[split], right[split], root_l[split], root_r[split]
        np.minimum.at(parent, np.maximum(root_l, root_r), np.minimum(root_l, root_r))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def components(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, labels): every doc index that appears in `edges`, sorted, and its component's smallest doc.

    Works on the docs that appear in edges only (renumbered 0..k-1), so memory follows the number of
    clustered documents, not the corpus size.
    """
    edges = np.asarray(edges, dtype=np.uint64).reshape(-1, 2)
    if not len(edges):
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty
    nodes = np.unique(edges)
    local = np.searchsorted(nodes, edges)
    roots = _union_find(local[:, 0], local[:, 1], len(nodes))
    return nodes, nodes[roots]


def connected_components(edges: np.ndarray, n: int) -> np.ndarray:
    """Dense labels uint64 [n]: the smallest doc index of each doc's component (itself when alone)."""
    labels = np.arange(n, dtype=np.uint64)
    nodes, roots = components(edges)
    labels[nodes.astype(np.int64)] = roots
    return labels


def spanning_forest(edges: np.ndarray) -> np.ndarray:
    """Edges (root, node) with the same components as `edges`, one per non-root node."""
    nodes, labels = components(edges)
    keep = nodes != labels
    return np.stack([labels[keep], nodes[keep]], axis=1)


def merge_forests(forests: Sequence[np.ndarray]) -> np.ndarray:
    """One spanning forest of the union of several (the merge step; associative, so it can be a tree)."""
    forests = [f for f in forests if len(f)]
    if not forests:
        return np.zeros((0, 2), dtype=np.uint64)
    return forests[0] if len(forests) == 1 else spanning_forest(np.concatenate(forests))


# ---------------------------------------------------------------------------------------------------
# Survivors


def choose_survivors(
    labels: np.ndarray, quality: np.ndarray, length: np.ndarray, doc_order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(keep_mask, survivor_of) for docs with cluster `labels`: one survivor per label.

    The survivor of a cluster is the doc with the highest quality, then the longest text, then the
    smallest `doc_order` (the earliest in the deterministic input order); NaN quality counts as lowest.
    `survivor_of[i]` is the `doc_order` value of doc i's survivor.
    """
    labels = np.asarray(labels)
    quality = np.nan_to_num(np.asarray(quality, dtype=np.float64), nan=-np.inf)
    length = np.asarray(length, dtype=np.int64)
    doc_order = np.asarray(doc_order)
    if not len(labels):
        return np.zeros(0, dtype=bool), doc_order.copy()
    order = np.lexsort((doc_order, -length, -quality, labels))
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    keep = np.zeros(len(labels), dtype=bool)
    keep[order[first]] = True
    survivor_sorted = doc_order[order][first][np.cumsum(first) - 1]
    survivor_of = np.empty_like(doc_order)
    survivor_of[order] = survivor_sorted
    return keep, survivor_of


# ---------------------------------------------------------------------------------------------------
# The reference driver


@dataclasses.dataclass
class PartitionResult:
    """What one partition's reducer returns: its spanning forest and counts."""

    forest: np.ndarray
    entries: int
    candidate_edges: int
    verified_edges: int


def scatter_chunk(
    source: SignatureSource,
    bands: int,
    rows: int,
    partitions: int,
    spill_dir: str | None,
    chunk: tuple[int, int],
) -> list[BandBlock]:
    """Map task: band keys of docs chunk[0]..chunk[1]-1, split into partitions (spilled when asked)."""
    start, stop = chunk
    blocks = scatter_band_keys(band_keys(source.rows(start, stop), bands, rows), start, partitions)
    if spill_dir is None:
        return blocks
    return [
        block.spill(os.path.join(spill_dir, f"chunk{start:012d}-part{p:05d}"))
        for p, block in enumerate(blocks)
    ]


def reduce_partition(
    source: SignatureSource | None, threshold: float, blocks: Sequence[BandBlock]
) -> PartitionResult:
    """Reduce task: candidate edges of one partition band by band, verified when `source` is given."""
    if not blocks:
        return PartitionResult(np.zeros((0, 2), np.uint64), 0, 0, 0)
    edges = []
    entries = 0
    for j in range(blocks[0].bands):
        parts = [block.band(j) for block in blocks]
        docs = np.concatenate([p[0] for p in parts])
        keys = np.concatenate([p[1] for p in parts])
        del parts
        entries += len(keys)
        edges.append(candidate_edges(docs, keys))
        del docs, keys
    candidates = unique_edges(np.concatenate(edges))
    del edges
    verified = candidates
    if source is not None and len(candidates):
        verified, _ = verify_edges(candidates, source, threshold)
    return PartitionResult(spanning_forest(verified), entries, len(candidates), len(verified))


@dataclasses.dataclass
class NearDedupResult:
    """Dropped near-duplicates as arrays (sorted by doc index), and what the run did.

    `dropped_doc[i]` was dropped as a near duplicate of `survivor[i]` in cluster `cluster_id[i]` (the
    smallest doc index of the cluster), with estimated Jaccard `similarity[i]` to the survivor.
    `clustered_doc` / `clustered_label` list every doc that is in a cluster of two or more, kept or not.
    """

    n_docs: int
    params: BandingParams
    partitions: int
    dropped_doc: np.ndarray
    cluster_id: np.ndarray
    survivor: np.ndarray
    similarity: np.ndarray
    clustered_doc: np.ndarray
    clustered_label: np.ndarray
    stats: dict[str, int]

    def keep_mask(self) -> np.ndarray:
        keep = np.ones(self.n_docs, dtype=bool)
        keep[self.dropped_doc.astype(np.int64)] = False
        return keep

    def cluster_of(self) -> np.ndarray:
        """int64 [n_docs]: cluster id of every doc, -1 for docs in no cluster."""
        out = np.full(self.n_docs, -1, dtype=np.int64)
        out[self.clustered_doc.astype(np.int64)] = self.clustered_label.astype(np.int64)
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "docs": self.n_docs,
            "threshold": self.params.threshold,
            "num_perm": self.params.num_perm,
            "bands": self.params.bands,
            "rows": self.params.rows,
            "partitions": self.partitions,
            "clusters": int(len(np.unique(self.clustered_label))),
            "clustered_docs": int(len(self.clustered_doc)),
            "dropped": int(len(self.dropped_doc)),
            **self.stats,
        }


def _gather(
    values: np.ndarray | Callable[[np.ndarray], np.ndarray] | None, ids: np.ndarray, default: float
) -> np.ndarray:
    if values is None:
        return np.full(len(ids), default)
    if callable(values):
        return np.asarray(values(ids))
    return np.asarray(values[ids.astype(np.int64)])


def run_near_dedup(
    signatures: np.ndarray | SignatureSource,
    threshold: float = 0.8,
    *,
    bands: int | None = None,
    rows: int | None = None,
    partitions: int = 1,
    map_fn: MapFn = map,
    verify: bool = True,
    quality: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
    length: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
    chunk_docs: int = 1 << 15,
    spill_dir: str | os.PathLike[str] | None = None,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> NearDedupResult:
    """Near-duplicate clusters and survivors of docs 0..n-1 (doc index = position in the signatures).

    `map_fn(function, items)` runs the map tasks (chunks of docs) and then the reduce tasks (partitions);
    give it a Ray-backed map to distribute them. `quality` and `length` are arrays (or functions of an
    index array) for the survivor rule; `spill_dir` keeps the shuffle on disk instead of in memory.
    """
    source = as_signature_source(signatures)
    params = banding(threshold, source.num_perm, bands, rows, false_positive_weight, false_negative_weight)
    n = source.n_docs
    chunks = [(start, min(start + chunk_docs, n)) for start in range(0, n, chunk_docs)]
    spill = tempfile.TemporaryDirectory(dir=spill_dir) if spill_dir is not None else contextlib.nullcontext()
    with spill as tmp:
        scatter = functools.partial(scatter_chunk, source, params.bands, params.rows, partitions, tmp)
        per_chunk = list(map_fn(scatter, chunks))
        per_partition = [[blocks[p] for blocks in per_chunk] for p in range(partitions)]
        del per_chunk
        reduce = functools.partial(reduce_partition, source if verify else None, threshold)
        forest = np.zeros((0, 2), dtype=np.uint64)
        counts = {"band_entries": 0, "candidate_edges": 0, "verified_edges": 0, "partition_forest_edges": 0}
        for result in map_fn(reduce, per_partition):  # fold each forest in as it arrives: memory stays
            forest = merge_forests([forest, result.forest])  # at one edge per clustered document
            counts["band_entries"] += result.entries
            counts["candidate_edges"] += result.candidate_edges
            counts["verified_edges"] += result.verified_edges
            counts["partition_forest_edges"] += len(result.forest)
        del per_partition
    nodes, labels = components(forest)
    keep, survivor = choose_survivors(labels, _gather(quality, nodes, 0.0), _gather(length, nodes, 0), nodes)
    dropped = nodes[~keep]
    survivors = survivor[~keep]
    similarity = np.zeros(len(dropped), dtype=np.float32)
    for start in range(0, len(dropped), _VERIFY_CHUNK):
        stop = start + _VERIFY_CHUNK
        equal = equal_rows(source.take(dropped[start:stop]), source.take(survivors[start:stop]))
        similarity[start:stop] = equal / source.num_perm
    return NearDedupResult(
        n, params, partitions, dropped, labels[~keep], survivors, similarity, nodes, labels, counts
    )


def dropped_listing(result: NearDedupResult) -> dict[str, np.ndarray]:
    """The dropped documents as columns (doc, cluster_id, survivor, similarity) for a Parquet listing."""
    return {
        "doc": result.dropped_doc,
        "cluster_id": result.cluster_id,
        "survivor": result.survivor,
        "similarity": result.similarity,
    }
