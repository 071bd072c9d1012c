"""Generator-in / generator-out pipeline steps over `Document`s, each owning its own counts.

A step takes an iterable of documents and yields the ones that go on, possibly changed (normalized text,
a language label, a quality score). Every document it does not yield is dropped through `Step.drop`,
which counts it under a named reason in the step's `StepStats` and in the run's `DropLog`, so
`docs_in == docs_out + sum(dropped.values())` holds per step by construction. Bytes are the UTF-8 size
of the texts going in and coming out (a step that rewrites text, such as normalization or line-level
quality rules, changes them; a pure filter only drops).

Steps see documents in batches (`batch_size`): language ID needs them (one call to fastText per batch),
and per-document steps get cheap timing (one clock read per batch, upstream time excluded).

    docs = reader.run(paths, drops)
    for step in (NormalizeStep(), LangIdStep(), QualityStep()):
        docs = step.run(docs, drops)
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from pipeline.document import Document, DropLog


@dataclasses.dataclass
class StepStats:
    """What one step did: documents and UTF-8 text bytes in and out, drops per reason, extra counters,
    seconds spent inside it."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    chars_in: int = 0
    dropped: Counter[str] = dataclasses.field(default_factory=Counter)
    extra: Counter[str] = dataclasses.field(default_factory=Counter)
    seconds: float = 0.0

    def merge(self, other: StepStats) -> None:
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.chars_in += other.chars_in
        self.dropped.update(other.dropped)
        self.extra.update(other.extra)
        self.seconds += other.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "chars_in": self.chars_in,
            "dropped": dict(sorted(self.dropped.items())),
            "extra": dict(sorted(self.extra.items())),
            "seconds": round(self.seconds, 6),
        }


class Step:
    """Base class: override `process` (one document) or `process_batch` (a list of documents).

    `process` returns the document to keep (the same object, possibly modified) or None after calling
    `self.drop(...)`. A step that returns None without dropping breaks the accounting; `run` checks it.
    """

    name: ClassVar[str] = "step"
    batch_size: ClassVar[int] = 64

    def __init__(self) -> None:
        self.stats = StepStats(self.name)
        self._drops: DropLog | None = None

    def run(self, docs: Iterable[Document], drops: DropLog) -> Iterator[Document]:
        """Yield the documents that pass this step; count the others in `drops` and `self.stats`."""
        iterator = iter(docs)
        stats = self.stats
        while True:
            batch = list(itertools.islice(iterator, self.batch_size))
            if not batch:
                return
            started = time.perf_counter()
            self._drops = drops
            dropped_before = sum(stats.dropped.values())
            stats.docs_in += len(batch)
            stats.chars_in += sum(len(doc.text) for doc in batch)
            stats.bytes_in += sum(doc.text_bytes for doc in batch)
            kept = self.process_batch(batch)
            stats.docs_out += len(kept)
            stats.bytes_out += sum(doc.text_bytes for doc in kept)
            dropped = sum(stats.dropped.values()) - dropped_before
            if len(kept) + dropped != len(batch):
                raise AssertionError(
                    f"step {self.name}: {len(batch)} documents in, {len(kept)} kept and {dropped} dropped"
                )
            stats.seconds += time.perf_counter() - started
            yield from kept

    def process_batch(self, batch: list[Document]) -> list[Document]:
        kept = []
        for doc in batch:
            result = self.process(doc)
            if result is not None:
                kept.append(result)
        return kept

    def process(self, doc: Document) -> Document | None:
        raise NotImplementedError

    def drop(self, doc: Document, reason: str, detail: str = "", *, bad_input: bool = False) -> None:
        """Count `doc` as dropped under `reason` (policy by default; pass bad_input=True for broken input)."""
        assert self._drops is not None, "drop() is only valid inside run()"
        self.stats.dropped[reason] += 1
        self._drops.drop(reason, doc.input_file, doc.offset, detail, bad_input=bad_input)
