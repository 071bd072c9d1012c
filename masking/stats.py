"""The masking report (`stats.json`): do the rows follow §4's numbers?

Accumulated from the plan (modes, tokens, span lengths, MIP, padding) and from the builders ([gMASK] suffix
positions), then compared with the targets: 30% of text tokens in [MASK] segments, spans covering 15% of
their windows with lengths ~ Poisson(3) truncated to 1..39, uniform suffix lengths, 5% MIP.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from masking.config import MaskingConfig
from masking.packing import STORE_MIP, PlanChunk
from masking.spans import truncated_poisson_pmf
from shards.training_shards import KIND_GMASK, KIND_MASK, KIND_MIP, KIND_NAMES

SUFFIX_BINS = 10


def chi_square(observed: np.ndarray, expected: np.ndarray, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom, pooling the tail bins whose expected count is small."""
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    keep = expected >= min_expected
    if keep.all() or not keep.any():
        obs, exp = observed[keep], expected[keep]
    else:
        obs = np.append(observed[keep], observed[~keep].sum())
        exp = np.append(expected[keep], expected[~keep].sum())
    if len(exp) < 2:
        return 0.0, 0
    return float(((obs - exp) ** 2 / exp).sum()), len(exp) - 1


def chi_square_p_value(statistic: float, dof: int) -> float:
    """Upper tail of the chi-square distribution (regularized incomplete gamma, series / continued fraction)."""
    if dof <= 0:
        return 1.0
    a, x = dof / 2.0, statistic / 2.0
    if x <= 0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # lower series, P(a, x)
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Continued fraction for Q(a, x) (Lentz).
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


class MaskingStats:
    """Additive counters over plan chunks and built blocks."""

    def __init__(self, config: MaskingConfig, text_names: list[str], mip_datasets: list[str]) -> None:
        self.config = config
        self.text_names = text_names
        self.mip_datasets = mip_datasets
        self.rows = 0
        self.pad_tokens = 0
        self.segments = np.zeros(len(KIND_NAMES), dtype=np.int64)
        self.text_tokens = np.zeros(len(KIND_NAMES), dtype=np.int64)
        self.source_tokens = np.zeros(len(text_names), dtype=np.int64)
        self.mip_slots = 0
        self.mip_examples = np.zeros(max(len(mip_datasets), 1), dtype=np.int64)
        self.mip_tokens = np.zeros(max(len(mip_datasets), 1), dtype=np.int64)
        self.span_histogram = np.zeros(config.span_max_length + 1, dtype=np.int64)
        self.mask_window_tokens = 0
        self.suffix_observed = np.zeros(SUFFIX_BINS, dtype=np.int64)
        self.suffix_expected = np.zeros(SUFFIX_BINS, dtype=np.float64)
        self.suffix_count = 0

    def add_plan(self, chunk: PlanChunk, mip_dataset_of: np.ndarray | None) -> None:
        self.rows += chunk.n_rows
        self.pad_tokens += chunk.pad_tokens
        kind = chunk.segment_kind.astype(np.int64)
        self.segments += np.bincount(kind, minlength=len(KIND_NAMES))
        piece_kind = np.repeat(kind, np.diff(chunk.segment_piece_pointer))
        length = chunk.piece_length.astype(np.int64)
        text = chunk.piece_store != STORE_MIP
        self.text_tokens += np.bincount(
            piece_kind[text], weights=length[text], minlength=len(KIND_NAMES)
        ).astype(np.int64)
        self.source_tokens += np.bincount(
            chunk.piece_source[text], weights=length[text], minlength=len(self.text_names)
        ).astype(np.int64)
        self.mip_slots += int(chunk.segment_cost[kind == KIND_MIP].astype(np.int64).sum())
        if mip_dataset_of is not None and (~text).any():
            dataset = mip_dataset_of[chunk.piece_doc[~text]]
            self.mip_examples += np.bincount(dataset, minlength=len(self.mip_examples))
            self.mip_tokens += np.bincount(
                dataset, weights=length[~text], minlength=len(self.mip_tokens)
            ).astype(np.int64)
        self.span_histogram += np.bincount(
            chunk.span_length.astype(np.int64), minlength=len(self.span_histogram)
        )[: len(self.span_histogram)]
        self.mask_window_tokens += int(length[text & (piece_kind == KIND_MASK)].sum())

    def add_build(self, observed: np.ndarray, expected: np.ndarray, count: int) -> None:
        self.suffix_observed += np.asarray(observed, dtype=np.int64)
        self.suffix_expected += np.asarray(expected, dtype=np.float64)
        self.suffix_count += count

    def report(self, planner: dict[str, Any], mip_share: float, mip_exhausted: bool) -> dict[str, Any]:
        return plain(self._report(planner, mip_share, mip_exhausted))

    def _report(self, planner: dict[str, Any], mip_share: float, mip_exhausted: bool) -> dict[str, Any]:
        config = self.config
        tokens = self.rows * config.row_length
        used = tokens - self.pad_tokens
        text_total = int(self.text_tokens[KIND_MASK] + self.text_tokens[KIND_GMASK])
        spans = int(self.span_histogram.sum())
        masked = int((self.span_histogram * np.arange(len(self.span_histogram))).sum())
        pmf = truncated_poisson_pmf(config.span_lambda, config.span_max_length)
        statistic, dof = chi_square(self.span_histogram[1:], pmf[1:] * spans)
        suffix_stat, suffix_dof = chi_square(self.suffix_observed, self.suffix_expected)
        return {
            "seed": config.seed,
            "config": config.output_defining(),
            "rows": self.rows,
            "tokens": tokens,
            "padding_tokens": self.pad_tokens,
            "padding_fraction": self.pad_tokens / max(tokens, 1),
            "segments": {name: int(self.segments[code]) for code, name in enumerate(KIND_NAMES)},
            "text_tokens": {
                "mask": int(self.text_tokens[KIND_MASK]),
                "gmask": int(self.text_tokens[KIND_GMASK]),
                "total": text_total,
                "mask_fraction": self.text_tokens[KIND_MASK] / max(text_total, 1),
                "target_mask_fraction": config.mask_fraction,
            },
            "masked_ratio": {
                "observed": masked / max(self.mask_window_tokens, 1),
                "target": config.mask_ratio,
                "masked_tokens": masked,
                "window_tokens": self.mask_window_tokens,
            },
            "span_lengths": {
                "count": spans,
                "mean": masked / max(spans, 1),
                "expected_mean": float((pmf * np.arange(len(pmf))).sum()),
                "histogram": self.span_histogram.tolist(),
                "expected_fraction": [round(float(p), 8) for p in pmf],
                "law": f"Poisson({config.span_lambda}) truncated to 1..{config.span_max_length}",
                "chi_square": statistic,
                "dof": dof,
                "p_value": chi_square_p_value(statistic, dof),
            },
            "gmask_suffix": {
                "law": (
                    f"uniform on [max(1, ceil({config.gmask_suffix_min_fraction} n)), "
                    f"max(lo, n - {config.gmask_min_prefix})]"
                ),
                "segments": self.suffix_count,
                "bins": SUFFIX_BINS,
                "observed": self.suffix_observed.tolist(),
                "expected": [round(float(e), 3) for e in self.suffix_expected],
                "chi_square": suffix_stat,
                "dof": suffix_dof,
                "p_value": chi_square_p_value(suffix_stat, suffix_dof),
            },
            "tokens_per_source": {name: int(n) for name, n in zip(self.text_names, self.source_tokens)},
            "mip": {
                "share": self.mip_slots / max(used, 1),
                "target_share": mip_share,
                "slots": self.mip_slots,
                "segments": int(self.segments[KIND_MIP]),
                "exhausted": mip_exhausted,
                "examples_per_dataset": {
                    name: int(n) for name, n in zip(self.mip_datasets, self.mip_examples)
                },
                "tokens_per_dataset": {name: int(n) for name, n in zip(self.mip_datasets, self.mip_tokens)},
                "truncated_examples": planner.get("mip_truncated_examples", 0),
                "truncated_tokens": planner.get("mip_truncated_tokens", 0),
                "skipped_empty_targets": planner.get("mip_skipped_empty_targets", 0),
            },
            "planner": planner,
        }


def plain(value: Any) -> Any:
    """The report with numpy scalars turned into Python numbers (JSON-ready)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def render(report: dict[str, Any]) -> str:
    """A short human summary of a report."""
    text = report["text_tokens"]
    spans = report["span_lengths"]
    suffix = report["gmask_suffix"]
    mip = report["mip"]
    lines = [
        f"rows {report['rows']} x {report['config']['row_length']} tokens, padding {report['padding_tokens']} "
        f"({report['padding_fraction']:.2e})",
        "segments: " + ", ".join(f"{k} {v}" for k, v in report["segments"].items()),
        f"text tokens in [MASK] segments: {text['mask_fraction']:.4f} (target {text['target_mask_fraction']})",
        f"masked ratio in [MASK] windows: {report['masked_ratio']['observed']:.4f} "
        f"(target {report['masked_ratio']['target']})",
        f"span lengths: {spans['count']} spans, mean {spans['mean']:.3f} (expected {spans['expected_mean']:.3f}), "
        f"chi2 {spans['chi_square']:.1f} / {spans['dof']} dof, p {spans['p_value']:.3g}",
        f"[gMASK] suffix positions: {suffix['segments']} segments, chi2 {suffix['chi_square']:.1f} / "
        f"{suffix['dof']} dof, p {suffix['p_value']:.3g}",
        f"MIP share: {mip['share']:.4f} (target {mip['target_share']}), {mip['segments']} segments"
        + (", MIP examples ran out" if mip["exhausted"] else ""),
        "tokens per source: " + ", ".join(f"{k} {v}" for k, v in report["tokens_per_source"].items()),
    ]
    for key in ("bytes_per_token", "seconds", "tokens_per_second"):
        if key in report:
            lines.append(f"{key.replace('_', ' ')}: {report[key]:.4g}")
    if "out" in report:
        lines.append(f"training shards: {report['out']}")
    return "\n".join(lines)
