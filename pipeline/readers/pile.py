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
        text = self._text(ctx, obj, offset)
        if text is None:
            return None
        meta = {}
        pile_meta = obj.get("meta")
        if isinstance(pile_meta, dict):
            name = pile_meta.get("pile_set_name")
            if isinstance(name, str):
                meta["pile_set_name"] = name
        return ctx.document(text, offset, meta)
