"""CLI: `glm-corpus mip` (instruction records -> capped, tokenized MIP token shards + mip-plan.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.command import CommandResult
from common.errors import ConfigError
from mip.plan import DEFAULT_TOKEN_RATIO, Policy

DEMO_INPUT_DIR = "demo-instructions"


def register(subparsers: argparse._SubParsersAction) -> None:
    mip = subparsers.add_parser(
        "mip",
        help="P3 / DeepStruct instruction data -> capped MIP token shards + mip-plan.json",
        description=(
            "Read P3-layout folders (<dataset>_<subset>_<template>/<split>.jsonl|.parquet|.tfrecord*) and "
            "DeepStruct records (.jsonl with source/target, or .source/.target pairs), map every folder or "
            "task to a registered dataset (mip/registry.json: T0, T0+, T0++, P3, DeepStruct, demo), cap each "
            "dataset across its templates (100k per T0-family dataset, 200k per DeepStruct dataset), "
            "tokenize prompt and target, and write MIP token shards, manifest.json and mip-plan.json "
            "(what the audit checks) into OUT. Malformed records are counted per reason with file and offset."
        ),
    )
    mip.add_argument(
        "--input", nargs="+", default=[], metavar="PATH", help="files or directories of MIP records"
    )
    mip.add_argument(
        "--demo",
        action="store_true",
        help=f"also write the built-in demo instruction set to OUT/{DEMO_INPUT_DIR} and use it",
    )
    mip.add_argument("--demo-examples", type=int, default=300, metavar="N", help="demo examples per template")
    mip.add_argument("--out", required=True, metavar="DIR", help="output directory")
    mip.add_argument(
        "--tokenizer", metavar="MODEL", help="ice_text.model (default: the tokenizer's own default)"
    )
    mip.add_argument(
        "--ratio",
        type=float,
        default=DEFAULT_TOKEN_RATIO,
        help=f"MIP share of all training tokens, recorded in the plan (default {DEFAULT_TOKEN_RATIO})",
    )
    mip.add_argument("--seed", type=int, default=1234, help="seed of the cap selection (default 1234)")
    mip.add_argument(
        "--allow-unknown",
        nargs="*",
        metavar="NAME",
        help="accept these unregistered dataset names; with no NAME, accept every unknown "
        "folder/task as a dataset of its own (family 'unknown')",
    )
    mip.add_argument(
        "--unknown-cap", default="100000", metavar="N|none", help="cap of allowed unknown datasets"
    )
    mip.add_argument(
        "--cap", action="append", default=[], metavar="DATASET=N|none", help="override a dataset's cap"
    )
    mip.add_argument(
        "--splits", nargs="+", metavar="SPLIT", help="use only these splits (default: all found)"
    )
    mip.add_argument(
        "--max-example-tokens",
        type=int,
        default=None,
        metavar="N",
        help="drop longer examples (default 2046: a 2048 row minus [gMASK] and [sop])",
    )
    mip.add_argument(
        "--strict", action="store_true", help="fail on the first malformed record or unknown dataset"
    )
    for switch, text in (
        ("contamination", "n-gram overlap with evaluation sets"),
        ("over-cap", "a dataset above its cap"),
        ("planned-absent", "a planned dataset missing from training"),
    ):
        mip.add_argument(
            f"--no-fail-on-{switch}",
            action="store_true",
            help=f"record in the plan that the audit should only report {text}",
        )
    mip.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    mip.set_defaults(run=_run_mip)


def _cap_value(text: str, what: str) -> int | None:
    if text.strip().lower() in ("none", "null", "uncapped"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{what}: expected an integer or 'none', got {text!r}") from None
    if value < 0:
        raise ConfigError(f"{what}: a cap must be >= 0, got {value}")
    return value


def _run_mip(args: argparse.Namespace) -> CommandResult:
    from mip.stage import MAX_EXAMPLE_TOKENS, MipConfig, run_mip

    inputs = list(args.input)
    demo_summary = None
    if args.demo:
        from mip.demo_data import write_demo_instructions

        demo_summary = write_demo_instructions(Path(args.out) / DEMO_INPUT_DIR, args.demo_examples)
        inputs.append(demo_summary["out"])
    if not inputs:
        raise ConfigError("glm-corpus mip: give --input PATH... or --demo")
    caps = {}
    for item in args.cap:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--cap {item!r}: expected DATASET=N or DATASET=none")
        caps[name] = _cap_value(value, f"--cap {item}")
    config = MipConfig(
        inputs=inputs,
        out=args.out,
        tokenizer=args.tokenizer,
        token_ratio=args.ratio,
        seed=args.seed,
        allow_unknown=list(args.allow_unknown or []),
        allow_any_unknown=args.allow_unknown is not None and not args.allow_unknown,
        unknown_cap=_cap_value(args.unknown_cap, "--unknown-cap"),
        caps=caps,
        splits=args.splits,
        strict=args.strict,
        policy=Policy(
            fail_on_contamination=not args.no_fail_on_contamination,
            fail_on_over_cap=not args.no_fail_on_over_cap,
            fail_on_planned_absent=not args.no_fail_on_planned_absent,
        ),
        max_example_tokens=args.max_example_tokens or MAX_EXAMPLE_TOKENS,
    )
    summary = run_mip(config, progress=not args.no_progress)
    if demo_summary is not None:
        summary["demo"] = demo_summary
    return CommandResult(summary=summary, text=_text(summary))


def _text(summary: dict) -> str:
    lines = [
        f"MIP: {summary['examples_out']} examples, {summary['tokens']} tokens from {summary['records_in']} "
        f"records in {summary['input_files']} files -> {summary['out']}",
        f"  plan:     {summary['plan']} (token ratio {summary['token_ratio']})",
        f"  manifest: {summary['manifest']} ({summary['shards']} shard(s))",
    ]
    for family, counts in summary["families"].items():
        lines.append(
            f"  {family:<10} {counts['datasets']:>3} dataset(s) {counts['examples']:>9} examples "
            f"{counts['tokens']:>11} tokens"
        )
    if summary["dropped"]:
        lines.append("  dropped:  " + ", ".join(f"{reason} {n}" for reason, n in summary["dropped"].items()))
    if summary["unknown_rejected"]:
        lines.append(
            "  WARNING: records of unregistered datasets were dropped: "
            + ", ".join(summary["unknown_rejected"])
            + " (see --allow-unknown)"
        )
    if summary["do_not_evaluate_included"]:
        lines.append(
            f"  note: {len(summary['do_not_evaluate_included'])} dataset(s) on the GLM-130B MIP list "
            "(do not evaluate on them): " + ", ".join(summary["do_not_evaluate_included"])
        )
    if summary["eval_included"]:
        lines.append("  note: T0 held-out evaluation sets included: " + ", ".join(summary["eval_included"]))
    return "\n".join(lines)
