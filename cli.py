"""`glm-corpus`: one command, a subcommand per stage.

Each stage package registers its own subcommands (`<package>/commands.py`, function `register`), so the
data flow reads from the folder layout: pipeline -> shards -> masking -> mip -> trainer. This module only
builds the parser, dispatches, prints summaries (`--json` everywhere) and turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

import orjson

from common.command import CommandResult, add_common_flags, render_summary
from common.errors import GLMCorpusError

# Order is the order `--help` lists them in: the data flow, then the tools around it.
COMMAND_MODULES = (
    "pipeline.commands",  # demo, ingest, dedup, tokenizer
    "pipeline.run_commands",  # run, config
    "mip.commands",  # mip, audit
    "masking.commands",  # mask, inspect
    "trainer.commands",  # train
    "shards.commands",  # shards, verify
    "report.commands",  # report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm-corpus",
        description=(
            "Build GLM-130B-style pretraining data and prove it is right: ingest raw Pile/WuDao/crawl "
            "corpora, deduplicate, tokenize with the icetk layout, build GLM blank-infilling training "
            "shards with MIP instruction data, audit them, and train a reference model on them."
        ),
        epilog="Run `glm-corpus demo --out demo-out` to see every stage on built-in data.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):  # a stage not built yet
                continue
            raise
        module.register(subparsers)
    _add_flags_to_leaves(subparsers)
    return parser


def _add_flags_to_leaves(subparsers: argparse._SubParsersAction) -> None:
    for sub in subparsers.choices.values():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for action in nested:
                _add_flags_to_leaves(action)
        else:
            add_common_flags(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler = getattr(args, "run", None)
    if handler is None:
        # `glm-corpus` or `glm-corpus shards` alone: show the relevant help.
        target = getattr(args, "help_parser", parser)
        target.print_help()
        return 2
    try:
        result = handler(args)
    except GLMCorpusError as exc:
        print(f"glm-corpus {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, read-only or uncreatable paths: one line naming the path
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"glm-corpus {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if result is None:
        return 0
    if isinstance(result, dict):
        result = CommandResult(summary=result)
    if getattr(args, "json", False):
        sys.stdout.write(orjson.dumps(result.summary, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    else:
        print(result.text if result.text is not None else render_summary(result.summary))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
