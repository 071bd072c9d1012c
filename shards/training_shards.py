"""Training shards: GLM rows stored as reconstruction recipes (DESIGN §4, §10), with their reader and verifier.

A directory of training shards holds, per shard `train-NNNNN`:

    train-NNNNN.tokens              the rows' final token layout, rows x row_length little-endian int32, no
                                    header (a plain memmap [rows, row_length]); Part A with its [MASK]/[gMASK]
                                    tokens, then Part B inputs ([sop] + span, block after block); PAD (0) after
                                    the last segment of the dataset's final row
    train-NNNNN.recipe              the tables the other arrays are rebuilt from (layout below)
    train-NNNNN.provenance.parquet  one row per segment: row, segment, kind, source, doc_ids, doc_offsets,
                                    doc_tokens, template

and once, written last (a directory whose manifest exists is complete):

    training_shards.json            format, version, row_length, rows, padding, the shards with their first row,
                                    counts, sizes and xxh3-128 checksums (the checksum record), config, inputs
    stats.json                      the masking stage's report (masking/stats.py)

`.recipe` layout, little-endian, in exactly the order `write_recipe` writes and `read_recipe` reads it:

    magic                 8 bytes   RECIPE_MAGIC
    version               u64       RECIPE_VERSION
    row_length            u64
    rows                  u64       R
    segments              u64       S
    spans                 u64       N
    first_row             u64       global index of the shard's first row
    pad_tokens            u64       padding tokens in this shard (only the dataset's final row has any)
    row_segment_pointer   int64[R + 1]   row r holds segments [p[r], p[r + 1])
    segment_span_pointer  int64[S + 1]   segment s holds spans [q[s], q[s + 1])
    segment_start         uint16[S]      row-relative, end exclusive, sep = first index of Part B
    segment_sep           uint16[S]
    segment_end           uint16[S]
    span_mask_position    uint16[N]      row index of the span's [MASK] / [gMASK] token (in Part A)
    span_length           uint16[N]      in Part-B order: block j starts at sep + sum of earlier (length + 1)
    segment_kind          uint8[S]       KIND_CODES

A [gMASK] or MIP segment has one span: its suffix / target. Everything the loader returns is rebuilt from
this by `kernels.reconstruct`, about 4.1 bytes per token on disk in all.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from common.atomic import atomic_path, atomic_write_json
from common.errors import ShardFormatError
from kernels.ranges import concatenated_ranges as _ranges
from kernels.reconstruct import RowRecipes, reconstruct_batch, reconstruct_reference
from pipeline.special_tokens import EOD, GMASK, MASK, PAD, SOP

FORMAT = "glm-corpus/training-shards"
FORMAT_VERSION = 1
MANIFEST = "training_shards.json"
SHARD_PREFIX = "train-"
TOKENS_SUFFIX = ".tokens"
RECIPE_SUFFIX = ".recipe"
PROVENANCE_SUFFIX = ".provenance.parquet"
SHARD_SUFFIXES = (TOKENS_SUFFIX, RECIPE_SUFFIX, PROVENANCE_SUFFIX)

RECIPE_MAGIC = b"GLMRCPE\x00"
RECIPE_VERSION = 1
_RECIPE_HEADER = struct.Struct(
    "<8sQQQQQQQ"
)  # magic, version, row_length, rows, segments, spans, first_row, pad

TOKEN_DTYPE = np.dtype("<i4")
KIND_MASK, KIND_GMASK, KIND_MIP = 0, 1, 2
KIND_NAMES = ("mask", "gmask", "mip")
KIND_CODES = {name: code for code, name in enumerate(KIND_NAMES)}

PROVENANCE_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("segment", pa.int32()),
        ("kind", pa.string()),
        ("source", pa.string()),
        ("doc_ids", pa.list_(pa.string())),
        ("doc_offsets", pa.list_(pa.int64())),
        ("doc_tokens", pa.list_(pa.int32())),
        ("template", pa.string()),
    ]
)


def _recipe_arrays(rows: int, segments: int, spans: int) -> tuple[tuple[str, str, int], ...]:
    """(name, dtype, count) of the recipe's arrays, in file order: the one place the layout is written down."""
    return (
        ("row_segment_pointer", "<i8", rows + 1),
        ("segment_span_pointer", "<i8", segments + 1),
        ("segment_start", "<u2", segments),
        ("segment_sep", "<u2", segments),
        ("segment_end", "<u2", segments),
        ("span_mask_position", "<u2", spans),
        ("span_length", "<u2", spans),
        ("segment_kind", "u1", segments),
    )


def recipe_size(rows: int, segments: int, spans: int) -> int:
    return _RECIPE_HEADER.size + sum(
        np.dtype(d).itemsize * n for _, d, n in _recipe_arrays(rows, segments, spans)
    )


@dataclass
class Recipe:
    """A parsed `.recipe` (arrays are read-only views of the file)."""

    path: Path
    row_length: int
    first_row: int
    pad_tokens: int
    row_segment_pointer: np.ndarray
    segment_span_pointer: np.ndarray
    segment_start: np.ndarray
    segment_sep: np.ndarray
    segment_end: np.ndarray
    span_mask_position: np.ndarray
    span_length: np.ndarray
    segment_kind: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.row_segment_pointer) - 1

    @property
    def segments(self) -> int:
        return len(self.segment_kind)

    @property
    def spans(self) -> int:
        return len(self.span_length)


def write_recipe(
    path: str | os.PathLike[str],
    *,
    row_length: int,
    first_row: int,
    pad_tokens: int,
    arrays: dict[str, np.ndarray],
) -> None:
    """Write a `.recipe` (header, then the arrays of `_recipe_arrays` in order)."""
    rows = len(arrays["row_segment_pointer"]) - 1
    segments = len(arrays["segment_kind"])
    spans = len(arrays["span_length"])
    with open(path, "wb") as handle:
        handle.write(
            _RECIPE_HEADER.pack(
                RECIPE_MAGIC, RECIPE_VERSION, row_length, rows, segments, spans, first_row, pad_tokens
            )
        )
        for name, dtype, count in _recipe_arrays(rows, segments, spans):
            array = np.ascontiguousarray(arrays[name], dtype=dtype)
            if array.shape != (count,):
                raise ValueError(f"recipe array {name} has shape {array.shape}, expected ({count},)")
            handle.write(array.tobytes())


def read_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Parse a `.recipe` written by `write_recipe`; ShardFormatError if it is not one or is truncated."""
    path = Path(path)
    if not path.exists():
        raise ShardFormatError(str(path), "recipe file does not exist")
    size = path.stat().st_size
    if size < _RECIPE_HEADER.size:
        raise ShardFormatError(str(path), f"recipe is {size} bytes, shorter than its header")
    with open(path, "rb") as handle:
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    magic, version, row_length, rows, segments, spans, first_row, pad = _RECIPE_HEADER.unpack_from(buffer, 0)
    if magic != RECIPE_MAGIC:
        raise ShardFormatError(str(path), f"bad magic {magic!r}", "not a glm-corpus training-shard recipe")
    if version != RECIPE_VERSION:
        raise ShardFormatError(
            str(path), f"unsupported recipe version {version}", "rebuild with this version"
        )
    expected = recipe_size(rows, segments, spans)
    if size != expected:
        raise ShardFormatError(
            str(path),
            f"recipe holds {size} bytes but its header ({rows} rows, {segments} segments, {spans} "
            f"spans) implies {expected}",
            "truncated or overwritten; rebuild this shard",
        )
    offset = _RECIPE_HEADER.size
    fields: dict[str, np.ndarray] = {}
    for name, dtype, count in _recipe_arrays(rows, segments, spans):
        fields[name] = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
        offset += np.dtype(dtype).itemsize * count
    return Recipe(path=path, row_length=row_length, first_row=first_row, pad_tokens=pad, **fields)


def hash_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}"


class TrainingShardWriter:
    """Write one training shard block by block: tokens stream to disk, tables are written at `close()`.

    Files appear atomically (temporary name, fsync, rename); the directory manifest that lists the shard is
    the caller's to write once every shard is closed (`write_manifest`).
    """

    def __init__(
        self, directory: str | os.PathLike[str], index: int, row_length: int, first_row: int
    ) -> None:
        self.directory = Path(directory)
        self.name = shard_name(index)
        self.row_length = row_length
        self.first_row = first_row
        self.directory.mkdir(parents=True, exist_ok=True)
        self._tokens_final = self.directory / (self.name + TOKENS_SUFFIX)
        self._tokens_context = atomic_path(self._tokens_final)
        self._tokens_tmp = self._tokens_context.__enter__()
        self._tokens = open(self._tokens_tmp, "wb")
        self._digest = xxhash.xxh3_128()
        self._rows = 0
        self._pad = 0
        self._row_segment_counts: list[np.ndarray] = []
        self._segment_parts: dict[str, list[np.ndarray]] = {
            k: []
            for k in ("segment_start", "segment_sep", "segment_end", "segment_kind", "segment_span_count")
        }
        self._span_parts: dict[str, list[np.ndarray]] = {"span_mask_position": [], "span_length": []}
        self._provenance: list[pa.Table] = []

    def add(
        self,
        tokens: np.ndarray,
        row_segment_count: np.ndarray,
        segments: dict[str, np.ndarray],
        spans: dict[str, np.ndarray],
        provenance: pa.Table,
        pad_tokens: int = 0,
    ) -> None:
        """Append rows: tokens [R, row_length], segments per row, segment and span tables, provenance."""
        tokens = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE)
        if tokens.ndim != 2 or tokens.shape[1] != self.row_length:
            raise ValueError(f"rows must be [R, {self.row_length}], got {tokens.shape}")
        data = tokens.tobytes()
        self._tokens.write(data)
        self._digest.update(data)
        self._rows += tokens.shape[0]
        self._pad += pad_tokens
        self._row_segment_counts.append(np.asarray(row_segment_count, dtype=np.int64))
        for key, parts in self._segment_parts.items():
            parts.append(np.asarray(segments[key]))
        for key, parts in self._span_parts.items():
            parts.append(np.asarray(spans[key]))
        self._provenance.append(provenance)

    def close(self) -> dict[str, Any]:
        """Finish the shard; return its manifest entry (counts, sizes, checksums)."""
        self._tokens.flush()
        os.fsync(self._tokens.fileno())
        self._tokens.close()
        self._tokens_context.__exit__(None, None, None)
        counts = (
            np.concatenate(self._row_segment_counts) if self._row_segment_counts else np.zeros(0, np.int64)
        )
        joined = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self._segment_parts.items()}
        spans = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self._span_parts.items()}
        arrays = {
            "row_segment_pointer": np.concatenate([[0], np.cumsum(counts)]),
            "segment_span_pointer": np.concatenate([[0], np.cumsum(joined["segment_span_count"])]),
            "segment_start": joined["segment_start"],
            "segment_sep": joined["segment_sep"],
            "segment_end": joined["segment_end"],
            "span_mask_position": spans["span_mask_position"],
            "span_length": spans["span_length"],
            "segment_kind": joined["segment_kind"],
        }
        recipe_path = self.directory / (self.name + RECIPE_SUFFIX)
        with atomic_path(recipe_path) as tmp:
            write_recipe(
                tmp, row_length=self.row_length, first_row=self.first_row, pad_tokens=self._pad, arrays=arrays
            )
        table = pa.concat_tables(self._provenance) if self._provenance else PROVENANCE_SCHEMA.empty_table()
        provenance_path = self.directory / (self.name + PROVENANCE_SUFFIX)
        with atomic_path(provenance_path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return {
            "name": self.name,
            "first_row": self.first_row,
            "rows": self._rows,
            "segments": len(arrays["segment_kind"]),
            "spans": len(arrays["span_length"]),
            "pad_tokens": self._pad,
            "bytes": {
                "tokens": self._tokens_final.stat().st_size,
                "recipe": recipe_path.stat().st_size,
                "provenance": provenance_path.stat().st_size,
            },
            "xxh3_128": {
                "tokens": self._digest.hexdigest(),
                "recipe": hash_file(recipe_path),
                "provenance": hash_file(provenance_path),
            },
        }

    def abort(self) -> None:
        self._tokens.close()
        self._tokens_context.__exit__(RuntimeError, RuntimeError("aborted"), None)


def write_manifest(
    directory: str | os.PathLike[str],
    *,
    row_length: int,
    shards: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `training_shards.json` (last: it marks the directory complete) and return it."""
    shards = sorted(shards, key=lambda entry: entry["first_row"])
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "row_length": row_length,
        "rows": sum(entry["rows"] for entry in shards),
        "pad_tokens": sum(entry["pad_tokens"] for entry in shards),
        "bytes": sum(sum(entry["bytes"].values()) for entry in shards),
        "shards": shards,
        **(extra or {}),
    }
    manifest["bytes_per_token"] = manifest["bytes"] / max(manifest["rows"] * row_length, 1)
    atomic_write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def is_training_shard_dir(path: str | os.PathLike[str]) -> bool:
    """True where `path` is a directory holding a training-shard manifest."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ShardFormatError(str(path), "no training-shard manifest", "run `glm-corpus mask` to build one")
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ShardFormatError(str(path), f"not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise ShardFormatError(str(path), f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise ShardFormatError(str(path), f"unsupported version {manifest.get('version')}")
    return manifest


class _Shard:
    """One opened shard: a memmap of its tokens, its recipe, and (lazily) its provenance."""

    def __init__(self, directory: Path, name: str, row_length: int) -> None:
        self.prefix = directory / name
        self.recipe = read_recipe(str(self.prefix) + RECIPE_SUFFIX)
        if self.recipe.row_length != row_length:
            raise ShardFormatError(
                str(self.prefix) + RECIPE_SUFFIX,
                f"row length {self.recipe.row_length}, the manifest says {row_length}",
            )
        tokens_path = Path(str(self.prefix) + TOKENS_SUFFIX)
        if not tokens_path.exists():
            raise ShardFormatError(str(tokens_path), "tokens file does not exist")
        expected = self.recipe.rows * row_length * TOKEN_DTYPE.itemsize
        if tokens_path.stat().st_size != expected:
            raise ShardFormatError(
                str(tokens_path),
                f"holds {tokens_path.stat().st_size} bytes, the recipe describes {expected}",
                "truncated or overwritten; rebuild this shard",
            )
        if expected:
            with open(tokens_path, "rb") as handle:
                self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self.tokens = np.frombuffer(self._mmap, dtype=TOKEN_DTYPE).reshape(self.recipe.rows, row_length)
        else:
            self.tokens = np.zeros((0, row_length), dtype=TOKEN_DTYPE)

    @cached_property
    def provenance(self) -> dict[str, list[Any]]:
        path = Path(str(self.prefix) + PROVENANCE_SUFFIX)
        if not path.exists():
            raise ShardFormatError(str(path), "provenance sidecar does not exist")
        table = pq.read_table(path)
        if table.num_rows != self.recipe.segments:
            raise ShardFormatError(
                str(path), f"{table.num_rows} provenance rows for {self.recipe.segments} segments"
            )
        return {
            name: table.column(name).to_pylist()
            for name in ("kind", "source", "doc_ids", "doc_offsets", "doc_tokens", "template")
        }

    def gather(self, local_rows: np.ndarray) -> tuple[RowRecipes, np.ndarray]:
        """The recipes of `local_rows` (in that order) and the shard indices of their segments."""
        recipe = self.recipe
        first_segment = recipe.row_segment_pointer[local_rows]
        segment_counts = recipe.row_segment_pointer[local_rows + 1] - first_segment
        segment_index = _ranges(first_segment, segment_counts)
        first_span = recipe.segment_span_pointer[segment_index]
        span_counts = recipe.segment_span_pointer[segment_index + 1] - first_span
        span_index = _ranges(first_span, span_counts)
        recipes = RowRecipes(
            tokens=self.tokens[local_rows],
            segment_row=np.repeat(np.arange(len(local_rows)), segment_counts),
            segment_start=recipe.segment_start[segment_index],
            segment_sep=recipe.segment_sep[segment_index],
            segment_end=recipe.segment_end[segment_index],
            segment_kind=recipe.segment_kind[segment_index],
            segment_span_count=span_counts,
            span_mask_position=recipe.span_mask_position[span_index],
            span_length=recipe.span_length[span_index],
        )
        return recipes, segment_index




def _concat_recipes(parts: list[RowRecipes]) -> RowRecipes:
    row_offsets = np.cumsum([0] + [len(p.tokens) for p in parts[:-1]])
    return RowRecipes(
        tokens=np.concatenate([p.tokens for p in parts]),
        segment_row=np.concatenate([p.segment_row + off for p, off in zip(parts, row_offsets)]),
        **{
            field: np.concatenate([getattr(p, field) for p in parts])
            for field in (
                "segment_start",
                "segment_sep",
                "segment_end",
                "segment_kind",
                "segment_span_count",
                "span_mask_position",
                "span_length",
            )
        },
    )


def _reorder_rows(recipes: RowRecipes, order: np.ndarray) -> tuple[RowRecipes, np.ndarray]:
    """Rows in the order `order` (output row i = input row order[i]) with their segments and spans, and the
    input index of every output segment."""
    counts = np.bincount(recipes.segment_row, minlength=len(recipes.tokens))
    first = np.cumsum(counts) - counts
    segment_index = _ranges(first[order], counts[order])
    span_counts = np.asarray(recipes.segment_span_count, dtype=np.int64)
    span_first = np.cumsum(span_counts) - span_counts
    span_index = _ranges(span_first[segment_index], span_counts[segment_index])
    reordered = RowRecipes(
        tokens=recipes.tokens[order],
        segment_row=np.repeat(np.arange(len(order)), counts[order]),
        segment_start=recipes.segment_start[segment_index],
        segment_sep=recipes.segment_sep[segment_index],
        segment_end=recipes.segment_end[segment_index],
        segment_kind=recipes.segment_kind[segment_index],
        segment_span_count=span_counts[segment_index],
        span_mask_position=recipes.span_mask_position[span_index],
        span_length=recipes.span_length[span_index],
    )
    return reordered, segment_index


class TrainingShards:
    """Read a training-shard directory as one list of 2048-token GLM rows (DESIGN §10).

        shards = TrainingShards("out/train")
        batch = shards.batch([0, 17, 42])   # tokens, targets, loss_mask, position_ids, block_position_ids
                                            # [B, L]; segments [B, S, 3]; provenance (per row, per segment)

    Shards are memory-mapped; provenance sidecars are read on first use.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.row_length = int(self.manifest["row_length"])
        self._shards = [
            _Shard(self.path, entry["name"], self.row_length) for entry in self.manifest["shards"]
        ]
        self._first_rows = np.array([int(entry["first_row"]) for entry in self.manifest["shards"]], np.int64)
        for shard, first in zip(self._shards, self._first_rows.tolist()):
            if shard.recipe.first_row != first:
                raise ShardFormatError(
                    str(shard.prefix) + RECIPE_SUFFIX,
                    f"first row {shard.recipe.first_row}, the manifest says {first}",
                )
        self._rows = int(self.manifest["rows"])

    def __len__(self) -> int:
        return self._rows

    @property
    def stats(self) -> dict[str, Any]:
        """The masking report written beside the shards (empty if absent)."""
        path = self.path / "stats.json"
        return orjson.loads(path.read_bytes()) if path.exists() else {}

    def recipes(self, rows: Sequence[int] | np.ndarray) -> tuple[RowRecipes, np.ndarray, np.ndarray]:
        """The stored recipes of `rows` in the given order, and for every segment its (shard, index in shard)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            raise IndexError("a batch needs at least one row")
        if rows.min() < 0 or rows.max() >= self._rows:
            bad = int(rows[(rows < 0) | (rows >= self._rows)][0])
            raise IndexError(f"row {bad} out of range 0..{self._rows - 1}")
        shard_of = np.searchsorted(self._first_rows, rows, side="right") - 1
        if (shard_of == shard_of[0]).all():
            number = int(shard_of[0])
            recipes, segments = self._shards[number].gather(rows - self._first_rows[number])
            return recipes, np.full(len(segments), number, dtype=np.int64), segments
        grouped = np.argsort(shard_of, kind="stable")  # rows grouped by shard
        parts, owner_shard, owner_index = [], [], []
        for number in np.unique(shard_of).tolist():
            chosen = grouped[shard_of[grouped] == number]
            recipes, segments = self._shards[number].gather(rows[chosen] - self._first_rows[number])
            parts.append(recipes)
            owner_shard.append(np.full(len(segments), number, dtype=np.int64))
            owner_index.append(segments)
        order = np.empty(len(rows), dtype=np.int64)
        order[grouped] = np.arange(len(rows))  # output row i is grouped row order[i]
        merged, segment_index = _reorder_rows(_concat_recipes(parts), order)
        return merged, np.concatenate(owner_shard)[segment_index], np.concatenate(owner_index)[segment_index]

    def batch(self, rows: Sequence[int] | np.ndarray, provenance: bool = True) -> dict[str, Any]:
        """The §4 arrays of `rows` (in the given order), rebuilt in vectorized numpy, plus provenance."""
        recipes, owner_shard, owner_index = self.recipes(rows)
        out = reconstruct_batch(recipes)
        if provenance:
            out["provenance"] = self._provenance(recipes, owner_shard, owner_index)
        return out

    def provenance(self, rows: Sequence[int] | np.ndarray) -> list[list[dict[str, Any]]]:
        """Only the provenance of `rows` (per row, per segment), without rebuilding any array (for audits)."""
        recipes, owner_shard, owner_index = self.recipes(rows)
        return self._provenance(recipes, owner_shard, owner_index)

    def provenance_table(self) -> pa.Table:
        """Every segment's provenance as one Arrow table (PROVENANCE_SCHEMA, `row` global), in row order."""
        tables = [pq.read_table(str(shard.prefix) + PROVENANCE_SUFFIX) for shard in self._shards]
        return pa.concat_tables(tables) if tables else PROVENANCE_SCHEMA.empty_table()

    def reference_batch(self, rows: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Like `batch` (without provenance), built by the plain per-segment loop (for tests and verify)."""
        return reconstruct_reference(self.recipes(rows)[0])

    def _provenance(
        self, recipes: RowRecipes, owner_shard: np.ndarray, owner_index: np.ndarray
    ) -> list[list[dict[str, Any]]]:
        rows: list[list[dict[str, Any]]] = [[] for _ in range(len(recipes.tokens))]
        for row, number, s in zip(recipes.segment_row.tolist(), owner_shard.tolist(), owner_index.tolist()):
            columns = self._shards[number].provenance
            entry = {
                "kind": columns["kind"][s],
                "source": columns["source"][s],
                "doc_ids": list(columns["doc_ids"][s]),
                "doc_offsets": list(columns["doc_offsets"][s]),
                "doc_tokens": list(columns["doc_tokens"][s]),
            }
            if columns["template"][s]:
                entry["template"] = columns["template"][s]
            rows[row].append(entry)
        return rows


# ------------------------------------------------------------------------------------------------- verify


def _fail(
    path: Any, problem: str, hint: str = "the shard is corrupt; rebuild it with `glm-corpus mask`"
) -> None:
    raise ShardFormatError(str(path), problem, hint)


def _check_structure(shard: _Shard, is_last_shard: bool) -> dict[str, int]:
    """The §4 layout invariants over every row of one shard, vectorized; ShardFormatError on the first breach."""
    recipe = shard.recipe
    where = str(shard.prefix) + RECIPE_SUFFIX
    length = recipe.row_length
    rsp = np.asarray(recipe.row_segment_pointer, dtype=np.int64)
    ssp = np.asarray(recipe.segment_span_pointer, dtype=np.int64)
    rows, segments, spans = recipe.rows, recipe.segments, recipe.spans
    if rsp[0] != 0 or rsp[-1] != segments or (np.diff(rsp) < 1).any():
        _fail(
            where,
            "row-segment pointers are not increasing from 0 to the segment count (every row needs a segment)",
        )
    if ssp[0] != 0 or ssp[-1] != spans or (np.diff(ssp) < 1).any():
        _fail(
            where,
            "segment-span pointers are not increasing from 0 to the span count (every segment needs a span)",
        )
    start = recipe.segment_start.astype(np.int64)
    sep = recipe.segment_sep.astype(np.int64)
    end = recipe.segment_end.astype(np.int64)
    kind = recipe.segment_kind
    if (kind >= len(KIND_NAMES)).any():
        _fail(where, f"unknown segment kind code {int(kind.max())}")
    if not ((start < sep) & (sep < end) & (end <= length)).all():
        bad = int(np.argmax(~((start < sep) & (sep < end) & (end <= length))))
        _fail(
            where,
            f"segment {bad} ({start[bad]}, {sep[bad]}, {end[bad]}) is not start < sep < end <= {length}",
        )
    first_of_row = rsp[:-1]
    last_of_row = rsp[1:] - 1
    if (start[first_of_row] != 0).any():
        _fail(where, "a row does not begin with a segment at position 0")
    follows = np.ones(segments, dtype=bool)
    follows[first_of_row] = False
    if (start[follows] != end[np.flatnonzero(follows) - 1]).any():
        _fail(where, "segments of a row do not tile it (a gap or an overlap between consecutive segments)")
    row_end = end[last_of_row]
    padded = np.flatnonzero(row_end != length)
    if len(padded) and not (is_last_shard and padded.tolist() == [rows - 1]):
        _fail(where, f"row {int(padded[0])} is padded but is not the dataset's final row")
    pad = int(length - row_end[-1]) if rows else 0
    if pad != recipe.pad_tokens:
        _fail(where, f"header records {recipe.pad_tokens} padding tokens, the rows have {pad}")
    span_count = np.diff(ssp)
    span_segment = np.repeat(np.arange(segments), span_count)
    span_length = recipe.span_length.astype(np.int64)
    part_b = np.bincount(span_segment, weights=span_length + 1, minlength=segments).astype(np.int64)
    if (part_b != end - sep).any():
        bad = int(np.argmax(part_b != end - sep))
        _fail(
            where,
            f"segment {bad}: its spans fill {part_b[bad]} Part-B tokens, the segment has {end[bad] - sep[bad]}",
        )
    mask_position = recipe.span_mask_position.astype(np.int64)
    if not ((mask_position >= start[span_segment]) & (mask_position < sep[span_segment])).all():
        _fail(where, "a span's mask token lies outside its segment's Part A")
    single = kind != KIND_MASK
    if (span_count[single] != 1).any() or (mask_position[ssp[:-1][single]] != sep[single] - 1).any():
        _fail(where, "a [gMASK]/MIP segment must have one span whose [gMASK] is the last token of Part A")

    tokens = shard.tokens.reshape(-1)
    row_of_span = np.repeat(np.arange(rows), np.diff(rsp))[span_segment]
    flat_mask = row_of_span * length + mask_position
    expected_mask = np.where(kind[span_segment] == KIND_MASK, MASK, GMASK)
    if (tokens[flat_mask] != expected_mask).any():
        bad = int(np.argmax(tokens[flat_mask] != expected_mask))
        _fail(
            where,
            f"span {bad}: the token at its mask position is {int(tokens[flat_mask][bad])}, "
            f"expected {int(expected_mask[bad])}",
        )
    sizes = span_length + 1
    offset_in_b = np.cumsum(sizes) - sizes
    offset_in_b -= offset_in_b[ssp[:-1]][span_segment]
    flat_sop = (np.repeat(np.arange(rows), np.diff(rsp)) * length + sep)[span_segment] + offset_in_b
    if (tokens[flat_sop] != SOP).any():
        _fail(where, f"Part-B block {int(np.argmax(tokens[flat_sop] != SOP))} does not begin with [sop]")
    counts = {code: int(np.count_nonzero(tokens == code)) for code in (MASK, GMASK, SOP)}
    expected_counts = {
        MASK: int(np.count_nonzero(kind[span_segment] == KIND_MASK)),
        GMASK: int(np.count_nonzero(single)),
        SOP: spans,
    }
    for code, name in ((MASK, "[MASK]"), (GMASK, "[gMASK]"), (SOP, "[sop]")):
        if counts[code] != expected_counts[code]:
            _fail(
                where,
                f"the rows hold {counts[code]} {name} tokens, the recipe places {expected_counts[code]}",
            )
    masked = kind[span_segment] == KIND_MASK
    span_tokens = _ranges(flat_sop[masked] + 1, span_length[masked])
    if len(span_tokens) and (tokens[span_tokens] == EOD).any():
        _fail(where, "a [MASK] span contains <eod>: spans must not cross a document boundary")
    if pad and (shard.tokens[-1, length - pad :] != PAD).any():
        _fail(where, "padding tokens are not PAD (0)")
    return {"rows": rows, "segments": segments, "spans": spans, "pad_tokens": pad}


def _check_sample(shards: TrainingShards, rows: np.ndarray) -> None:
    """Vectorized loader == reference loop on sample rows, and the §4 relations between the arrays."""
    batch = shards.batch(rows)
    reference = shards.reference_batch(rows)
    for key in ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids", "segments"):
        if not np.array_equal(batch[key], reference[key]):
            _fail(
                shards.path,
                f"rows {rows[:8].tolist()}...: the vectorized loader and the reference disagree on {key}",
                "a bug in kernels/reconstruct.py or a corrupt recipe",
            )
    for i, row_provenance in enumerate(batch["provenance"]):
        valid = batch["segments"][i][batch["segments"][i][:, 0] >= 0]
        if len(row_provenance) != len(valid):
            _fail(
                shards.path,
                f"row {int(rows[i])}: {len(row_provenance)} provenance entries for {len(valid)} segments",
            )
        for entry in row_provenance:
            if entry["kind"] not in KIND_NAMES or not entry["doc_ids"]:
                _fail(
                    shards.path, f"row {int(rows[i])}: provenance entry {entry} lacks a kind or document ids"
                )
    in_b = batch["block_position_ids"] > 0
    if not np.array_equal(batch["loss_mask"] > 0, in_b):
        _fail(shards.path, "loss is not exactly on Part B")


def _segment_text(tokens: np.ndarray, positions: np.ndarray, blocks: np.ndarray, start: int, sep: int,
                  end: int) -> np.ndarray:
    """The text a segment was made from: Part A with each mask token replaced by its Part-B span."""
    part_a = tokens[start:sep]
    block_starts = [*(np.flatnonzero(blocks[sep:end] == 1) + sep).tolist(), end]
    spans = {int(positions[b]): tokens[b + 1 : e] for b, e in zip(block_starts[:-1], block_starts[1:])}
    pieces, previous = [], 0
    for mask_index in sorted(spans):
        pieces += [part_a[previous:mask_index], spans[mask_index]]
        previous = mask_index + 1
    pieces.append(part_a[previous:])
    return np.concatenate(pieces)


def _check_provenance(shards: TrainingShards, rows: np.ndarray, inputs: dict[str, Any]) -> dict[str, Any]:
    """On sample rows: every segment's text equals the document pieces its provenance names, read from
    the token and MIP shards the masking stage recorded (skipped when those shards are not at hand)."""
    from shards.token_shards import TokenShards, shard_files

    fingerprint = inputs.get("fingerprint") or []
    missing = [f["shard"] for f in fingerprint if not shard_files(f["shard"])["idx"].exists()]
    if not fingerprint or missing:
        return {"checked_segments": 0, "skipped": f"input shards not found: {missing[:3] or 'none recorded'}"}
    batch = shards.batch(rows)
    wanted = {d for row in batch["provenance"] for entry in row for d in entry["doc_ids"]}
    documents: dict[str, np.ndarray] = {}
    for entry in fingerprint:
        record = orjson.loads(shard_files(entry["shard"])["checksum"].read_bytes())
        if record.get("bin_xxh3_128") != entry["bin_xxh3_128"]:
            _fail(entry["shard"] + ".bin", "changed since the training shards were made from it",
                  "re-run the masking stage, or restore the token shard it read")
        token_shard = TokenShards(entry["shard"])
        for index, doc_id in enumerate(token_shard.provenance.column("doc_id").to_pylist()):
            if doc_id in wanted:
                documents[doc_id] = np.asarray(token_shard[index])
    checked = 0
    for i, row in enumerate(batch["provenance"]):
        table = batch["segments"][i]
        for (start, sep, end), entry in zip(table[table[:, 0] >= 0].tolist(), row):
            absent = [d for d in entry["doc_ids"] if d not in documents]
            if absent:
                _fail(shards.path, f"row {int(rows[i])}: provenance names {absent[0]!r}, in none of the input shards")
            pieces = [documents[d][o : o + n]
                      for d, o, n in zip(entry["doc_ids"], entry["doc_offsets"], entry["doc_tokens"])]
            text = _segment_text(batch["tokens"][i], batch["position_ids"][i], batch["block_position_ids"][i],
                                 start, sep, end)
            if not np.array_equal(text, np.concatenate(pieces)):
                _fail(shards.path, f"row {int(rows[i])}, segment at {start}: its text is not the document pieces "
                      f"its provenance names ({entry['doc_ids'][0]!r}...)")
            checked += 1
    return {"checked_segments": checked}


def verify_training_shards(
    path: str | os.PathLike[str], sample_rows: int = 64, check_hash: bool = True, seed: int = 0
) -> dict[str, Any]:
    """Check a training-shard directory; return what was checked, or raise ShardFormatError on the first problem.

    Checks: the manifest; every shard's files, sizes and xxh3-128 checksums; the recipe headers and counts; the
    §4 layout over every row (segments tile rows, Part B = the spans' blocks, mask tokens and [sop] where the
    recipe puts them, no <eod> inside a [MASK] span, padding only at the end of the final row); and on
    `sample_rows` rows, the vectorized loader against the reference loop.
    """
    path = Path(path)
    manifest = read_manifest(path)
    entries = manifest["shards"]
    expected_first = 0
    totals = {"rows": 0, "segments": 0, "spans": 0, "pad_tokens": 0, "bytes": 0}
    for entry in entries:
        prefix = path / entry["name"]
        for part, suffix in zip(("tokens", "recipe", "provenance"), SHARD_SUFFIXES):
            file = Path(str(prefix) + suffix)
            if not file.exists():
                _fail(file, f"{part} file listed in the manifest does not exist")
            if file.stat().st_size != entry["bytes"][part]:
                _fail(
                    file,
                    f"holds {file.stat().st_size} bytes, the manifest records {entry['bytes'][part]}",
                    "truncated or overwritten; rebuild this shard",
                )
            if check_hash and hash_file(file) != entry["xxh3_128"][part]:
                _fail(
                    file, f"checksum mismatch (recorded {entry['xxh3_128'][part]}, found {hash_file(file)})"
                )
            totals["bytes"] += entry["bytes"][part]
        if entry["first_row"] != expected_first:
            _fail(
                path / MANIFEST,
                f"shard {entry['name']} starts at row {entry['first_row']}, expected {expected_first}",
            )
        expected_first += entry["rows"]
    shards = TrainingShards(path)
    for number, shard in enumerate(shards._shards):
        entry = entries[number]
        counts = _check_structure(shard, is_last_shard=number == len(entries) - 1)
        for key in ("rows", "segments", "spans", "pad_tokens"):
            if counts[key] != entry[key]:
                _fail(
                    str(shard.prefix) + RECIPE_SUFFIX,
                    f"{key}: {counts[key]}, the manifest records {entry[key]}",
                )
            totals[key] += counts[key]
        provenance_rows = pq.ParquetFile(str(shard.prefix) + PROVENANCE_SUFFIX).metadata.num_rows
        if provenance_rows != counts["segments"]:
            _fail(
                str(shard.prefix) + PROVENANCE_SUFFIX,
                f"{provenance_rows} provenance rows for {counts['segments']} segments",
            )
    if totals["rows"] != manifest["rows"]:
        _fail(path / MANIFEST, f"records {manifest['rows']} rows, the shards hold {totals['rows']}")
    sampled = 0
    provenance: dict[str, Any] = {"checked_segments": 0}
    if totals["rows"]:
        generator = np.random.default_rng(seed)
        count = min(sample_rows, totals["rows"])
        rows = np.unique(
            np.concatenate(
                [generator.choice(totals["rows"], size=count, replace=False), [totals["rows"] - 1]]
            )
        )
        _check_sample(shards, rows)
        provenance = _check_provenance(shards, rows, manifest.get("inputs") or {})
        sampled = len(rows)
    tokens = totals["rows"] * manifest["row_length"]
    return {
        "path": str(path),
        "shards": len(entries),
        **totals,
        "bytes_per_token": totals["bytes"] / max(tokens, 1),
        "sampled_rows": sampled,
        "provenance": provenance,
        "checksums": check_hash,
        "ok": True,
    }
