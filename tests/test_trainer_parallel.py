"""Tensor and data parallelism on real torch.distributed ranks (gloo, CPU).

Each test starts N processes with `run_on_ranks` (multiprocessing spawn, a free port, torchrun's environment
variables), so the code under test joins its process group exactly as it does under torchrun.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from trainer.config import ModelConfig, TrainConfig
from trainer.data import SyntheticRows
from trainer.parallel import (
    VocabParallelEmbedding,
    destroy_parallel,
    init_parallel,
    parallel_logits,
    vocab_parallel_cross_entropy,
    vocab_parallel_output_loss,
)
from trainer.train import train

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 1000  # padded to 1024: covers real-vs-padding rows; the TP test also runs the real 150,528 vocabulary


# ------------------------------------------------------------------------------------------- rank harness


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(
    rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, results: Any
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    try:
        results.put((rank, True, fn(*args)))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        destroy_parallel()


def run_on_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0) -> list[Any]:
    """Run `fn(*args)` on `world_size` fresh processes joined like torchrun's; returns results by rank."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=_rank_main, args=(rank, world_size, port, fn, args, results), daemon=True)
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    try:
        collected: dict[int, Any] = {}
        for _ in range(world_size):
            rank, ok, value = results.get(timeout=timeout)
            if not ok:
                raise AssertionError(f"rank {rank} failed:\n{value}")
            collected[rank] = value
        return [collected[rank] for rank in range(world_size)]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


def tiny_config(**overrides: Any) -> TrainConfig:
    model = overrides.pop("model", {})
    fields = {
        "steps": 4,
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "warmup_steps": 2,
        "num_threads": 1,
        **overrides,
    }
    return TrainConfig(
        model=ModelConfig(**{"vocab_size": VOCAB, "hidden_size": 32, "num_heads": 4, **model}), **fields
    )


def train_losses(
    cfg: TrainConfig, rows: int = 16, length: int = 64, vocab: int = VOCAB
) -> list[tuple[float, float]]:
    """(loss, grad norm) per step on synthetic rows; in a rank this joins the process group first."""
    ctx = init_parallel(cfg.tp, cfg.dp, device="cpu")
    history = train(cfg, SyntheticRows(rows, seq_length=length, vocab_size=vocab, seed=7), ctx).history
    return [(r["loss"], r["grad_norm"]) for r in history]


# ------------------------------------------------------------------------------------------ layer checks


def _cross_entropy_on_rank(vocab: int, tokens: int) -> dict[str, torch.Tensor]:
    ctx = init_parallel(tp=2)
    generator = torch.Generator().manual_seed(0)
    embedding = VocabParallelEmbedding(vocab, 1024, 16, ctx, generator, init_std=0.5)
    hidden = torch.randn(tokens, 16, generator=generator).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    per_token = vocab_parallel_cross_entropy(parallel_logits(hidden, embedding), targets, embedding)
    grad_hidden, grad_weight = torch.autograd.grad(per_token.sum(), (hidden, embedding.weight))
    hidden2 = hidden.detach().clone().requires_grad_()
    chunked = vocab_parallel_output_loss(
        hidden2, targets, embedding, chunk_elements=5 * 512
    )  # 5-token chunks
    chunked_grads = torch.autograd.grad(chunked, (hidden2, embedding.weight))
    return {
        "loss": per_token.detach(),
        "grad_hidden": grad_hidden,
        "grad_weight": grad_weight,
        "chunked_sum": chunked.detach(),
        "chunked_grad_hidden": chunked_grads[0],
        "chunked_grad_weight": chunked_grads[1],
        "lookup": embedding(targets[None]).detach()[0],
    }


def test_vocab_parallel_cross_entropy_equals_torch_cross_entropy() -> None:
    vocab, tokens = VOCAB, 23
    ranks = run_on_ranks(_cross_entropy_on_rank, 2, vocab, tokens)

    generator = torch.Generator().manual_seed(0)
    weight = torch.cat([torch.randn(vocab, 16, generator=generator) * 0.5, torch.zeros(1024 - vocab, 16)])
    weight = weight[:vocab].clone().requires_grad_()  # padding rows are not words
    hidden = torch.randn(tokens, 16, generator=generator).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    expected = F.cross_entropy(hidden @ weight.T, targets, reduction="none")
    grad_hidden, grad_weight = torch.autograd.grad(expected.sum(), (hidden, weight))

    full_grad_weight = torch.cat([r["grad_weight"] for r in ranks])
    chunked_grad_weight = torch.cat([r["chunked_grad_weight"] for r in ranks])
    for rank in ranks:
        torch.testing.assert_close(rank["loss"], expected.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rank["grad_hidden"], grad_hidden, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rank["chunked_sum"], expected.detach().sum(), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(rank["chunked_grad_hidden"], grad_hidden, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            rank["lookup"], weight.detach()[targets]
        )  # vocab-parallel embedding lookup
    torch.testing.assert_close(full_grad_weight[:vocab], grad_weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked_grad_weight[:vocab], grad_weight, atol=1e-5, rtol=1e-5)
    assert float(full_grad_weight[vocab:].abs().sum()) == 0.0  # padding rows take no probability


# --------------------------------------------------------------------------------------- training checks


def test_tp2_matches_tp1_losses_and_grad_norms_with_the_real_vocabulary() -> None:
    """Same init, same data: TP=2 gives TP=1's losses and global grad norms (replicated LayerNorms not
    double-counted) within fp32 tolerance, on GLM's 150,528-row vocabulary split across the two ranks."""
    cfg = tiny_config(tp=1, steps=4, model={"vocab_size": 150_528})
    single = train_losses(cfg, vocab=150_528)
    cfg_tp = tiny_config(tp=2, steps=4, model={"vocab_size": 150_528})
    ranks = run_on_ranks(train_losses, 2, cfg_tp, 16, 64, 150_528)
    assert ranks[0] == ranks[1]  # both TP ranks see the same (all-reduced) loss and norm
    for (loss, norm), (loss_tp, norm_tp) in zip(single, ranks[0]):
        assert loss_tp == pytest.approx(loss, rel=1e-5)
        assert norm_tp == pytest.approx(norm, rel=1e-4)
    assert single[-1][0] < single[0][0]


def test_dp2_matches_one_rank_with_the_doubled_micro_batch() -> None:
    single = train_losses(tiny_config(dp=1, micro_batch_size=4, global_batch_size=4, steps=5))
    ranks = run_on_ranks(train_losses, 2, tiny_config(dp=2, micro_batch_size=2, global_batch_size=4, steps=5))
    assert ranks[0] == ranks[1]
    for (loss, norm), (loss_dp, norm_dp) in zip(single, ranks[0]):
        assert loss_dp == pytest.approx(loss, rel=1e-5)
        assert norm_dp == pytest.approx(norm, rel=1e-4)


def test_glm_corpus_train_launches_torchrun_for_tp2(tmp_path: Path) -> None:
    """The CLI spawns torchrun for tp*dp > 1, prints one JSON line per step, then the summary."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "cli", "train", "--synthetic", "8", "--tp", "2", "--steps", "2", "--json",
        "--out", str(tmp_path / "ckpt"), "--set", "seq_length=32", "--set", f"model.vocab_size={VOCAB}",
        "--set", "model.hidden_size=32", "--set", "num_threads=1",
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert [line["step"] for line in lines[:-1]] == [0, 1]
    assert all("loss" in line for line in lines[:-1])
    summary = lines[-1]
    assert summary["tp"] == 2 and summary["dp"] == 1 and summary["steps_run"] == 2
    assert (tmp_path / "ckpt" / "step_00000002" / "model_tp01.pt").exists()
