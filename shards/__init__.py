"""On-disk formats and their readers: token shards (Megatron .bin/.idx) and training shards."""

from shards.token_shards import TokenShards, TokenShardWriter
from shards.training_shards import TrainingShards, verify_training_shards

__all__ = ["TokenShardWriter", "TokenShards", "TrainingShards", "verify_training_shards"]
