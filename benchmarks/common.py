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


def _take(texts: list[str], max_bytes: int) -> list[str]:
    out, size = [], 0
    for text in texts:
        if size >= max_bytes:
            break
        out.append(text)
        size += len(text.encode("utf-8"))
    return out


def english_texts(max_bytes: int) -> tuple[str, list[str]]:
    """(where from, documents): the shared Pile sample, else the built-in English corpus."""
    pile = shared_corpus("pile", "pile_sample.jsonl.zst")
    if pile is not None:
        import orjson
        import zstandard

        with open(pile, "rb") as handle:
            data = zstandard.ZstdDecompressor().stream_reader(handle).read()
        return "Pile sample", _take([orjson.loads(line)["text"] for line in data.splitlines() if line.strip()],
                                    max_bytes)
    from pipeline.default_data import english_documents

    return "Python docs (built-in)", _take([d["text"] for d in english_documents()], max_bytes)


def chinese_texts(max_bytes: int, with_title: bool = False) -> tuple[str, list[str]]:
    """(where from, documents): the shared WuDao sample, else the built-in People's Daily corpus."""
    wudao = shared_corpus("wudao", "wudao_sample.json")
    if wudao is not None:
        import orjson

        records = orjson.loads(wudao.read_bytes())
        texts = [f"{r['title']}\n{r['content']}" if with_title else r["content"] for r in records]
        return "WuDao sample", _take(texts, max_bytes)
    from pipeline.default_data import chinese_documents

    texts = [f"{d['title']}\n{d['text']}" if with_title else d["text"] for d in chinese_documents()]
    return "People's Daily (built-in)", _take(texts, max_bytes)
