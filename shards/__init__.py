"""On-disk formats and their readers: token shards (Megatron .bin/.idx) and training shards, plus the
interop layers users' own tools read them through (a torch IterableDataset, a Parquet export)."""

from typing import Any

import common  # noqa: F401 - first: it selects pyarrow's system pool, before pyarrow loads (common/memory.py)
from shards.token_shards import TokenShards, TokenShardWriter
from shards.training_shards import TrainingShards, verify_training_shards

__all__ = ["TokenShardWriter", "TokenShards", "TrainingRowDataset", "TrainingShards", "export_training_rows",
           "verify_training_shards"]


def __getattr__(name: str) -> Any:
    """`TrainingRowDataset` and `export_training_rows` on first use: importing torch costs seconds."""
    if name == "TrainingRowDataset":
        from shards.torch_dataset import TrainingRowDataset

        return TrainingRowDataset
    if name == "export_training_rows":
        from shards.export import export_training_rows

        return export_training_rows
    raise AttributeError(f"module 'shards' has no attribute {name!r}")
