"""What every reader shares: its config, per-file accounting, and bounded-memory byte streams.

A reader turns one input file into `Document`s. Every record it sees either becomes a document or is
counted once under a named reason, with the file and the record's offset, in the run's `DropLog` and in
the file's `ReadStats`; so `records_seen == docs_yielded + sum(dropped.values())` holds per file by
construction (`ReadStats.check()`), and the lead's manifest can be built from the per-file stats.

Streams are decompressed by magic bytes, not by file name (a gzip file named `.jsonl` still reads), and
read in chunks: no reader holds more than `max_record_bytes` plus one chunk of a file in memory.
Compression problems are reported as `StreamError(reason)` from `read()`; a reader turns them into one
drop at the offset of the first record it could not read, then stops reading that file.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, ClassVar

import zstandard

from pipeline.document import Document, DropLog

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


@dataclasses.dataclass
class HtmlConfig:
    """How HTML pages become text (see pipeline/readers/html.py)."""

    # Drop the content of navigation-like elements (nav, aside, footer, menu, select, button; header
    # outside article/main). If that leaves nothing, the page is extracted again without this.
    drop_boilerplate: bool = True
    # Drop a text block (paragraph, list item, table row...) when more than this fraction of its
    # characters are link text: menus and link lists. 1.0 keeps every block.
    max_link_density: float = 0.5


@dataclasses.dataclass
class ReaderConfig:
    """Limits and policies of the readers (one config for every format)."""

    # A record whose raw encoded size (a jsonl line, a JSON array element, a WARC payload) is larger
    # than this is dropped as `document_too_large` without being held in memory. 16 MiB: far above any
    # real document (the Pile's largest are a few MB), small enough for a worker's memory.
    max_record_bytes: int = 16 * 1024 * 1024
    # Bytes read from a (decompressed) stream at a time.
    chunk_bytes: int = 256 * 1024
    # Largest zstd window accepted (memory per open .zst file). 2**27 = 128 MiB, libzstd's default
    # limit; files made with `zstd --long=31` need 31.
    zstd_max_window_log: int = 27
    # First bytes of a jsonl stream inspected for binary content (see `looks_binary`).
    sniff_bytes: int = 8192
    # WARC: keep responses with these HTTP status codes only (others: `warc_http_status`, policy).
    warc_ok_status: list[int] = dataclasses.field(default_factory=lambda: [200])
    # WARC: largest WARC or HTTP header block (and header line) held in memory; larger records are
    # `warc_header_too_large`. Web servers refuse far less (8-16 KiB a line is usual).
    warc_max_header_bytes: int = 256 * 1024
    # WARC: an HTML payload that no candidate charset decodes with fewer undecodable sequences than
    # this fraction of its characters is `warc_bad_charset` (below it: kept, `meta["charset_errors"]`).
    max_charset_error_ratio: float = 0.01
    html: HtmlConfig = dataclasses.field(default_factory=HtmlConfig)


@dataclasses.dataclass
class ReadStats:
    """Per-file (or, merged, per-run) reader accounting for the manifest."""

    path: str = ""
    records_seen: int = 0
    docs_yielded: int = 0
    dropped: Counter[str] = dataclasses.field(default_factory=Counter)
    # Bytes consumed from the file on disk (compressed size once the file is read to the end).
    bytes_read: int = 0
    # Bytes of the decompressed stream scanned (jsonl, JSON) or of record payloads (WARC).
    bytes_decoded: int = 0
    # Things in the file that are not records and so are not counted: blank jsonl lines, WARC
    # request/metadata/warcinfo records, keyed by kind.
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)

    def check(self) -> None:
        """Assert the reader invariant: every record seen was yielded or dropped under a reason."""
        dropped = sum(self.dropped.values())
        if self.records_seen != self.docs_yielded + dropped:
            raise AssertionError(
                f"{self.path}: {self.records_seen} records seen != {self.docs_yielded} yielded + {dropped} dropped"
            )

    def merge(self, other: ReadStats) -> None:
        self.records_seen += other.records_seen
        self.docs_yielded += other.docs_yielded
        self.dropped.update(other.dropped)
        self.bytes_read += other.bytes_read
        self.bytes_decoded += other.bytes_decoded
        self.skipped.update(other.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "records_seen": self.records_seen,
            "docs_yielded": self.docs_yielded,
            "dropped": dict(sorted(self.dropped.items())),
            "bytes_read": self.bytes_read,
            "bytes_decoded": self.bytes_decoded,
            "skipped": dict(sorted(self.skipped.items())),
        }


class FileContext:
    """The accounting of one file being read: every record goes through `document()` or `drop()`.

    `path` is the local file the reader opens; `name` is what documents and drops record as their
    file (the same path, or the URI of a remote file that was copied to `path`).
    """

    def __init__(
        self, reader: Reader, path: str, drops: DropLog, stats: ReadStats, name: str | None = None
    ) -> None:
        self.reader = reader
        self.path = path
        self.name = name if name is not None else path
        self.drops = drops
        self.stats = stats
        self.source = reader.source

    def document(self, text: str, offset: int, meta: dict[str, Any] | None = None) -> Document:
        self.stats.records_seen += 1
        self.stats.docs_yielded += 1
        return Document(text, self.source, self.name, offset, meta if meta is not None else {})

    def drop(self, reason: str, offset: int | None, detail: str = "", *, bad_input: bool = True) -> None:
        """Count one record as dropped. Under a strict DropLog, bad input raises BadRecordError here."""
        self.stats.records_seen += 1
        self.stats.dropped[reason] += 1
        self.drops.drop(reason, self.name, offset, detail, bad_input=bad_input)


class Reader:
    """Base class of the format readers: `read(path, drops)` yields the file's documents.

    Subclasses implement `_read(ctx)`. `read` can be given a `ReadStats` to fill (one per file, for the
    manifest); the reader also keeps `totals` over every file it has read.
    """

    format: ClassVar[str] = ""
    default_source: ClassVar[str] = ""

    def __init__(self, config: ReaderConfig | None = None, source: str | None = None) -> None:
        self.config = config or ReaderConfig()
        self.source = source or self.default_source
        self.totals = ReadStats(path="*")

    def read(
        self,
        path: str | os.PathLike[str],
        drops: DropLog,
        stats: ReadStats | None = None,
        local_path: str | os.PathLike[str] | None = None,
    ) -> Iterator[Document]:
        """Stream the documents of one file; bad records are counted in `drops` (or raise under strict).

        Pass a fresh `ReadStats` to get this file's counts; they are added to `self.totals` when the
        file is done (or abandoned). `local_path`: read the bytes from this local copy while documents
        and drops name `path` (a remote file's URI), so ids and offsets match a local read.
        """
        path = os.fspath(path)
        stats = stats if stats is not None else ReadStats()
        stats.path = path
        source = os.fspath(local_path) if local_path is not None else path
        try:
            yield from self._read(FileContext(self, source, drops, stats, name=path))
        finally:
            self.totals.merge(stats)

    def run(self, paths: Iterable[str | os.PathLike[str]], drops: DropLog) -> Iterator[Document]:
        """The reader as the first pipeline step: file paths in, documents out."""
        for path in paths:
            yield from self.read(path, drops)

    def _read(self, ctx: FileContext) -> Iterator[Document]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# Byte streams


class StreamError(Exception):
    """The compressed stream is truncated or corrupt; `reason` is the drop reason to count."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DecodedStream:
    """A file's content, decompressed by its magic bytes (zstd, gzip or none), read in bounded chunks.

    `read(n)` returns at most n bytes and b"" at the end. Truncation and corruption raise `StreamError`:
    zstd's streaming decoder stops silently at a truncated frame, so at the end of a .zst file the frame
    structure is walked (block headers only, a few bytes per 128 KiB block) to tell a complete file from
    a truncated one.
    """

    def __init__(self, path: str, config: ReaderConfig) -> None:
        self.path = path
        self.raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        magic = self.raw.read(4)
        self.raw.seek(0)
        self.kind = "zstd" if magic == ZSTD_MAGIC else "gzip" if magic[:2] == GZIP_MAGIC else "plain"
        self.decoded = 0
        self.at_end = False
        self._inner: Any
        if self.kind == "zstd":
            decompressor = zstandard.ZstdDecompressor(max_window_size=1 << config.zstd_max_window_log)
            self._inner = decompressor.stream_reader(self.raw, read_size=1 << 17, read_across_frames=True)
        elif self.kind == "gzip":
            self._inner = gzip.GzipFile(fileobj=self.raw, mode="rb")
        else:
            self._inner = self.raw

    def read(self, size: int) -> bytes:
        if self.at_end:
            return b""
        try:
            data = self._inner.read(size)
        except zstandard.ZstdError as exc:
            raise StreamError("corrupt_zstd", f"{exc} (after {self.decoded} decompressed bytes)") from exc
        except EOFError as exc:  # gzip: stream ended before the end-of-stream marker
            raise StreamError("truncated_gzip", f"{exc} (after {self.decoded} decompressed bytes)") from exc
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise StreamError("corrupt_gzip", f"{exc} (after {self.decoded} decompressed bytes)") from exc
        if not data and self.kind == "zstd":
            problem = zstd_frames_problem(self.raw)
            if problem is not None:
                raise StreamError(
                    "truncated_zstd", f"{problem}; decompressed stream ends at byte {self.decoded}"
                )
        self.decoded += len(data)
        self.at_end = not data
        return data

    @property
    def bytes_read(self) -> int:
        """Compressed bytes consumed so far (the file size once read to the end)."""
        try:
            return os.fstat(self.raw.fileno()).st_size if self.at_end else self.raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        if self._inner is not self.raw:
            self._inner.close()
        self.raw.close()

    def __enter__(self) -> DecodedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def zstd_frames_problem(raw: BinaryIO) -> str | None:
    """Walk the zstd frames of a seekable file; say where it is truncated or malformed, or None if complete.

    Only headers are read: the frame header, each block's 3-byte header (skipping the block's content by
    seeking), the optional checksum; skippable frames are skipped by their size. See RFC 8878 §3.1.
    """
    size = os.fstat(raw.fileno()).st_size
    pos = 0
    while pos < size:
        raw.seek(pos)
        header = raw.read(14)
        if len(header) < 4:
            return f"truncated frame header at compressed byte {pos}"
        magic = struct.unpack_from("<I", header)[0]
        if 0x184D2A50 <= magic <= 0x184D2A5F:  # skippable frame
            if len(header) < 8:
                return f"truncated skippable frame at compressed byte {pos}"
            pos += 8 + struct.unpack_from("<I", header, 4)[0]
            continue
        if magic != 0xFD2FB528:
            return f"bad frame magic at compressed byte {pos}"
        if len(header) < 5:
            return f"truncated frame header at compressed byte {pos}"
        descriptor = header[4]
        fcs_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
        has_checksum, dict_flag = (descriptor >> 2) & 1, descriptor & 3
        fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
        pos += 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag] + fcs_size
        while True:
            raw.seek(pos)
            block = raw.read(3)
            if len(block) < 3:
                return f"frame ends before its last block (compressed byte {pos} of {size})"
            value = int.from_bytes(block, "little")
            last, block_type, block_size = value & 1, (value >> 1) & 3, value >> 3
            if block_type == 3:
                return f"reserved block type at compressed byte {pos}"
            pos += 3 + (1 if block_type == 1 else block_size)
            if pos > size:
                return f"block at compressed byte {pos} runs past the end of the file ({size} bytes)"
            if last:
                break
        pos += 4 * has_checksum
        if pos > size:
            return "frame checksum missing at the end of the file"
    return None


def looks_binary(sample: bytes) -> bool:
    """True for bytes that are not text: more than 10% undecodable, NUL or other control bytes.

    Text formats (JSON, HTML) never contain raw NUL or C0 controls other than tab/newline/CR/FF, so a
    few kilobytes tell a binary file (or UTF-16 text, or a stream of zeros) from a text file; a text
    file with one bad line, a stray NUL byte or a line in another encoding is not binary: that line is
    dropped under its own reason and the rest of the file is read.
    """
    if not sample:
        return False
    text = sample.decode("utf-8", errors="replace")
    # A multi-byte character cut at the end of the sample is not evidence of anything.
    bad = text.count("\ufffd") - (1 if text.endswith("\ufffd") else 0)
    bad += sum(1 for ch in text if ch < " " and ch not in "\t\n\r\f")
    return bad > 0.1 * len(text)


def iter_lines(
    stream: DecodedStream, max_line_bytes: int, chunk_bytes: int
) -> Iterator[tuple[int, bytes | None, int]]:
    """Split a stream into lines: yields (offset of the line, its bytes or None if too large, its length).

    A line longer than `max_line_bytes` is yielded as None with its true length; its bytes are discarded
    as they are read, so memory stays at `max_line_bytes + chunk_bytes` whatever the line's size. The
    offsets are byte offsets in the decompressed stream; the last line may lack its newline.
    `StreamError` from the stream propagates; the unfinished line then starts right after the last line
    yielded (offset + length + 1), which is where readers count the truncation.
    """
    pending: list[bytes] = []  # pieces of the line being assembled (empty while skipping)
    pending_len = 0
    position = 0  # stream offset of the current chunk
    line_start = 0
    while True:
        chunk = stream.read(chunk_bytes)
        if not chunk:
            break
        first_newline = chunk.find(b"\n")
        if first_newline < 0:
            pending_len += len(chunk)
            if pending_len <= max_line_bytes:
                pending.append(chunk)
            else:
                pending.clear()
            position += len(chunk)
            continue
        length = pending_len + first_newline
        if length > max_line_bytes:
            yield line_start, None, length
        elif pending:
            pending.append(chunk[:first_newline])
            yield line_start, b"".join(pending), length
        else:
            yield line_start, chunk[:first_newline], length
        pending.clear()
        line_start = position + first_newline + 1
        last_newline = chunk.rfind(b"\n")
        if last_newline > first_newline:
            for line in chunk[first_newline + 1 : last_newline].split(b"\n"):
                size = len(line)
                yield line_start, (line if size <= max_line_bytes else None), size
                line_start += size + 1
        tail = chunk[last_newline + 1 :]
        pending_len = len(tail)
        if tail and pending_len <= max_line_bytes:
            pending.append(tail)
        position += len(chunk)
    if pending_len:
        yield line_start, (b"".join(pending) if pending_len <= max_line_bytes else None), pending_len
