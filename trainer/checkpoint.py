"""Checkpoints that resume a run exactly where it stopped.

Layout of `OUT/step_00000010/` (after 10 optimizer steps):

    model_tp00.pt ...      per TP rank (written by DP rank 0): {"model": state_dict, "optimizer": state_dict}
                           (the AdamW moments of that rank's slice; DP replicas hold identical copies)
    rng_00000.pt ...       per global rank: torch CPU (and CUDA) RNG state
    meta.json              step, consumed_samples, global batch, data seed, tp/dp, lr-schedule position,
                           loss-scaler state, the full TrainConfig
and `OUT/latest` names the newest complete checkpoint. Every file is written atomically (`common.atomic`), and
`latest` is updated only after every rank has finished (a barrier), so a run killed while saving resumes from the
previous checkpoint. The learning rate is a pure function of the step, and the sampler a pure function of the
consumed-sample count, so restoring these two numbers restores the data order and the schedule.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import torch
import torch.distributed as dist
from torch import nn

from common.atomic import atomic_path, atomic_write_json, atomic_write_text
from common.errors import ConfigError
from trainer.parallel import ParallelContext

FORMAT_VERSION = 1
LATEST = "latest"
META = "meta.json"

log = logging.getLogger(__name__)


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"step_{step:08d}"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `out_dir`, or None."""
    pointer = Path(out_dir) / LATEST
    if not pointer.exists():
        return None
    directory = Path(out_dir) / pointer.read_text(encoding="utf-8").strip()
    if not (directory / META).exists():
        raise ConfigError(f"{pointer} names {directory}, which has no {META}; remove {pointer} to start over")
    return directory


def _barrier(ctx: ParallelContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def _save(path: Path, obj: Any) -> None:
    """torch.save through an open file, atomically. Given a path, torch names the archive's records after
    it (the temp file's name, with its pid), so the same state would give different bytes run to run."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


def save_checkpoint(
    out_dir: str | Path,
    *,
    step: int,
    consumed_samples: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    ctx: ParallelContext,
) -> Path:
    """Write this rank's part of the checkpoint after `step` completed steps; returns its directory."""
    directory = checkpoint_dir(out_dir, step)
    if ctx.dp_rank == 0:
        _save(directory / f"model_tp{ctx.tp_rank:02d}.pt",
              {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    rng = {"torch": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(ctx.device)
    _save(directory / f"rng_{ctx.rank:05d}.pt", rng)
    _barrier(ctx)
    if ctx.is_main:
        atomic_write_json(
            directory / META,
            {
                **meta,
                "format": FORMAT_VERSION,
                "step": step,
                "consumed_samples": consumed_samples,
                "tp": ctx.tp_size,
                "dp": ctx.dp_size,
            },
        )
        atomic_write_text(Path(out_dir) / LATEST, directory.name + "\n")
    _barrier(ctx)
    return directory


def load_checkpoint(
    directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: ParallelContext
) -> dict[str, Any]:
    """Restore this rank's model, optimizer and RNG state; returns the checkpoint's meta.json."""
    directory = Path(directory)
    meta = orjson.loads((directory / META).read_bytes())
    if meta.get("format") != FORMAT_VERSION:
        raise ConfigError(f"{directory}: checkpoint format {meta.get('format')} is not {FORMAT_VERSION}")
    if meta["tp"] != ctx.tp_size:
        raise ConfigError(
            f"{directory} was saved with tp={meta['tp']}; resume it with --tp {meta['tp']} (now {ctx.tp_size})"
        )
    state = torch.load(
        directory / f"model_tp{ctx.tp_rank:02d}.pt", map_location=ctx.device, weights_only=True
    )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng_file = directory / f"rng_{ctx.rank:05d}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], ctx.device)
    else:  # a different DP size: the model has no randomness in its step, so this only loses bookkeeping
        log.warning("%s has no RNG state for rank %d (saved with dp=%s)", directory, ctx.rank, meta["dp"])
    return meta
