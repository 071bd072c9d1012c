"""Format readers: raw corpus files -> `Document`s, every bad record counted under a named reason.

    reader = reader_for(path)                # or make_reader("pile"), detect_format(path, override)
    stats = ReadStats()
    for doc in reader.read(path, drops, stats):
        ...
    stats.check()                            # records_seen == docs_yielded + dropped

See docs/INGEST.md for the formats, offsets and the table of drop reasons.
"""

from pipeline.readers.base import HtmlConfig, Reader, ReaderConfig, ReadStats
from pipeline.readers.detect import FORMATS, READERS, detect_format, make_reader, reader_for
from pipeline.readers.jsonl import JsonlReader
from pipeline.readers.pile import PileReader
from pipeline.readers.warc import WarcReader, WetReader
from pipeline.readers.wudao import WudaoReader

__all__ = [
    "FORMATS",
    "READERS",
    "HtmlConfig",
    "JsonlReader",
    "PileReader",
    "ReadStats",
    "Reader",
    "ReaderConfig",
    "WarcReader",
    "WetReader",
    "WudaoReader",
    "detect_format",
    "make_reader",
    "reader_for",
]
