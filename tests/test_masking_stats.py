"""The numbers of §4: span-length law, coverage rules, suffix law, the text and MIP streams, and the report.

Statistical checks use fixed seeds and thresholds derived from the sample size (chi-square p-values,
k-sigma bands), so they are deterministic and still mean something.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from masking.config import MaskingConfig
from masking.gmask import sample_suffix_lengths, suffix_bounds, suffix_histogram
from masking.mixing import MipStream, TextStream, resolve_weights
from masking.spans import SpanPool, fit_spans, place_spans, truncated_poisson_pmf
from masking.stage import run_masking
from masking.stats import chi_square, chi_square_p_value
from masking.synthetic import write_text_shards


def test_chi_square_p_value_matches_the_regularized_gamma():
    for statistic, dof in [(3.841, 1), (18.307, 10), (0.5, 3), (100.0, 40), (30.0, 12)]:
        expected = float(
            torch.special.gammaincc(
                torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(statistic / 2, dtype=torch.float64)
            )
        )
        assert chi_square_p_value(statistic, dof) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert chi_square_p_value(3.841, 1) == pytest.approx(0.05, abs=1e-3)


def test_span_lengths_follow_truncated_poisson_3():
    pmf = truncated_poisson_pmf(3.0, 39)
    assert pmf[0] == 0 and pmf.sum() == pytest.approx(1.0)
    assert pmf[3] == pytest.approx(math.exp(-3) * 27 / 6 / (1 - math.exp(-3)), rel=1e-6)
    pool = SpanPool(np.random.default_rng(1), 3.0, 39, 0.15, min_ahead=4096)
    lengths = np.concatenate([pool.take(1000) for _ in range(100)])
    assert lengths.min() >= 1 and lengths.max() <= 39
    statistic, dof = chi_square(np.bincount(lengths, minlength=40)[1:], pmf[1:] * len(lengths))
    assert chi_square_p_value(statistic, dof) > 1e-3


@pytest.mark.parametrize("n", [7, 40, 333, 2000])
def test_whole_window_rule_is_the_smallest_covering_count(n):
    pool = SpanPool(np.random.default_rng(n), 3.0, 39, 0.15, min_ahead=4096)
    for _ in range(200):
        k = pool.whole(n)
        lengths = pool.take(k)
        assert lengths.sum() >= 0.15 * n - 1e-9
        assert k == 1 or lengths[:-1].sum() < 0.15 * n


@pytest.mark.parametrize("slots", [3, 4, 50, 2048])
def test_fill_rule_fills_the_slots_exactly(slots):
    pool = SpanPool(np.random.default_rng(slots), 3.0, 39, 0.15, min_ahead=4096)
    for _ in range(200):
        k = pool.fill(slots)
        lengths = pool.take(k)
        n = slots - 2 * k
        assert n >= 1 and n + 2 * k == slots
        assert lengths.sum() >= 0.15 * n - 1e-9
        assert k == 1 or lengths[:-1].sum() < 0.15 * (slots - 2 * (k - 1))


def test_fit_spans_keeps_one_token_gaps():
    lengths = np.array([7, 1, 4])
    assert fit_spans(lengths, 20) == (lengths, False)
    capped, shortened = fit_spans(lengths, 8)  # the largest cap c with sum(min(l, c)) + 2 <= 8 is 2
    assert shortened and capped.tolist() == [2, 1, 2]
    assert fit_spans(lengths, 4)[0] is None  # three spans need at least 5 tokens


def test_span_places_are_uniform_and_disjoint():
    generator = np.random.default_rng(3)
    windows = 4000
    usable = np.full(windows, 30)
    span_window = np.repeat(np.arange(windows), 3)
    span_length = np.tile([2, 3, 1], windows)
    order, start = place_spans(generator, span_window, span_length, usable)
    length = span_length[order].reshape(windows, 3)
    start = start.reshape(windows, 3)
    end = start + length
    assert (start[:, 1:] > end[:, :-1]).all(), "spans in text order with >= 1 token between"
    assert (start >= 0).all() and (end <= 30).all()
    # Each span is as likely to be first in the text: the order is random.
    first = length[:, 0]
    counts = np.bincount(first, minlength=4)[1:]
    statistic, dof = chi_square(counts, np.full(3, windows / 3))
    assert chi_square_p_value(statistic, dof) > 1e-3
    # Coverage of every usable position is near uniform away from the window's edges.
    covered = np.zeros(30)
    for s, e in zip(start.ravel(), end.ravel()):
        covered[s:e] += 1
    middle = covered[8:22] / windows
    assert middle.max() - middle.min() < 0.06


def test_gmask_suffix_is_uniform_on_its_range():
    n = np.array([1, 2, 3, 4, 100, 2046])
    lo, hi = suffix_bounds(n, 0.25, 2)
    assert lo.tolist() == [1, 1, 1, 1, 25, 512] and hi.tolist() == [1, 1, 1, 2, 98, 2044]
    generator = np.random.default_rng(5)
    windows = generator.integers(20, 2047, size=20_000)
    suffix = sample_suffix_lengths(generator, windows, 0.25, 2)
    lo, hi = suffix_bounds(windows, 0.25, 2)
    assert ((suffix >= lo) & (suffix <= hi)).all()
    observed, expected = suffix_histogram(windows, suffix, 0.25, 2)
    assert observed.sum() == pytest.approx(expected.sum())
    assert chi_square_p_value(*chi_square(observed, expected)) > 1e-3


def test_natural_mix_uses_every_document_once_in_proportion():
    generator = np.random.default_rng(0)
    lengths = [
        generator.integers(1, 900, size=3000),
        generator.integers(1, 300, size=2000),
        generator.integers(1, 5000, size=50),
    ]
    weights = resolve_weights(["a", "b", "c"], [int(x.sum()) for x in lengths], {})
    stream = TextStream(
        lengths, weights, shuffle_seed=1, budget=float(sum(x.sum() for x in lengths)), batch_tokens=1 << 16
    )
    seen = [set() for _ in lengths]
    taken = np.zeros(3)
    worst = 0.0
    while (item := stream.next()) is not None:
        source, doc, end, length = item
        assert end == length and doc not in seen[source]
        seen[source].add(doc)
        taken[source] += end
        worst = max(worst, np.abs(taken - weights * taken.sum()).max())
    assert [len(s) for s in seen] == [3000, 2000, 50]
    assert worst <= 5000, "every source stays within one document of its share"


def test_explicit_weights_resample_sources():
    lengths = [np.full(100, 10), np.full(100, 10)]
    stream = TextStream(
        lengths, resolve_weights(["a", "b"], [1000, 1000], {"a": 3, "b": 1}), 0, budget=40_000
    )
    taken = np.zeros(2)
    while (item := stream.next()) is not None:
        taken[item[0]] += item[2]
    assert taken.sum() == 40_000 and taken[0] / taken.sum() == pytest.approx(0.75, abs=1e-3)
    assert stream.epochs_started[0] == 30, "source a ran through 30 epochs (upsampled)"


def test_mip_truncation_rule():
    stream = MipStream(np.array([10, 3000, 2047, 1100]), np.array([4, 2500, 2000, 1]), 0, False, 2048, 1024)
    assert stream.fit(4, 6) == (0, 4, 6)
    assert stream.fit(2500, 500) == (2500 - 1546, 1546, 500)  # target kept whole, prompt from its end
    assert stream.fit(2500, 1900) == (2500 - 1023, 1023, 1023)  # prompt keeps half a row
    assert stream.fit(2000, 45) == (2, 1998, 45)  # alone it would leave 1 slot: 2 more prompt tokens go
    assert stream.fit(1, 2044) == (1, 0, 2043)  # the prompt's one token, then one target token


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("stats")
    write_text_shards(root / "tokens", {"pile": (2500, 900.0), "wudao": (3000, 250.0)}, seed=21)
    config = MaskingConfig(seed=8, rows_per_shard=512, rows_per_block=128)
    return run_masking(root / "tokens", root / "train", config, progress=False)


def test_report_shows_the_targets_are_met(report):
    text = report["text_tokens"]
    assert text["mask"] + text["gmask"] == text["total"] == sum(report["tokens_per_source"].values())
    assert report["tokens"] == report["rows"] * 2048
    assert report["padding_fraction"] == report["padding_tokens"] / report["tokens"] < 2048 / report["tokens"]
    spans = report["span_lengths"]
    assert spans["count"] > 30_000 and spans["p_value"] > 1e-3
    assert spans["mean"] == pytest.approx(spans["expected_mean"], rel=0.02)
    assert 0.15 <= report["masked_ratio"]["observed"] <= 0.16
    suffix = report["gmask_suffix"]
    assert suffix["segments"] > 3000 and suffix["p_value"] > 1e-3
    assert abs(text["mask_fraction"] - 0.3) < 0.02
    assert report["mip"]["share"] == 0 and report["mip"]["segments"] == 0
    assert report["config"]["seed"] == 8 and report["seed"] == 8
    assert report["planner"]["text_epochs_started"] == {"pile": 1, "wudao": 1}


def test_mip_stream_skips_empty_targets_and_stops_without_repeat():
    stream = MipStream(np.array([5, 6, 7]), np.array([5, 2, 3]), 0, False, 2048, 1024)
    seen = []
    while (head := stream.peek()) is not None:
        seen.append(head[0])
        stream.pop()
    assert sorted(seen) == [1, 2] and stream.skipped_empty == 1
    repeating = MipStream(np.array([5]), np.array([5]), 0, True, 2048, 1024)
    assert repeating.peek() is None, "nothing but empty targets: no MIP, even with repeat"
