"""Progress reporting: a tqdm bar on a terminal, periodic log lines otherwise (CI logs, `nohup`).

Besides the work units (files, shards, rows), `update` takes running totals that both forms show as
rates or amounts: `docs` (documents/s), `bytes` (MB/s of input), `tokens` (millions so far).

    [ingest] 4/13 files, 0.5 file/s, ETA 18s, 1520 docs/s, 3.2 MB/s, 0.84M tok
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm


class Progress:
    """Count work units (documents, rows) and extra quantities (bytes, tokens) for one stage."""

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "doc",
        enabled: bool = True,
        stream: TextIO | None = None,
        log_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc = desc
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.count = 0
        self.extra: dict[str, float] = {}
        self._clock = clock
        self.start = clock()
        self._last_log = self.start
        self._log_every_s = log_every_s
        self._bar: Any = None
        if enabled and self.stream.isatty():
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1, **extra: float) -> None:
        self.count += n
        for key, value in extra.items():
            self.extra[key] = self.extra.get(key, 0.0) + value
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if extra:
                self._bar.set_postfix_str(self._postfix(), refresh=False)
            return
        now = self._clock()
        if now - self._last_log >= self._log_every_s:
            self._last_log = now
            print(self.line(), file=self.stream, flush=True)

    def _postfix(self) -> str:
        elapsed = max(self._clock() - self.start, 1e-9)
        parts = []
        if "docs" in self.extra:
            parts.append(f"{self.extra['docs'] / elapsed:.0f} docs/s")
        if "bytes" in self.extra:
            parts.append(f"{self.extra['bytes'] / elapsed / 1e6:.1f} MB/s")
        if "tokens" in self.extra:
            parts.append(f"{self.extra['tokens'] / 1e6:.2f}M tok")
        return ", ".join(parts)

    def line(self) -> str:
        elapsed = self._clock() - self.start
        total = f"/{self.total}" if self.total is not None else ""
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {max(self.total - self.count, 0) / rate:.0f}s"
        extra = self._postfix()
        return f"[{self.desc}] {self.count}{total} {self.unit}s, {rate:.1f} {self.unit}/s{eta}" + (
            f", {extra}" if extra else ""
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled:
            print(self.line() + " (done)", file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
