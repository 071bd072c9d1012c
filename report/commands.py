"""CLI: `glm-corpus report RUN_DIR [--out FILE]` (one self-contained HTML page about a run)."""

from __future__ import annotations

import argparse

from common.command import CommandResult


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report (tables and plots) of a run directory",
        description=(
            "Read what the stages left in RUN_DIR (tokens/manifest.json, tokens/dedup/dropped.parquet, "
            "mip/mip-plan.json, train/stats.json, audit.json, checkpoints/) and write one HTML file with "
            "inline CSS and embedded PNG plots: documents and tokens per source through each step, drop "
            "reasons, language mix, dedup cluster sizes and the LSH S-curve, masking statistics against "
            "their laws, MIP datasets against their caps, audit findings and the training loss. Stages "
            "that have not run are marked as such."
        ),
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="output directory of `glm-corpus demo` or `run`")
    report.add_argument("--out", metavar="FILE", help="where to write the page (default RUN_DIR/report.html)")
    report.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> CommandResult:
    from report.html_report import build_report

    summary = build_report(args.run_dir, args.out)
    rendered = [k for k, v in summary["sections"].items() if v == "rendered"]
    missing = [f"{k} ({v})" for k, v in summary["sections"].items() if v != "rendered"]
    text = (
        f"report: {summary['path']} ({summary['bytes'] / 1024:.0f} KiB, {summary['images']} plots)\n"
        f"  sections rendered: {', '.join(rendered) or 'none'}"
    )
    if missing:
        text += f"\n  not run / failed: {', '.join(missing)}"
    return CommandResult(summary, text=text)
