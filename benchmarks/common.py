"""Helpers shared by the benchmarks: timing, the shared real corpora when present, table printing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHARED_CORPORA = Path(os.environ.get("GLM_CORPUS_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "corpora"


def shared_corpus(*parts: str) -> Path | None:
    """A file or folder of ../shared/corpora when it exists (developers' machines), else None."""
    path = SHARED_CORPORA.joinpath(*parts)
    return path if path.exists() else None


def best_time(fn: Callable[[], Any], repeat: int = 3, min_seconds: float = 0.0) -> float:
    """The best wall time of `repeat` calls (other processes only ever make a run slower)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        if min_seconds and elapsed > min_seconds:
            break
    return best


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of `rows` (keys of the first row are the columns)."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    for row in rows[1:]:
        columns += [c for c in row if c not in columns]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
