"""Export training rows to Parquet in the layout Hugging Face `datasets` loads (`glm-corpus export`).

    OUT/train-00000-of-00003.parquet ...   one table row per training row, EXPORT_SCHEMA, zstd
    OUT/export.json                        what was exported (written last: the export is complete)

    datasets.load_dataset("parquet", data_files="OUT/*.parquet", split="train")

Files follow the Hub's `{split}-NNNNN-of-NNNNN` naming, so `load_dataset(OUT)` finds the `train` split too.
Rows are read `row_group_rows` at a time (one vectorized `TrainingShards.batch` call each) and written as one
Parquet row group, so memory stays bounded whatever the size of the run. Every file is written under a
temporary name and renamed when complete (common/atomic.py); files of an earlier export in OUT that this one
does not write are removed, so a glob never mixes two exports.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from common.atomic import atomic_path, atomic_write_json
from common.errors import ConfigError
from common.progress import Progress
from shards.training_shards import TrainingShards

EXPORT_FORMAT = "glm-corpus/parquet-export"
EXPORT_VERSION = 1
EXPORT_MANIFEST = "export.json"
SPLIT = "train"
FILE_PATTERN = re.compile(rf"^{SPLIT}-\d{{5}}-of-\d{{5}}\.parquet$")

# column name in the export -> key of `TrainingShards.batch` (HF's names for the ids and targets)
ROW_COLUMNS = {
    "input_ids": "tokens",
    "labels": "targets",
    "loss_mask": "loss_mask",
    "position_ids": "position_ids",
    "block_position_ids": "block_position_ids",
}


def export_schema(provenance: bool = True) -> pa.Schema:
    """The export's columns: `row`, the [L] arrays as lists, `segments` [[start, sep, end], ...], provenance."""
    fields = [pa.field("row", pa.int64())]
    for name, key in ROW_COLUMNS.items():
        fields.append(pa.field(name, pa.list_(pa.float32() if key == "loss_mask" else pa.int32())))
    fields.append(pa.field("segments", pa.list_(pa.list_(pa.int32()))))
    if provenance:
        fields.append(pa.field("provenance", pa.string()))
    return pa.schema(fields)


def file_name(index: int, count: int) -> str:
    return f"{SPLIT}-{index:05d}-of-{count:05d}.parquet"


def parse_row_range(text: str | None, rows: int) -> tuple[int, int]:
    """`A:B` -> [A, B) (B exclusive); `A:` and `:B` leave a side open; `N` alone means `0:N`; None: all."""
    if text is None:
        return 0, rows
    first, sep, last = text.partition(":")
    try:
        start = int(first) if first.strip() else 0
        end = int(last) if last.strip() else rows
        if not sep:
            start, end = 0, int(first)
    except ValueError:
        raise ConfigError(f"--rows {text!r}: expected A:B (0-based, B exclusive), A:, :B or N") from None
    if not 0 <= start < end <= rows:
        raise ConfigError(f"--rows {text!r}: not a nonempty range within the {rows} rows (0:{rows})")
    return start, end


def _lists(flat: np.ndarray, width: int, count: int) -> pa.ListArray:
    """`count` lists of `width` values each from a flat array (zero-copy values, computed offsets)."""
    offsets = pa.array(np.arange(0, (count + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(flat).reshape(-1)))


def rows_table(batch: dict[str, Any], rows: np.ndarray, schema: pa.Schema) -> pa.Table:
    """One Arrow table of `rows` from their `TrainingShards.batch` arrays, built without a per-row loop."""
    count, length = batch["tokens"].shape
    columns: dict[str, pa.Array] = {"row": pa.array(np.asarray(rows, dtype=np.int64))}
    for name, key in ROW_COLUMNS.items():
        columns[name] = _lists(batch[key], length, count)
    segments = batch["segments"]
    valid = segments[:, :, 0] >= 0  # the -1 padding rows of the table are dropped
    per_row = valid.sum(axis=1)
    triples = _lists(segments[valid].astype(np.int32), 3, int(per_row.sum()))
    outer = pa.array(np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32))
    columns["segments"] = pa.ListArray.from_arrays(outer, triples)
    if "provenance" in schema.names:
        columns["provenance"] = pa.array([orjson.dumps(entry).decode() for entry in batch["provenance"]])
    return pa.Table.from_pydict(columns, schema=schema)


def export_training_rows(
    train: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    rows: tuple[int, int] | None = None,
    rows_per_file: int = 16384,
    row_group_rows: int = 512,
    provenance: bool = True,
    compression: str = "zstd",
    progress: bool = True,
) -> dict[str, Any]:
    """Write rows [A, B) of the training shards in `train` to Parquet files in `out`; return the summary."""
    if rows_per_file < 1 or row_group_rows < 1:
        raise ConfigError(
            f"rows per file ({rows_per_file}) and per row group ({row_group_rows}) must be >= 1"
        )
    began = time.perf_counter()
    shards = TrainingShards(train)
    start, end = rows if rows is not None else (0, len(shards))
    if not 0 <= start < end <= len(shards):
        raise ConfigError(f"rows {start}:{end} are not a nonempty range within the {len(shards)} rows")
    if row_group_rows * shards.row_length >= 2**31:
        raise ConfigError(f"row groups of {row_group_rows} rows exceed Arrow's 32-bit list offsets")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_MANIFEST).unlink(missing_ok=True)  # the directory is incomplete until it is rewritten
    schema = export_schema(provenance).with_metadata(
        {
            "glm_corpus": orjson.dumps(
                {
                    "format": EXPORT_FORMAT,
                    "version": EXPORT_VERSION,
                    "row_length": shards.row_length,
                    "source": str(train),
                }
            )
        }
    )
    count = -(-(end - start) // rows_per_file)
    files: list[dict[str, Any]] = []
    row_groups = 0
    with Progress("export", total=end - start, unit="row", enabled=progress) as bar:
        for index in range(count):
            first = start + index * rows_per_file
            last = min(first + rows_per_file, end)
            final = out / file_name(index, count)
            with atomic_path(final) as tmp, pq.ParquetWriter(tmp, schema, compression=compression) as writer:
                for group in range(first, last, row_group_rows):
                    chosen = np.arange(group, min(group + row_group_rows, last), dtype=np.int64)
                    batch = shards.batch(chosen, provenance=provenance)
                    writer.write_table(rows_table(batch, chosen, schema), row_group_size=len(chosen))
                    row_groups += 1
                    bar.update(len(chosen), tokens=len(chosen) * shards.row_length)
            files.append(
                {"name": final.name, "first_row": first, "rows": last - first, "bytes": final.stat().st_size}
            )
    written = {entry["name"] for entry in files}
    stale = sorted(p.name for p in out.iterdir() if FILE_PATTERN.match(p.name) and p.name not in written)
    for name in stale:
        (out / name).unlink()
    summary: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "train": str(train),
        "out": str(out),
        "rows": end - start,
        "first_row": start,
        "end_row": end,
        "row_length": shards.row_length,
        "row_groups": row_groups,
        "bytes": sum(entry["bytes"] for entry in files),
        "columns": schema.names,
        "files": files,
        "removed_stale": stale,
    }
    atomic_write_json(out / EXPORT_MANIFEST, summary)
    seconds = time.perf_counter() - began
    return {**summary, "seconds": seconds, "rows_per_second": (end - start) / max(seconds, 1e-9)}


def render_export(summary: dict[str, Any]) -> str:
    """The summary `glm-corpus export` prints."""
    return (
        f"exported rows {summary['first_row']}:{summary['end_row']} ({summary['rows']} rows) of "
        f"{summary['train']} to {len(summary['files'])} Parquet file(s) in {summary['out']} "
        f"({summary['bytes'] / 1e6:.1f} MB, {summary['row_groups']} row groups, "
        f"{summary['rows_per_second']:.0f} rows/s)\n"
        f"columns: {', '.join(summary['columns'])}\n"
        f'load with: datasets.load_dataset("parquet", data_files="{summary["out"]}/*.parquet", '
        f'split="train")'
    )
