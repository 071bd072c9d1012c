"""CLI: `glm-corpus run CONFIG` (every stage from one config file) and `glm-corpus config example|check`."""

from __future__ import annotations

import argparse

from common.command import CommandResult


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="run every stage described by one YAML/TOML run config",
        description=(
            "Run the stages a run config describes, in order, into its output directory (the layout of "
            "`glm-corpus demo`: tokens/, mip/, train/, audit.json, checkpoints/, report.html): built-in data, "
            "tokenizer training, ingest, MIP, masking, audit, training, report. A stage runs when its section "
            "is present; complete stages are skipped, so rerunning the same config resumes. OUT/run.json "
            "records each stage's status and seconds. `glm-corpus config example` prints a documented config."
        ),
    )
    run.add_argument("config", metavar="CONFIG", help="run config (.yaml/.yml, or .toml)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key, e.g. --set masking.rows=128 (repeatable)")
    run.set_defaults(run=_run)

    config = subparsers.add_parser(
        "config",
        help="print a documented example run config, or check one",
        description="Run configs for `glm-corpus run`: `config example` prints one with every key explained; "
        "`config check CONFIG` loads and validates one and prints it resolved (absolute paths, defaults filled).",
    )
    config.set_defaults(help_parser=config)
    actions = config.add_subparsers(dest="config_command", metavar="ACTION")
    example = actions.add_parser("example", help="print a documented example run config (YAML)",
                                 description="Print a run config with comments on every key; "
                                 "`glm-corpus config example > run.yaml && glm-corpus run run.yaml` runs it.")
    example.set_defaults(run=_example)
    check = actions.add_parser("check", help="validate a run config and print it resolved",
                               description="Load CONFIG as `glm-corpus run` would, without running anything.")
    check.add_argument("config", metavar="CONFIG")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    check.set_defaults(run=_check)


def _run(args: argparse.Namespace) -> CommandResult:
    from pipeline.run_config import load_run_config, run_pipeline

    config = load_run_config(args.config, args.set)
    summary = run_pipeline(config, progress=not args.json)
    lines = [f"run finished: outputs in {summary['out']}"]
    for name, outcome in summary["stages"].items():
        detail = f"  {outcome['detail']}" if outcome["detail"] else ""
        lines.append(f"  {name:<13} {outcome['status']:<15} {outcome['seconds']:>8.1f} s{detail}")
    if summary["report"]:
        lines.append(f"report: {summary['report']}")
    return CommandResult(summary, text="\n".join(lines))


def _example(args: argparse.Namespace) -> CommandResult:
    from pipeline.run_config import EXAMPLE_CONFIG

    return CommandResult({"example": EXAMPLE_CONFIG}, text=EXAMPLE_CONFIG.rstrip("\n"))


def _check(args: argparse.Namespace) -> CommandResult:
    from common.command import render_summary
    from pipeline.run_config import load_run_config

    config = load_run_config(args.config, args.set).to_dict()
    stages = [name for name in ("ingest", "mip", "masking", "audit", "train") if name == "ingest" or config[name]]
    return CommandResult(config, text=f"{args.config}: valid; stages: {', '.join(stages)}"
                         + (", report" if config["report"] else "") + "\n" + render_summary(config))
