"""On-disk formats and their readers: token shards (Megatron .bin/.idx) and training shards."""

from shards.token_shards import TokenShards, TokenShardWriter

__all__ = ["TokenShards", "TokenShardWriter"]
