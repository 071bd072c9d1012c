"""`glm-corpus train`: run the trainer in this process (one rank) or under torchrun (tp * dp ranks).

With tp * dp > 1 this spawns `python -m torch.distributed.run --standalone --nproc-per-node tp*dp -m trainer.train
...` (torchrun's own launcher and rendezvous on a free local port), forwards every flag, lets rank 0 print the
per-step lines straight to this terminal, and reads the final summary rank 0 writes to a temporary file. On a
cluster, call torchrun yourself with the same `trainer.train` flags (docs/TRAINER.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from common.errors import GLMCorpusError
from trainer.data import open_training_data
from trainer.train import config_from_args, run_from_args


def torchrun_command(args: argparse.Namespace, world_size: int, summary_path: str) -> list[str]:
    """The torchrun command line that runs `trainer.train` with the same flags on `world_size` local ranks."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={world_size}",
        "-m",
        "trainer.train",
    ]
    if args.train is not None:
        command += ["--train", str(args.train)]
    else:
        command += ["--synthetic", str(args.synthetic)]
    for flag in ("config", "tp", "dp", "steps", "out"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag}", str(value)]
    for override in args.set:
        command += ["--set", override]
    if args.resume:
        command.append("--resume")
    if args.json:
        command.append("--json")
    return command + ["--summary", summary_path]


def launch(args: argparse.Namespace) -> dict[str, Any]:
    """Train as the flags say; returns rank 0's summary."""
    cfg = config_from_args(args)  # validate the configuration and the data before any process starts
    if args.train is not None:
        open_training_data(args.train)
    world_size = cfg.tp * (cfg.dp or 1)
    cfg.grad_accumulation(cfg.dp or 1)  # the global batch must split into micro-batches on every DP rank
    if world_size == 1:
        return run_from_args(args)
    with tempfile.TemporaryDirectory(prefix="glm-train-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world_size)))
        completed = subprocess.run(
            torchrun_command(args, world_size, str(summary_path)), env=env, check=False
        )
        if completed.returncode != 0:
            raise GLMCorpusError(
                f"torchrun exited with code {completed.returncode} ({world_size} ranks); the ranks' errors are above"
            )
        if not summary_path.exists():
            raise GLMCorpusError("torchrun finished but rank 0 wrote no summary")
        return orjson.loads(summary_path.read_bytes())


def run_training(
    train_dir: str | None = None,
    *,
    synthetic_rows: int | None = None,
    config: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    tp: int | None = None,
    dp: int | None = None,
    steps: int | None = None,
    out: str | None = None,
    resume: bool = False,
    as_json: bool = False,
) -> dict[str, Any]:
    """`glm-corpus train` as a function (for the demo driver): same flags, same summary."""
    if (train_dir is None) == (synthetic_rows is None):
        raise GLMCorpusError("give exactly one of train_dir and synthetic_rows")
    args = argparse.Namespace(
        train=train_dir,
        synthetic=synthetic_rows,
        config=config,
        set=list(overrides),
        tp=tp,
        dp=dp,
        steps=steps,
        out=out,
        resume=resume,
        json=as_json,
    )
    return launch(args)
