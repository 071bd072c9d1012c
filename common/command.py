"""What a subcommand handler returns, and how the CLI prints it.

Each stage package has a `commands.py` with `register(subparsers)`. A handler takes the parsed
arguments and returns a `CommandResult` (or a plain dict): the summary is printed as JSON under
`--json`, otherwise `text` (or a readable dump of the summary). Failures raise `GLMCorpusError`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


@dataclasses.dataclass
class CommandResult:
    summary: dict[str, Any]
    text: str | None = None
    exit_code: int = 0


def render_summary(summary: Any, indent: int = 0) -> str:
    """A readable, stable rendering of nested dicts/lists for terminals."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(summary, dict):
        for key, value in summary.items():
            if isinstance(value, (dict, list)) and value:
                lines.append(f"{pad}{key}:")
                lines.append(render_summary(value, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(value)}")
    elif isinstance(summary, list):
        for value in summary:
            if isinstance(value, (dict, list)):
                lines.append(f"{pad}-")
                lines.append(render_summary(value, indent + 1))
            else:
                lines.append(f"{pad}- {_scalar(value)}")
    else:
        lines.append(f"{pad}{_scalar(summary)}")
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value in ({}, []):
        return "{}" if isinstance(value, dict) else "[]"
    return str(value)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every leaf subcommand has."""
    if not any("--json" in action.option_strings for action in parser._actions):
        parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
