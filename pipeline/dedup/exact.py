"""Exact deduplication: xxh3-128 of the normalized text, global across every source.

The text hashed is `Document.text` after the pipeline's normalization step (so two records that differ
only in what normalization removes are duplicates), encoded as UTF-8; the digest is the same 16 bytes the
ingest work shards store as `text_hash`. Of every group of documents with one digest, the first in the
deterministic document order survives. That order is the global doc index: documents numbered by
(source order as given on the command line, input file path, record offset in the file) — see
`document_order_key`. With 2**128 digests, a false match needs ~2**64 documents.

Two forms: `ExactDedupStep`, a generator step for documents that arrive in that order in one process,
and `exact_duplicates`, the partitioned form over arrays of digests and doc indices (partition =
high 64 bits % P), which gives the same answer for any number of partitions and any task order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import xxhash

from pipeline.document import Document
from pipeline.steps import Step

DROP_REASON = "duplicate_exact"


def text_hash(text: str) -> bytes:
    """The 16-byte xxh3-128 digest of the UTF-8 text (big-endian, as xxhash's `digest()` gives it)."""
    return xxhash.xxh3_128_digest(text.encode("utf-8", "surrogatepass"))


def digests_to_keys(digests: Sequence[bytes] | np.ndarray) -> np.ndarray:
    """uint64 [n, 2] (high, low) halves of 16-byte digests, for sorting and partitioning with numpy."""
    if isinstance(digests, np.ndarray) and digests.dtype == np.uint64:
        return digests.reshape(-1, 2)
    raw = b"".join(digests) if not isinstance(digests, np.ndarray) else digests.tobytes()
    if len(raw) % 16:
        raise ValueError("digests must be 16 bytes each")
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 2)


def text_keys(texts: Iterable[str]) -> np.ndarray:
    """uint64 [n, 2] digest halves of the texts."""
    return digests_to_keys([text_hash(t) for t in texts])


def document_order_key(doc: Document, source_rank: dict[str, int]) -> tuple[int, str, int]:
    """The deterministic order of documents: (rank of the source, input file, offset in the file)."""
    return (source_rank.get(doc.source, len(source_rank)), doc.input_file, doc.offset)


@dataclasses.dataclass
class ExactDedupResult:
    """Exact duplicates as arrays sorted by doc index: `dropped_doc[i]` repeats `survivor[i]`'s text."""

    n_docs: int
    dropped_doc: np.ndarray
    survivor: np.ndarray

    def keep_mask(self) -> np.ndarray:
        keep = np.ones(self.n_docs, dtype=bool)
        keep[self.dropped_doc.astype(np.int64)] = False
        return keep


def first_occurrences(keys: np.ndarray, doc_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dropped docs, their survivors): every doc whose key repeats that of a smaller doc index."""
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 2)
    doc_index = np.asarray(doc_index, dtype=np.uint64)
    if len(keys) < 2:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty
    order = np.lexsort((doc_index, keys[:, 1], keys[:, 0]))
    sorted_keys = keys[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)
    docs = doc_index[order]
    survivor = docs[first][np.cumsum(first) - 1]
    return docs[~first], survivor[~first]


def _partition_duplicates(part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return first_occurrences(*part)


def exact_duplicates(
    keys: np.ndarray | Sequence[bytes],
    doc_index: np.ndarray | None = None,
    *,
    partitions: int = 1,
    map_fn: Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]] = map,
) -> ExactDedupResult:
    """Exact duplicates among docs with the given digests; the smallest doc index of each group survives.

    `doc_index` defaults to 0..n-1. Partition p handles the digests whose high half % partitions == p.
    """
    keys = digests_to_keys(keys)
    n = len(keys)
    doc_index = np.arange(n, dtype=np.uint64) if doc_index is None else np.asarray(doc_index, dtype=np.uint64)
    part = keys[:, 0] % np.uint64(partitions)
    shares = [(keys[part == p], doc_index[part == p]) for p in range(partitions)]
    results = list(map_fn(_partition_duplicates, shares))
    dropped = np.concatenate([r[0] for r in results]) if results else np.zeros(0, np.uint64)
    survivor = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.uint64)
    order = np.argsort(dropped, kind="stable")
    size = int(doc_index.max()) + 1 if n else 0
    return ExactDedupResult(size, dropped[order], survivor[order])


class ExactDedupStep(Step):
    """Drops documents whose normalized text was already seen in this step (first occurrence kept).

    For one process reading documents in the deterministic order; memory is one 16-byte digest (plus
    Python set overhead, ~90 bytes) per distinct document. The drop reason is `duplicate_exact`.
    """

    name = "exact_dedup"

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[bytes] = set()

    def process(self, doc: Document) -> Document | None:
        digest = text_hash(doc.text)
        if digest in self.seen:
            self.drop(doc, DROP_REASON)
            return None
        self.seen.add(digest)
        return doc
