"""Small pieces every stage shares: the error hierarchy, atomic writes, typed configs, progress."""

from common.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from common.errors import (
    BadRecordError,
    ConfigError,
    GLMCorpusError,
    ShardFormatError,
    TokenizerError,
)

__all__ = [
    "BadRecordError",
    "ConfigError",
    "GLMCorpusError",
    "ShardFormatError",
    "TokenizerError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
]
