"""Vectorized index arithmetic shared by the masking stage, the loader and the audit."""

from __future__ import annotations

import numpy as np


def concatenated_ranges(starts: np.ndarray, counts: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """`concatenate([arange(s, s + c) for s, c in zip(starts, counts)])` without a Python loop.

    int32 output halves the memory traffic of big index arrays where the values fit.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=dtype)
    ends = np.cumsum(counts)
    base = (np.asarray(starts, dtype=np.int64) - (ends - counts)).astype(dtype)
    out = np.repeat(base, counts)
    out += np.arange(total, dtype=dtype)
    return out
