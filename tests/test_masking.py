"""The masking stage against DESIGN §4, checked independently of its implementation.

Every check below re-derives the rule from the batch arrays alone (tokens, targets, positions, segments)
and the original token shards: rows of exactly 2048 tokens; Part A with the spans put back is the original
text; Part B blocks are [sop] + span with targets span + [eop]; 2D positions; the attention rule written
as a per-pair loop; spans never contain <eod>; determinism across worker counts; a new seed changes the
masks but not the text.
"""

from __future__ import annotations

import filecmp
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
import torch

from common.errors import ConfigError, ShardFormatError
from kernels import dense_attention_mask, glm130b_position_ids
from masking.config import MaskingConfig
from masking.stage import load_masking_config, run_masking
from masking.synthetic import write_mip_shards, write_text_shards
from pipeline.special_tokens import EOD, EOP, GMASK, MASK, PAD, SOP
from shards.token_shards import TokenShards, TokenShardWriter
from shards.training_shards import TrainingShards, verify_training_shards

ROW = 2048
SOURCES = {"pile": (900, 700.0), "wudao": (1200, 250.0)}
MIP_DATASETS = {"anli": 300, "deepstruct_ner": 250}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("masking-inputs")
    write_text_shards(root / "tokens", SOURCES, seed=11, docs_per_shard=500)
    write_mip_shards(root / "mip", MIP_DATASETS, seed=12, long_examples=2)
    return root


def _mask(inputs: Path, out: Path, **fields: object) -> dict:
    config = MaskingConfig(rows_per_shard=128, rows_per_block=32, **fields)
    return run_masking(inputs / "tokens", out, config, mip=inputs / "mip", progress=False)


@pytest.fixture(scope="module")
def default_run(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("train-default")
    return out, _mask(inputs, out, seed=1)


@pytest.fixture(scope="module")
def cross_run(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("train-cross")
    return out, _mask(inputs, out, seed=1, cross_document=True)


PROMPT_LENGTHS: dict[str, int] = {}


@pytest.fixture(scope="module")
def documents(inputs: Path) -> dict[str, np.ndarray]:
    """doc_id -> tokens, for text and MIP shards alike (and MIP prompt lengths in PROMPT_LENGTHS)."""
    out: dict[str, np.ndarray] = {}
    for directory in [*(inputs / "tokens").iterdir(), inputs / "mip" / "shards"]:
        shards = TokenShards(directory)
        for i, doc_id in enumerate(shards.provenance.column("doc_id").to_pylist()):
            out[doc_id] = np.asarray(shards[i])
        if "prompt_len" in shards.provenance.column_names:
            PROMPT_LENGTHS.update(
                zip(
                    shards.provenance.column("doc_id").to_pylist(),
                    shards.provenance.column("prompt_len").to_pylist(),
                )
            )
    return out


# ------------------------------------------------------------------------------ the §4 rule, independently


def check_row(batch: dict, i: int, documents: dict[str, np.ndarray]) -> list[dict]:
    """Check row i of a batch against §4; return one record per segment (kind, window, spans...)."""
    tokens, targets = batch["tokens"][i], batch["targets"][i]
    positions, blocks, loss = batch["position_ids"][i], batch["block_position_ids"][i], batch["loss_mask"][i]
    table = batch["segments"][i]
    table = table[table[:, 0] >= 0]
    assert len(tokens) == ROW
    assert table[0, 0] == 0 and (table[1:, 0] == table[:-1, 2]).all(), "segments tile the row from 0"
    records = []
    for (start, sep, end), provenance in zip(table.tolist(), batch["provenance"][i]):
        part_a = tokens[start:sep]
        assert (positions[start:sep] == np.arange(sep - start)).all(), "Part A positions count 0..|A|-1"
        assert (blocks[start:sep] == 0).all() and (loss[start:sep] == 0).all()
        assert (targets[start:sep] == part_a).all(), "Part A targets are the tokens themselves (documented)"
        block_starts = np.flatnonzero(blocks[sep:end] == 1) + sep
        assert block_starts[0] == sep
        spans: dict[int, np.ndarray] = {}
        order = []
        for bs, be in zip(block_starts, [*block_starts[1:], end]):
            content = tokens[bs + 1 : be]
            assert tokens[bs] == SOP, "each Part-B block starts with [sop]"
            assert (targets[bs:be] == np.append(content, EOP)).all(), "targets = span + [eop]"
            assert (blocks[bs:be] == np.arange(1, be - bs + 1)).all(), "block positions 1..len+1"
            assert (positions[bs:be] == positions[bs]).all(), "a block carries its mask's position"
            assert (loss[bs:be] == 1).all()
            mask_index = int(positions[bs])
            assert part_a[mask_index] in (MASK, GMASK) and mask_index not in spans
            spans[mask_index] = content
            order.append(mask_index)
        assert np.isin(part_a, [MASK, GMASK]).sum() == len(spans), "one mask token per span"
        original: list[int] = []
        for j, token in enumerate(part_a.tolist()):
            original.extend(spans[j].tolist() if j in spans else [token])
        pieces = [
            documents[d][o : o + n]
            for d, o, n in zip(provenance["doc_ids"], provenance["doc_offsets"], provenance["doc_tokens"])
        ]
        assert np.array_equal(original, np.concatenate(pieces)), "Part A with the spans put back = the text"
        kind = provenance["kind"]
        if kind == "mask":
            assert (part_a[list(spans)] == MASK).all()
            for content in spans.values():
                assert EOD not in content, "no [MASK] span crosses a document boundary"
            text_order = sorted(spans)
            starts = [j + sum(len(spans[k]) - 1 for k in text_order if k < j) for j in text_order]
            ends = [s + len(spans[j]) for s, j in zip(starts, text_order)]
            assert all(b > a for a, b in zip(ends, starts[1:])), ">= 1 unmasked token between spans"
        else:
            assert len(spans) == 1 and part_a[-1] == GMASK, "[gMASK]/MIP: prefix + [gMASK], one suffix block"
        if kind == "mip":
            assert provenance["source"] in MIP_DATASETS
            assert provenance.get("template"), "every MIP segment names its template"
            # Part A = the prompt (its end) + [gMASK]; Part B = the target, which starts at prompt_len.
            prompt_len = PROMPT_LENGTHS[provenance["doc_ids"][0]]
            assert provenance["doc_offsets"][0] + len(part_a) - 1 == prompt_len
        records.append(
            {
                "kind": kind,
                "n": len(original),
                "spans": [len(c) for c in spans.values()],
                "order": order,
                "text": np.asarray(original),
                "source": provenance["source"],
                "pieces": provenance,
            }
        )
    used = table[-1, 2]
    assert (tokens[used:] == PAD).all() and (loss[used:] == 0).all() and (targets[used:] == PAD).all()
    return records


def all_records(path: Path, documents: dict[str, np.ndarray]) -> tuple[list[dict], TrainingShards]:
    shards = TrainingShards(path)
    records = []
    for lo in range(0, len(shards), 64):
        rows = np.arange(lo, min(lo + 64, len(shards)))
        batch = shards.batch(rows)
        for i in range(len(rows)):
            records.extend(check_row(batch, i, documents))
    return records, shards


def attention_rule(table: np.ndarray, length: int, isolate: bool = True) -> np.ndarray:
    """§4's attention rule as a per-pair loop (the specification, not an implementation)."""
    segment = [-1] * length
    part_b = [False] * length
    for index, (start, sep, end) in enumerate(table):
        for t in range(start, end):
            segment[t] = index if isolate else 0
            part_b[t] = t >= sep
    allowed = np.zeros((length, length), dtype=bool)
    for q in range(length):
        for k in range(length):
            if q == k:
                allowed[q, k] = True
            elif segment[q] >= 0 and segment[q] == segment[k]:
                allowed[q, k] = (not part_b[k]) or (part_b[q] and k <= q)
    return allowed


def merged_chi_square_p(
    observed: np.ndarray, expected: np.ndarray, minimum: float = 5.0
) -> tuple[float, int]:
    """Pearson's chi-square p-value after merging neighbouring bins until every expected count is >= minimum.

    Bins are merged from the right into their left neighbour (the tails are the small ones); the p-value is
    the regularized upper incomplete gamma Q(dof / 2, statistic / 2), computed by torch."""
    obs, exp = [], []
    carry_obs, carry_exp = 0.0, 0.0
    for o, e in zip(observed[::-1].tolist(), expected[::-1].tolist()):
        carry_obs, carry_exp = carry_obs + o, carry_exp + e
        if carry_exp >= minimum:
            obs.append(carry_obs)
            exp.append(carry_exp)
            carry_obs, carry_exp = 0.0, 0.0
    if carry_exp and exp:  # what is left at the left end joins the last merged bin
        obs[-1] += carry_obs
        exp[-1] += carry_exp
    obs_array, exp_array = np.array(obs), np.array(exp)
    assert len(exp_array) >= 2 and (exp_array >= minimum).all()
    statistic = float(((obs_array - exp_array) ** 2 / exp_array).sum())
    dof = len(exp_array) - 1
    p_value = float(
        torch.special.gammaincc(
            torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(statistic / 2, dtype=torch.float64)
        )
    )
    return p_value, dof


def truncated_poisson(lam: float, max_length: int) -> np.ndarray:
    """P(l = k) for k = 0..max_length of Poisson(lam) conditioned on 1 <= l <= max_length (index 0 is 0)."""
    pmf = np.array(
        [0.0] + [math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1)) for k in range(1, max_length + 1)]
    )
    return pmf / pmf.sum()


def overshoot_moments(pmf: np.ndarray, thresholds: int) -> tuple[np.ndarray, np.ndarray]:
    """E[O] and E[O^2] for t = 0..thresholds-1, O = S_K - t, K the first k with l_1 + ... + l_k >= t (k >= 1).

    The first length either reaches t (O = l - t) or leaves the threshold t - l for the rest:
    E[O^j](t) = sum over l >= t of p_l (l - t)^j + sum over l < t of p_l E[O^j](t - l)."""
    lengths = np.arange(len(pmf))
    first, second = np.zeros(thresholds), np.zeros(thresholds)
    for t in range(thresholds):
        reach = lengths >= max(t, 1)
        over = lengths[reach] - t
        first[t] = (pmf[reach] * over).sum()
        second[t] = (pmf[reach] * over**2).sum()
        for length in range(1, min(t, len(pmf))):
            first[t] += pmf[length] * first[t - length]
            second[t] += pmf[length] * second[t - length]
    return first, second


@pytest.fixture(scope="module")
def default_records(default_run, documents) -> list[dict]:
    """Every segment of the default run, each checked by `check_row`."""
    return all_records(default_run[0], documents)[0]


# ------------------------------------------------------------------------------------------------- tests


def test_rows_follow_section_4(default_run, default_records):
    out, report = default_run
    shards = TrainingShards(out)
    assert len(shards) == report["rows"] > 100
    kinds = {r["kind"] for r in default_records}
    assert kinds == {"mask", "gmask", "mip"}
    # Only the final row may be padded, and the stats say how much.
    last = shards.batch([len(shards) - 1])["segments"][0]
    assert report["padding_tokens"] == ROW - last[last[:, 0] >= 0][-1, 2]


def test_text_is_used_once_and_every_document_appears(default_run, default_records, documents):
    _, report = default_run
    text = [r for r in default_records if r["kind"] != "mip"]
    used = np.sort(np.concatenate([r["text"] for r in text]))
    originals = [documents[d] for d in documents if not d.startswith(tuple(MIP_DATASETS))]
    assert np.array_equal(used, np.sort(np.concatenate(originals))), "one pass = every document exactly once"
    assert report["tokens_per_source"] == {
        name: int(sum(len(documents[d]) for d in documents if d.startswith(name + ":"))) for name in SOURCES
    }


def test_cross_document_rows(cross_run, documents):
    out, report = cross_run
    records, shards = all_records(out, documents)
    batch = shards.batch(np.arange(len(shards)))
    for i in range(len(shards)):
        kinds = [p["kind"] for p in batch["provenance"][i]]
        if "mip" not in kinds:
            assert len(kinds) == 1, "GLM-130B layout: one segment per text row"
    multi = [r for r in records if r["kind"] != "mip" and len(r["pieces"]["doc_ids"]) > 1]
    assert multi, "documents share windows"
    for record in multi:  # documents inside a window are separated by their <eod>
        ends = np.cumsum(record["pieces"]["doc_tokens"])[:-1]
        assert (record["text"][ends - 1] == EOD).all()


def test_dense_mask_matches_the_rule(inputs, tmp_path):
    out = tmp_path / "small"
    _mask(inputs, out, seed=3, row_length=48, rows=150)
    shards = TrainingShards(out)
    batch = shards.batch(np.arange(len(shards)))
    checked = 0
    for i in range(len(shards)):
        table = batch["segments"][i]
        table = table[table[:, 0] >= 0]
        for isolate in (True, False):
            expected = attention_rule(table, 48, isolate)
            assert np.array_equal(
                dense_attention_mask(batch["segments"][i], 48, isolate_segments=isolate), expected
            )
        checked += len(table) > 1
    assert checked > 10, "rows with several segments were checked"


def test_glm130b_1d_positions(default_run):
    out, _ = default_run
    batch = TrainingShards(out).batch(np.arange(8))
    one_d = glm130b_position_ids(batch)
    for i in range(8):
        for start, sep, end in batch["segments"][i][batch["segments"][i][:, 0] >= 0]:
            in_b = np.arange(sep, end)
            mask_tokens = batch["tokens"][i][start + batch["position_ids"][i][in_b]]
            gmask = mask_tokens == GMASK
            assert (one_d[i][in_b][~gmask] == batch["position_ids"][i][in_b][~gmask]).all()
            assert (one_d[i][in_b][gmask] == np.arange(1, gmask.sum() + 1) + (sep - start - 1)).all()


def test_mask_windows_cover_fifteen_percent(default_run, default_records):
    _, report = default_run
    windows = [r for r in default_records if r["kind"] == "mask" and r["n"] >= 40]
    assert len(windows) > 100
    for r in windows:
        covered = sum(r["spans"])
        # Spans are drawn until they cover 15% (of the window, or of the slots it fills): never short of it,
        # and all spans but the largest stay below it (the last one drawn is what crossed the line).
        assert covered >= 0.15 * r["n"] - 1e-9
        assert covered - max(r["spans"]) < 0.15 * (r["n"] + 2)
    assert 0.15 <= report["masked_ratio"]["observed"] <= 0.17


def test_statistics_rederived_from_written_shards(default_run, default_records):
    """§4's numbers from the rows as the loader rebuilds them (each checked by `check_row`), not the report."""
    out, report = default_run
    rows = len(TrainingShards(out))
    mask = [r for r in default_records if r["kind"] == "mask"]
    gmask = [r for r in default_records if r["kind"] == "gmask"]

    # Span lengths ~ Poisson(3) truncated to 1..39: chi-square over every [MASK] span of the run.
    pmf = truncated_poisson(3.0, 39)
    lengths = np.concatenate([r["spans"] for r in mask])
    assert len(lengths) > 5000 and lengths.min() >= 1 and lengths.max() <= 39
    observed = np.bincount(lengths, minlength=40)[1:]
    p_value, dof = merged_chi_square_p(observed, pmf[1:] * len(lengths))
    assert dof >= 5 and p_value > 1e-3, (p_value, observed.tolist())

    # [gMASK] suffix length s ~ uniform on [lo, hi] = [max(1, ceil(n / 4)), max(lo, n - 2)] (docs/MASKING.md).
    n = np.array([r["n"] for r in gmask])
    suffix = np.array([r["spans"][0] for r in gmask])
    lo = np.maximum(1, np.ceil(n / 4 - 1e-9).astype(np.int64))
    hi = np.maximum(lo, n - 2)
    assert ((suffix >= lo) & (suffix <= hi)).all()
    # Relative position j = s - lo of K = hi - lo + 1 values in 10 bins: bin b holds the j with
    # floor(10 j / K) = b, expected #{such j} / K per segment (ranges of >= 10 values only).
    values = hi - lo + 1
    wide = values >= 10
    assert wide.sum() > 1000
    bins = 10
    observed = np.bincount(bins * (suffix - lo)[wide] // values[wide], minlength=bins)
    # #{j in [0, K): floor(10 j / K) = b} = ceil(K (b + 1) / 10) - ceil(K b / 10).
    edges = -(-values[wide, None] * np.arange(bins + 1)[None, :] // bins)
    expected = (np.diff(edges, axis=1) / values[wide, None]).sum(axis=0)
    assert expected.sum() == pytest.approx(wide.sum())
    p_value, dof = merged_chi_square_p(observed, expected)
    assert dof == bins - 1 and p_value > 1e-3, (p_value, observed.tolist())

    # Masked ratio: a window of n gets spans until they cover t = ceil(0.15 n), so it covers t + O with O the
    # overshoot of a renewal process of truncated-Poisson steps; its exact mean and variance per window give
    # the expected masked tokens and a 4-sigma band. Windows of >= 40 tokens (where spans never need
    # shortening to fit); a window that fills the end of a row may take one span more (the fill rule counts
    # 2 slots per span), on average under 0.3 tokens, at most one such window per row.
    wide_windows = [r for r in mask if r["n"] >= 40]
    window = np.array([r["n"] for r in wide_windows])
    covered = np.array([sum(r["spans"]) for r in wide_windows])
    threshold = np.ceil(0.15 * window - 1e-9).astype(np.int64)
    first, second = overshoot_moments(pmf, int(threshold.max()) + 1)
    expected_covered = float((threshold + first[threshold]).sum())
    sigma = math.sqrt(float((second[threshold] - first[threshold] ** 2).sum()))
    assert (covered >= 0.15 * window - 1e-9).all(), "spans cover at least 15% of every window"
    ratio, expected_ratio = covered.sum() / window.sum(), expected_covered / window.sum()
    assert 0.15 < expected_ratio < 0.16
    assert -4 * sigma <= covered.sum() - expected_covered <= 4 * sigma + 0.3 * rows, (ratio, expected_ratio)

    # 30% of text tokens in [MASK] segments: modes are independent draws per segment (P(mask) = 0.3 for a
    # piece that fits either way), so the share's standard deviation follows from the segment sizes.
    sizes = np.array([r["n"] for r in mask + gmask], dtype=np.float64)
    share = sizes[: len(mask)].sum() / sizes.sum()
    sigma_share = math.sqrt((sizes**2).sum() * 0.3 * 0.7) / sizes.sum()
    assert sigma_share < 0.02 and abs(share - 0.3) < 4 * sigma_share, (share, sigma_share)
    assert share == pytest.approx(report["text_tokens"]["mask_fraction"])


def test_mip_segments(default_run, default_records):
    _, report = default_run
    mip = [r for r in default_records if r["kind"] == "mip"]
    assert {r["source"] for r in mip} == set(MIP_DATASETS)
    total = report["tokens"] - report["padding_tokens"]
    assert not report["mip"]["exhausted"]
    # MIP rows are placed when MIP is below its share: within one row's worth of 5%.
    assert abs(report["mip"]["share"] - 0.05) < ROW / total + 1e-9
    assert report["mip"]["truncated_examples"] >= 2 * len(MIP_DATASETS) - 1  # the long ones that were used
    for r in mip:
        assert r["n"] + 2 <= ROW
        # The template is the MIP shard's own (synthetic: `<dataset>-template-<i % 3>` for example i).
        dataset, _, number = r["pieces"]["doc_ids"][0].split(":")
        assert (r["source"], r["pieces"]["template"]) == (dataset, f"{dataset}-template-{int(number) % 3}")


TIMING_KEYS = ("seconds", "tokens_per_second")
"""Keys of stats.json that measure the run rather than describe its output."""


def test_same_seed_same_bytes_for_one_two_and_three_workers(inputs, tmp_path, ray_session, monkeypatch):
    # 333 rows: five shards of 64 and a last one of 13, which is also a partial block of the 32-row blocks.
    import masking.stage as stage

    pools = []
    ray_pool = stage._RayPool
    monkeypatch.setattr(stage, "_RayPool", lambda *args: pools.append(args) or ray_pool(*args))
    outputs = {}
    for workers in (1, 2, 3):
        outputs[workers] = tmp_path / f"w{workers}"
        # ray_min_tokens=0: 333 rows are far below the in-process threshold, and this test is about Ray tasks.
        config = MaskingConfig(
            seed=5, rows=333, rows_per_shard=64, rows_per_block=32, workers=workers, ray_min_tokens=0
        )
        run_masking(inputs / "tokens", outputs[workers], config, mip=inputs / "mip", progress=False)
    assert [workers for workers, _ in pools] == [2, 3], "workers 2 and 3 built their shards as Ray tasks"
    names = sorted(p.name for p in outputs[1].iterdir())
    assert len([n for n in names if n.endswith(".tokens")]) == 6 and "stats.json" in names
    assert len(TrainingShards(outputs[1])) == 333

    def stats_without_timings(directory: Path) -> dict:
        stats = orjson.loads((directory / "stats.json").read_bytes())
        assert all(key in stats for key in TIMING_KEYS)
        # `out` and `workers` say where and how the run went, not what it wrote.
        assert stats.pop("out") == str(directory) and stats.pop("workers") in (1, 2, 3)
        return {key: value for key, value in stats.items() if key not in TIMING_KEYS}

    for workers in (2, 3):
        assert sorted(p.name for p in outputs[workers].iterdir()) == names
        for name in names:
            if name != "stats.json":
                assert filecmp.cmp(outputs[1] / name, outputs[workers] / name, shallow=False), (workers, name)
        assert stats_without_timings(outputs[workers]) == stats_without_timings(outputs[1])


def test_shard_size_changes_files_not_rows(inputs, tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    run_masking(
        inputs / "tokens",
        small,
        MaskingConfig(rows=200, rows_per_shard=32, rows_per_block=32),
        mip=inputs / "mip",
        progress=False,
    )
    run_masking(
        inputs / "tokens",
        large,
        MaskingConfig(rows=200, rows_per_shard=96, rows_per_block=32),
        mip=inputs / "mip",
        progress=False,
    )
    a, b = TrainingShards(small).batch(np.arange(200)), TrainingShards(large).batch(np.arange(200))
    for key in ("tokens", "targets", "position_ids", "block_position_ids", "segments", "provenance"):
        assert np.array_equal(a[key], b[key]) if key != "provenance" else a[key] == b[key]


def test_new_seed_new_masks_same_text(inputs, tmp_path, default_run, default_records, documents):
    out, _ = default_run
    other = tmp_path / "seed2"
    _mask(inputs, other, seed=2)
    first = default_records
    second, _ = all_records(other, documents)
    text = lambda records: np.sort(np.concatenate([r["text"] for r in records if r["kind"] != "mip"]))  # noqa: E731
    assert np.array_equal(text(first), text(second))
    assert (out / "train-00000.tokens").read_bytes() != (other / "train-00000.tokens").read_bytes()


def test_rerun_is_skipped_and_force_rebuilds_identically(inputs, tmp_path):
    out = tmp_path / "rerun"
    _mask(inputs, out, seed=4, rows=50)
    before = (out / "train-00000.tokens").read_bytes()
    assert _mask(inputs, out, seed=4, rows=50).get("skipped") is True
    report = run_masking(
        inputs / "tokens",
        out,
        MaskingConfig(rows_per_shard=128, rows_per_block=32, seed=4, rows=50),
        mip=inputs / "mip",
        progress=False,
        force=True,
    )
    assert "skipped" not in report
    assert (out / "train-00000.tokens").read_bytes() == before


def test_compact_and_verified(default_run):
    out, report = default_run
    result = verify_training_shards(out)
    assert result["ok"] and result["rows"] == report["rows"]
    assert report["bytes_per_token"] <= 4.5
    assert result["bytes_per_token"] <= 4.5


def test_verify_detects_a_flipped_byte(default_run, tmp_path):
    out, _ = default_run
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    tokens = broken / "train-00000.tokens"
    data = bytearray(tokens.read_bytes())
    data[4 * 100 + 1] ^= 0x01
    tokens.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match="checksum mismatch"):
        verify_training_shards(broken)
    # Without checksums, the layout checks still catch a damaged mask token.
    batch = TrainingShards(broken).batch([1])
    row = batch["tokens"][0]
    position = int(np.flatnonzero(np.isin(row, [MASK, GMASK]))[0])
    data = bytearray(tokens.read_bytes())
    data[4 * (ROW + position)] ^= 0x01
    tokens.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError):
        verify_training_shards(broken, check_hash=False)


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("masking:\n  seed: 9\n  mask_ratio: 0.2\n  source_weights: {pile: 2, wudao: 1}\n")
    config = load_masking_config(str(path), ["rows=7"], {"workers": 2, "cross_document": None})
    assert (config.seed, config.mask_ratio, config.rows, config.workers) == (9, 0.2, 7, 2)
    assert config.source_weights == {"pile": 2.0, "wudao": 1.0}
    with pytest.raises(ConfigError, match="unknown config key"):
        load_masking_config(None, ["mask_ratoi=0.2"], {})
    with pytest.raises(ConfigError, match="rows_per_shard"):
        load_masking_config(None, ["rows_per_shard=100", "rows_per_block=64"], {})


def test_cli_mask_and_inspect(inputs, tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "cli"]
    done = subprocess.run(
        [
            *command,
            "mask",
            "--tokens",
            str(inputs / "tokens"),
            "--mip",
            str(inputs / "mip"),
            "--out",
            str(out),
            "--rows",
            "20",
            "--seed",
            "3",
            "--set",
            "rows_per_block=16",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert summary["rows"] == 20 and summary["seed"] == 3
    shown = subprocess.run(
        [*command, "inspect", str(out), "5"], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert shown.returncode == 0, shown.stderr
    assert "Part A" in shown.stdout and "[sop]" in shown.stdout
    bad = subprocess.run(
        [*command, "mask", "--tokens", str(inputs / "tokens"), "--out", str(out), "--set", "no_such_key=1"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert bad.returncode == 1 and "unknown config key" in bad.stderr


def test_cli_mask_config_file_with_command_line_overrides(inputs, tmp_path, capsys):
    from cli import main

    path = tmp_path / "run.yaml"
    path.write_text(
        "masking:\n  seed: 9\n  rows: 40\n  mask_ratio: 0.2\n  rows_per_block: 16\n  rows_per_shard: 32\n"
    )
    out = tmp_path / "cli-config"
    arguments = ["mask", "--tokens", str(inputs / "tokens"), "--out", str(out), "--config", str(path)]
    assert main([*arguments, "--rows", "12", "--set", "mask_ratio=0.1", "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    # The flag and --set win over the file; what the command line leaves alone comes from the file.
    assert summary["rows"] == 12 and summary["config"]["rows"] == 12
    assert summary["config"]["mask_ratio"] == 0.1 and summary["masked_ratio"]["target"] == 0.1
    assert summary["seed"] == 9 and summary["config"]["rows_per_block"] == 16
    assert len(TrainingShards(out)) == 12
    assert orjson.loads((out / "training_shards.json").read_bytes())["config"]["seed"] == 9
    # Without the overrides the file's values hold.
    assert main([*arguments, "--force", "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert (summary["rows"], summary["config"]["mask_ratio"]) == (40, 0.2)
    assert len(TrainingShards(out)) == 40


def test_mip_segments_always_name_a_template(inputs, tmp_path):
    """MIP shards that record no template (no column, or empty values) still give named MIP segments."""
    from masking.segments import MIP_DEFAULT_TEMPLATE

    generator = np.random.default_rng(4)
    for layout in ("no_column", "empty"):
        mip = tmp_path / layout
        extra = [pa.field("prompt_len", pa.int32()), pa.field("dataset", pa.string())]
        if layout == "empty":
            extra.append(pa.field("template", pa.string()))
        with TokenShardWriter(mip / "shards" / "qa-00000", extra_schema=tuple(extra)) as writer:
            for i in range(200):
                ids = generator.integers(30_000, 40_000, size=60, dtype=np.int32)
                fields = {"template": ""} if layout == "empty" else {}
                writer.add(
                    ids,
                    doc_id=f"qa:x:{i}",
                    source="qa",
                    input_file="x",
                    offset=i,
                    prompt_len=40,
                    dataset="qa",
                    **fields,
                )
        out = tmp_path / f"train-{layout}"
        run_masking(
            inputs / "tokens",
            out,
            MaskingConfig(rows=60, rows_per_block=32, rows_per_shard=64),
            mip=mip,
            progress=False,
        )
        table = TrainingShards(out).provenance_table().to_pylist()
        mip_segments = [entry for entry in table if entry["kind"] == "mip"]
        assert mip_segments and all(
            (entry["source"], entry["template"]) == ("qa", MIP_DEFAULT_TEMPLATE) for entry in mip_segments
        )
        assert all(entry["template"] == "" for entry in table if entry["kind"] != "mip")


def test_sources_come_from_the_pipeline_manifest(tmp_path):
    from masking.stage import discover_text_sources

    write_text_shards(tmp_path / "tokens", {"pile": (3, 10.0), "web": (3, 10.0)}, seed=1)
    write_text_shards(tmp_path / "tokens" / "work", {"scratch": (3, 10.0)}, seed=2)  # ingest's leftovers
    (tmp_path / "tokens" / "manifest.json").write_bytes(orjson.dumps({"sources": {"pile": {}, "web": {}}}))
    names, paths = discover_text_sources(tmp_path / "tokens")
    assert names == ["pile", "web"] and paths == [str(tmp_path / "tokens" / n) for n in names]
    (tmp_path / "tokens" / "manifest.json").unlink()
    assert discover_text_sources(tmp_path / "tokens")[0] == ["pile", "web"]
