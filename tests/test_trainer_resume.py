"""Exact continuation: the sampler is a pure function of the step, and a checkpoint restores everything else."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from trainer import checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.data import (
    DistributedSampler,
    PrefetchLoader,
    SyntheticRows,
    rows_for_rank,
    rows_for_step,
    rows_for_steps,
)
from trainer.parallel import ParallelContext
from trainer.train import DynamicLossScaler, learning_rate, train

torch.set_num_threads(1)


def tiny_config(**overrides: object) -> TrainConfig:
    fields = {
        "model": ModelConfig(vocab_size=512, hidden_size=32, num_heads=4, num_layers=2),
        "steps": 7,
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "warmup_steps": 2,
        "num_threads": 1,
        "lr": 3e-3,
        **overrides,
    }
    return TrainConfig(**fields)


SOURCE = SyntheticRows(10, seq_length=48, vocab_size=512, seed=11)  # 10 rows: the run crosses epochs


# --------------------------------------------------------------------------------------------- sampler


def test_rows_for_step_is_a_pure_function_that_walks_epoch_permutations() -> None:
    n_rows, batch, seed = 10, 4, 3
    steps = np.stack([rows_for_step(n_rows, s, batch, seed) for s in range(5)])
    np.testing.assert_array_equal(steps, rows_for_steps(n_rows, 0, 5, batch, seed))
    stream = steps.reshape(-1)
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))  # whole epochs
    assert not np.array_equal(stream[:10], stream[10:20])  # a new order every epoch
    np.testing.assert_array_equal(rows_for_step(n_rows, 3, batch, seed), steps[3])  # no hidden state
    assert not np.array_equal(rows_for_steps(n_rows, 0, 5, batch, seed + 1), steps)


def test_dp_ranks_split_each_step_into_fixed_contiguous_slices() -> None:
    for step in range(4):
        full = rows_for_step(100, step, 8, seed=0)
        parts = [rows_for_rank(100, step, 8, 0, rank, 4) for rank in range(4)]
        np.testing.assert_array_equal(np.concatenate(parts), full)
        sampler = DistributedSampler(100, 8, 1, seed=0, dp_rank=2, dp_size=4)
        np.testing.assert_array_equal(np.concatenate(sampler.micro_batches(step)), parts[2])


def test_prefetch_loader_yields_the_sampler_rows_in_order_and_reports_errors() -> None:
    sampler = DistributedSampler(len(SOURCE), 4, 2, seed=5)
    with PrefetchLoader(SOURCE, sampler, 2, 6, depth=2) as loader:
        batches = list(loader)
    assert [b.step for b in batches] == [2, 3, 4, 5]
    for b in batches:
        np.testing.assert_array_equal(b.rows, rows_for_step(len(SOURCE), b.step, 4, 5))
        expected = SOURCE.batch(b.rows[:2])["tokens"]
        np.testing.assert_array_equal(b.micro_batches[0]["tokens"].numpy(), expected)

    class Broken:
        def __len__(self) -> int:
            return 4

        def batch(self, rows: object) -> dict:
            raise OSError("shard unreadable")

    with (
        PrefetchLoader(Broken(), DistributedSampler(4, 2, 2, seed=0), 0, 3) as loader,
        pytest.raises(OSError),
    ):
        next(loader)


def write_training_shards(directory: Path, source: SyntheticRows) -> None:
    """Store synthetic rows with the masking stage's shard writer (recipes derived from the rows)."""
    ts = pytest.importorskip("shards.training_shards")
    import pyarrow as pa

    from pipeline.special_tokens import GMASK, SOP

    rows = source.batch(np.arange(len(source)))
    segments = {
        k: [] for k in ("segment_start", "segment_sep", "segment_end", "segment_kind", "segment_span_count")
    }
    spans: dict[str, list[int]] = {"span_mask_position": [], "span_length": []}
    counts, provenance = [], []
    for r in range(len(source)):
        table = [s for s in rows["segments"][r].tolist() if s[0] >= 0]
        counts.append(len(table))
        tokens, positions = rows["tokens"][r], rows["position_ids"][r]
        for index, (start, sep, end) in enumerate(table):
            blocks = [i for i in range(sep, end) if tokens[i] == SOP] + [end]
            kind = "gmask" if tokens[start + positions[sep]] == GMASK else "mask"
            for first, last in zip(blocks[:-1], blocks[1:]):
                spans["span_mask_position"].append(start + int(positions[first]))
                spans["span_length"].append(last - first - 1)
            values = (start, sep, end, ts.KIND_CODES[kind], len(blocks) - 1)
            for key, value in zip(segments, values):
                segments[key].append(value)
            provenance.append(
                {"row": r, "segment": index, "kind": kind, "source": "synthetic", "doc_ids": [f"d{r}"],
                 "doc_offsets": [0], "doc_tokens": [end - start], "template": ""}
            )  # fmt: skip
    writer = ts.TrainingShardWriter(directory, 0, source.seq_length, 0)
    writer.add(
        rows["tokens"],
        np.array(counts),
        {k: np.array(v) for k, v in segments.items()},
        {k: np.array(v) for k, v in spans.items()},
        pa.Table.from_pylist(provenance, schema=ts.PROVENANCE_SCHEMA),
    )
    ts.write_manifest(directory, row_length=source.seq_length, shards=[writer.close()])


def test_trains_on_training_shards_exactly_as_on_the_same_rows_in_memory(tmp_path: Path) -> None:
    """`shards.TrainingShards` (DESIGN §10) as the row source: same losses as the rows it was written from."""
    source = SyntheticRows(8, seq_length=64, seed=2)  # GLM's real special ids and vocabulary
    write_training_shards(tmp_path / "train", source)
    from trainer.data import open_training_data

    shards = open_training_data(str(tmp_path / "train"))
    assert len(shards) == 8
    cfg = tiny_config(steps=2, global_batch_size=2, micro_batch_size=1, model=ModelConfig(hidden_size=32))
    from_shards = train(cfg, shards, ParallelContext()).history
    in_memory = train(cfg, source, ParallelContext()).history
    assert [r["loss"] for r in from_shards] == [r["loss"] for r in in_memory]


# --------------------------------------------------------------------------------------------- resume


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    cfg = tiny_config(steps=7, save_interval=2)
    uninterrupted = train(cfg, SOURCE, ParallelContext()).history

    # A run killed after step 4 (0-based), whose last checkpoint is the one after 4 completed steps.
    killed = train(cfg, SOURCE, ParallelContext(), out_dir=tmp_path, stop_step=5).history
    assert [r["step"] for r in killed] == [0, 1, 2, 3, 4]
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_00000004"

    resumed = train(cfg, SOURCE, ParallelContext(), out_dir=tmp_path, resume=True)
    assert resumed.summary["resumed_from"].endswith("step_00000004")
    assert [r["step"] for r in resumed.history] == [4, 5, 6]
    for got, want in zip(resumed.history, uninterrupted[4:]):
        assert got["loss"] == want["loss"]  # bit-identical continuation
        assert got["grad_norm"] == want["grad_norm"]
        assert got["lr"] == want["lr"]
    assert [r["loss"] for r in killed] == [r["loss"] for r in uninterrupted[:5]]


def test_checkpoint_records_what_resume_needs(tmp_path: Path) -> None:
    cfg = tiny_config(steps=3, precision="fp16", initial_loss_scale=1024.0)
    result = train(cfg, SOURCE, ParallelContext(), out_dir=tmp_path)
    directory = Path(result.summary["checkpoint"])
    assert directory == checkpoint.latest_checkpoint(tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == ["meta.json", "model_tp00.pt", "rng_00000.pt"]
    meta = orjson.loads((directory / "meta.json").read_bytes())
    assert meta["step"] == 3 and meta["consumed_samples"] == 12 and meta["tp"] == 1
    assert meta["loss_scaler"]["scale"] == 1024.0 and meta["loss_scaler"]["clean_steps"] == 3
    assert meta["config"] == dataclasses.asdict(cfg)
    state = torch.load(directory / "model_tp00.pt", weights_only=True)
    assert set(state) == {"model", "optimizer"} and "embedding.weight" in state["model"]
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes left no temporaries

    with pytest.raises(Exception, match="global_batch_size"):
        train(
            tiny_config(steps=4, global_batch_size=2),
            SOURCE,
            ParallelContext(),
            out_dir=tmp_path,
            resume=True,
        )


# ------------------------------------------------------------------------------------ schedule and fp16


def test_learning_rate_warms_up_then_decays_tenfold_by_cosine() -> None:
    cfg = tiny_config(steps=12, warmup_steps=2, lr=1e-3)
    lrs = [learning_rate(s, cfg) for s in range(14)]
    assert lrs[0] == pytest.approx(1e-7 + (1e-3 - 1e-7) / 2) and lrs[1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert lrs[-1] == pytest.approx(1e-4)
    assert lrs[7] == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * 0.5)))


def test_loss_scaler_halves_on_overflow_and_grows_after_a_clean_window() -> None:
    scaler = DynamicLossScaler(scale=8.0, window=2)
    scaler.update(found_inf=True)
    assert scaler.scale == 4.0
    scaler.update(False)
    scaler.update(False)
    assert scaler.scale == 8.0 and scaler.clean_steps == 0


def test_fp16_overflow_skips_the_step_and_halves_the_scale_until_training_goes_on() -> None:
    """A too-large initial scale overflows the fp16 backward: such steps are skipped, the scale halves each time,
    and once it fits the optimizer steps again."""
    cfg = tiny_config(steps=8, precision="fp16", initial_loss_scale=2.0**30)
    history = train(cfg, SOURCE, ParallelContext()).history
    assert history[0]["skipped"] and not all(r["skipped"] for r in history)
    for before, after in zip(history, history[1:]):
        assert after["loss_scale"] == (
            before["loss_scale"] / 2 if before["skipped"] else before["loss_scale"]
        )
    assert all(math.isfinite(r["loss"]) for r in history)


def test_bf16_autocast_trains_close_to_fp32() -> None:
    fp32 = train(tiny_config(steps=3), SOURCE, ParallelContext()).history
    bf16 = train(tiny_config(steps=3, precision="bf16"), SOURCE, ParallelContext()).history
    for a, b in zip(fp32, bf16):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2)
