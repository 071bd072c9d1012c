"""JSON Lines readers: one JSON object per line, plain or zstd/gzip-compressed (by magic bytes).

`JsonlReader` reads the plain crawl layout `{"url": ..., "text": ...}` (`url` optional, kept in meta);
`PileReader` (pipeline/readers/pile.py) reuses it for `{"text": ..., "meta": {"pile_set_name": ...}}`.

A document's offset is the byte offset of its line in the decompressed stream. Blank lines are not
records (counted in `ReadStats.skipped["blank_line"]`). Each line is parsed with orjson, which never
evaluates anything and gives up at nesting depth 1024 instead of recursing. Bad lines, each one drop:

- `document_too_large`: the line is longer than `max_record_bytes` (its bytes are never held whole);
- `invalid_utf8`: the line is not UTF-8, or a JSON escape encodes a lone surrogate (the record is
  dropped, not repaired: a replacement character in training text is noise, and the count is honest);
- `invalid_json`: anything else orjson rejects (syntax, nesting deeper than 1024, trailing data);
- `wrong_type`: the line is not an object, or `text` is not a string; `missing_field`: no `text`;
- `empty_text`: the text is empty or whitespace only;
- `binary_file`: the first `sniff_bytes` of the stream look binary (`looks_binary`): one drop for the
  whole file at offset 0 instead of thousands of meaningless `invalid_json` lines cut at random 0x0A
  bytes. A text file with some bad lines is not binary and gets per-line drops;
- `truncated_zstd` / `truncated_gzip` / `corrupt_zstd` / `corrupt_gzip`: the compressed stream ends
  early or is damaged: one drop at the offset of the first line that could not be read completely.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import orjson

from pipeline.document import Document
from pipeline.readers.base import DecodedStream, FileContext, Reader, StreamError, iter_lines, looks_binary


def json_error_reason(raw: bytes, exc: Exception) -> str:
    """Classify an orjson failure: `invalid_utf8` for encoding problems, `invalid_json` otherwise."""
    message = str(exc).lower()
    if "utf-8" in message or "surrogate" in message:
        return "invalid_utf8"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "invalid_json"


class JsonlReader(Reader):
    """Plain `{"url", "text"}` JSON lines (the crawl's pre-extracted text)."""

    format: ClassVar[str] = "jsonl"
    default_source: ClassVar[str] = "crawl"
    text_field: ClassVar[str] = "text"

    def _read(self, ctx: FileContext) -> Iterator[Document]:
        config = self.config
        with DecodedStream(ctx.path, config) as stream:
            next_offset = 0
            try:
                sample = stream.read(config.sniff_bytes)
                if looks_binary(sample):
                    ctx.stats.bytes_decoded = len(sample)
                    ctx.drop("binary_file", 0, f"first {len(sample)} bytes are not text")
                    return
                lines = iter_lines(_Prefixed(sample, stream), config.max_record_bytes, config.chunk_bytes)
                convert, loads = self._convert, orjson.loads
                for offset, line, length in lines:
                    next_offset = offset + length + 1
                    if line is None:
                        ctx.drop(
                            "document_too_large",
                            offset,
                            f"line of {length} bytes > {config.max_record_bytes}",
                        )
                        continue
                    if not line or line.isspace():
                        ctx.stats.skipped["blank_line"] += 1
                        continue
                    try:
                        obj = loads(line)
                    except orjson.JSONDecodeError as exc:
                        ctx.drop(json_error_reason(line, exc), offset, str(exc))
                        continue
                    doc = convert(ctx, obj, offset)
                    if doc is not None:
                        yield doc
            except StreamError as exc:
                ctx.drop(exc.reason, next_offset, exc.detail)
            finally:
                ctx.stats.bytes_decoded = stream.decoded
                ctx.stats.bytes_read = stream.bytes_read

    def _convert(self, ctx: FileContext, obj: Any, offset: int) -> Document | None:
        """Check the schema of one parsed line and build its document, or drop it."""
        if type(obj) is dict:
            text = obj.get("text")
            if type(text) is str and text and not text.isspace():
                url = obj.get("url")
                return ctx.document(text, offset, {"url": url} if type(url) is str else {})
        self._reject(ctx, obj, offset)
        return None

    def _reject(self, ctx: FileContext, obj: Any, offset: int) -> None:
        """Drop a parsed line whose schema is wrong, under the reason that says how."""
        field = self.text_field
        if type(obj) is not dict:
            ctx.drop("wrong_type", offset, f"line is a JSON {type(obj).__name__}, not an object")
            return
        text = obj.get(field)
        if text is None:
            ctx.drop("missing_field", offset, f"no {field!r} field (keys: {', '.join(list(obj)[:8])})")
        elif type(text) is not str:
            ctx.drop("wrong_type", offset, f"{field!r} is a {type(text).__name__}, not a string")
        else:
            ctx.drop("empty_text", offset, f"{field!r} is empty or whitespace only")


class _Prefixed:
    """A stream whose first bytes were already read (the binary sniff): replays them, then the rest."""

    def __init__(self, prefix: bytes, stream: DecodedStream) -> None:
        self.prefix = prefix
        self.stream = stream

    def read(self, size: int) -> bytes:
        if self.prefix:
            data, self.prefix = self.prefix, b""
            return data
        return self.stream.read(size)
