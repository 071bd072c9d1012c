"""WuDaoCorpora: a JSON array of `{id, uniqueKey, titleUkey, dataType, title, content}` objects.

Files are one big JSON array (or FlagAI's `{"RECORDS": [...]}` wrapper) and can be gigabytes, so they
are never parsed whole: `iter_array_elements` splits the array into its elements' raw bytes with a small
scanner (string/escape state and a bracket depth counter, no recursion), and each element is parsed on
its own with orjson. Memory: one element (at most `max_record_bytes`) plus one read chunk.

Text: `title + "\\n" + content` when the title is not blank, else `content`. The title is a natural
first line (the tokenizer keeps newlines) and carries topic information; an empty title (most WuDao
records, all of FlagAI's sample) adds nothing. `dataType` (the WuDao category, e.g. 科技) and `id`
are kept in meta. A document's offset is its index in the array (0-based).

Drop reasons (besides the JSON ones of `JsonlReader`): `not_a_json_array` (the file is not an array
nor the RECORDS wrapper: one drop for the file, offset 0), `truncated_json` (the file ends inside the
array: one drop at the index of the unfinished element), `missing_field` / `wrong_type` for `content`
and `title`, `empty_text` (blank content, whatever the title).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import orjson

from pipeline.document import Document
from pipeline.readers.base import DecodedStream, FileContext, Reader, StreamError
from pipeline.readers.jsonl import json_error_reason

_OUTSIDE_STRING = re.compile(rb'["\[\]{},]')
_INSIDE_STRING = re.compile(rb'["\\]')
try:  # the rest of a string body in one C-level match; possessive (Python 3.11+): no backtracking memory
    _STRING_BODY: re.Pattern[bytes] | None = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.S)
except re.error:  # Python 3.10: one regex search per escape instead
    _STRING_BODY = None
_WHITESPACE = b" \t\r\n"
_RECORDS_WRAPPER = re.compile(rb'\{\s*"RECORDS"\s*:\s*\[')
_BOM = b"\xef\xbb\xbf"
_FAST_MIN_BYTES = 4096  # below this, batching elements is not worth an extra parse attempt
UNPARSED: Any = object()  # marks a yielded element whose raw bytes still need parsing


class ByteReader(Protocol):
    def read(self, size: int) -> bytes: ...


class NotAnArray(Exception):
    """The stream does not start with `[` or `{"RECORDS": [`."""


class TruncatedArray(Exception):
    """The stream ended inside the array; `index` is the element that was being read."""

    def __init__(self, index: int, detail: str) -> None:
        super().__init__(detail)
        self.index = index


def iter_array_elements(
    stream: ByteReader, max_element_bytes: int, chunk_bytes: int
) -> Iterator[tuple[int, bytes | None, Any]]:
    """Yield (index, raw bytes, parsed value) for each element of the top-level array.

    Fast path: a run of whole elements in the buffer (cut after a `}` that is followed by a comma) is
    parsed with one orjson call on `[` + run + `]`; such a cut can only parse if it is a true element
    boundary (a cut inside a string or a nested value leaves the text unbalanced). Those elements come
    with raw None and their parsed value. When the run does not parse (a bad element in it), the
    scanner takes over up to the cut: it tracks only whether it is inside a string (and after a
    backslash) and the bracket depth, finds element boundaries (a comma or the closing bracket at
    depth 0) and yields (index, raw bytes, UNPARSED), leaving validation to the caller; an element
    larger than `max_element_bytes` is yielded as (index, None, UNPARSED) and its bytes are discarded
    as they are scanned. Raises `NotAnArray` or `TruncatedArray`.
    """
    buf = bytearray()
    at_end = False

    def fill() -> bool:
        nonlocal at_end
        if at_end:
            return False
        chunk = stream.read(chunk_bytes)
        if not chunk:
            at_end = True
            return False
        buf.extend(chunk)
        return True

    # Prologue: `[` or the RECORDS wrapper, after optional BOM and whitespace.
    while len(buf) < 64 and fill():
        pass
    start = 3 if buf.startswith(_BOM) else 0
    while start < len(buf) and buf[start] in _WHITESPACE:
        start += 1
    if start < len(buf) and buf[start] == ord("["):
        pos = start + 1
    else:
        match = _RECORDS_WRAPPER.match(buf, start)
        if match is None:
            head = bytes(buf[start : start + 40])
            raise NotAnArray(f"starts with {head!r}, not '[' or '{{\"RECORDS\": ['")
        pos = match.end()

    index = 0
    slow_until = 0  # the scanner handles elements up to here (after a run that did not parse)
    while True:
        # Skip whitespace before an element (or the closing bracket).
        while True:
            while pos < len(buf) and buf[pos] in _WHITESPACE:
                pos += 1
            if pos < len(buf) or not fill():
                break
        if pos >= len(buf):
            raise TruncatedArray(index, "file ends before the array's closing ']'")
        if buf[pos] == ord("]") and index == 0:
            return  # empty array
        if pos >= slow_until and len(buf) - pos >= _FAST_MIN_BYTES:
            cut = _last_object_boundary(buf, pos, min(len(buf), pos + max_element_bytes))
            if cut is not None:
                run_end, next_pos = cut
                try:
                    values = orjson.loads(b"[" + buf[pos:run_end] + b"]")
                except orjson.JSONDecodeError:
                    slow_until = run_end
                else:
                    for value in values:
                        yield index, None, value
                        index += 1
                    pos = next_pos
                    if pos > chunk_bytes:
                        del buf[:pos]
                        pos = slow_until = 0
                    continue
        element_start = pos
        depth = 0
        in_string = False
        oversized = False
        discarded = 0  # bytes of an oversized element already thrown away
        while True:
            if in_string and _STRING_BODY is not None:
                end = _STRING_BODY.match(buf, pos).end()  # type: ignore[union-attr]  # always matches
                if end < len(buf) and buf[end] == 0x22:
                    in_string = False
                    pos = end + 1
                    continue
                pos = end  # end of the buffer, or a backslash that is its last byte: need more
            elif in_string:
                match = _INSIDE_STRING.search(buf, pos)
                if match is not None:
                    if match.group() == b'"':
                        in_string = False
                        pos = match.end()
                        continue
                    if match.end() < len(buf):  # a backslash: skip the escaped byte
                        pos = match.end() + 1
                        continue
                    pos = match.start()  # backslash at the end of the buffer: need its next byte
                else:
                    pos = len(buf)
            else:
                match = _OUTSIDE_STRING.search(buf, pos)
                if match is not None:
                    char = buf[match.start()]
                    pos = match.end()
                    if char == 0x22:  # "
                        in_string = True
                    elif char in (0x5B, 0x7B):  # [ {
                        depth += 1
                    elif depth > 0 and char != 0x2C:  # ] } closing a nested value
                        depth -= 1
                    elif depth == 0 and char in (0x2C, 0x5D):  # , or ] ends the element
                        break
                    continue
                pos = len(buf)
            # Need more bytes for this element.
            if pos - element_start + discarded > max_element_bytes:
                oversized = True
                discarded += pos - element_start
                del buf[:pos]
                slow_until = max(slow_until - pos, 0)
                element_start = pos = 0
            if not fill():
                raise TruncatedArray(index, f"file ends inside element {index}")
        end = pos - 1  # the position of the ',' or ']' that ended the element
        size = end - element_start + discarded
        if oversized or size > max_element_bytes:
            yield index, None, UNPARSED
        else:
            yield index, bytes(buf[element_start:end]), UNPARSED
        index += 1
        if buf[end] == ord("]"):
            return
        if pos > chunk_bytes:
            del buf[:pos]
            slow_until = max(slow_until - pos, 0)
            pos = 0


def _last_object_boundary(buf: bytearray, start: int, end: int) -> tuple[int, int] | None:
    """The last `}` in buf[start:end] followed by optional whitespace and a comma: (after `}`, after `,`)."""
    close = end
    for _ in range(8):
        close = buf.rfind(b"}", start, close)
        if close < 0:
            return None
        after = close + 1
        while after < end and buf[after] in _WHITESPACE:
            after += 1
        if after < end and buf[after] == 0x2C:
            return close + 1, after + 1
    return None


class WudaoReader(Reader):
    format: ClassVar[str] = "wudao"
    default_source: ClassVar[str] = "wudao"

    def _read(self, ctx: FileContext) -> Iterator[Document]:
        config = self.config
        with DecodedStream(ctx.path, config) as stream:
            next_index = 0
            try:
                elements = iter_array_elements(stream, config.max_record_bytes, config.chunk_bytes)
                for index, raw, obj in elements:
                    next_index = index + 1
                    if obj is UNPARSED:
                        if raw is None:
                            ctx.drop(
                                "document_too_large",
                                index,
                                f"array element larger than {config.max_record_bytes} bytes",
                            )
                            continue
                        try:
                            obj = orjson.loads(raw)
                        except orjson.JSONDecodeError as exc:
                            ctx.drop(json_error_reason(raw, exc), index, str(exc))
                            continue
                    doc = self._convert(ctx, obj, index)
                    if doc is not None:
                        yield doc
            except NotAnArray as exc:
                ctx.drop("not_a_json_array", 0, str(exc))
            except TruncatedArray as exc:
                ctx.drop("truncated_json", exc.index, str(exc))
            except StreamError as exc:
                ctx.drop(exc.reason, next_index, exc.detail)
            finally:
                ctx.stats.bytes_decoded = stream.decoded
                ctx.stats.bytes_read = stream.bytes_read

    def _convert(self, ctx: FileContext, obj: Any, index: int) -> Document | None:
        if type(obj) is not dict:
            ctx.drop("wrong_type", index, f"array element is a JSON {type(obj).__name__}, not an object")
            return None
        content = obj.get("content")
        if content is None:
            ctx.drop("missing_field", index, f"no 'content' field (keys: {', '.join(list(obj)[:8])})")
            return None
        if type(content) is not str:
            ctx.drop("wrong_type", index, f"'content' is a {type(content).__name__}, not a string")
            return None
        title = obj.get("title")
        if title is not None and type(title) is not str:
            ctx.drop("wrong_type", index, f"'title' is a {type(title).__name__}, not a string")
            return None
        if not content or content.isspace():
            ctx.drop("empty_text", index, "'content' is empty or whitespace only")
            return None
        text = f"{title}\n{content}" if title and not title.isspace() else content
        meta: dict[str, Any] = {}
        data_type = obj.get("dataType")
        if isinstance(data_type, str) and data_type:
            meta["dataType"] = data_type
        record_id = obj.get("id")
        if isinstance(record_id, (int, str)) and not isinstance(record_id, bool):
            meta["id"] = record_id
        return ctx.document(text, index, meta)
