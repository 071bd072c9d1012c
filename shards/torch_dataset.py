"""A `torch.utils.data.IterableDataset` over a training-shard directory, for users' own trainers.

    dataset = TrainingRowDataset("out/train", batch_size=8, seed=7)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for batch in loader:   # tokens targets loss_mask position_ids block_position_ids [8, 2048],
            ...                # segments [8, S, 3], row [8]

Order. Epoch e visits the rows in the Philox permutation keyed by (seed, e) (the reference trainer's
`trainer.data.epoch_permutation`). Rank r of R takes every R-th row of it (order[r::R]); its rows are cut
into units (batches of `batch_size`, or single rows) and DataLoader worker w of W yields units w, w + W, ...
A DataLoader returns its workers' items round robin, so a rank's stream is the same for any `num_workers`,
and every row appears exactly once per epoch across all ranks and workers. With `batch_size=G/R` the rows of
step s over all ranks are the trainer's step s (`trainer.data.rows_for_step`), so `glm-corpus audit --steps`
describes what such a run saw (within the first epoch).

Speed. A worker reads `read_rows` rows per `TrainingShards.batch` call (one vectorized rebuild) and slices
its units out of it; it never rebuilds row by row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from torch.utils.data import IterableDataset, get_worker_info

from common.errors import ConfigError
from kernels.attention_mask import dense_attention_mask
from kernels.reconstruct import BATCH_ARRAYS
from shards.training_shards import RECIPE_SUFFIX, TrainingShards, read_manifest, read_recipe


def epoch_order(rows: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Every row index once: the Philox permutation keyed by (seed, epoch), or 0..rows-1 unshuffled."""
    if not shuffle:
        return np.arange(rows, dtype=np.int64)
    generator = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, epoch])))
    return generator.permutation(rows).astype(np.int64)


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of torch.distributed when it is initialized, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def max_row_segments(path: str | os.PathLike[str]) -> int:
    """The most segments any row of the directory has (from the recipes' pointers; no row is rebuilt)."""
    manifest = read_manifest(path)
    most = 1
    for entry in manifest["shards"]:
        pointer = read_recipe(Path(path) / (entry["name"] + RECIPE_SUFFIX)).row_segment_pointer
        if len(pointer) > 1:
            most = max(most, int(np.diff(pointer).max()))
    return most


class TrainingRowDataset(IterableDataset):
    """GLM training rows as dicts of torch tensors, split over DataLoader workers and distributed ranks.

    Each item has `row` (global row index, int64), the [L] arrays of `TrainingShards.batch` (int32; `loss_mask`
    float32) and `segments` [max_segments, 3] int32 padded with -1 (a fixed width, so DataLoader's default
    collate can stack rows); with `batch_size` every value gains a leading batch dimension. Options:
    `attention_mask` adds the dense bool [L, L] mask of `kernels.dense_attention_mask` (O(L^2) per row, off by
    default); `provenance` adds each row's provenance as a JSON string. `even_ranks` drops the last
    rows % world_size rows of each epoch's order so all ranks yield the same count (DDP needs equal steps).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        even_ranks: bool = False,
        attention_mask: bool = False,
        provenance: bool = False,
        max_segments: int | None = None,
        read_rows: int = 256,
    ) -> None:
        super().__init__()
        if (rank is None) != (world_size is None):
            raise ConfigError("give both rank and world_size, or neither (torch.distributed's are used)")
        if rank is None or world_size is None:
            rank, world_size = distributed_rank()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if read_rows < 1:
            raise ConfigError(f"read_rows must be at least 1, got {read_rows}")
        self.path = Path(path)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.even_ranks = even_ranks
        self.attention_mask = attention_mask
        self.provenance = provenance
        self.read_rows = read_rows
        self._shards: TrainingShards | None = TrainingShards(self.path)
        self.rows = len(self._shards)
        self.row_length = self._shards.row_length
        self.max_segments = max_segments if max_segments is not None else max_row_segments(self.path)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (call before iterating; a DataLoader copies the dataset to its workers at
        `iter(loader)`, so with `persistent_workers=True` the change would not reach them)."""
        self.epoch = epoch

    def rank_rows(self) -> np.ndarray:
        """This rank's rows of the current epoch, in the order it yields them."""
        order = epoch_order(self.rows, self.seed, self.epoch, self.shuffle)
        if self.even_ranks:
            order = order[: len(order) - len(order) % self.world_size]
        return order[self.rank :: self.world_size]

    def _unit_size(self) -> int:
        return self.batch_size or 1

    def _units(self, rows: int) -> int:
        size = self._unit_size()
        return rows // size if self.drop_last and self.batch_size else -(-rows // size)

    def __len__(self) -> int:
        """Items this rank yields per epoch (rows, or batches with `batch_size`), over all its workers."""
        return self._units(len(self.rank_rows()))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rows = self.rank_rows()
        size = self._unit_size()
        mine = np.arange(worker, self._units(len(rows)), workers)
        per_read = max(1, self.read_rows // size)
        for first in range(0, len(mine), per_read):
            units = [rows[u * size : (u + 1) * size] for u in mine[first : first + per_read].tolist()]
            tensors = self.read(np.concatenate(units))
            offset = 0
            for unit in units:
                item = {key: value[offset : offset + len(unit)] for key, value in tensors.items()}
                if self.attention_mask:  # per unit, not per read: read_rows x L^2 would not fit
                    item["attention_mask"] = self.dense_masks(item["segments"])
                yield item if self.batch_size else {key: value[0] for key, value in item.items()}
                offset += len(unit)

    def read(self, rows: np.ndarray) -> dict[str, Any]:
        """`rows` rebuilt in one vectorized call, as tensors with a leading dimension over `rows` (without the
        attention masks, which `__iter__` adds per item)."""
        if self._shards is None:  # opened lazily in each DataLoader worker (memory maps do not pickle)
            self._shards = TrainingShards(self.path)
        batch = self._shards.batch(rows, provenance=self.provenance)
        out: dict[str, Any] = {"row": torch.from_numpy(np.asarray(rows, dtype=np.int64).copy())}
        for key in BATCH_ARRAYS:
            out[key] = torch.from_numpy(np.require(batch[key], requirements=["C", "W"]))
        segments = batch["segments"]
        if segments.shape[1] > self.max_segments:
            raise ConfigError(
                f"a row of {self.path} has {segments.shape[1]} segments, more than max_segments="
                f"{self.max_segments}"
            )
        padded = np.full((len(rows), self.max_segments, 3), -1, dtype=np.int32)
        padded[:, : segments.shape[1]] = segments
        out["segments"] = torch.from_numpy(padded)
        if self.provenance:
            out["provenance"] = [orjson.dumps(entry).decode() for entry in batch["provenance"]]
        return out

    def dense_masks(self, segments: torch.Tensor) -> torch.Tensor:
        """bool [B, L, L] attention masks (`kernels.dense_attention_mask`) of segment tables [B, S, 3]."""
        return torch.from_numpy(
            np.stack([dense_attention_mask(table, self.row_length) for table in segments.numpy()])
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shards"] = None
        return state
