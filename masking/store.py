"""Token access for the masking stage: many document pieces gathered into one array in a few numpy calls.

A `TokenStore` opens one `TokenShards` per source (a directory of token shards) and maps each shard's `.bin`
(DESIGN §3: little-endian int32 documents back to back, located by the `.idx` pointers). Pieces (source, doc,
offset, length) are gathered per shard with one fancy index each, instead of one Python slice per piece.
Stores are cached per process, so a Ray worker opens the shards once for all the tasks it runs.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from common.errors import ShardFormatError
from shards.token_shards import BIN_SUFFIX, IDX_SUFFIX, TokenShards, read_index


class _Source:
    def __init__(self, path: str) -> None:
        self.path = path
        self.shards = TokenShards(path)
        self.arrays: list[np.ndarray] = []
        doc_shard, doc_token = [], []
        for number, prefix in enumerate(self.shards.prefixes):
            index = read_index(prefix + IDX_SUFFIX)
            if index.dtype != np.int32:
                raise ShardFormatError(prefix + IDX_SUFFIX, f"token dtype {index.dtype}, expected int32")
            size = os.path.getsize(prefix + BIN_SUFFIX)
            if size:
                with open(prefix + BIN_SUFFIX, "rb") as handle:
                    self.arrays.append(
                        np.frombuffer(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), dtype="<i4")
                    )
            else:
                self.arrays.append(np.zeros(0, dtype=np.int32))
            doc_shard.append(np.full(index.sequence_count, number, dtype=np.int32))
            doc_token.append(np.asarray(index.pointers, dtype=np.int64) // 4)
        self.doc_shard = np.concatenate(doc_shard) if doc_shard else np.zeros(0, np.int32)
        self.doc_token = np.concatenate(doc_token) if doc_token else np.zeros(0, np.int64)
        self.lengths = self.shards.lengths
        self._columns: dict[str, pa.Array] = {}
        self._objects: dict[str, np.ndarray] = {}

    def column(self, name: str) -> pa.Array:
        cached = self._columns.get(name)
        if cached is None:
            provenance = self.shards.provenance
            if name not in provenance.column_names:
                raise ShardFormatError(self.path, f"token shards lack the provenance column {name!r}")
            cached = self._columns[name] = provenance.column(name).combine_chunks()
        return cached

    def objects(self, name: str) -> np.ndarray:
        """Column `name` as a numpy object array (cached), for cheap fancy indexing."""
        key = "objects:" + name
        cached = self._objects.get(key)
        if cached is None:
            cached = self._objects[key] = self.column(name).to_numpy(zero_copy_only=False)
        return cached


class TokenStore:
    """Documents of several token-shard directories ("sources"), addressed as (source, document index)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)
        self.sources = [_Source(path) for path in self.paths]

    def lengths(self, source: int) -> np.ndarray:
        return self.sources[source].lengths

    def column(self, source: int, name: str) -> pa.ChunkedArray:
        return self.sources[source].column(name)

    def gather(
        self,
        source: np.ndarray,
        doc: np.ndarray,
        offset: np.ndarray,
        length: np.ndarray,
        out: np.ndarray | None = None,
        out_start: np.ndarray | None = None,
    ) -> np.ndarray:
        """Tokens of the pieces, back to back (or each written at its `out_start` in `out`).

        One slice copy per piece: pieces are long runs of a document, so a copy loop beats building
        per-token index arrays (measured ~5x on 500-token pieces)."""
        length = np.asarray(length, dtype=np.int64)
        if out is None:
            out = np.empty(int(length.sum()), dtype=np.int32)
            out_start = np.cumsum(length) - length
        source = np.asarray(source, dtype=np.int64)
        doc = np.asarray(doc, dtype=np.int64)
        offset = np.asarray(offset, dtype=np.int64)
        for s in np.unique(source).tolist():
            src = self.sources[s]
            chosen = np.flatnonzero(source == s) if len(self.sources) > 1 else np.arange(len(source))
            docs = doc[chosen]
            first = (src.doc_token[docs] + offset[chosen]).tolist()
            shards = src.doc_shard[docs].tolist()
            arrays = src.arrays
            for shard, a, o, n in zip(shards, first, out_start[chosen].tolist(), length[chosen].tolist()):
                out[o : o + n] = arrays[shard][a : a + n]
        return out

    def take(self, source: np.ndarray, doc: np.ndarray, name: str) -> np.ndarray:
        """Provenance column `name` of the given documents, in order (a numpy object array)."""
        source = np.asarray(source, dtype=np.int64)
        doc = np.asarray(doc, dtype=np.int64)
        out = np.empty(len(source), dtype=object)
        for s in np.unique(source).tolist():
            chosen = source == s
            out[chosen] = self.sources[s].objects(name)[doc[chosen]]
        return out


_CACHE: dict[tuple[str, ...], TokenStore] = {}


def open_store(paths: list[str]) -> TokenStore:
    """A per-process cached TokenStore over `paths`."""
    key = tuple(f"{Path(p).resolve()}@{os.stat(p).st_mtime_ns}" for p in paths)
    store = _CACHE.get(key)
    if store is None:
        store = _CACHE[key] = TokenStore(list(paths))
    return store


def clear_cache() -> None:
    _CACHE.clear()


def describe(store: TokenStore) -> dict[str, Any]:
    return {path: int(src.lengths.sum()) for path, src in zip(store.paths, store.sources)}
