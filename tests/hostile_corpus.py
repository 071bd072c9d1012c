"""A generator of hostile raw input (issue 10): one file per kind of damage, each with what must happen.

`write_hostile_corpus(dir)` writes the files and returns, per file, the documents that must survive
the reader and the drops it must count as (reason, offset) pairs, offset None where the exact byte is
the decoder's business (a truncated stream). Sizes are chosen to prove bounded memory (a 256 MiB
decompressed line, a 64 MiB WARC header) while the whole corpus stays about 3 MB on disk.
"""

from __future__ import annotations

import dataclasses
import io
import random
from pathlib import Path

import orjson
import zstandard
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

MiB = 1 << 20
ENGLISH = [
    "The harbour was quiet in the early morning, and the fishing boats rocked gently at their moorings.",
    "A committee of volunteers repaired the old library roof before the winter storms arrived this year.",
    "Researchers measured the river temperature every hour and published the data for anyone to study.",
]
CHINESE = "中华人民共和国是一个历史悠久的国家，人民勤劳勇敢，文化源远流长，山川壮丽。"


@dataclasses.dataclass
class Hostile:
    name: str
    kept: list[str]
    drops: list[tuple[str, int | None]]
    """(reason, offset) for every record the reader must drop; offset None: any offset."""
    peak_mib: float = 24.0
    """Upper bound on the reader's Python heap while reading the file (tracemalloc): a record is held
    up to `max_record_bytes` (16 MiB) plus a read chunk before it is known to be too large."""


def _line(text: str) -> bytes:
    return orjson.dumps({"text": text})


def jsonl(lines: list[bytes]) -> tuple[bytes, list[int]]:
    """Lines joined as a jsonl file, and the byte offset of each line (the readers' record offsets)."""
    offsets, position = [], 0
    for line in lines:
        offsets.append(position)
        position += len(line) + 1
    return b"\n".join(lines) + b"\n", offsets


def _zstd_stream(parts: list[bytes], repeat: dict[int, int] | None = None, **params: int) -> bytes:
    """Compress `parts` as one streamed frame (no content size in the header), each part ending a zstd
    block; part i written `repeat[i]` times so a tiny file can decompress to hundreds of MiB."""
    compressor = zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters.from_level(3, **params)
    )
    out = io.BytesIO()
    with compressor.stream_writer(out, closefd=False) as stream:
        for i, part in enumerate(parts):
            for _ in range((repeat or {}).get(i, 1)):
                stream.write(part)
            stream.flush(zstandard.FLUSH_BLOCK)
    return out.getvalue()


def _warc(records: list[tuple[str, bytes, list[tuple[str, str]]]]) -> tuple[bytes, list[int]]:
    """Response records, gzip per record; returns the bytes and each record's offset in the file."""
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    offsets = []
    for url, body, headers in records:
        offsets.append(buffer.tell())
        http = StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))
    return buffer.getvalue(), offsets


def _page(text: str) -> str:
    return f"<html><body><p>{text}</p></body></html>"


def write_hostile_corpus(root: Path) -> list[Hostile]:
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Hostile] = []
    good = ENGLISH[0]

    def put(name: str, data: bytes, case: Hostile) -> None:
        (root / name).write_bytes(data)
        cases.append(case)

    # zstd whose stream stops inside a frame: the lines before the cut survive.
    rng = random.Random(0)
    noise = " ".join(rng.choice(ENGLISH).split()[rng.randrange(15)] + str(rng.randrange(10**6)) for _ in range(8000))
    whole = _zstd_stream([b"\n".join(_line(t) for t in ENGLISH) + b"\n", _line(noise) + b"\n"])
    put("truncated.jsonl.zst", whole[: len(whole) - 200],
        Hostile("truncated.jsonl.zst", ENGLISH, [("truncated_zstd", None)]))

    # A frame that declares a 1 GiB window: refused before any allocation.
    put("huge_window.jsonl.zst", _zstd_stream([_line(good) + b"\n"], window_log=30),
        Hostile("huge_window.jsonl.zst", [], [("corrupt_zstd", 0)]))

    # Zip bombs: 256 MiB of zeros in a few KB (binary: one drop for the file), and a 256 MiB JSON line
    # between two good ones (the line is skipped as it streams past, the others survive).
    put("zeros.jsonl.zst", _zstd_stream([b"\0" * MiB], repeat={0: 256}),
        Hostile("zeros.jsonl.zst", [], [("binary_file", 0)]))
    head = _line(ENGLISH[0]) + b"\n"
    put("bomb_line.jsonl.zst",
        _zstd_stream([head, b'{"text": "', b"a" * MiB, b'"}\n', _line(ENGLISH[1]) + b"\n"], repeat={2: 256}),
        Hostile("bomb_line.jsonl.zst", ENGLISH[:2], [("document_too_large", len(head))]))

    # A 100 MB single line, uncompressed.
    big = b'{"text": "' + b"word " * (20 * 1000 * 1000) + b'"}'
    data, offsets = jsonl([_line(good), big, _line(ENGLISH[2])])
    put("hundred_mb_line.jsonl", data,
        Hostile("hundred_mb_line.jsonl", [good, ENGLISH[2]], [("document_too_large", offsets[1])]))
    del big, data

    # Invalid UTF-8, raw NUL bytes, other encodings, deep nesting: one drop per line, the rest survive.
    lines = [
        _line(good),
        b'{"text": "caf\xe9 au lait"}',  # Latin-1
        ('{"text": "' + CHINESE + '"}').encode("gbk"),  # GBK
        b'{"text": "nul \x00 inside"}',  # a raw NUL: not JSON
        b"[" * 100_000 + b"]" * 100_000,  # nesting far past any parser's limit
        b'{"text": "bad \xff\xfe bytes"}',
        orjson.dumps({"text": "escaped \u0000 NUL survives the reader"}),
        _line(ENGLISH[1]),
    ]
    data, offsets = jsonl(lines)
    put("mixed_damage.jsonl", data, Hostile(
        "mixed_damage.jsonl",
        [good, "escaped \u0000 NUL survives the reader", ENGLISH[1]],
        [("invalid_utf8", offsets[1]), ("invalid_utf8", offsets[2]), ("invalid_json", offsets[3]),
         ("invalid_json", offsets[4]), ("invalid_utf8", offsets[5])],
    ))

    # A whole file in UTF-16: not UTF-8 text at all.
    put("utf16.jsonl", b"\n".join(_line(t) for t in ENGLISH).decode().encode("utf-16"),
        Hostile("utf16.jsonl", [], [("binary_file", 0)]))

    # WARC: a 64 MiB HTTP header line, 200k header lines, a page of scripts only, pages whose declared
    # charset lies (decoded right all the same).
    html = [("Content-Type", "text/html")]
    records = [
        ("https://a.example/", _page(good).encode(), html),
        ("https://b.example/", _page(ENGLISH[1]).encode(), [*html, ("X-Big", "a" * (64 * MiB))]),
        ("https://c.example/", _page(ENGLISH[1]).encode(), [*html, *((f"X-H{i}", "v") for i in range(200_000))]),
        ("https://d.example/", b"<html><head><script>var x = 1;</script></head><body><script>go()</script>"
                               b"<style>p{}</style></body></html>", html),
        ("https://e.example/", _page(CHINESE).encode("gbk"), [("Content-Type", "text/html; charset=utf-8")]),
        ("https://f.example/", f"<html><head><meta charset='gbk'></head><body><p>{CHINESE}</p></body></html>"
                               .encode("gbk"), [("Content-Type", "text/html; charset=iso-8859-1")]),
        ("https://h.example/", _page(ENGLISH[2]).encode(), html),
    ]
    data, offsets = _warc(records)
    put("hostile.warc.gz", data, Hostile(
        "hostile.warc.gz",
        [good, CHINESE, CHINESE, ENGLISH[2]],
        [("warc_header_too_large", offsets[1]), ("warc_header_too_large", offsets[2]),
         ("warc_no_text", offsets[3])],
        peak_mib=96.0,  # warcio inflates a gzip member's highly compressible block whole (~16 MiB at a time)
    ))
    return cases
