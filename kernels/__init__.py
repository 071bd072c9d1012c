"""Vectorized kernels: GLM row reconstruction and attention masks (numpy), attention and RoPE (torch).

Only numpy-level kernels are re-exported here, so `import kernels` stays light; import
`kernels.glm_attention` / `kernels.rope` (torch) explicitly.
"""

import common  # noqa: F401 - first: it selects pyarrow's system pool, before pyarrow loads (common/memory.py)
from kernels.attention_mask import dense_attention_mask
from kernels.reconstruct import (
    RowRecipes,
    glm130b_position_ids,
    reconstruct_batch,
    reconstruct_reference,
)

__all__ = [
    "RowRecipes",
    "dense_attention_mask",
    "glm130b_position_ids",
    "reconstruct_batch",
    "reconstruct_reference",
]
