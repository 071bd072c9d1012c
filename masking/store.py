"""Token access for the masking stage: many document pieces gathered into one array in a few numpy calls.

A `TokenStore` opens one `TokenShards` per source (a directory of token shards) and maps each shard's `.bin`
(DESIGN §3: little-endian int32 documents back to back, located by the `.idx` pointers). Pieces (source, doc,
offset, length) are gathered per shard with one fancy index each, instead of one Python slice per piece.
Stores are cached per process, so a Ray worker opens the shards once for all the tasks it runs.

Memory per document (a process holds only what it uses, built on first use): the planner's document lengths
(int32, 4 bytes: `lengths`), the gatherer's token offsets (int32 while every shard's `.bin` holds fewer than
2^31 tokens, else int64: `doc_token`), and the provenance columns that are asked for (`column`: that column
alone, read from each sidecar and kept as one Arrow array or byte buffer; `doc_id` of the ingest's form
`source:input_file:offset` as an input-file number and an offset, 12 bytes a document instead of the
ids' ~70: at 707k documents the masking driver's peak fell from 281 to 198 MB, output unchanged). The
`.idx` arrays and the tokens stay memory-mapped (file pages, not heap). The per-document tables are made by
`common.memory.table_array`, each in its own anonymous mapping: held in the heap they pinned it around the
freed arrays of every shard built (masking alone over 670k documents: 137-143 MB peak in the heap, 121 MB in
their own mappings).
"""

from __future__ import annotations

import mmap
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.errors import ShardFormatError
from common.memory import table_array
from kernels.ranges import concatenated_ranges as _ranges
from shards.token_shards import BIN_SUFFIX, IDX_SUFFIX, PROVENANCE_SUFFIX, TokenShards, read_index

_INT32_MAX = np.iinfo(np.int32).max


class _StringColumn:
    """A string column of every document as two numpy arrays: int64 offsets (8 bytes a document) and the
    UTF-8 bytes back to back (exactly the strings' size). Built shard by shard into one buffer sized from the
    sidecars' metadata (its untouched tail is never resident), so there is no second copy, as concatenating
    Arrow arrays would make, and no Python object per document."""

    def __init__(self, total: int, capacity: int) -> None:
        self.offsets = table_array(total + 1, np.int64)
        self.data = table_array(max(capacity, 1), np.uint8)
        self.filled = 0  # documents so far

    def append(self, part: pa.Array) -> None:
        n = len(part)
        if pa.types.is_large_string(part.type):
            width = np.int64
        else:
            part, width = part.cast(pa.string()), np.int32
        _, offset_buffer, data_buffer = part.buffers()
        skip = part.offset * np.dtype(width).itemsize
        offsets = np.frombuffer(offset_buffer, dtype=width, count=n + 1, offset=skip)
        lo, hi = int(offsets[0]), int(offsets[-1])
        used = int(self.offsets[self.filled])
        if used + hi - lo > len(self.data):  # the metadata's estimate was short: grow (doubling)
            grown = np.empty(max(2 * len(self.data), used + hi - lo), dtype=np.uint8)
            grown[:used] = self.data[:used]
            self.data = grown
        if hi > lo:
            self.data[used : used + hi - lo] = np.frombuffer(data_buffer, dtype=np.uint8)[lo:hi]
        self.offsets[self.filled + 1 : self.filled + n + 1] = offsets[1:] - lo + used
        self.filled += n

    def take(self, docs: np.ndarray) -> pa.Array:
        """The strings of `docs`, in order, as an Arrow string array."""
        docs = np.asarray(docs, dtype=np.int64)
        starts = self.offsets[docs]
        lengths = self.offsets[docs + 1] - starts
        out_offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_offsets[1:])
        data = self.data[_ranges(starts, lengths)]
        return pa.Array.from_buffers(
            pa.large_string(), len(docs), [None, pa.py_buffer(out_offsets), pa.py_buffer(data)]
        ).cast(pa.string())


class _PrefixedColumn:
    """Document ids of the form `source:input_file:offset` (what the ingest stage writes) as a prefix number
    (int32) and the offset (int64) per document, 12 bytes, plus one string per distinct input file: the
    ids themselves (~70 bytes each here, they embed the input path) are rebuilt only for the documents taken."""

    def __init__(self, total: int) -> None:
        self.prefix = table_array(total, np.int32)
        self.offset = table_array(total, np.int64)
        self.prefixes: list[str] = []
        self._number: dict[str, int] = {}
        self.filled = 0

    def append(self, prefixes: pa.Array, offsets: pa.Array) -> None:
        encoded = prefixes.dictionary_encode()
        mapping = np.array([self._number.setdefault(value, len(self._number))
                            for value in encoded.dictionary.to_pylist()], dtype=np.int32)
        self.prefixes = list(self._number)
        n = len(prefixes)
        self.prefix[self.filled : self.filled + n] = mapping[encoded.indices.to_numpy(zero_copy_only=False)]
        self.offset[self.filled : self.filled + n] = offsets.to_numpy(zero_copy_only=False)
        self.filled += n

    def take(self, docs: np.ndarray) -> pa.Array:
        docs = np.asarray(docs, dtype=np.int64)
        heads = pa.array(self.prefixes, pa.string()).take(pa.array(self.prefix[docs]))
        return pc.binary_join_element_wise(heads, pc.cast(pa.array(self.offset[docs]), pa.string()), "")


_ID_PARTS = ("source", "input_file", "offset")


def _prefixed_ids(sidecars: list[str], total: int) -> _PrefixedColumn | None:
    """The doc ids of the sidecars as a `_PrefixedColumn`, or None where any id is not
    `source:input_file:offset` (read in record batches: no whole column in memory at once)."""
    column = _PrefixedColumn(total)
    for sidecar in sidecars:
        handle = pq.ParquetFile(sidecar)
        if not set(_ID_PARTS + ("doc_id",)) <= set(handle.schema_arrow.names):
            return None
        for batch in handle.iter_batches(batch_size=1 << 13, columns=["doc_id", *_ID_PARTS]):
            if any(batch.column(k).null_count for k in range(4)):
                return None
            # join(source, input_file, "") with ":" between: "source:input_file:"
            prefixes = pc.binary_join_element_wise(pc.cast(batch.column(1), pa.string()),
                                                   pc.cast(batch.column(2), pa.string()), "", ":")
            rebuilt = pc.binary_join_element_wise(prefixes, pc.cast(batch.column(3), pa.string()), "")
            if not pc.all(pc.equal(rebuilt, pc.cast(batch.column(0), pa.string()))).as_py():
                return None
            column.append(prefixes, batch.column(3))
    return column if column.filled == total else None


class _Source:
    def __init__(self, path: str) -> None:
        self.path = path
        self.shards = TokenShards(path)
        self.arrays: list[np.ndarray] = []
        self.indexes = []
        for prefix in self.shards.prefixes:
            index = read_index(prefix + IDX_SUFFIX)
            if index.dtype != np.int32:
                raise ShardFormatError(prefix + IDX_SUFFIX, f"token dtype {index.dtype}, expected int32")
            self.indexes.append(index)
            size = os.path.getsize(prefix + BIN_SUFFIX)
            if size:
                with open(prefix + BIN_SUFFIX, "rb") as handle:
                    self.arrays.append(
                        np.frombuffer(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), dtype="<i4")
                    )
            else:
                self.arrays.append(np.zeros(0, dtype=np.int32))
        counts = [index.sequence_count for index in self.indexes]
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        """Index of each shard's first document (and the document count last): per shard, not per document."""
        self._columns: dict[str, pa.Array] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    @cached_property
    def lengths(self) -> np.ndarray:
        """Tokens per document over all shards, int32 (the `.idx` dtype)."""
        out = table_array(len(self), np.int32)
        for index, lo, hi in zip(self.indexes, self.starts[:-1].tolist(), self.starts[1:].tolist()):
            out[lo:hi] = index.lengths
        return out

    @cached_property
    def doc_token(self) -> np.ndarray:
        """Offset of each document's first token in its shard's `.bin`, in tokens (int32 when they fit)."""
        largest = max((int(a.size) for a in self.arrays), default=0)
        dtype = np.int32 if largest <= _INT32_MAX else np.int64
        out = table_array(len(self), dtype)
        for index, lo, hi in zip(self.indexes, self.starts[:-1].tolist(), self.starts[1:].tolist()):
            np.floor_divide(index.pointers, 4, out=out[lo:hi], casting="unsafe")
        return out

    def shard_of(self, docs: np.ndarray) -> np.ndarray:
        """Shard number of each document index (int64)."""
        return np.searchsorted(self.starts, docs, side="right") - 1

    @cached_property
    def column_names(self) -> list[str]:
        """Provenance columns of the sidecars (their union, in first-seen order), from their footers only."""
        names: dict[str, None] = {}
        for prefix in self.shards.prefixes:
            names.update(dict.fromkeys(self._sidecar_schema(prefix).names))
        return list(names)

    def _sidecar(self, prefix: str) -> str:
        sidecar = prefix + PROVENANCE_SUFFIX
        if not Path(sidecar).exists():
            raise ShardFormatError(sidecar, "provenance sidecar does not exist")
        return sidecar

    def _sidecar_schema(self, prefix: str) -> pa.Schema:
        return pq.read_schema(self._sidecar(prefix))

    def column(self, name: str) -> pa.Array | _StringColumn | _PrefixedColumn:
        """Provenance column `name` of every document (read on first use, that column alone): a string column
        without nulls as a `_StringColumn`, anything else as one Arrow array (a shard whose sidecar lacks the
        column contributes nulls)."""
        cached = self._columns.get(name)
        if cached is None:
            cached = self._columns[name] = self._read_column(name)
        return cached

    def take(self, name: str, docs: np.ndarray) -> pa.Array:
        """Column `name` of the documents `docs`, in order (an Arrow array)."""
        column = self.column(name)
        if isinstance(column, (_StringColumn, _PrefixedColumn)):
            return column.take(docs)
        return column.take(pa.array(np.asarray(docs, dtype=np.int64)))

    def _read_column(self, name: str) -> pa.Array | _StringColumn | _PrefixedColumn:
        if name not in self.column_names:
            raise ShardFormatError(self.path, f"token shards lack the provenance column {name!r}")
        if name == "doc_id" and self.shards.prefixes:
            prefixed = _prefixed_ids([self._sidecar(prefix) for prefix in self.shards.prefixes], len(self))
            if prefixed is not None:
                return prefixed
        strings: _StringColumn | None = None
        schemas = [self._sidecar_schema(prefix) for prefix in self.shards.prefixes]
        if all(name in schema.names and pa.types.is_string(schema.field(name).type) for schema in schemas):
            capacity = 0
            for prefix in self.shards.prefixes:
                metadata = pq.read_metadata(self._sidecar(prefix))
                column = next(i for i in range(metadata.num_columns) if metadata.schema.column(i).path == name)
                groups = range(metadata.num_row_groups)
                capacity += sum(metadata.row_group(g).column(column).total_uncompressed_size for g in groups)
            strings = _StringColumn(len(self), capacity)
        parts: list[pa.Array | None] = []
        for number, (prefix, schema) in enumerate(zip(self.shards.prefixes, schemas)):
            if name not in schema.names:
                parts.append(None)
                continue
            part = pq.read_table(self._sidecar(prefix), columns=[name]).column(0).combine_chunks()
            expected = int(self.starts[number + 1] - self.starts[number])
            if len(part) != expected:
                raise ShardFormatError(
                    self._sidecar(prefix), f"{len(part)} provenance rows for {expected} documents"
                )
            if strings is not None and part.null_count == 0:
                strings.append(part)
                continue
            if strings is not None:  # nulls after all: Arrow arrays for this column (every shard has it)
                parts = [strings.take(np.arange(strings.filled))]
                strings = None
            parts.append(part)
        if strings is not None:
            return strings
        types = [p.type for p in parts if p is not None and not pa.types.is_null(p.type)]
        kind = types[0] if types else pa.null()
        if pa.types.is_string(kind) and sum(p.nbytes for p in parts if p is not None) > _INT32_MAX:
            kind = pa.large_string()  # one array of more than 2 GiB of text needs 64-bit offsets
        filled = [
            pa.nulls(int(self.starts[k + 1] - self.starts[k]), kind) if p is None else p.cast(kind)
            for k, p in enumerate(parts)
        ]
        return pa.concat_arrays(filled) if filled else pa.array([], kind)


class TokenStore:
    """Documents of several token-shard directories ("sources"), addressed as (source, document index)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)
        self.sources = [_Source(path) for path in self.paths]

    def lengths(self, source: int) -> np.ndarray:
        return self.sources[source].lengths

    def column(self, source: int, name: str) -> pa.Array:
        """Provenance column `name` of every document of `source`, as one Arrow array."""
        column = self.sources[source].column(name)
        if isinstance(column, (_StringColumn, _PrefixedColumn)):
            return column.take(np.arange(column.filled))
        return column

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
            shards = src.shard_of(docs).tolist()
            arrays = src.arrays
            for shard, a, o, n in zip(shards, first, out_start[chosen].tolist(), length[chosen].tolist()):
                out[o : o + n] = arrays[shard][a : a + n]
        return out

    def take(self, source: np.ndarray, doc: np.ndarray, name: str) -> pa.Array:
        """Provenance column `name` of the given documents, in order (an Arrow array)."""
        source = np.asarray(source, dtype=np.int64)
        doc = np.asarray(doc, dtype=np.int64)
        if len(source) == 0 or (source == source[0]).all():
            return self.sources[int(source[0]) if len(source) else 0].take(name, doc)
        parts, where = [], []
        for s in np.unique(source).tolist():
            chosen = np.flatnonzero(source == s)
            parts.append(self.sources[s].take(name, doc[chosen]))
            where.append(chosen)
        kinds = {p.type for p in parts}
        if len(kinds) > 1:  # e.g. string and large_string: one type for the concatenation
            kind = pa.large_string() if pa.large_string() in kinds else parts[0].type
            parts = [p.cast(kind) for p in parts]
        order = np.empty(len(source), dtype=np.int64)
        order[np.concatenate(where)] = np.arange(len(source))
        return pa.concat_arrays(parts).take(pa.array(order))


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
