"""The unit that flows through the pipeline, and the per-stage accounting of what was dropped and why.

Every input record becomes either a `Document` that flows on, or one `drop()` under a named reason with
its file and offset. `docs_in = docs_out + sum(dropped.values())` holds per source by construction.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from common.errors import BadRecordError


@dataclasses.dataclass(slots=True)
class Document:
    """One input document.

    `offset` locates the record in `input_file`: the byte offset of a jsonl line (in the decompressed
    stream for .zst), the element index of a JSON array, the byte offset of a WARC record in the
    compressed file. `(source, input_file, offset)` is the document's stable identity.
    """

    text: str
    source: str
    input_file: str
    offset: int
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    lang: str = ""
    lang_score: float = 0.0
    quality: float = 1.0

    @property
    def doc_id(self) -> str:
        return f"{self.source}:{self.input_file}:{self.offset}"

    @property
    def text_bytes(self) -> int:
        """Size of the text in UTF-8: what the manifest counts as a stage's bytes in and out."""
        return utf8_size(self.text)


def utf8_size(text: str) -> int:
    """UTF-8 byte length of `text`, without encoding it when it is ASCII (most English text)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


@dataclasses.dataclass
class DropExample:
    path: str
    offset: int | None
    detail: str


class DropLog:
    """Counts dropped records per reason and keeps the first few examples of each (file, offset, detail).

    Under `strict`, the first drop raises `BadRecordError` instead. Rejections by policy (language,
    quality, duplicates) are not bad input: pass `bad_input=False` so `--strict` lets them through.
    """

    MAX_EXAMPLES = 5

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[DropExample]] = {}

    def drop(
        self,
        reason: str,
        path: str,
        offset: int | None,
        detail: str = "",
        *,
        bad_input: bool = True,
        count: int = 1,
    ) -> None:
        if self.strict and bad_input:
            raise BadRecordError(reason, path, offset, detail)
        self.counts[reason] += count
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.MAX_EXAMPLES:
            examples.append(DropExample(str(path), offset, detail[:200]))

    def merge(self, other: DropLog) -> None:
        self.counts.update(other.counts)
        for reason, examples in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(examples[: max(0, self.MAX_EXAMPLES - len(mine))])

    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "dropped": dict(sorted(self.counts.items())),
            "examples": {
                reason: [dataclasses.asdict(e) for e in examples]
                for reason, examples in sorted(self.examples.items())
            },
        }
