"""CLI: `glm-corpus train`, the reference GLM trainer (single process, or torchrun for tp * dp ranks)."""

from __future__ import annotations

import argparse

from common.command import CommandResult, render_summary
from trainer.config import add_train_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the reference GLM model on training shards",
        description=(
            "Train the GLM reference model (DeepNorm post-LN, 2D RoPE, GeGLU, tied vocab-parallel output) on "
            "training shards with a deterministic distributed sampler. tp x dp > 1 runs under torchrun with gloo "
            "(CPU) or NCCL (GPU). Prints one line per step (one JSON object per step with --json), then a summary. "
            "Config: --config FILE (section `train`) and --set key=value overrides, e.g. --set model.num_layers=4."
        ),
    )
    add_train_arguments(parser)
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> CommandResult:
    from trainer.launch import launch  # imports torch: only when training

    summary = launch(args)
    return CommandResult(summary, text="training summary:\n" + render_summary(summary, indent=1))
