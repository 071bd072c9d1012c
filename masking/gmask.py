"""[gMASK] suffixes: Part A = prefix + [gMASK], Part B = [sop] + suffix, targets suffix + [eop].

For a window of n text tokens the suffix length s is uniform on the integers [lo, hi]:

    lo = max(1, ceil(0.25 n))        (`gmask_suffix_min_fraction`)
    hi = max(lo, n - 2)              (`gmask_min_prefix` = 2 tokens of prefix)

which is GLM's [0.25 n, n - 2] for every n >= 3, extended so that a 1- or 2-token piece (the end of a row)
still has a one-token suffix. A segment of n text tokens occupies n + 2 row slots ([gMASK], [sop]).

The stats compare the observed suffix positions with the uniform law exactly: with K = hi - lo + 1 values,
bin b of `bins` receives the values j = s - lo with floor(bins * j / K) = b, so the expected count of bin b
for one segment is (#such j) / K, summed over segments.
"""

from __future__ import annotations

import numpy as np


def suffix_bounds(n: np.ndarray, min_fraction: float, min_prefix: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the suffix length for windows of n tokens (vectorized, int64)."""
    n = np.asarray(n, dtype=np.int64)
    lo = np.maximum(1, np.ceil(min_fraction * n - 1e-9).astype(np.int64))
    lo = np.minimum(lo, np.maximum(n, 1))
    hi = np.maximum(lo, n - min_prefix)
    return lo, hi


def sample_suffix_lengths(
    generator: np.random.Generator, n: np.ndarray, min_fraction: float, min_prefix: int
) -> np.ndarray:
    """One uniform suffix length per window (one integer draw per window)."""
    lo, hi = suffix_bounds(n, min_fraction, min_prefix)
    if len(lo) == 0:
        return lo
    return generator.integers(lo, hi + 1)


def suffix_histogram(
    n: np.ndarray,
    suffix: np.ndarray,
    min_fraction: float,
    min_prefix: int,
    bins: int = 10,
    min_values: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Observed and exactly expected counts of the relative suffix position, for windows with >= min_values
    possible lengths (smaller ranges say little about uniformity)."""
    lo, hi = suffix_bounds(n, min_fraction, min_prefix)
    values = hi - lo + 1
    keep = values >= min_values
    values, offset = values[keep], np.asarray(suffix, dtype=np.int64)[keep] - lo[keep]
    observed = np.bincount(bins * offset // values, minlength=bins)[:bins].astype(np.int64)
    # Count of j in [0, K) with floor(bins * j / K) == b is ceil(K (b + 1) / bins) - ceil(K b / bins).
    edges = -((-values[:, None] * np.arange(bins + 1)[None, :]) // bins)
    expected = (np.diff(edges, axis=1) / values[:, None]).sum(axis=0)
    return observed, expected
