"""Which reader reads a file: from its first bytes, then its name; `--format` overrides both.

Content first, because names lie (a `.jsonl` that is gzip, a `.json` that is jsonl):
1. decompress the first 64 KiB by magic bytes (zstd, gzip);
2. `WARC/` at the start -> `wet` if a `WARC-Type: conversion` record or `.wet` in the name, else `warc`;
3. `[` or `{"RECORDS": [` -> `wudao`;
4. `{` -> a jsonl file: `pile` when its first line has `meta.pile_set_name` (or the name says "pile"),
   else `jsonl`;
5. otherwise (binary, empty, unrecognized text) the name decides: `.warc` `.wet` `.json` `.jsonl`
   (compression suffixes `.gz` `.zst` `.zstd` ignored), so that a garbage `.jsonl` still reaches the
   jsonl reader and is counted there (`binary_file`), not rejected before the run; no match: None
   (`reader_for` raises a ConfigError asking for `--format`).
A `.wat` file (metadata only) is a WARC by content and yields no documents (its records are skipped).

Default source names (the `source` of every document, the key of per-source settings): pile -> `pile`,
wudao -> `wudao`, warc/wet/jsonl -> `crawl`.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib

import orjson
import zstandard

from common.errors import ConfigError
from pipeline.readers.base import GZIP_MAGIC, ZSTD_MAGIC, Reader, ReaderConfig
from pipeline.readers.jsonl import JsonlReader
from pipeline.readers.pile import PileReader
from pipeline.readers.warc import WarcReader, WetReader
from pipeline.readers.wudao import WudaoReader

READERS: dict[str, type[Reader]] = {
    "pile": PileReader,
    "wudao": WudaoReader,
    "warc": WarcReader,
    "wet": WetReader,
    "jsonl": JsonlReader,
}
FORMATS = tuple(READERS)
_COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")
_PEEK_BYTES = 65536
_RECORDS_WRAPPER = re.compile(rb'\{\s*"RECORDS"\s*:\s*\[')


def peek(path: str | os.PathLike[str], size: int = _PEEK_BYTES) -> bytes:
    """The first `size` bytes of the file's content, decompressed by magic bytes; b"" if unreadable."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
        handle.seek(0)
        try:
            if magic == ZSTD_MAGIC:
                return zstandard.ZstdDecompressor().stream_reader(handle).read(size)
            if magic[:2] == GZIP_MAGIC:
                return gzip.GzipFile(fileobj=handle).read(size)
        except (zstandard.ZstdError, OSError, EOFError, zlib.error):
            return b""
        return handle.read(size)


def _bare_name(path: str) -> str:
    name = os.path.basename(path).lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _format_from_name(path: str) -> str | None:
    name = _bare_name(path)
    if name.endswith(".wet"):
        return "wet"
    if name.endswith(".warc"):
        return "warc"
    if name.endswith(".json"):
        return "wudao"
    if name.endswith(".jsonl") or name.endswith(".ndjson"):
        return "pile" if "pile" in name else "jsonl"
    return None


def detect_format(path: str | os.PathLike[str], override: str | None = None) -> str | None:
    """The format name of `path` (one of FORMATS), or None when neither content nor name tells.

    `override` (from `--format`) wins when given. None lets a caller that scans a directory skip files
    that are not corpus data (checksums, TSV side files); `reader_for` turns it into a ConfigError.
    """
    path = os.fspath(path)
    if override:
        if override not in READERS:
            raise ConfigError(f"unknown --format {override!r}; choose one of {', '.join(FORMATS)}")
        return override
    head = peek(path)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"WARC/"):
        if b"WARC-Type: conversion" in head or _bare_name(path).endswith(".wet"):
            return "wet"
        return "warc"
    if text.startswith(b"[") or _RECORDS_WRAPPER.match(text):
        return "wudao"
    if text.startswith(b"{"):
        first_line = text.split(b"\n", 1)[0]
        try:
            obj = orjson.loads(first_line)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) and "pile_set_name" in obj["meta"]:
            return "pile"
        by_name = _format_from_name(path)
        if by_name in ("pile", "jsonl"):
            return by_name
        return "jsonl"
    return _format_from_name(path)


def make_reader(format: str, config: ReaderConfig | None = None, source: str | None = None) -> Reader:
    """A reader for a format name; `source` overrides the format's default source name."""
    try:
        cls = READERS[format]
    except KeyError:
        raise ConfigError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}") from None
    return cls(config, source)


def reader_for(
    path: str | os.PathLike[str],
    format: str | None = None,
    config: ReaderConfig | None = None,
    source: str | None = None,
) -> Reader:
    """The reader for one file: detected format (or `format`), with `config` and optional `source`."""
    detected = detect_format(path, format)
    if detected is None:
        raise ConfigError(
            f"{os.fspath(path)}: cannot tell its format from its content or name; "
            f"pass --format {'|'.join(FORMATS)}"
        )
    return make_reader(detected, config, source)
