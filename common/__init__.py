"""Small pieces every stage shares: the error hierarchy, atomic writes, typed configs, progress, memory.

Importing this package chooses pyarrow's system memory pool for the process (common/memory.py), which works
only before pyarrow is imported: so every package of the project imports `common` first.
"""

from common.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from common.errors import (
    BadRecordError,
    ConfigError,
    GLMCorpusError,
    ShardFormatError,
    TokenizerError,
)
from common.memory import prefer_system_arrow_pool

prefer_system_arrow_pool()

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
