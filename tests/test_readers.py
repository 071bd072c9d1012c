"""Readers yield exactly the expected documents, with stable offsets, from files written here."""

from __future__ import annotations

import gzip
import io
import json

import orjson
import pytest
import zstandard
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from common.errors import ConfigError
from pipeline.document import DropLog
from pipeline.readers import (
    JsonlReader,
    PileReader,
    ReaderConfig,
    ReadStats,
    WarcReader,
    WudaoReader,
    detect_format,
    make_reader,
    reader_for,
)
from pipeline.readers.html import declared_charset, decode_html, html_to_text
from pipeline.readers.wudao import UNPARSED, iter_array_elements

ENGLISH_HTML = """<!DOCTYPE html>
<html><head><title>Tide Pools</title><style>p { color: red; }</style>
<script>var x = "<p>not text</p>";</script></head>
<body>
<nav><a href="/">Home</a> <a href="/about">About</a></nav>
<article>
<h1>Life in the Tide Pools</h1>
<p>Tide pools are rocky hollows that hold sea water when the tide goes out.
   They are home to anemones, crabs and small fish.</p>
<p>Visitors should step carefully &amp; leave every creature where they found it.</p>
<pre>  indented   code</pre>
</article>
<footer>Copyright 2024 Example Inc.</footer>
</body></html>"""

CHINESE_HTML = """<html><head><meta http-equiv="Content-Type" content="text/html; charset=gb2312">
<title>潮汐池</title></head><body>
<div>潮汐池是海边岩石上的小水洼，退潮时仍然保存着海水。</div>
<p>这里生活着海葵、螃蟹和小鱼，游客应该小心行走，不要带走任何生物。</p>
</body></html>"""


def lines_with_offsets(records: list[bytes]) -> tuple[bytes, list[int]]:
    offsets, position = [], 0
    for record in records:
        offsets.append(position)
        position += len(record) + 1
    return b"\n".join(records) + b"\n", offsets


def read_all(reader, path, strict: bool = False):
    drops, stats = DropLog(strict=strict), ReadStats()
    docs = list(reader.read(path, drops, stats))
    stats.check()
    return docs, drops, stats


# ---- Pile / jsonl -------------------------------------------------------------------------------


def test_pile_jsonl_zst(tmp_path):
    records = [
        orjson.dumps({"text": "First document.\nWith two lines.", "meta": {"pile_set_name": "Pile-CC"}}),
        orjson.dumps({"text": "Second 文档 with unicode ✓", "meta": {"pile_set_name": "Wikipedia (en)"}}),
        orjson.dumps({"text": "Third", "meta": "not a dict"}),
    ]
    data, offsets = lines_with_offsets(records)
    path = tmp_path / "sample.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))

    assert detect_format(path) == "pile"
    docs, drops, stats = read_all(reader_for(path), path)
    assert [d.text for d in docs] == [
        "First document.\nWith two lines.",
        "Second 文档 with unicode ✓",
        "Third",
    ]
    assert [d.offset for d in docs] == offsets
    assert [d.meta for d in docs] == [{"pile_set_name": "Pile-CC"}, {"pile_set_name": "Wikipedia (en)"}, {}]
    assert {d.source for d in docs} == {"pile"}
    assert {d.input_file for d in docs} == {str(path)}
    assert docs[0].doc_id == f"pile:{path}:0"
    assert drops.total() == 0
    assert (
        stats.records_seen == 3
        and stats.bytes_decoded == len(data)
        and stats.bytes_read == path.stat().st_size
    )
    # Offsets point at the line in the decompressed stream.
    for doc in docs:
        line = data[doc.offset :].split(b"\n", 1)[0]
        assert orjson.loads(line)["text"] == doc.text


def test_multi_frame_zstd_and_small_chunks(tmp_path):
    records = [orjson.dumps({"text": f"document number {i} " * (i % 7 + 1)}) for i in range(200)]
    data, offsets = lines_with_offsets(records)
    half = offsets[100]
    path = tmp_path / "frames.jsonl.zst"
    compressor = zstandard.ZstdCompressor(level=1)
    path.write_bytes(compressor.compress(data[:half]) + compressor.compress(data[half:]))
    for chunk in (7, 64, 1 << 20):
        docs, drops, _ = read_all(PileReader(ReaderConfig(chunk_bytes=chunk, sniff_bytes=16)), path)
        assert [d.offset for d in docs] == offsets
        assert [d.text for d in docs] == [orjson.loads(r)["text"] for r in records]
        assert drops.total() == 0


def test_gzip_content_named_jsonl_and_url_meta(tmp_path):
    records = [
        orjson.dumps({"url": "https://a.example/1", "text": "alpha"}),
        b"",
        orjson.dumps({"text": "beta"}),
    ]
    data, offsets = lines_with_offsets(records)
    path = tmp_path / "crawl.jsonl"
    path.write_bytes(gzip.compress(data))
    assert detect_format(path) == "jsonl"
    docs, drops, stats = read_all(reader_for(path), path)
    assert [(d.text, d.offset, d.meta, d.source) for d in docs] == [
        ("alpha", offsets[0], {"url": "https://a.example/1"}, "crawl"),
        ("beta", offsets[2], {}, "crawl"),
    ]
    assert stats.skipped["blank_line"] == 1 and drops.total() == 0


def test_last_line_without_newline(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "b"}')
    docs, _, _ = read_all(JsonlReader(), path)
    assert [(d.text, d.offset) for d in docs] == [("a", 0), ("b", 14)]


# ---- WuDao --------------------------------------------------------------------------------------

WUDAO_RECORDS = [
    {
        "id": 1,
        "uniqueKey": "k1",
        "titleUkey": "t1",
        "dataType": "科技",
        "title": "标题一",
        "content": "正文一。",
    },
    {"id": 2, "uniqueKey": "k2", "titleUkey": "", "dataType": "", "title": "", "content": "没有标题的正文。"},
    {
        "id": 3,
        "uniqueKey": "k3",
        "titleUkey": "",
        "dataType": "新闻",
        "title": "  ",
        "content": 'escaped "},{" and \\ \n 内容',
    },
]


@pytest.mark.parametrize("layout", ["compact", "indented", "records"])
def test_wudao_array_layouts(tmp_path, layout):
    if layout == "records":
        payload = json.dumps({"RECORDS": WUDAO_RECORDS}, ensure_ascii=False, indent=4)
    else:
        payload = json.dumps(WUDAO_RECORDS, ensure_ascii=False, indent=4 if layout == "indented" else None)
    path = tmp_path / f"wudao_{layout}.json"
    path.write_text(payload, encoding="utf-8")
    assert detect_format(path) == "wudao"
    docs, drops, stats = read_all(reader_for(path), path)
    assert [d.text for d in docs] == ["标题一\n正文一。", "没有标题的正文。", 'escaped "},{" and \\ \n 内容']
    assert [d.offset for d in docs] == [0, 1, 2]
    assert [d.meta for d in docs] == [{"dataType": "科技", "id": 1}, {"id": 2}, {"dataType": "新闻", "id": 3}]
    assert {d.source for d in docs} == {"wudao"} and drops.total() == 0 and stats.records_seen == 3


def test_wudao_large_file_fast_and_slow_paths_agree(tmp_path):
    records = []
    for i in range(400):
        content = f'第{i}条记录，内容包含转义\\"引号\\"和}}, {{括号。' * (i % 5 + 1)
        records.append(
            {
                "id": i,
                "title": "" if i % 3 else f"标题{i}",
                "content": content,
                "extra": {"nested": [i, {"k": "]"}]},
            }
        )
    path = tmp_path / "big.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    expected = [(f"{r['title']}\n{r['content']}" if r["title"] else r["content"]) for r in records]
    for chunk in (5, 333, 1 << 20):  # tiny chunks stress escapes and boundaries split across reads
        docs, drops, _ = read_all(WudaoReader(ReaderConfig(chunk_bytes=chunk)), path)
        assert [d.text for d in docs] == expected, chunk
        assert [d.offset for d in docs] == list(range(400))
        assert drops.total() == 0


def test_array_splitter_yields_raw_elements_for_bad_runs():
    class Stream:
        def __init__(self, data: bytes) -> None:
            self.buffer = io.BytesIO(data)

        def read(self, size: int) -> bytes:
            return self.buffer.read(size)

    good = [orjson.dumps({"content": "x" * 100, "i": i}) for i in range(100)]
    elements = good[:50] + [b'{"content": "broken" ]'] + good[50:]
    data = b"[" + b",\n".join(elements) + b"]"
    out = list(iter_array_elements(Stream(data), 1 << 20, 1 << 20))
    assert [index for index, _, _ in out] == list(range(101))
    unparsed = [index for index, raw, value in out if value is UNPARSED]
    assert 50 in unparsed
    broken = next(raw for index, raw, _ in out if index == 50)
    assert broken == b'{"content": "broken" ]'


# ---- WARC / WET ---------------------------------------------------------------------------------


def write_warc(path, records):
    """records: (kind, url, payload bytes, http headers or None)."""
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        writer.write_record(writer.create_warcinfo_record(str(path), {"software": "test"}))
        for kind, url, payload, headers in records:
            if kind == "response":
                http = StatusAndHeaders(
                    headers.get("status", "200 OK"), headers.get("fields", []), protocol="HTTP/1.1"
                )
                record = writer.create_warc_record(
                    url, "response", payload=io.BytesIO(payload), http_headers=http
                )
            elif kind == "request":
                http = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.com")], is_http_request=True)
                record = writer.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=http)
            else:  # conversion (WET) or other non-HTTP records
                record = writer.create_warc_record(
                    url, kind, payload=io.BytesIO(payload), warc_content_type="text/plain",
                    warc_headers_dict={"WARC-Identified-Content-Language": "eng"},
                )  # fmt: skip
            writer.write_record(record)


def record_offsets(path) -> dict[str, int]:
    """Target URI -> record offset, by warcio itself (the reference for the reader's offsets)."""
    offsets = {}
    with open(path, "rb") as handle:
        iterator = ArchiveIterator(handle)
        for record in iterator:
            if record.rec_type in ("response", "conversion"):
                url = record.rec_headers.get_header("WARC-Target-URI")
                iterator.read_to_end()
                offsets[url] = iterator.get_record_offset()
    return offsets


@pytest.fixture
def crawl_warc(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    html_type = [("Content-Type", "text/html; charset=utf-8")]
    write_warc(
        path,
        [
            ("request", "https://en.example/tide", b"", None),
            ("response", "https://en.example/tide", ENGLISH_HTML.encode("utf-8"), {"fields": html_type}),
            (
                "response",
                "https://zh.example/tide",
                CHINESE_HTML.encode("gbk"),
                {"fields": [("Content-Type", "text/html")]},
            ),
            (
                "response",
                "https://img.example/a.png",
                b"\x89PNG\r\n\x1a\n" + bytes(64),
                {"fields": [("Content-Type", "image/png")]},
            ),
            ("response", "https://empty.example/", b"", {"fields": html_type}),
            (
                "response",
                "https://missing.example/",
                b"<html><body>gone</body></html>",
                {"status": "404 Not Found", "fields": html_type},
            ),
        ],
    )
    return path


def test_warc_responses(crawl_warc):
    assert detect_format(crawl_warc) == "warc"
    docs, drops, stats = read_all(reader_for(crawl_warc), crawl_warc)
    offsets = record_offsets(crawl_warc)
    assert [d.meta["url"] for d in docs] == ["https://en.example/tide", "https://zh.example/tide"]
    assert [d.offset for d in docs] == [
        offsets["https://en.example/tide"],
        offsets["https://zh.example/tide"],
    ]
    english, chinese = docs
    assert english.text.split("\n") == [
        "Life in the Tide Pools",
        "Tide pools are rocky hollows that hold sea water when the tide goes out. They are home to anemones, crabs and small fish.",
        "Visitors should step carefully & leave every creature where they found it.",
        "  indented   code",
    ]
    assert english.meta["title"] == "Tide Pools" and english.meta["charset"] == "utf-8"
    assert chinese.meta["charset"] == "gb18030" and chinese.meta["title"] == "潮汐池"
    assert chinese.text == (
        "潮汐池是海边岩石上的小水洼，退潮时仍然保存着海水。\n这里生活着海葵、螃蟹和小鱼，游客应该小心行走，不要带走任何生物。"
    )
    assert {d.source for d in docs} == {"crawl"}
    assert dict(drops.counts) == {"warc_not_html": 1, "warc_no_text": 1, "warc_http_status": 1}
    assert drops.examples["warc_not_html"][0].offset == offsets["https://img.example/a.png"]
    assert drops.examples["warc_no_text"][0].offset == offsets["https://empty.example/"]
    assert stats.skipped == {"warcinfo": 1, "request": 1}
    assert stats.records_seen == 5


def test_wet_conversion_records(tmp_path):
    path = tmp_path / "crawl.warc.wet.gz"
    text = "Plain text of a page.\nSecond line of it."
    write_warc(path, [("conversion", "https://wet.example/", text.encode("utf-8"), None)])
    assert detect_format(path) == "wet"
    docs, drops, _ = read_all(reader_for(path), path)
    assert [(d.text, d.offset, d.meta) for d in docs] == [
        (
            text,
            record_offsets(path)["https://wet.example/"],
            {"url": "https://wet.example/", "identified_language": "eng"},
        )
    ]
    assert drops.total() == 0


# ---- HTML ---------------------------------------------------------------------------------------


def test_charset_detection():
    gbk_page = CHINESE_HTML.encode("gbk")
    assert declared_charset(gbk_page, None) == "gb18030"
    assert decode_html(gbk_page)[:2] == (CHINESE_HTML, "gb18030")
    # The HTTP header wins over <meta>; a UTF-8 page mislabeled as gb2312 is still decoded as UTF-8.
    utf8_page = CHINESE_HTML.encode("utf-8")
    assert decode_html(utf8_page, "text/html; charset=utf-8")[:2] == (CHINESE_HTML, "utf-8")
    assert decode_html(utf8_page)[:2] == (CHINESE_HTML, "utf-8")
    # Undeclared GBK bytes are not UTF-8: detected, not mangled.
    undeclared = "<p>这是一个没有声明字符集的中文网页，内容使用国标扩展编码保存。</p>".encode("gbk")
    text, charset, errors = decode_html(undeclared)
    assert "中文网页" in text and not errors and charset in ("gb18030", "gbk", "gb2312", "big5hkscs", "cp936")
    assert decode_html("<p>café</p>".encode("cp1252"), "text/html; charset=iso-8859-1")[0] == "<p>café</p>"


def test_html_to_text_rules():
    text, title = html_to_text(
        "<title>T &amp; t</title><p>One   two\nthree</p><ul><li><a href=x>Home</a></li><li>Item with <a>a link</a> inside it</li></ul>"
        "<table><tr><td>a</td><td>b</td></tr></table><header>site menu</header><article><header>Headline</header></article>"
        "<!-- comment --><noscript>enable js</noscript><p>x &lt; y &#20013;</p>"
    )
    assert title == "T & t"
    assert text.split("\n") == ["One two three", "Item with a link inside it", "a b", "Headline", "x < y 中"]
    # An unclosed <nav> would swallow the page: it is extracted again without boilerplate removal.
    assert html_to_text("<nav>menu<p>content</p>")[0] == "menu\ncontent"
    # An unclosed <head> ends at <body>.
    assert html_to_text("<head><title>t</title><body><p>text</p>")[0] == "text"
    # A '<' with no closing '>' afterwards is text.
    assert html_to_text("<p>a < b")[0] == "a < b"


# ---- detection ----------------------------------------------------------------------------------


def test_detect_format_by_content_then_name(tmp_path):
    jsonl_named_json = tmp_path / "lines.json"
    jsonl_named_json.write_bytes(b'{"text": "a", "meta": {"pile_set_name": "Pile-CC"}}\n')
    assert detect_format(jsonl_named_json) == "pile"
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(bytes(range(256)) * 4)
    assert detect_format(garbage) == "jsonl"
    assert detect_format(garbage, "wudao") == "wudao"
    unknown = tmp_path / "data.bin"
    unknown.write_bytes(bytes(range(256)))
    assert detect_format(unknown) is None  # a directory scan skips it
    with pytest.raises(ConfigError, match="--format"):
        reader_for(unknown)
    side_file = tmp_path / "sources.tsv"
    side_file.write_text("line\tsource\n1\tx.jsonl:1\n")
    assert detect_format(side_file) is None
    with pytest.raises(ConfigError, match="unknown --format"):
        detect_format(garbage, "csv")
    assert type(make_reader("wet")).__name__ == "WetReader"
    assert make_reader("pile", source="books").source == "books"


def test_totals_accumulate_over_files(tmp_path):
    reader = JsonlReader()
    paths = []
    for i in range(3):
        path = tmp_path / f"part{i}.jsonl"
        path.write_bytes(b'{"text": "x"}\n{"text": ""}\n')
        paths.append(path)
    drops = DropLog()
    docs = list(reader.run(paths, drops))
    assert len(docs) == 3
    assert reader.totals.records_seen == 6 and reader.totals.docs_yielded == 3
    assert reader.totals.dropped == {"empty_text": 3} and drops.counts == {"empty_text": 3}
    reader.totals.check()


def test_warc_reader_reads_wet_records_too(tmp_path):
    path = tmp_path / "mixed.warc.gz"
    write_warc(path, [("conversion", "https://wet.example/", b"text", None)])
    docs, _, _ = read_all(WarcReader(), path)
    assert [d.text for d in docs] == ["text"]
