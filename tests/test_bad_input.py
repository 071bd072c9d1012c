"""Every kind of bad input is counted under its reason with the file and offset; --strict fails fast."""

from __future__ import annotations

import gzip
import io
import random
import tracemalloc

import orjson
import pytest
import zstandard
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from common.errors import BadRecordError
from pipeline.document import DropLog
from pipeline.readers import (
    JsonlReader,
    PileReader,
    ReaderConfig,
    ReadStats,
    WarcReader,
    WudaoReader,
    reader_for,
)
from tests.hostile_corpus import jsonl


def read(reader, path, strict: bool = False):
    drops, stats = DropLog(strict=strict), ReadStats()
    docs = list(reader.read(path, drops, stats))
    stats.check()  # records_seen == docs_yielded + dropped, whatever went wrong
    assert sum(stats.dropped.values()) == drops.total()
    return docs, drops, stats


def only_drop(drops: DropLog) -> tuple[str, int | None]:
    assert drops.total() == 1, drops.counts
    (reason,) = drops.counts
    example = drops.examples[reason][0]
    return reason, example.offset




GOOD = orjson.dumps({"text": "a good document", "meta": {"pile_set_name": "Pile-CC"}})


# ---- compressed streams -------------------------------------------------------------------------


def test_truncated_zstd(tmp_path):
    rng = random.Random(0)
    words = ["tide", "pool", "crab", "anemone", "rock", "water", "shell", "kelp", "sand", "fish"]
    lines = [orjson.dumps({"text": " ".join(rng.choices(words, k=200)) + f" {i}"}) for i in range(1000)]
    data, offsets = jsonl(lines)
    compressed = zstandard.ZstdCompressor(level=3).compress(data)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(compressed[: len(compressed) // 2])
    docs, drops, stats = read(PileReader(), path)
    reason, offset = only_drop(drops)
    assert reason == "truncated_zstd"
    assert 0 < len(docs) < len(lines)
    assert [d.offset for d in docs] == offsets[: len(docs)]
    assert offset == offsets[len(docs)]  # the first line that could not be read whole
    assert stats.records_seen == len(docs) + 1
    with pytest.raises(BadRecordError) as error:
        read(PileReader(), path, strict=True)
    assert error.value.reason == "truncated_zstd" and error.value.offset == offset
    assert str(path) in str(error.value) and f"offset {offset}" in str(error.value)


def test_corrupt_zstd_and_gzip(tmp_path):
    data, _ = jsonl([GOOD] * 2000)
    compressed = bytearray(zstandard.ZstdCompressor(level=3).compress(data))
    compressed[len(compressed) // 2 : len(compressed) // 2 + 64] = bytes(64)
    path = tmp_path / "corrupt.jsonl.zst"
    path.write_bytes(bytes(compressed))
    _, drops, _ = read(PileReader(), path)
    assert only_drop(drops)[0] == "corrupt_zstd"

    gz = gzip.compress(data)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gz[: len(gz) // 2])
    docs, drops, _ = read(PileReader(), path)
    reason, offset = only_drop(drops)
    assert reason == "truncated_gzip" and offset == len(docs) * (len(GOOD) + 1)


# ---- JSON lines ---------------------------------------------------------------------------------

BAD_LINES = {
    "invalid_json": b'{"text": "unterminated',
    "invalid_utf8": b'{"text": "caf\xe9 latin-1 byte"}',
    "invalid_utf8 (lone surrogate)": b'{"text": "\\ud800 alone"}',
    "empty_text": b'{"text": "  \\n\\t "}',
    "missing_field": b'{"body": "no text field"}',
    "wrong_type": b'{"text": 42}',
    "wrong_type (array line)": b'["text", "in", "an", "array"]',
    "invalid_json (deep nesting)": b"[" * 100_000 + b"]" * 100_000,
    "invalid_json (trailing data)": b'{"text": "a"} {"text": "b"}',
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_jsonl_lines(tmp_path, case):
    reason = case.split(" ")[0]
    data, offsets = jsonl([GOOD, BAD_LINES[case], GOOD])
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    docs, drops, _ = read(PileReader(), path)
    assert [d.offset for d in docs] == [offsets[0], offsets[2]]
    assert only_drop(drops) == (reason, offsets[1])
    assert drops.examples[reason][0].path == str(path)
    with pytest.raises(BadRecordError, match=rf"{path} at offset {offsets[1]}: {reason}"):
        read(PileReader(), path, strict=True)


def test_mixed_bad_lines_all_counted(tmp_path):
    lines = [GOOD] + list(BAD_LINES.values()) + [GOOD]
    data, offsets = jsonl(lines)
    path = tmp_path / "mixed.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(data))
    docs, drops, stats = read(PileReader(), path)
    assert len(docs) == 2 and drops.total() == len(BAD_LINES) and stats.records_seen == len(lines)
    assert drops.counts == {
        "invalid_json": 3, "invalid_utf8": 2, "empty_text": 1, "missing_field": 1, "wrong_type": 2,
    }  # fmt: skip


def test_binary_garbage_named_jsonl(tmp_path):
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(bytes(range(256)) * 4096)
    docs, drops, stats = read(reader_for(path), path)
    assert docs == [] and only_drop(drops) == ("binary_file", 0) and stats.records_seen == 1
    with pytest.raises(BadRecordError, match="binary_file"):
        read(JsonlReader(), path, strict=True)


def test_hundred_megabyte_line_with_bounded_memory(tmp_path):
    """A 100 MB document is dropped as document_too_large without ever being held whole."""
    path = tmp_path / "huge.jsonl.zst"
    compressor = zstandard.ZstdCompressor(level=1)
    with open(path, "wb") as handle, compressor.stream_writer(handle) as writer:
        writer.write(GOOD + b"\n" + b'{"text": "')
        block = b"x" * (1 << 20)
        for _ in range(100):
            writer.write(block)
        writer.write(b'"}\n' + GOOD + b"\n")
    huge_offset = len(GOOD) + 1
    config = ReaderConfig(max_record_bytes=4 << 20)
    tracemalloc.start()
    docs, drops, stats = read(PileReader(config), path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [d.offset for d in docs] == [0, huge_offset + 10 + (100 << 20) + 3]
    assert only_drop(drops) == ("document_too_large", huge_offset)
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB"
    assert stats.bytes_decoded > 100 << 20


# ---- WuDao --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, reason, offset",
    [
        (b'{"title": "t", "content": "an object, not an array"}', "not_a_json_array", 0),
        (b"\x00\x01binary\xff\xfe" * 100, "not_a_json_array", 0),
        (b"", "not_a_json_array", 0),
        (b'[{"content": "ok"}, "a string", {"content": "ok"}]', "wrong_type", 1),
        (b'[{"content": "ok"}, {"title": "no content"}]', "missing_field", 1),
        (b'[{"content": "ok"}, {"content": ["x"]}]', "wrong_type", 1),
        (b'[{"content": "ok"}, {"content": "ok", "title": 5}]', "wrong_type", 1),
        (b'[{"content": "ok"}, {"content": " \\n "}]', "empty_text", 1),
        (b'[{"content": "ok"}, {"content": "bad \xff byte"}]', "invalid_utf8", 1),
        (b'[{"content": "ok"}, {"content": "x" oops}]', "invalid_json", 1),
        (b'[{"content": "ok"}, {"content": "cut off', "truncated_json", 1),
        (b'[{"content": "ok"}, ' + b"[" * 50_000 + b"]" * 50_000 + b"]", "invalid_json", 1),
    ],
)
def test_bad_wudao(tmp_path, payload, reason, offset):
    path = tmp_path / "wudao.json"
    path.write_bytes(payload)
    docs, drops, _ = read(WudaoReader(), path)
    assert only_drop(drops) == (reason, offset)
    assert all(d.text == "ok" for d in docs)
    with pytest.raises(BadRecordError, match=rf"at offset {offset}: {reason}"):
        read(WudaoReader(), path, strict=True)


def test_wudao_huge_element_bounded_memory(tmp_path):
    path = tmp_path / "huge.json.zst"
    compressor = zstandard.ZstdCompressor(level=1)
    with open(path, "wb") as handle, compressor.stream_writer(handle) as writer:
        writer.write(b'[{"content": "small"}, {"title": "big", "content": "')
        block = '汉字\\"'.encode() * (1 << 17)
        for _ in range(100):
            writer.write(block)
        writer.write(b'"}, {"content": "after"}]')
    tracemalloc.start()
    docs, drops, _ = read(WudaoReader(ReaderConfig(max_record_bytes=4 << 20)), path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [(d.text, d.offset) for d in docs] == [("small", 0), ("after", 2)]
    assert only_drop(drops) == ("document_too_large", 1)
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB"


# ---- WARC ---------------------------------------------------------------------------------------


def warc_bytes(records: list[tuple[str, bytes, str]]) -> bytes:
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    for url, body, content_type in records:
        http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
        writer.write_record(
            writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)
        )
    return buffer.getvalue()


PAGE = b"<html><body><p>Some text of a page.</p></body></html>"


def test_warc_without_text_and_not_html(tmp_path):
    data = warc_bytes(
        [
            ("https://a/", PAGE, "text/html"),
            ("https://b/", b"<html><script>only()</script></html>", "text/html"),
            ("https://c/", b"%PDF-1.4", "application/pdf"),
        ]
    )
    path = tmp_path / "pages.warc.gz"
    path.write_bytes(data)
    docs, drops, _ = read(WarcReader(), path)
    assert [d.text for d in docs] == ["Some text of a page."]
    assert drops.counts == {"warc_no_text": 1, "warc_not_html": 1}
    # Not HTML is policy, not bad input: strict only fails on the page without text.
    with pytest.raises(BadRecordError, match="warc_no_text"):
        read(WarcReader(), path, strict=True)


def test_truncated_and_garbage_warc(tmp_path):
    data = warc_bytes([("https://a/", PAGE, "text/html"), ("https://b/", PAGE * 200, "text/html")])
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(data[: len(data) - 150])
    docs, drops, _ = read(WarcReader(), path)
    assert len(docs) == 1
    reason, offset = only_drop(drops)
    assert reason in ("truncated_warc", "warc_corrupt") and offset > 0

    garbage = tmp_path / "garbage.warc.gz"
    garbage.write_bytes(bytes(range(256)) * 64)
    docs, drops, _ = read(reader_for(garbage), garbage)
    assert docs == [] and only_drop(drops) == ("not_a_warc", 0)
    with pytest.raises(BadRecordError, match=rf"{garbage} at offset 0: not_a_warc"):
        read(WarcReader(), garbage, strict=True)


def test_wet_record_with_invalid_utf8_or_blank(tmp_path):
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    for url, body in (
        ("https://a/", b"good text"),
        ("https://b/", b"bad \xff text"),
        ("https://c/", b"  \n "),
    ):
        writer.write_record(
            writer.create_warc_record(
                url, "conversion", payload=io.BytesIO(body), warc_content_type="text/plain"
            )
        )
    path = tmp_path / "x.warc.wet.gz"
    path.write_bytes(buffer.getvalue())
    docs, drops, _ = read(reader_for(path), path)
    assert [d.text for d in docs] == ["good text"]
    assert drops.counts == {"invalid_utf8": 1, "warc_no_text": 1}


# ---- the hostile corpus (issue 10): every kind of damage at once, reader by reader and through ingest


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    from tests.hostile_corpus import write_hostile_corpus

    root = tmp_path_factory.mktemp("hostile")
    return root, {case.name: case for case in write_hostile_corpus(root)}


HOSTILE_FILES = ["truncated.jsonl.zst", "huge_window.jsonl.zst", "zeros.jsonl.zst", "bomb_line.jsonl.zst",
                 "hundred_mb_line.jsonl", "mixed_damage.jsonl", "utf16.jsonl", "hostile.warc.gz"]


@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_hostile_file_is_counted_by_reason_file_and_offset_in_bounded_memory(hostile, name):
    root, cases = hostile
    case, path = cases[name], root / name
    tracemalloc.start()
    try:
        docs, drops, _ = read(reader_for(path), path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [d.text for d in docs] == case.kept
    assert sum(drops.counts.values()) == len(case.drops)
    seen = sorted((reason, e.offset) for reason, examples in drops.examples.items() for e in examples)
    assert len(seen) == len(case.drops)  # fewer than MAX_EXAMPLES of each: every drop is listed
    for (reason, offset), (want_reason, want_offset) in zip(seen, sorted(case.drops, key=lambda d: (d[0], d[1] or 0))):
        assert reason == want_reason
        assert offset == want_offset if want_offset is not None else isinstance(offset, int) and offset >= 0
    assert all(e.path == str(path) for examples in drops.examples.values() for e in examples)
    assert peak < case.peak_mib * (1 << 20), f"peak {peak / 2**20:.1f} MiB"


def test_hostile_charsets_are_decoded_by_what_the_bytes_are(hostile):
    root, _ = hostile
    docs, _, _ = read(WarcReader(), root / "hostile.warc.gz")
    by_url = {d.meta["url"]: d for d in docs}
    # GBK bytes served as UTF-8, and as iso-8859-1 with <meta charset=gbk>: both read as Chinese.
    for url in ("https://e.example/", "https://f.example/"):
        assert by_url[url].meta["charset"] == "gb18030" and "charset_errors" not in by_url[url].meta


def test_page_no_charset_decodes_is_dropped_not_kept_as_noise(tmp_path, monkeypatch):
    import pipeline.readers.html as html

    monkeypatch.setattr(html, "_guess_charset", lambda body: None)  # a detector with no opinion
    noise = b"<html><body><p>" + bytes(range(0x80, 0x100)) * 3 + b"</p></body></html>"
    data = warc_bytes([("https://a/", PAGE, "text/html"), ("https://b/", noise, "text/html; charset=utf-8")])
    path = tmp_path / "noise.warc.gz"
    path.write_bytes(data)
    docs, drops, _ = read(WarcReader(), path)
    assert [d.text for d in docs] == ["Some text of a page."]
    reason, offset = only_drop(drops)
    assert reason == "warc_bad_charset" and offset > 0


def test_hostile_corpus_through_ingest_accounts_for_every_record(hostile, ray_session, tiny_model, tmp_path):
    """The whole hostile corpus through `run_ingest`: the run finishes, every reader drop is in the
    manifest under its reason with the file and offset, and docs_in = docs_out + sum(dropped)."""
    from collections import Counter

    from pipeline.ingest import IngestConfig, run_ingest
    from shards.verify import verify_directory

    root, cases = hostile
    out = tmp_path / "out"
    manifest = run_ingest(IngestConfig(inputs=[str(root)], out=str(out), tokenizer=str(tiny_model), workers=2),
                          progress=False)
    # Reader reasons only: language, quality and dedup policy drop some of the kept texts too.
    expected = Counter(reason for case in cases.values() for reason, _ in case.drops)
    dropped = Counter()
    for entry in manifest["sources"].values():
        assert entry["docs_in"] == entry["docs_out"] + sum(entry["dropped"].values())
        dropped.update(entry["dropped"])
    assert {reason: dropped[reason] for reason in expected} == dict(expected)
    for name, case in cases.items():
        examples = manifest["drop_examples"].get(name, {})
        listed = sorted((reason, e["offset"]) for reason, rows in examples.items() for e in rows
                        if reason in expected)
        assert len(listed) == len(case.drops), (name, listed)
        assert all(e["path"].endswith(name) for rows in examples.values() for e in rows)
    assert verify_directory(out, progress=False)["ok"]
