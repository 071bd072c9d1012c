"""The masking stage: token shards (+ MIP shards) -> training shards of 2048-token GLM rows (DESIGN §4).

`run_masking(tokens, out, MaskingConfig(...), mip=...)` is the entry point; docs/MASKING.md describes the rules.
"""

import common  # noqa: F401 - first: it selects pyarrow's system pool, before pyarrow loads (common/memory.py)
from masking.config import MaskingConfig

__all__ = ["MaskingConfig", "run_masking"]


def __getattr__(name: str):  # the stage pulls in pyarrow and the shard formats: import it on first use
    if name == "run_masking":
        from masking.stage import run_masking

        return run_masking
    raise AttributeError(name)
