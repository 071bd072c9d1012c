"""The Pile: `*.jsonl.zst`, one `{"text": ..., "meta": {"pile_set_name": ...}}` per line.

Same reading, offsets and drop reasons as `JsonlReader`; `meta.pile_set_name` is kept (the Pile
component: `Pile-CC`, `Wikipedia (en)`, ...) so that later stages can report or weight by component.
A `meta` that is not an object is ignored rather than dropped: the text is still good.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pipeline.document import Document
from pipeline.readers.base import FileContext
from pipeline.readers.jsonl import JsonlReader


class PileReader(JsonlReader):
    format: ClassVar[str] = "pile"
    default_source: ClassVar[str] = "pile"

    def _convert(self, ctx: FileContext, obj: Any, offset: int) -> Document | None:
        if type(obj) is dict:
            text = obj.get("text")
            if type(text) is str and text and not text.isspace():
                pile_meta = obj.get("meta")
                name = pile_meta.get("pile_set_name") if type(pile_meta) is dict else None
                return ctx.document(text, offset, {"pile_set_name": name} if type(name) is str else {})
        self._reject(ctx, obj, offset)
        return None
