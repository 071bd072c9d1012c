"""The training loop; also the entry point torchrun starts on every rank.

    torchrun --nproc-per-node 4 -m trainer.train --train DIR --tp 2 --steps 100 --out ckpt --json

One optimizer step (global batch G rows, micro-batches of m rows per DP rank):

1. the loader hands over this rank's rows of the step (prefetched by a thread; the wait is logged);
2. the number of loss tokens of the whole global batch is summed over DP, and every micro-batch's summed token
   loss is divided by it: the gradient is that of the mean token loss of the global batch, whatever the DP size
   and micro-batch split (so DP=2 equals one rank with the doubled micro-batch);
3. gradients are summed over DP, unscaled (fp16), their global norm taken across TP without counting replicated
   parameters twice; a non-finite norm skips the step and halves the fp16 loss scale (on every rank alike);
4. clip to `grad_clip`, set the learning rate of this step (linear warm-up, cosine decay), AdamW.

Precision: parameters, gradients and optimizer state stay fp32 (master weights); 'bf16'/'fp16' run the forward
and backward under autocast, and 'fp16' multiplies the loss by a dynamic scale (GLM-130B trained in fp16).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import torch

from common.atomic import atomic_write_json
from common.config import load_config
from common.errors import ConfigError, GLMCorpusError
from trainer import checkpoint
from trainer.config import TrainConfig, add_train_arguments
from trainer.data import DistributedSampler, PrefetchLoader, RowSource, SyntheticRows, open_training_data
from trainer.model import GLMModel, count_parameters
from trainer.parallel import (
    ParallelContext,
    all_reduce,
    all_reduce_gradients,
    clip_gradients,
    destroy_parallel,
    global_grad_norm,
    init_parallel,
)

log = logging.getLogger(__name__)

CPU_PEAK_TFLOPS_PER_THREAD = 0.1
CUDA_PEAK_TFLOPS = 989.0


# ------------------------------------------------------------------------------------- schedule and scaler


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """LR of optimizer step `step` (0-based): linear warm-up from warmup_init_lr, then cosine to final_lr."""
    if step < cfg.warmup_steps:
        return cfg.warmup_init_lr + (cfg.lr - cfg.warmup_init_lr) * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.decay_steps if cfg.decay_steps is not None else max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    return cfg.final_lr + 0.5 * (cfg.lr - cfg.final_lr) * (1 + math.cos(math.pi * progress))


@dataclasses.dataclass
class DynamicLossScaler:
    """fp16 loss scaling: halve on overflow (the step is skipped), double after `window` clean steps."""

    scale: float = 2.0**16
    window: int = 1000
    min_scale: float = 1.0
    enabled: bool = True
    clean_steps: int = 0

    def update(self, found_inf: bool) -> None:
        if not self.enabled:
            return
        if found_inf:
            self.scale = max(self.scale / 2, self.min_scale)
            self.clean_steps = 0
            return
        self.clean_steps += 1
        if self.clean_steps >= self.window:
            self.scale *= 2
            self.clean_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "clean_steps": self.clean_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.clean_steps = int(state["clean_steps"])


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases and LayerNorm parameters)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
    )


# ------------------------------------------------------------------------------------------------ FLOPs


def peak_flops(cfg: TrainConfig, ctx: ParallelContext) -> tuple[float, str]:
    """Peak FLOP/s of the whole job (all ranks) for the MFU estimate, and how it was assumed."""
    if cfg.peak_tflops is not None:
        per_rank, note = cfg.peak_tflops, f"{cfg.peak_tflops} TFLOP/s per rank (config)"
    elif ctx.device.type == "cuda":
        per_rank, note = CUDA_PEAK_TFLOPS, f"{CUDA_PEAK_TFLOPS} TFLOP/s per GPU (H100 bf16 dense)"
    else:
        threads = torch.get_num_threads()
        per_rank = CPU_PEAK_TFLOPS_PER_THREAD * threads
        note = f"{CPU_PEAK_TFLOPS_PER_THREAD} TFLOP/s per CPU thread x {threads} thread(s) per rank (assumed)"
    return per_rank * 1e12 * ctx.world_size, note


def model_flops(
    cfg: TrainConfig, parameters: dict[str, int], tokens: int, loss_tokens: int, length: int
) -> float:
    """Training FLOPs of one step: 6*N*tokens for the layers, 6*V*d per loss token for the tied output layer
    (it runs only at loss positions), and 12*layers*d*L per token for attention scores and values."""
    m = cfg.model
    layers = 6 * parameters["non_embedding"] * tokens
    output = 6 * parameters["embedding"] * loss_tokens
    attention = 12 * m.num_layers * m.hidden_size * length * tokens
    return float(layers + output + attention)


# -------------------------------------------------------------------------------------------------- loop


@dataclasses.dataclass
class TrainResult:
    summary: dict[str, Any]
    history: list[dict[str, Any]]


def train(
    cfg: TrainConfig,
    source: RowSource,
    ctx: ParallelContext,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    stop_step: int | None = None,
) -> TrainResult:
    """Train steps [start, cfg.steps) on `source`; every rank calls this.

    start is 0, or the checkpoint's step with `resume`. `stop_step` ends the run early without changing the
    schedule (the learning rate still decays over cfg.steps): what a run killed after that step would have done.
    """
    threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // ctx.local_world_size)
    if ctx.device.type == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    accumulation = cfg.grad_accumulation(ctx.dp_size)

    model = GLMModel(cfg.model, ctx, seed=cfg.seed).to(ctx.device)
    parameters = list(model.parameters())
    optimizer = build_optimizer(model, cfg)
    scaler = DynamicLossScaler(
        scale=cfg.initial_loss_scale if cfg.precision == "fp16" else 1.0,
        window=cfg.loss_scale_window,
        min_scale=cfg.min_loss_scale,
        enabled=cfg.precision == "fp16",
    )
    start_step = 0
    resumed_from = None
    if resume and out_dir is not None and (latest := checkpoint.latest_checkpoint(out_dir)) is not None:
        meta = checkpoint.load_checkpoint(latest, model=model, optimizer=optimizer, ctx=ctx)
        for key in ("global_batch_size", "data_seed"):
            if meta[key] != getattr(cfg, key):
                raise ConfigError(
                    f"{latest} was trained with {key}={meta[key]}; resuming with {getattr(cfg, key)} would change the data order"
                )
        start_step = meta["consumed_samples"] // cfg.global_batch_size
        scaler.load_state_dict(meta["loss_scaler"])
        resumed_from = str(latest)

    sampler = DistributedSampler(
        len(source), cfg.global_batch_size, cfg.micro_batch_size, cfg.data_seed, ctx.dp_rank, ctx.dp_size
    )
    counts = count_parameters(model, ctx.tp_size)
    peak, peak_note = peak_flops(cfg, ctx)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    history: list[dict[str, Any]] = []
    step_times, wait_times = [], []
    last_checkpoint = None

    model.train()
    loader = PrefetchLoader(
        source,
        sampler,
        start_step,
        cfg.steps if stop_step is None else min(stop_step, cfg.steps),
        depth=cfg.prefetch,
        seq_length=cfg.seq_length,
        pin_memory=ctx.device.type == "cuda",
    )
    try:
        for step_batch in loader:
            started = time.perf_counter()
            step = step_batch.step
            micro_batches = [
                {key: value.to(ctx.device, non_blocking=True) for key, value in mb.items()}
                for mb in step_batch.micro_batches
            ]
            assert len(micro_batches) == accumulation
            # The loss is the mean over every loss token of the global batch (all DP ranks, all micro-batches).
            loss_tokens = all_reduce(
                torch.stack([mb["loss_mask"].sum() for mb in micro_batches]).sum().float(), ctx.dp_group
            )
            normaliser = loss_tokens.clamp(min=1.0)
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=ctx.device)
            for mb in micro_batches:
                with torch.autocast(
                    ctx.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
                ):
                    token_loss_sum, _ = model.loss(mb)
                (token_loss_sum * (scaler.scale / normaliser)).backward()
                loss_sum += token_loss_sum.detach().float()

            all_reduce_gradients(parameters, ctx)
            if scaler.scale != 1.0:
                for p in parameters:
                    if p.grad is not None:
                        p.grad.mul_(1.0 / scaler.scale)
            grad_norm = global_grad_norm(parameters, ctx)
            skipped = not bool(torch.isfinite(grad_norm))
            lr = learning_rate(step, cfg)
            loss_scale = scaler.scale
            if not skipped:
                clip_gradients(parameters, cfg.grad_clip, grad_norm)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
            scaler.update(skipped)
            loss = float(all_reduce(loss_sum, ctx.dp_group) / normaliser)
            elapsed = time.perf_counter() - started
            wait = loader.wait_seconds
            step_time = elapsed + wait
            length = micro_batches[0]["tokens"].shape[1]
            tokens = cfg.global_batch_size * length
            flops = model_flops(cfg, counts, tokens, int(loss_tokens), length)
            record = {
                "step": step,
                "loss": loss,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "loss_scale": loss_scale,
                "skipped": skipped,
                "consumed_samples": (step + 1) * cfg.global_batch_size,
                "loss_tokens": int(loss_tokens),
                "step_time_s": step_time,
                "data_wait_s": wait,
                "tokens_per_s": tokens / step_time,
                "mfu": flops / step_time / peak,
            }
            history.append(record)
            step_times.append(step_time)
            wait_times.append(wait)
            if on_step is not None and ctx.is_main:
                on_step(record)
            completed = step + 1
            if out_dir is not None and (
                completed == cfg.steps or (cfg.save_interval and completed % cfg.save_interval == 0)
            ):
                last_checkpoint = checkpoint.save_checkpoint(
                    out_dir,
                    step=completed,
                    consumed_samples=completed * cfg.global_batch_size,
                    model=model,
                    optimizer=optimizer,
                    meta={
                        "global_batch_size": cfg.global_batch_size,
                        "data_seed": cfg.data_seed,
                        "n_rows": len(source),
                        "scheduler": {"completed_steps": completed, "last_lr": lr},
                        "loss_scaler": scaler.state_dict(),
                        "config": dataclasses.asdict(cfg),
                    },
                    ctx=ctx,
                )
    finally:
        loader.close()

    total_time = sum(step_times)
    summary: dict[str, Any] = {
        "steps_run": len(history),
        "first_step": history[0]["step"] if history else start_step,
        "last_step": history[-1]["step"] if history else start_step - 1,
        "initial_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "skipped_steps": sum(r["skipped"] for r in history),
        "mean_step_time_s": total_time / len(history) if history else 0.0,
        "data_wait_fraction": sum(wait_times) / total_time if total_time else 0.0,
        "tokens_per_s": sum(r["tokens_per_s"] * r["step_time_s"] for r in history) / total_time
        if total_time
        else 0.0,
        "mfu": sum(r["mfu"] * r["step_time_s"] for r in history) / total_time if total_time else 0.0,
        "mfu_peak": peak_note,
        "parameters": counts,
        "tp": ctx.tp_size,
        "dp": ctx.dp_size,
        "device": str(ctx.device),
        "precision": cfg.precision,
        "rows": len(source),
        "resumed_from": resumed_from,
        "checkpoint": str(last_checkpoint) if last_checkpoint else None,
    }
    return TrainResult(summary=summary, history=history)


# ------------------------------------------------------------------------------------------- entry point


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    parser.add_argument(
        "--summary", help="rank 0 writes the final summary JSON here (used by `glm-corpus train`)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return load_config(
        TrainConfig,
        args.config,
        section="train",
        overrides=args.set,
        values={"tp": args.tp, "dp": args.dp, "steps": args.steps},
    )


def open_source(args: argparse.Namespace, cfg: TrainConfig) -> RowSource:
    if args.synthetic is not None:
        return SyntheticRows(
            args.synthetic,
            seq_length=cfg.seq_length or 2048,
            vocab_size=cfg.model.vocab_size,
            seed=cfg.data_seed,
        )
    return open_training_data(args.train)


def format_record(record: dict[str, Any]) -> str:
    """One human-readable log line per step."""
    return (
        f"step {record['step']:>5} | loss {record['loss']:.4f} | lr {record['lr']:.3g} | "
        f"grad norm {record['grad_norm']:.3f} | scale {record['loss_scale']:g} | "
        f"{record['tokens_per_s']:,.0f} tok/s | MFU {100 * record['mfu']:.2f}% | "
        f"data wait {1000 * record['data_wait_s']:.1f} ms"
        + (" | skipped (overflow)" if record["skipped"] else "")
    )


def step_printer(as_json: bool) -> Callable[[dict[str, Any]], None]:
    def emit(record: dict[str, Any]) -> None:
        line = orjson.dumps(record).decode() if as_json else format_record(record)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    return emit


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Join the process group (if any), train, and return the summary (identical on every rank)."""
    cfg = config_from_args(args)
    ctx = init_parallel(cfg.tp, cfg.dp, device=cfg.device)
    try:
        source = open_source(args, cfg)
        result = train(
            cfg, source, ctx, out_dir=args.out, resume=args.resume, on_step=step_printer(args.json)
        )
    finally:
        destroy_parallel()
    return result.summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        summary = run_from_args(args)
    except GLMCorpusError as exc:
        print(f"trainer (rank {os.environ.get('RANK', '0')}): error: {exc}", file=sys.stderr)
        return 1
    if args.summary and int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(args.summary, summary)
    elif not args.summary and int(os.environ.get("RANK", "0")) == 0:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
