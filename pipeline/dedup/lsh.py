"""MinHash LSH banding: choosing bands x rows for a Jaccard threshold, and the S-curve it gives.

A signature of `num_perm` rows is cut into `bands` bands of `rows` rows (bands * rows <= num_perm; the
rest is unused by the banding but still used to verify candidates). Two documents whose shingle sets have
Jaccard similarity s agree on one MinHash row with probability s, on a whole band with probability s**r,
and become a candidate pair when at least one band agrees:

    P(candidate | s) = 1 - (1 - s**r)**b

For a threshold t we pick (b, r) minimising  w_fp * FP(b, r) + w_fn * FN(b, r)  where
FP = integral_0^t P(s) ds (pairs below the threshold that become candidates) and
FN = integral_t^1 (1 - P(s)) ds (pairs above it that do not), over every b >= 1, r >= 1 with b*r <= num_perm.
This is the criterion datasketch's MinHashLSH uses; the integrals here are composite Gauss-Legendre
quadratures evaluated for all (b, r) at once with numpy.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np

_PIECES = 32  # composite Gauss-Legendre: 32 sub-intervals ...
_NODES = 16  # ... of 16 nodes each; exact to ~1e-12 for these smooth integrands


@dataclasses.dataclass(frozen=True)
class BandingParams:
    """A banding choice and what it costs at its threshold."""

    threshold: float
    num_perm: int
    bands: int
    rows: int
    false_positive_area: float
    false_negative_area: float

    @property
    def used_rows(self) -> int:
        return self.bands * self.rows

    def probability(self, similarity: float | np.ndarray) -> float | np.ndarray:
        return candidate_probability(similarity, self.bands, self.rows)


def candidate_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(candidate | Jaccard s) = 1 - (1 - s**rows)**bands: the S-curve of a banding."""
    s = np.asarray(similarity, dtype=np.float64)
    with np.errstate(divide="ignore"):  # s = 1: log1p(-1) = -inf, and the probability is exactly 1
        p = -np.expm1(bands * np.log1p(-np.power(s, rows)))
    return float(p) if np.ndim(p) == 0 else p


def _quadrature(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the composite Gauss-Legendre rule on [lo, hi]."""
    x, w = np.polynomial.legendre.leggauss(_NODES)
    edges = np.linspace(lo, hi, _PIECES + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    mid = (edges[1:] + edges[:-1])[:, None] / 2
    return (mid + half * x).ravel(), (half * w).ravel()


def _s_curve(s: np.ndarray, bands: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """P(candidate | s) for a column of (b, r) pairs against a row of similarities s in [0, 1]."""
    with np.errstate(divide="ignore"):
        band_miss = np.log1p(-np.power(s[None, :], rows[:, None]))  # log(1 - s^r), -inf at s = 1
    return -np.expm1(bands[:, None] * band_miss)


def error_areas(threshold: float, bands: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive area, false-negative area) of each (bands[i], rows[i]) at `threshold`."""
    bands = np.asarray(bands, dtype=np.float64).ravel()
    rows = np.asarray(rows, dtype=np.float64).ravel()
    s_lo, w_lo = _quadrature(0.0, threshold)
    s_hi, w_hi = _quadrature(threshold, 1.0)
    false_positive = _s_curve(s_lo, bands, rows) @ w_lo
    false_negative = (1.0 - _s_curve(s_hi, bands, rows)) @ w_hi
    return false_positive, false_negative


@lru_cache(maxsize=256)
def optimal_params(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> BandingParams:
    """The (bands, rows) minimising the weighted false-positive and false-negative areas.

    Candidates are ordered by bands then rows, and the first one at the minimum wins, so ties resolve
    the same way every time (and the same way datasketch's grid search does).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be positive, got {num_perm}")
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([p[0] for p in pairs])
    rows = np.array([p[1] for p in pairs])
    fp, fn = error_areas(threshold, bands, rows)
    best = int(np.argmin(false_positive_weight * fp + false_negative_weight * fn))
    return BandingParams(
        threshold, num_perm, int(bands[best]), int(rows[best]), float(fp[best]), float(fn[best])
    )


def optimal_bands_rows(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """(bands, rows) for a threshold: see `optimal_params`."""
    params = optimal_params(threshold, num_perm, false_positive_weight, false_negative_weight)
    return params.bands, params.rows


def banding(
    threshold: float,
    num_perm: int,
    bands: int | None = None,
    rows: int | None = None,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> BandingParams:
    """The optimal banding, or the given (bands, rows) with their error areas."""
    if not bands and not rows:
        return optimal_params(threshold, num_perm, false_positive_weight, false_negative_weight)
    if not bands or not rows or bands * rows > num_perm:
        raise ValueError(f"bands x rows = {bands} x {rows} must both be set and fit in num_perm={num_perm}")
    fp, fn = error_areas(threshold, np.array([bands]), np.array([rows]))
    return BandingParams(threshold, num_perm, bands, rows, float(fp[0]), float(fn[0]))


def verified_catch_probability(
    similarity: float | np.ndarray, bands: int, rows: int, num_perm: int, need: int
) -> np.ndarray:
    """P(a pair of true similarity s is kept with verification): some band agrees on all its rows AND at
    least `need` of the num_perm rows agree (`verify` keeps a candidate whose estimated Jaccard, equal rows
    / num_perm, is >= the threshold). Each row agrees with probability s, independently.

    A dynamic program over the bands, vectorized over the similarities: dist[flag, k, i] is the
    probability that k rows agree so far and (flag) some band agreed fully, for similarity i.
    """
    s = np.atleast_1d(np.asarray(similarity, dtype=np.float64))

    def binomial(n: int) -> np.ndarray:  # [n + 1, len(s)]: P(k of n rows agree)
        return np.array([math.comb(n, k) * s**k * (1 - s) ** (n - k) for k in range(n + 1)])

    band = binomial(rows)
    dist = np.zeros((2, num_perm + 1, len(s)))
    dist[0, 0] = 1.0
    for _ in range(bands):
        new = np.zeros_like(dist)
        for k in range(rows + 1):
            shifted = np.zeros_like(dist)
            shifted[:, k:] = dist[:, : num_perm + 1 - k] * band[k]
            if k == rows:
                new[1] += shifted[0] + shifted[1]
            else:
                new += shifted
        dist = new
    rest = binomial(num_perm - bands * rows)
    full = np.zeros((num_perm + 1, len(s)))
    for k in range(len(rest)):  # the rows outside the bands
        full[k:] += dist[1, : num_perm + 1 - k] * rest[k]
    return full[need:].sum(axis=0)


def similarity_at_probability(p: float, bands: int, rows: int) -> float:
    """The Jaccard similarity s with P(candidate | s) = p (the inverse of the S-curve)."""
    return (1.0 - (1.0 - p) ** (1.0 / bands)) ** (1.0 / rows)


def explain(
    threshold: float,
    num_perm: int,
    bands: int | None = None,
    rows: int | None = None,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> str:
    """A text report of the banding for `glm-corpus dedup --explain`: parameters and the S-curve table."""
    params = banding(threshold, num_perm, bands, rows, false_positive_weight, false_negative_weight)
    b, r = params.bands, params.rows
    lines = [
        f"MinHash LSH for Jaccard threshold {threshold:g} with {num_perm} permutations",
        f"bands x rows = {b} x {r}  ({params.used_rows} of {num_perm} signature rows form the bands)",
        f"P(candidate | s) = 1 - (1 - s^{r})^{b}",
        f"  50% at s = {similarity_at_probability(0.5, b, r):.3f}, "
        f"10% at s = {similarity_at_probability(0.1, b, r):.3f}, 90% at s = {similarity_at_probability(0.9, b, r):.3f}",
        f"  false-positive area (integral of P below t) = {params.false_positive_area:.5f}"
        f" (weight {false_positive_weight:g})",
        f"  false-negative area (integral of 1-P above t) = {params.false_negative_area:.5f}"
        f" (weight {false_negative_weight:g})",
        f"verification: a candidate pair is kept when its estimated Jaccard (equal rows / {num_perm}) is >= "
        f"{threshold:g}; standard error of that estimate at s = t: {math.sqrt(threshold * (1 - threshold) / num_perm):.3f}",
        "",
        "   s     P(candidate)",
    ]
    grid = sorted({round(x, 2) for x in np.arange(0.0, 1.0001, 0.05)} | {round(threshold, 4)})
    for s in grid:
        p = candidate_probability(s, b, r)
        bar = "#" * int(round(p * 40))
        mark = "  <- threshold" if abs(s - threshold) < 1e-9 else ""
        lines.append(f"  {s:4.2f}   {p:9.6f}  {bar}{mark}")
    return "\n".join(lines)
