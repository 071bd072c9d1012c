"""The on-disk shuffle of the global dedup: each map task writes one run file per column, partition-major.

A map task (one work shard) writes, for every column, one raw little-endian file holding its entries
sorted by partition (and, for band keys, by band within a partition), plus `offsets.npy`: int64
[partitions, groups + 1], the absolute entry positions where each (partition, group) run starts.
A reduce task reads its partition's contiguous range from every map task's files, one read per column
per map task, so no process ever holds more than one partition of the shuffle, and no file handle stays
open between reads (a cluster-sized run has tens of thousands of map files).

    <dir>/<map:08d>.<column>   raw entries, dtype given by the writer
    <dir>/<map:08d>.offsets.npy

This is the Spark-style layout (one data file and one index per map task), not one file per
(map, partition) pair, which would be maps x partitions files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from common.atomic import atomic_path

OFFSETS = "offsets.npy"


def map_file(directory: str | Path, map_index: int, column: str) -> Path:
    return Path(directory) / f"{map_index:08d}.{column}"


def write_runs(directory: str | Path, map_index: int, columns: Mapping[str, np.ndarray], offsets: np.ndarray) -> None:
    """Save one map task's entries (already in partition-major order) and their run offsets."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    for name, values in columns.items():
        with atomic_path(map_file(directory, map_index, name)) as tmp:
            values.astype(values.dtype.newbyteorder("<"), copy=False).tofile(tmp)
    with atomic_path(map_file(directory, map_index, OFFSETS)) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.asarray(offsets, dtype=np.int64))


def read_partition(
    directory: str | Path, map_index: int, partition: int, dtypes: Mapping[str, np.dtype | str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One partition of one map task: its columns, and its group offsets relative to the first entry."""
    offsets = np.load(map_file(directory, map_index, OFFSETS))[partition]
    lo, hi = int(offsets[0]), int(offsets[-1])
    columns = {}
    for name, dtype in dtypes.items():
        dtype = np.dtype(dtype).newbyteorder("<")
        columns[name] = np.fromfile(map_file(directory, map_index, name), dtype=dtype, count=hi - lo,
                                    offset=lo * dtype.itemsize)
    return columns, offsets - lo


def partition_order(partition: np.ndarray, partitions: int, groups: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(order, offsets) that sort entries by partition, stably, and the run offsets of that order.

    The entries are `groups` equal consecutive groups (for band keys: all documents of band 0, then of
    band 1, ...). The stable sort keeps the groups in order within each partition, which is what a
    band-by-band reducer reads. `offsets` is int64 [partitions, groups + 1], absolute positions.
    """
    part = partition.astype(np.uint16 if partitions <= 1 << 16 else np.uint32)
    order = np.argsort(part, kind="stable")
    size = len(part) // groups if groups else 0
    counts = np.zeros((partitions, groups), dtype=np.int64)
    for g in range(groups):
        counts[:, g] = np.bincount(part[g * size : (g + 1) * size], minlength=partitions)
    offsets = np.zeros((partitions, groups + 1), dtype=np.int64)
    np.cumsum(counts, axis=1, out=offsets[:, 1:])
    offsets += np.concatenate([[0], np.cumsum(offsets[:, -1])[:-1]])[:, None]
    return order, offsets
