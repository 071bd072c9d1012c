"""Reference trainer on CPU: where a step's time goes, and GLM attention (SDPA + mask) against matmul-softmax.

Rows:
- a training step of the tiny default model (2 layers, hidden 64, 4 heads, GLM's 150,528-word vocabulary) on
  rows of 2048 tokens (512 with --quick), split into data wait (time blocked on the prefetching loader) and
  compute; target: data wait < 1% of the step. Rows come from the training shards named by the environment
  variable GLM_CORPUS_TRAIN_SHARDS when set, else from `trainer.data.SyntheticRows`. The first step is left out
  (its batch cannot have been prefetched while nothing was computing).
- the attention of one layer, forward + backward, same shapes: SDPA with the boolean GLM mask (the CPU path) vs a
  naive matmul-softmax with the same mask, in the same run; the ratio is naive time / SDPA time. Building the
  mask from the segment table is timed on its own (it is done once per batch, shared by every layer).
One thread (per core), like the other benchmarks.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from benchmarks.common import best_time
from kernels.glm_attention import build_attention_mask, glm_attention, naive_attention
from trainer.config import TrainConfig
from trainer.data import SyntheticRows, open_training_data, to_torch_batch
from trainer.parallel import ParallelContext
from trainer.train import train


def _source(length: int, rows: int) -> tuple[Any, str]:
    path = os.environ.get("GLM_CORPUS_TRAIN_SHARDS")
    if path:
        return open_training_data(path), f"training shards {path}"
    return SyntheticRows(rows, seq_length=length), "synthetic rows"


def bench_train_step(quick: bool) -> dict[str, Any]:
    length, steps = (512, 5) if quick else (2048, 9)
    source, described = _source(length, rows=64)
    cfg = TrainConfig(steps=steps, num_threads=1, seq_length=length, warmup_steps=2)
    history = train(cfg, source, ParallelContext()).history[1:]
    step = float(np.mean([r["step_time_s"] for r in history]))
    wait = float(np.mean([r["data_wait_s"] for r in history]))
    return {
        "case": f"train step, tiny model, {cfg.global_batch_size} x {length} tokens ({described})",
        "step ms": 1000 * step,
        "compute ms": 1000 * (step - wait),
        "data wait ms": 1000 * wait,
        "data wait %": 100 * wait / step,
        "tokens/s": float(np.mean([r["tokens_per_s"] for r in history])),
        "MFU % (0.1 TFLOP/s peak)": 100 * float(np.mean([r["mfu"] for r in history])),
    }


def bench_attention(quick: bool) -> dict[str, Any]:
    length = 512 if quick else 2048
    heads, head_dim, batch = 4, 16, 2
    source = SyntheticRows(batch, seq_length=length, seed=1)
    segments = to_torch_batch(source.batch(list(range(batch))))["segments"]
    generator = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(batch, heads, length, head_dim, generator=generator).requires_grad_() for _ in range(3)
    )
    mask = build_attention_mask(segments, length, backend="sdpa")

    def sdpa() -> None:
        glm_attention(q, k, v, mask).sum().backward()

    def naive() -> None:
        naive_attention(q, k, v, mask.dense).sum().backward()

    torch.testing.assert_close(
        glm_attention(q, k, v, mask), naive_attention(q, k, v, mask.dense), atol=1e-5, rtol=1e-4
    )
    t_sdpa, t_naive = best_time(sdpa), best_time(naive)
    t_mask = best_time(lambda: build_attention_mask(segments, length, backend="sdpa"))
    return {
        "case": f"GLM attention fwd+bwd, {batch} x {length} tokens, {heads} heads x {head_dim}",
        "SDPA + mask ms": 1000 * t_sdpa,
        "naive ms": 1000 * t_naive,
        "ratio (naive / SDPA)": t_naive / t_sdpa,
        "mask build ms": 1000 * t_mask,
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [bench_train_step(quick), bench_attention(quick)]
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    import sys

    from benchmarks.common import format_table

    for row in run(quick="--quick" in sys.argv):
        print(format_table([row]))
