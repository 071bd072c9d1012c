"""Token shards: Megatron-compatible `.bin`/`.idx` pairs plus a provenance sidecar and a checksum record.

A shard with prefix P is four files:

    P.bin                 token ids of every document back to back, little-endian int32
    P.idx                 the index, byte-compatible with megatron.core.datasets.indexed_dataset:
                            magic      9 bytes  b"MMIDIDX\\x00\\x00"
                            version    u64      1
                            dtype      u8       4 (int32)
                            S          u64      number of sequences (one per document)
                            S + 1      u64      number of document boundaries
                            lengths    int32[S]     tokens per sequence
                            pointers   int64[S]     byte offset of each sequence in P.bin
                            doc_index  int64[S + 1] 0, 1, ..., S (every sequence is one document)
    P.provenance.parquet  one row per sequence: where the document came from (PROVENANCE_COLUMNS + extras)
    P.checksum.json       xxh3-128 of P.bin and P.idx, sizes and counts (what `verify` checks)

The writer emits the index fields in exactly the order `read_index` reads them. Every file is written to a
temporary name and renamed, `.idx` after `.bin`, and the checksum record last: a shard whose checksum
record exists is complete.
"""

from __future__ import annotations

import mmap
import os
import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from common.atomic import atomic_path, atomic_write_json, temporary_path
from common.errors import ShardFormatError

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
TOKEN_DTYPE = np.dtype("<i4")
TOKEN_DTYPE_CODE = 4
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count

BIN_SUFFIX = ".bin"
IDX_SUFFIX = ".idx"
PROVENANCE_SUFFIX = ".provenance.parquet"
CHECKSUM_SUFFIX = ".checksum.json"

PROVENANCE_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("input_file", pa.string()),
        ("offset", pa.int64()),
        ("lang", pa.string()),
        ("quality", pa.float32()),
        ("cluster_id", pa.int64()),
        ("n_tokens", pa.int32()),
    ]
)
PROVENANCE_COLUMNS = tuple(PROVENANCE_SCHEMA.names)
_PROVENANCE_DEFAULTS: dict[str, Any] = {"lang": "", "quality": 1.0, "cluster_id": -1, "offset": -1}
PROVENANCE_ROW_GROUP = 1 << 16
"""Provenance rows buffered before they are written out as one Parquet row group: a writer's memory is
bounded by this, not by the shard's document count."""


def shard_files(prefix: str | os.PathLike[str]) -> dict[str, Path]:
    """The four paths of shard `prefix`."""
    prefix = str(prefix)
    return {
        "bin": Path(prefix + BIN_SUFFIX),
        "idx": Path(prefix + IDX_SUFFIX),
        "provenance": Path(prefix + PROVENANCE_SUFFIX),
        "checksum": Path(prefix + CHECKSUM_SUFFIX),
    }


def _hash_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class TokenShardWriter:
    """Write one token shard, document by document.

        with TokenShardWriter("out/tokens/pile/pile-00000") as writer:
            writer.add(np.array(ids, dtype=np.int32), doc_id=..., source="pile", input_file=..., offset=...)

    Provenance keyword arguments must cover `doc_id`, `source` and `input_file`; `lang`, `quality`,
    `cluster_id`, `offset` have defaults and `n_tokens` is filled in. Extra keywords become extra
    columns (declare their Arrow types with `extra_schema` to keep types stable across shards).
    """

    def __init__(self, prefix: str | os.PathLike[str], extra_schema: Sequence[pa.Field] = ()) -> None:
        self.prefix = str(prefix)
        self.files = shard_files(self.prefix)
        self.files["bin"].parent.mkdir(parents=True, exist_ok=True)
        self.schema = pa.schema(list(PROVENANCE_SCHEMA) + list(extra_schema))
        self._bin_tmp = temporary_path(self.files["bin"])
        self._bin = open(self._bin_tmp, "wb")
        self._digest = xxhash.xxh3_128()
        self._lengths = array("i")
        self._columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        self._provenance_tmp = temporary_path(self.files["provenance"])
        self._provenance: pq.ParquetWriter | None = None
        self._rows = 0
        self._closed = False
        self.summary: dict[str, Any] = {}

    def add(self, tokens: np.ndarray | Sequence[int], **provenance: Any) -> None:
        """Append one document."""
        ids = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE)
        if ids.ndim != 1:
            raise ValueError(f"a document is a 1-D array of token ids, got shape {ids.shape}")
        data = ids.tobytes()
        self._bin.write(data)
        self._digest.update(data)
        self._lengths.append(len(ids))
        provenance["n_tokens"] = len(ids)
        for name, column in self._columns.items():
            if name in provenance:
                column.append(provenance[name])
            elif name in _PROVENANCE_DEFAULTS:
                column.append(_PROVENANCE_DEFAULTS[name])
            else:
                raise ValueError(f"provenance field {name!r} is required for every document")
        unknown = set(provenance) - set(self._columns)
        if unknown:
            if len(self._lengths) == 1 and not any(f.name in unknown for f in self.schema):
                # First document introduces extra columns: infer their types from it.
                for name in sorted(unknown):
                    self._columns[name] = [provenance[name]]
                self.schema = pa.schema(
                    list(self.schema) + [pa.field(n, pa.scalar(provenance[n]).type) for n in sorted(unknown)]
                )
            else:
                raise ValueError(f"unexpected provenance field(s) {sorted(unknown)} after the first document")
        if len(self._columns["n_tokens"]) >= PROVENANCE_ROW_GROUP:
            self._flush_provenance()

    def add_batch(self, tokens: np.ndarray, lengths: np.ndarray, provenance: pa.Table) -> None:
        """Append many documents at once: `tokens` back to back, `lengths` per document, and one
        provenance row per document (the schema's columns; `n_tokens` is filled in from `lengths`)."""
        ids = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE)
        lengths = np.asarray(lengths, dtype=np.int32)
        if ids.ndim != 1 or len(lengths) != provenance.num_rows or int(lengths.sum(dtype=np.int64)) != len(ids):
            raise ValueError("add_batch needs 1-D tokens whose length is the sum of one length per provenance row")
        self._flush_provenance()
        data = ids.tobytes()
        self._bin.write(data)
        self._digest.update(data)
        self._lengths.frombytes(lengths.tobytes())
        columns = {name: (pa.array(lengths, pa.int32()) if name == "n_tokens" else provenance.column(name))
                   for name in self.schema.names}
        self._write_provenance(pa.table(columns).cast(self.schema))

    def _flush_provenance(self) -> None:
        if self._columns["n_tokens"]:
            table = pa.table({name: self._columns[name] for name in self.schema.names}, schema=self.schema)
            self._columns = {name: [] for name in self.schema.names}
            self._write_provenance(table)

    def _write_provenance(self, table: pa.Table) -> None:
        if self._provenance is None:
            self._provenance = pq.ParquetWriter(self._provenance_tmp, self.schema, compression="zstd")
        self._provenance.write_table(table)
        self._rows += table.num_rows

    def __len__(self) -> int:
        return len(self._lengths)

    def close(self) -> dict[str, Any]:
        """Finish the shard: rename `.bin` into place, write `.idx`, the sidecar and the checksum record."""
        if self._closed:
            return self.summary
        self._closed = True
        try:
            return self._finish()
        except BaseException:
            # Disk full or similar part-way: leave no half-written shard visible (checksum record first).
            try:
                self._bin.close()  # may fail again on a full disk; the file is removed below either way
            except OSError:
                pass
            for key in ("checksum", "bin", "idx", "provenance"):
                self.files[key].unlink(missing_ok=True)
            self._discard_temporaries()
            raise

    def _finish(self) -> dict[str, Any]:
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        os.replace(self._bin_tmp, self.files["bin"])
        lengths = np.frombuffer(self._lengths, dtype=np.int32) if self._lengths else np.zeros(0, np.int32)
        with atomic_path(self.files["idx"]) as tmp:
            write_index(tmp, lengths)
        self._flush_provenance()
        if self._provenance is None:  # an empty shard: its sidecar still has the schema
            self._provenance = pq.ParquetWriter(self._provenance_tmp, self.schema, compression="zstd")
        self._provenance.close()
        self._provenance = None
        _fsync_path(self._provenance_tmp)
        os.replace(self._provenance_tmp, self.files["provenance"])
        self.summary = {
            "prefix": self.prefix,
            "sequences": len(lengths),
            "tokens": int(lengths.sum(dtype=np.int64)),
            "bin_bytes": self.files["bin"].stat().st_size,
            "bin_xxh3_128": self._digest.hexdigest(),
            "idx_xxh3_128": _hash_file(self.files["idx"]),
            "provenance_rows": self._rows,
        }
        atomic_write_json(self.files["checksum"], self.summary)
        return self.summary

    def abort(self) -> None:
        """Drop a partial shard: nothing of it becomes visible."""
        if not self._closed:
            self._closed = True
            self._bin.close()
            self._discard_temporaries()

    def _discard_temporaries(self) -> None:
        if self._provenance is not None:
            try:
                self._provenance.close()
            except OSError:
                pass
            self._provenance = None
        self._bin_tmp.unlink(missing_ok=True)
        self._provenance_tmp.unlink(missing_ok=True)

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _fsync_path(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


INDEX_WRITE_CHUNK = 1 << 16
"""Documents per write of `write_index`'s pointer and document-index arrays: its memory stays a few MB
whatever the shard's document count (the whole-array version peaked at ~50 bytes a document)."""


def write_index(path: str | os.PathLike[str], lengths: np.ndarray) -> None:
    """Write a Megatron `.idx` for documents of `lengths` tokens (int32), one sequence per document.

    Streams its arrays `INDEX_WRITE_CHUNK` documents at a time, so a shard of millions of documents does not
    need several whole-shard int64 arrays at once."""
    lengths = np.ascontiguousarray(lengths, dtype="<i4")
    count = len(lengths)
    with open(path, "wb") as handle:
        handle.write(_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, TOKEN_DTYPE_CODE, count, count + 1))
        handle.write(memoryview(lengths).cast("B"))
        pointer = 0  # byte offset of the chunk's first document in the .bin
        for lo in range(0, count, INDEX_WRITE_CHUNK):
            sizes = lengths[lo : lo + INDEX_WRITE_CHUNK].astype("<i8") * TOKEN_DTYPE.itemsize
            ends = np.cumsum(sizes)
            handle.write(memoryview(ends - sizes + pointer).cast("B"))
            pointer += int(ends[-1])
        for lo in range(0, count + 1, INDEX_WRITE_CHUNK):
            handle.write(memoryview(np.arange(lo, min(lo + INDEX_WRITE_CHUNK, count + 1), dtype="<i8")).cast("B"))


@dataclass(frozen=True)
class ShardIndex:
    """A parsed `.idx`: memmap views of its three arrays."""

    path: Path
    dtype: np.dtype
    lengths: np.ndarray
    pointers: np.ndarray
    document_indices: np.ndarray

    @property
    def sequence_count(self) -> int:
        return len(self.lengths)


def read_index(path: str | os.PathLike[str]) -> ShardIndex:
    """Parse and sanity-check an `.idx` file (header fields in the order `write_index` wrote them)."""
    path = Path(path)
    if not path.exists():
        raise ShardFormatError(str(path), "index file does not exist")
    size = path.stat().st_size
    if size < _HEADER.size:
        raise ShardFormatError(str(path), f"index is {size} bytes, shorter than its {_HEADER.size}-byte header")
    with open(path, "rb") as handle:
        magic, version, code, count, doc_count = _HEADER.unpack(handle.read(_HEADER.size))
    if magic != INDEX_MAGIC:
        raise ShardFormatError(str(path), f"bad magic {magic!r}", "not a Megatron MMIDIDX index")
    if version != INDEX_VERSION:
        raise ShardFormatError(str(path), f"unsupported index version {version}")
    if code not in DTYPE_CODES:
        raise ShardFormatError(str(path), f"unknown dtype code {code}")
    expected = _HEADER.size + count * 4 + count * 8 + doc_count * 8
    if size != expected:
        raise ShardFormatError(
            str(path),
            f"index holds {size} bytes but its header ({count} sequences, {doc_count} document indices) "
            f"implies {expected}",
            "the index is truncated or its counts disagree",
        )
    with open(path, "rb") as handle:
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    offset = _HEADER.size
    lengths = np.frombuffer(buffer, dtype="<i4", count=count, offset=offset)
    offset += count * 4
    pointers = np.frombuffer(buffer, dtype="<i8", count=count, offset=offset)
    offset += count * 8
    documents = np.frombuffer(buffer, dtype="<i8", count=doc_count, offset=offset)
    return ShardIndex(path, np.dtype(DTYPE_CODES[code]), lengths, pointers, documents)


class TokenShards:
    """Read one shard (`prefix`) or every shard under a directory, as one list of documents.

    `shards[i]` is a zero-copy int32 view of document i; `lengths` and `provenance` line up with it.
    Shards under a directory are ordered by path, so the order is deterministic.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if path.is_dir():
            self.prefixes = [str(p)[: -len(IDX_SUFFIX)] for p in sorted(path.rglob("*" + IDX_SUFFIX))]
            if not self.prefixes:
                raise ShardFormatError(str(path), "no token shards (*.idx) found under this directory")
        else:
            prefix = str(path)
            for suffix in (IDX_SUFFIX, BIN_SUFFIX):
                if prefix.endswith(suffix):
                    prefix = prefix[: -len(suffix)]
            self.prefixes = [prefix]
        self._indexes = [read_index(prefix + IDX_SUFFIX) for prefix in self.prefixes]
        self._bins: list[Any] = []
        for prefix in self.prefixes:
            bin_path = Path(prefix + BIN_SUFFIX)
            if not bin_path.exists():
                raise ShardFormatError(str(bin_path), "token file does not exist")
            with open(bin_path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                # A plain mmap + np.frombuffer per read: np.memmap slicing costs ~4x more per document.
                self._bins.append(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b"")
        self._single = len(self.prefixes) == 1
        counts = np.array([idx.sequence_count for idx in self._indexes], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, index within that shard) of document i."""
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} out of range 0..{len(self) - 1}")
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        return shard, i - int(self._starts[shard])

    def __getitem__(self, i: int) -> np.ndarray:
        if self._single:
            shard, local = 0, int(i)
            if local < 0 or local >= len(self._indexes[0].lengths):
                raise IndexError(f"document {i} out of range 0..{len(self) - 1}")
        else:
            shard, local = self.locate(int(i))
        index = self._indexes[shard]
        return np.frombuffer(
            self._bins[shard], dtype=index.dtype, count=int(index.lengths[local]), offset=int(index.pointers[local])
        )

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    @cached_property
    def lengths(self) -> np.ndarray:
        """Tokens per document, int64, over all shards."""
        if not self._indexes:
            return np.zeros(0, np.int64)
        return np.concatenate([np.asarray(idx.lengths, dtype=np.int64) for idx in self._indexes])

    @cached_property
    def provenance(self) -> pa.Table:
        """The sidecars of all shards, concatenated; row i describes document i."""
        tables = []
        for prefix in self.prefixes:
            sidecar = Path(prefix + PROVENANCE_SUFFIX)
            if not sidecar.exists():
                raise ShardFormatError(str(sidecar), "provenance sidecar does not exist")
            tables.append(pq.read_table(sidecar))
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]

    @property
    def total_tokens(self) -> int:
        return int(self.lengths.sum())


def verify_token_shard(prefix: str | os.PathLike[str], check_hash: bool = True) -> dict[str, Any]:
    """Check one shard end to end; raise ShardFormatError naming the first problem found.

    Checks: the index parses and its counts match its size; document indices are 0..S; pointers are
    the running sum of lengths; `.bin` holds exactly the indexed tokens; both files match the
    checksum record; the sidecar has one row per sequence with matching `n_tokens`.
    """
    files = shard_files(prefix)
    index = read_index(files["idx"])
    count = index.sequence_count
    if not np.array_equal(index.document_indices, np.arange(count + 1)):
        raise ShardFormatError(str(files["idx"]), "document index is not 0..S (one document per sequence)")
    lengths = np.asarray(index.lengths, dtype=np.int64)
    if (lengths < 0).any():
        raise ShardFormatError(str(files["idx"]), "negative sequence length in index")
    expected_pointers = np.concatenate([[0], np.cumsum(lengths * index.dtype.itemsize)[:-1]]) if count else lengths
    if not np.array_equal(np.asarray(index.pointers), expected_pointers):
        bad = int(np.argmax(np.asarray(index.pointers) != expected_pointers))
        raise ShardFormatError(str(files["idx"]), f"pointer of sequence {bad} disagrees with the lengths before it")
    if not files["bin"].exists():
        raise ShardFormatError(str(files["bin"]), "token file does not exist")
    bin_size = files["bin"].stat().st_size
    expected_size = int(lengths.sum()) * index.dtype.itemsize
    if bin_size != expected_size:
        raise ShardFormatError(
            str(files["bin"]),
            f"holds {bin_size} bytes but the index describes {expected_size}",
            "truncated or overwritten; rebuild this shard",
        )
    if not files["checksum"].exists():
        raise ShardFormatError(str(files["checksum"]), "checksum record missing", "the shard was never completed")
    record = orjson.loads(files["checksum"].read_bytes())
    if check_hash:
        for key, path in (("bin_xxh3_128", files["bin"]), ("idx_xxh3_128", files["idx"])):
            actual = _hash_file(path)
            if actual != record.get(key):
                raise ShardFormatError(
                    str(path), f"checksum mismatch (recorded {record.get(key)}, found {actual})", "the file is corrupt"
                )
    if record.get("sequences") != count:
        raise ShardFormatError(str(files["checksum"]), f"records {record.get('sequences')} sequences, index has {count}")
    if not files["provenance"].exists():
        raise ShardFormatError(str(files["provenance"]), "provenance sidecar missing")
    sidecar = pq.read_table(files["provenance"], columns=["n_tokens"])
    if sidecar.num_rows != count:
        raise ShardFormatError(
            str(files["provenance"]), f"has {sidecar.num_rows} rows for {count} sequences in the index"
        )
    if not np.array_equal(sidecar.column("n_tokens").to_numpy(), lengths):
        raise ShardFormatError(str(files["provenance"]), "n_tokens disagrees with the index lengths")
    return {"prefix": str(prefix), "sequences": count, "tokens": int(lengths.sum()), "ok": True}
