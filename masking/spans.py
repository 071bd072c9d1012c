"""[MASK] spans: how many and how long (sampled while planning rows), and where (placed while building rows).

Lengths. Span lengths are i.i.d. Poisson(λ = 3) truncated to 1..39 (GLM). A window of n tokens gets spans
until their lengths cover `mask_ratio` (15%) of it: the smallest k >= 1 with l_1 + ... + l_k >= 0.15 n.
A window that must fill exactly S row slots (the last piece of a row) costs n + 2k slots (one [MASK] in
Part A, one [sop] in Part B per span), so its k is the smallest with l_1 + ... + l_k >= 0.15 (S - 2k) and
n = S - 2k: the left side grows and the right side shrinks with k, so the rule is well defined, and with the
same draws this k never asks for more text than the whole-window rule (so n <= the text available).

`SpanPool` keeps a stream of pre-drawn lengths with running sums, so both rules are one `searchsorted`.

Fitting. Spans lie inside the window's usable tokens (the window minus its final `<eod>`) with at least one
unmasked token between spans: sum(l) + (k - 1) <= usable. Only tiny windows break this; their lengths are
capped at the largest c with sum(min(l, c)) + k - 1 <= usable (counted as `spans_shortened`); a window that
cannot hold k one-token spans is built as [gMASK] instead.

Places (`place_spans`, vectorized over every window of a block). The spans of a window are put in a random
order, then F = usable - sum(l) - (k - 1) free tokens are shared out: each span draws a place uniformly in
0..F, the places are sorted, and span j starts at place_j + sum over earlier spans of (l + 1). This is GLM's
own `sample_spans` rule (sorted i.i.d. places), done for all windows at once.
"""

from __future__ import annotations

import bisect
import math

import numpy as np


def truncated_poisson_pmf(lam: float, max_length: int) -> np.ndarray:
    """P(length = k) for k = 0..max_length (index 0 is 0): Poisson(lam) conditioned on 1 <= k <= max_length."""
    k = np.arange(max_length + 1)
    log_pmf = -lam + k * math.log(lam) - np.array([math.lgamma(i + 1) for i in k])
    pmf = np.exp(log_pmf)
    pmf[0] = 0.0
    return pmf / pmf.sum()


def truncated_poisson_mean(lam: float, max_length: int) -> float:
    pmf = truncated_poisson_pmf(lam, max_length)
    return float((pmf * np.arange(len(pmf))).sum())


def sample_truncated_poisson(
    generator: np.random.Generator, lam: float, max_length: int, size: int
) -> np.ndarray:
    """`size` i.i.d. lengths in 1..max_length (rejection of Poisson draws outside the range)."""
    out = np.empty(0, dtype=np.int64)
    while len(out) < size:
        need = size - len(out)
        draws = generator.poisson(lam, size=int(need * 1.25) + 16)
        out = np.concatenate([out, draws[(draws >= 1) & (draws <= max_length)]])
    return out[:size]


class SpanPool:
    """A stream of span lengths with running sums; answers "how many spans" for a window in O(log n).

    `whole(n)` and `fill(slots)` only look; `take(k)` returns the next k lengths (a view) and consumes them.
    The running sums are Python lists so each question is one `bisect` (the planner asks once per piece).
    """

    CHUNK = 1 << 16

    def __init__(
        self, generator: np.random.Generator, lam: float, max_length: int, ratio: float, min_ahead: int
    ) -> None:
        self.generator = generator
        self.lam = lam
        self.max_length = max_length
        self.ratio = ratio
        self.min_ahead = min_ahead
        self.lengths = np.zeros(0, dtype=np.int64)
        self.position = 0
        self._refill()

    def _refill(self) -> None:
        rest = self.lengths[self.position :]
        fresh = sample_truncated_poisson(
            self.generator, self.lam, self.max_length, max(self.CHUNK, 4 * self.min_ahead)
        )
        self.lengths = np.concatenate([rest, fresh])
        self.position = 0
        sums = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=sums[1:])
        self.sums = sums.tolist()
        # For the fill rule: sum(l) + 2 * ratio * k, as float64.
        self.fill_sums = (sums + (2.0 * self.ratio) * np.arange(len(sums))).tolist()
        self.limit = len(self.lengths) - self.min_ahead

    def whole(self, n: int) -> int:
        """Spans for a window of n tokens: the smallest k >= 1 with sum(l_1..l_k) >= ratio * n."""
        if self.position > self.limit:
            self._refill()
        p = self.position
        threshold = math.ceil(self.ratio * n - 1e-9)
        k = bisect.bisect_left(self.sums, self.sums[p] + threshold, p) - p
        return k if k > 1 else 1

    def fill(self, slots: int) -> int:
        """Spans for a window that must occupy exactly `slots` row slots (n = slots - 2k)."""
        if self.position > self.limit:
            self._refill()
        p = self.position
        k = bisect.bisect_left(self.fill_sums, self.fill_sums[p] + self.ratio * slots - 1e-9, p) - p
        return k if k > 1 else 1

    def total(self, k: int) -> int:
        """Sum of the next k lengths."""
        return self.sums[self.position + k] - self.sums[self.position]

    def peek(self, k: int) -> np.ndarray:
        return self.lengths[self.position : self.position + k]

    def take(self, k: int) -> np.ndarray:
        taken = self.lengths[self.position : self.position + k]
        self.position += k
        return taken


def fit_spans(lengths: np.ndarray, usable: int) -> tuple[np.ndarray | None, bool]:
    """Lengths that fit `usable` tokens with one-token gaps, and whether they were shortened.

    None when even one-token spans do not fit (2k - 1 > usable)."""
    k = len(lengths)
    total = int(lengths.sum())
    if total + k - 1 <= usable:
        return lengths, False
    if 2 * k - 1 > usable:
        return None, False
    for cap in range(int(lengths.max()) - 1, 0, -1):
        capped = np.minimum(lengths, cap)
        if int(capped.sum()) + k - 1 <= usable:
            return capped, True
    return np.ones_like(lengths), True  # unreachable: cap 1 always fits when 2k - 1 <= usable


def place_spans(
    generator: np.random.Generator,
    span_window: np.ndarray,
    span_length: np.ndarray,
    window_usable: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Place the spans of many windows at once.

    `span_window[i]` is the window of span i (nondecreasing: spans grouped by window), `span_length[i]` its
    length, `window_usable[w]` the tokens spans may cover in window w (a prefix of the window). Returns
    `order` (span indices in text order, still grouped by window) and `start` (window-relative start of span
    order[j]). Draws, in this order: one uniform per span (the random order), one integer per span (places).
    """
    count = len(span_length)
    if count == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    span_window = np.asarray(span_window, dtype=np.int64)
    order = np.argsort(span_window + generator.random(count), kind="stable")
    length = np.asarray(span_length, dtype=np.int64)[order]
    window = span_window[order]
    windows = len(window_usable)
    spans_per_window = np.bincount(window, minlength=windows)
    covered = np.bincount(window, weights=length, minlength=windows).astype(np.int64)
    free = np.asarray(window_usable, dtype=np.int64) - covered - (spans_per_window - 1)
    if (free[spans_per_window > 0] < 0).any():
        bad = int(np.flatnonzero((free < 0) & (spans_per_window > 0))[0])
        raise ValueError(f"spans of window {bad} do not fit its {int(window_usable[bad])} usable tokens")
    places = generator.integers(0, free[window] + 1)
    stride = int(free.max()) + 1 if windows else 1
    places = np.sort(window * stride + places) - window * stride  # sorted within each window
    step = length + 1
    before = np.cumsum(step) - step
    first = np.cumsum(spans_per_window) - spans_per_window
    before -= before[first[window]]
    return order, places + before
