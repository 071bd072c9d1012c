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
            "(what the audit checks) into OUT. Malformed records are counted per reason with file and offset. "
            "Records of unregistered datasets fail the run unless --allow-unknown or --skip-unknown says "
            "what to do with them."
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
        "--skip-unknown",
        action="store_true",
        help="drop the records of unregistered datasets that --allow-unknown does not name (counted as "
        "unknown_dataset and listed in the plan); without it they fail the run",
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
    _register_audit(subparsers)


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
        skip_unknown=args.skip_unknown,
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
            "  WARNING: records of unregistered datasets were dropped (--skip-unknown): "
            + ", ".join(summary["unknown_rejected"])
            + " (--allow-unknown NAME trains on them)"
        )
    if summary["do_not_evaluate_included"]:
        lines.append(
            f"  note: {len(summary['do_not_evaluate_included'])} dataset(s) on the GLM-130B MIP list "
            "(do not evaluate on them): " + ", ".join(summary["do_not_evaluate_included"])
        )
    if summary["eval_included"]:
        lines.append("  note: T0 held-out evaluation sets included: " + ", ".join(summary["eval_included"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ audit


def _register_audit(subparsers: argparse._SubParsersAction) -> None:
    from mip.audit import DEFAULT_FAIL, MIN_EXPECTED, RATIO_Z, VIOLATION_KINDS

    audit = subparsers.add_parser(
        "audit",
        help="check what a step range of training saw against the MIP plan (caps, ratio, contamination)",
        description=(
            "For steps [A, B) of a run (the trainer's sampler: global batch and data seed from --config or the "
            "flags), count every MIP dataset's samples, distinct examples and tokens, and check them against "
            "the MIP plan: caps (over_cap), datasets not planned (unplanned), planned datasets missing from "
            "the range (planned_absent), the MIP token ratio overall and per window (ratio), GLM-130B's "
            "do-not-evaluate list; with --eval, n-gram overlap of the range's rows with evaluation sets "
            "(contamination). Exits 1 when a finding the policy marks as failing is present (default: "
            "contamination, over_cap, planned_absent; the plan's policy and --fail-on/--no-fail-on change it)."
        ),
    )
    audit.add_argument(
        "--train", required=True, metavar="DIR", help="training shards (glm-corpus mask --out)"
    )
    audit.add_argument(
        "--plan",
        metavar="FILE",
        help="mip-plan.json or its directory (default: the plan recorded with the shards)",
    )
    audit.add_argument(
        "--eval",
        nargs="+",
        default=[],
        metavar="PATH",
        help="evaluation files or directories (jsonl/json/SQuAD-style); NAME=PATH names a set",
    )
    audit.add_argument(
        "--steps",
        metavar="A:B",
        help="0-based step range, B exclusive (A:, :B, or N = 0:N); default: the trainer config's steps "
        "with --config, else one epoch",
    )
    audit.add_argument(
        "--global-batch", type=int, metavar="N", help="rows per step (default: the trainer config's)"
    )
    audit.add_argument(
        "--seed", type=int, metavar="N", help="the sampler's data seed (default: the trainer config's)"
    )
    audit.add_argument(
        "--config", metavar="TRAIN_CONFIG", help="the trainer's YAML/TOML config (section `train`)"
    )
    audit.add_argument(
        "--tokenizer",
        metavar="MODEL",
        help="ice_text.model of the run, for the contamination scan (default: RUN/tokenizer/ice_text.model, "
        "then what the token shards recorded, then icetk's cache)",
    )
    audit.add_argument("--ngram", type=int, default=13, metavar="N", help="n-gram size in units (default 13)")
    audit.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="scan for contamination as Ray tasks over row ranges when > 1 (default 1: in this process)",
    )
    audit.add_argument(
        "--ray-min-rows", type=int, metavar="N",
        help="with --workers > 1, scans of fewer rows still run in this process (default 16384)",
    )
    audit.add_argument("--ray-address", metavar="HOST:PORT", help="existing Ray cluster to join")
    audit.add_argument(
        "--windows", type=int, default=10, metavar="N", help="step windows for the ratio (default 10)"
    )
    audit.add_argument(
        "--ratio-z",
        type=float,
        default=RATIO_Z,
        metavar="Z",
        help=f"ratio tolerance in standard errors ({RATIO_Z})",
    )
    audit.add_argument(
        "--min-expected",
        type=float,
        default=MIN_EXPECTED,
        metavar="X",
        help=f"report a planned dataset absent only where at least X samples were expected ({MIN_EXPECTED}; 0: always)",
    )
    defaults = ", ".join(kind for kind, fails in DEFAULT_FAIL.items() if fails)
    audit.add_argument(
        "--fail-on",
        nargs="+",
        default=[],
        choices=VIOLATION_KINDS,
        metavar="KIND",
        help=f"make these findings fail the audit (default failing: {defaults}; kinds: {', '.join(VIOLATION_KINDS)})",
    )
    audit.add_argument(
        "--no-fail-on",
        nargs="+",
        default=[],
        choices=VIOLATION_KINDS,
        metavar="KIND",
        help="only report these findings",
    )
    audit.add_argument("--batch-rows", type=int, default=64, metavar="N", help="rows per contamination batch")
    audit.add_argument("--output", metavar="FILE", help="also write the JSON summary here")
    audit.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    audit.set_defaults(run=_run_audit)


def _run_audit(args: argparse.Namespace) -> CommandResult:
    from common.atomic import atomic_write_json
    from mip.audit import AuditConfig, parse_steps, render_audit, run_audit

    if args.ngram < 1:
        raise ConfigError(f"--ngram must be >= 1, got {args.ngram}")
    config = AuditConfig(
        train=args.train,
        plan=args.plan,
        eval=list(args.eval),
        steps=parse_steps(args.steps),
        global_batch=args.global_batch,
        seed=args.seed,
        train_config=args.config,
        tokenizer=args.tokenizer,
        ngram=args.ngram,
        windows=args.windows,
        ratio_z=args.ratio_z,
        min_expected=args.min_expected,
        fail_on=list(args.fail_on),
        no_fail_on=list(args.no_fail_on),
        batch_rows=args.batch_rows,
        progress=not args.no_progress,
        workers=args.workers,
        ray_address=args.ray_address,
    )
    if args.ray_min_rows is not None:
        config.ray_min_rows = args.ray_min_rows
    summary = run_audit(config)
    if args.output:
        atomic_write_json(args.output, summary)
    return CommandResult(summary=summary, text=render_audit(summary), exit_code=summary["exit_code"])
