"""`python -m benchmarks [--quick] [--only NAME ...] [--markdown FILE]`: run every benchmarks/bench_*.py.

Each module exposes `run(quick: bool) -> list[dict]`; rows compare our implementation with a baseline
measured in the same process, as a ratio. The tables are printed, and with `--markdown` written to a
file (docs/PERFORMANCE.md keeps the latest, with the command that produced them).
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

from benchmarks.common import format_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, for a smoke run")
    parser.add_argument("--only", nargs="*", default=[], help="benchmark module names (e.g. bench_tokenizer)")
    parser.add_argument("--markdown", help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    if args.only:
        names = [n for n in names if n in args.only or n.removeprefix("bench_") in args.only]
    sections = []
    failed = 0
    for name in names:
        print(f"\n## {name}", flush=True)
        started = time.perf_counter()
        try:
            rows = importlib.import_module(f"benchmarks.{name}").run(quick=args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' tables
            failed += 1
            print(f"FAILED: {type(exc).__name__}: {exc}", flush=True)
            sections.append(f"## {name}\n\nFAILED: {type(exc).__name__}: {exc}\n")
            continue
        table = format_table(rows)
        print(table, flush=True)
        print(f"({time.perf_counter() - started:.0f} s)", flush=True)
        sections.append(f"## {name}\n\n{table}\n")
    if args.markdown:
        header = (
            f"Command: `python -m benchmarks{' --quick' if args.quick else ''}` "
            f"on {platform.machine()}, {platform.python_version()}, {time.strftime('%Y-%m-%d')}\n\n"
        )
        Path(args.markdown).write_text(header + "\n".join(sections), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
