"""Web crawl archives: WARC `response` records (HTML -> main text) and WET `conversion` records (text).

One reader handles both record types, so a file's format only sets the default name: `WarcReader`
(`warc`) and `WetReader` (`wet`) read the same way. Records are streamed with warcio's
`ArchiveIterator` (gzip per record or uncompressed); a document's offset is the byte offset of its
record in the file as stored (the gzip member's start for .warc.gz), from `get_record_offset()`.

Which records are documents: `response` (HTTP responses) and `conversion` (WET text). Other types
(warcinfo, request, metadata, revisit, resource) are not records of the corpus: they are counted in
`ReadStats.skipped[<type>]`, not as drops.

A response becomes a document when: its HTTP status is in `warc_ok_status` (else `warc_http_status`,
policy); its payload is HTML by Content-Type (text/html, application/xhtml+xml) or, without one, by its
first bytes (else `warc_not_html`, policy: PDFs, images and feeds are not bad input, just not ours);
its payload is at most `max_record_bytes` (else `document_too_large`); it decodes (charset detection
in `html.decode_html`; more than `max_charset_error_ratio` of undecodable bytes in every candidate
charset is `warc_bad_charset`) and yields some text (else `warc_no_text`). A WET conversion record must be UTF-8
(`invalid_utf8`) and not blank (`warc_no_text`). A payload whose transfer/content encoding cannot be
undone is `warc_bad_payload`; a record shorter than its Content-Length, or bytes after the last record
that do not form one (the file stops inside a record's headers), is `truncated_warc`; a file
that is not a WARC at all is one `not_a_warc` drop at offset 0, and a parse failure in the middle of
a file is one `warc_corrupt` drop at the failing record's offset (the rest of the file is skipped).
A record whose WARC or HTTP header block is larger than `warc_max_header_bytes` (or has a longer line)
is `warc_header_too_large`: warcio reads a header line whole, so the readers hand its parsers a
line source that never holds more than that many bytes, and the excess is read and discarded.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from typing import Any, ClassVar

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.statusandheaders import StatusAndHeadersParserException

from pipeline.document import Document
from pipeline.readers.base import GZIP_MAGIC, FileContext, Reader
from pipeline.readers.html import decode_html, html_to_text

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_DOCUMENT_TYPES = ("response", "conversion")
_PARSE_ERRORS = (
    ArchiveLoadFailed,
    StatusAndHeadersParserException,
    zlib.error,
    EOFError,
    ValueError,
    IndexError,
)


class _BoundedLines:
    """`readline()` over a header block that never returns, nor holds, more than `limit` bytes.

    An over-long line is cut to its first `limit` bytes and the rest of it discarded as it is read.
    Once the block has passed `limit` bytes, with `skip_rest` the remaining header lines are discarded up
    to the blank line that ends the block (HTTP headers: the record is dropped anyway), else only
    over-long lines are cut (WARC headers: Content-Length must still be seen to find the next record).
    """

    def __init__(self, stream: Any, limit: int, skip_rest: bool) -> None:
        self.stream, self.limit, self.skip_rest = stream, limit, skip_rest
        self.total = 0
        self.too_large = False

    def _line(self) -> bytes:
        line = self.stream.readline(self.limit + 1)
        self.total += len(line)
        if len(line) > self.limit and not line.endswith(b"\n"):
            self.too_large = True
            line = line[: self.limit]
            while True:  # discard the rest of the line
                rest = self.stream.readline(self.limit)
                self.total += len(rest)
                if not rest or rest.endswith(b"\n"):
                    return line + b"\r\n"
        return line

    def readline(self, size: int = -1) -> bytes:
        line = self._line()
        if self.total > self.limit:
            self.too_large = True
            if self.skip_rest:
                while line and line.strip(b"\r\n"):
                    line = self._line()
        return line


class _BoundedHeaderParser:
    """Wraps one of warcio's header parsers with `_BoundedLines`; `too_large` tells about the last block."""

    def __init__(self, parser: Any, limit: int, skip_rest: bool) -> None:
        self.parser, self.limit, self.skip_rest = parser, limit, skip_rest
        self.too_large = False

    def parse(self, stream: Any, full_statusline: Any = None) -> Any:
        lines = _BoundedLines(stream, self.limit, self.skip_rest)
        if full_statusline is not None:
            lines.total = len(full_statusline)
        try:
            return self.parser.parse(lines, full_statusline)
        finally:
            self.too_large = lines.too_large


def _is_warc(path: str) -> bool:
    """The file starts with a `WARC/` version line (after gzip decompression for .warc.gz)."""
    with open(path, "rb") as handle:
        head = handle.read(65536)
    if head.startswith(GZIP_MAGIC):
        try:
            head = zlib.decompressobj(31).decompress(head, 256)
        except zlib.error:
            return False
    return head.lstrip(b"\r\n").startswith(b"WARC/")


def _looks_like_html(prefix: bytes) -> bool:
    head = prefix[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<body" in head


class WarcReader(Reader):
    format: ClassVar[str] = "warc"
    default_source: ClassVar[str] = "crawl"

    def _read(self, ctx: FileContext) -> Iterator[Document]:
        if not _is_warc(ctx.path):
            ctx.drop("not_a_warc", 0, "the file does not start with a WARC/ version line")
            return
        with open(ctx.path, "rb") as handle:
            iterator = ArchiveIterator(handle)
            limit = self.config.warc_max_header_bytes
            loader = iterator.loader
            loader.warc_parser = self._warc_headers = _BoundedHeaderParser(loader.warc_parser, limit, False)
            loader.http_parser = self._http_headers = _BoundedHeaderParser(loader.http_parser, limit, True)
            records_end = 0  # where the last complete record ended
            try:
                for record in iterator:
                    record_type = record.rec_type
                    if record_type not in _DOCUMENT_TYPES:
                        ctx.stats.skipped[record_type or "unknown"] += 1
                        doc = None
                    else:
                        doc = self._record(ctx, iterator, record)
                    records_end = iterator.get_record_offset() + iterator.get_record_length()
                    if doc is not None:
                        yield doc
            except _PARSE_ERRORS as exc:
                ctx.drop("warc_corrupt", iterator.offset, f"{type(exc).__name__}: {exc}")
            else:
                # warcio ends quietly when the file stops inside a record's headers (a truncated last
                # gzip member): bytes after the last record that are not blank are such a record.
                handle.seek(records_end)
                tail = handle.read(65536)
                if tail.strip(b"\r\n\t \x00"):
                    size = os.fstat(handle.fileno()).st_size
                    ctx.drop(
                        "truncated_warc",
                        records_end,
                        f"{size - records_end} bytes at the end do not form a record",
                    )
            finally:
                ctx.stats.bytes_read = os.fstat(handle.fileno()).st_size

    def _record(self, ctx: FileContext, iterator: ArchiveIterator, record: Any) -> Document | None:
        """One response or conversion record -> a document, or one drop."""
        config = self.config
        # warcio only knows a record's offset once the record has been read to its end, so the payload
        # (bounded) is read first and the offset asked for after.
        meta: dict[str, Any] = {}
        if self._warc_headers.too_large or (record.http_headers is not None and self._http_headers.too_large):
            iterator.read_to_end()
            ctx.drop("warc_header_too_large", iterator.get_record_offset(),
                     f"a header block or line over {config.warc_max_header_bytes} bytes")
            return None
        url = record.rec_headers.get_header("WARC-Target-URI")
        if url:
            meta["url"] = url.strip("<>")
        if record.rec_type == "response":
            http = record.http_headers
            status = http.get_statuscode() if http is not None else None
            content_type = (http.get_header("Content-Type") if http is not None else None) or ""
            media_type = content_type.split(";", 1)[0].strip().lower()
            if http is None or not status or not status.isdigit() or int(status) not in config.warc_ok_status:
                iterator.read_to_end()
                ctx.drop(
                    "warc_http_status", iterator.get_record_offset(), f"HTTP status {status}", bad_input=False
                )
                return None
            if media_type and media_type not in _HTML_TYPES:
                iterator.read_to_end()
                ctx.drop(
                    "warc_not_html",
                    iterator.get_record_offset(),
                    f"Content-Type {media_type}",
                    bad_input=False,
                )
                return None
        else:
            content_type = ""
            media_type = "text/plain"
        try:
            body = record.content_stream().read(config.max_record_bytes + 1)
        except (zlib.error, EOFError, ValueError, OSError) as exc:
            iterator.read_to_end()
            ctx.drop("warc_bad_payload", iterator.get_record_offset(), f"{type(exc).__name__}: {exc}")
            return None
        iterator.read_to_end()
        offset = iterator.get_record_offset()
        ctx.stats.bytes_decoded += len(body)
        if len(body) > config.max_record_bytes:
            ctx.drop("document_too_large", offset, f"payload larger than {config.max_record_bytes} bytes")
            return None
        missing = record.raw_stream.limit
        if missing:
            ctx.drop("truncated_warc", offset, f"record ends {missing} bytes before its Content-Length")
            return None
        if record.rec_type == "conversion":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                ctx.drop("invalid_utf8", offset, str(exc))
                return None
            language = record.rec_headers.get_header("WARC-Identified-Content-Language")
            if language:
                meta["identified_language"] = language
        else:
            if not media_type and not _looks_like_html(body):
                ctx.drop(
                    "warc_not_html",
                    offset,
                    "no Content-Type and the payload does not look like HTML",
                    bad_input=False,
                )
                return None
            markup, charset, charset_errors = decode_html(body, content_type)
            if charset_errors > config.max_charset_error_ratio * max(1, len(markup)):
                ctx.drop("warc_bad_charset", offset,
                         f"{charset_errors} undecodable byte sequences in every charset tried (best: {charset})")
                return None
            text, title = html_to_text(markup, config.html)
            meta["charset"] = charset
            if charset_errors:
                meta["charset_errors"] = True
            if title:
                meta["title"] = title
        if not text or text.isspace():
            ctx.drop("warc_no_text", offset, f"{record.rec_type} record has no text")
            return None
        return ctx.document(text, offset, meta)


class WetReader(WarcReader):
    """WET files (conversion records); identical to `WarcReader`, which also accepts them."""

    format: ClassVar[str] = "wet"
