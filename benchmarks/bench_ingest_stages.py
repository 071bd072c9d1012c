"""Per-stage ingest throughput on one core, each stage beside a bare baseline on the same input.

    python -m benchmarks.bench_ingest_stages [--quick] [--json]

Stages (DESIGN §8): read + parse Pile jsonl.zst (target >= 200 MB/s; baseline: a bare `zstandard`
stream + `orjson` line loop), WuDao JSON (baseline: `orjson.loads` of the whole file in memory, the
upper bound), WARC (baseline: warcio iterating the records and reading their payloads, no HTML work),
normalization, language ID (target >= 0.9x the raw fastText `predict` call on the same texts, model
loaded once), quality filters (beside the same filters called one document at a time), tokenize
(`GLMTokenizer.encode_batch` in batches of 256 documents, as the ingest workers call it, beside a bare
SentencePiece `encode(list)` of the same batches with the same model: an 8k-piece unigram model trained
here on the benchmark's own texts, as bench_pipeline does).

Inputs: /work/shared/corpora (pile/pile_sample.jsonl.zst, wudao/*.json, crawl/*.warc.gz) when present,
generated data otherwise. MB are 10^6 bytes of UTF-8 text (read stages: decompressed bytes scanned).
Timings are CPU seconds, the best of several interleaved repetitions: the machine is shared, and the
minimum is the least disturbed run.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson
import zstandard
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.document import DropLog
from pipeline.langid import LanguageIdentifier
from pipeline.normalize import normalize
from pipeline.quality import QualityFilter
from pipeline.readers import PileReader, WarcReader, WudaoReader
from pipeline.tokenizer import GLMTokenizer, train_tokenizer

CORPORA = os.environ.get("GLM_CORPUS_CORPORA", "/work/shared/corpora")
TOKENIZE_BATCH = 256
"""Documents per `encode_batch` call: the ingest stage's default `batch_size`."""
TOKENIZER_VOCAB = 8000


def best_seconds(functions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Run each function `repeats` times, interleaved; the least CPU time of each.

    CPU seconds of this (single-threaded) process are the time spent on one core; unlike wall time
    they do not count the moments another user's process held the core.
    """
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.process_time()
            function()
            best[name] = min(best[name], time.process_time() - started)
    return best


def generated_inputs(directory: str) -> dict[str, list[str]]:
    """Synthetic stand-ins for the shared corpora (random English-like and Chinese-like documents)."""
    rng = random.Random(0)
    words = [
        "".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(rng.randint(2, 9))) for _ in range(3000)
    ] + ["the", "of", "and", "to", "with", "that"] * 50
    hanzi = [chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(3000)] + list("的了是在和有") * 50

    def english() -> str:
        return "\n\n".join(
            " ".join(rng.choices(words, k=rng.randint(40, 200))) + "." for _ in range(rng.randint(2, 12))
        )

    def chinese() -> str:
        return "\n".join(
            "".join(rng.choices(hanzi, k=rng.randint(40, 300))) + "。" for _ in range(rng.randint(1, 6))
        )

    pile = os.path.join(directory, "pile.jsonl.zst")
    lines = b"".join(
        orjson.dumps({"text": english(), "meta": {"pile_set_name": "Pile-CC"}}) + b"\n" for _ in range(2000)
    )
    with open(pile, "wb") as handle:
        handle.write(zstandard.ZstdCompressor(level=3).compress(lines))
    wudao = os.path.join(directory, "wudao.json")
    with open(wudao, "w", encoding="utf-8") as handle:
        records = [{"id": i, "title": "", "dataType": "新闻", "content": chinese()} for i in range(3000)]
        json.dump(records, handle, ensure_ascii=False)
    crawl = os.path.join(directory, "crawl.warc.gz")
    with open(crawl, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        for i in range(200):
            body = "<html><head><script>var a = 1;</script></head><body><nav><a href=/>home</a></nav>"
            body += (
                "".join(f"<p>{english() if i % 2 else chinese()}</p>" for _ in range(3)) + "</body></html>"
            )
            http = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
            )
            writer.write_record(
                writer.create_warc_record(
                    f"https://e/{i}", "response", payload=io.BytesIO(body.encode()), http_headers=http
                )
            )
    return {"pile": [pile], "wudao": [wudao], "crawl": [crawl]}


def shared_inputs() -> dict[str, list[str]] | None:
    pile = os.path.join(CORPORA, "pile", "pile_sample.jsonl.zst")
    wudao = sorted(glob.glob(os.path.join(CORPORA, "wudao", "*.json")))
    crawl = sorted(glob.glob(os.path.join(CORPORA, "crawl", "*.warc.gz")))
    if not (os.path.exists(pile) and wudao and crawl):
        return None
    return {"pile": [pile], "wudao": wudao, "crawl": crawl}


def row(
    stage: str,
    data: str,
    megabytes: float,
    docs: int,
    ours: float,
    baseline_name: str,
    baseline: float | None,
    target: str,
) -> dict[str, Any]:
    return {
        "stage": stage,
        "input": data,
        "MB": round(megabytes, 2),
        "docs": docs,
        "ours_MB_s": round(megabytes / ours, 1),
        "ours_docs_s": round(docs / ours),
        "baseline": baseline_name,
        "baseline_MB_s": round(megabytes / baseline, 1) if baseline else None,
        "ratio": round(baseline / ours, 2) if baseline else None,
        "target": target,
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Time every stage; one row per stage (ratio = ours / baseline throughput)."""
    repeats = 3 if quick else 7
    temporary = None
    inputs = shared_inputs()
    source_name = "shared corpora"
    if inputs is None:
        temporary = tempfile.TemporaryDirectory()
        inputs = generated_inputs(temporary.name)
        source_name = "generated"
    rows: list[dict[str, Any]] = []
    try:
        # ---- read + parse -----------------------------------------------------------------------
        pile_path = inputs["pile"][0]

        def pile_ours() -> int:
            return sum(1 for _ in PileReader().read(pile_path, DropLog()))

        def pile_bare() -> int:
            count = 0
            with open(pile_path, "rb") as handle:
                for line in io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(handle), 1 << 20):
                    orjson.loads(line)
                    count += 1
            return count

        pile_docs = list(PileReader().read(pile_path, DropLog()))
        with open(pile_path, "rb") as handle:
            pile_bytes = len(zstandard.ZstdDecompressor().stream_reader(handle).read())
        times = best_seconds({"ours": pile_ours, "bare": pile_bare}, repeats)
        rows.append(row("read+parse Pile jsonl.zst", source_name, pile_bytes / 1e6, len(pile_docs), times["ours"],
                        "zstandard stream + orjson lines", times["bare"], ">= 200 MB/s"))  # fmt: skip

        wudao_paths = inputs["wudao"]
        wudao_bytes = sum(os.path.getsize(p) for p in wudao_paths)

        def wudao_ours() -> None:
            for path in wudao_paths:
                for _ in WudaoReader().read(path, DropLog()):
                    pass

        def wudao_bare() -> None:
            for path in wudao_paths:
                with open(path, "rb") as handle:
                    orjson.loads(handle.read())

        wudao_docs = [d for path in wudao_paths for d in WudaoReader().read(path, DropLog())]
        times = best_seconds({"ours": wudao_ours, "bare": wudao_bare}, repeats)
        rows.append(row("read+parse WuDao JSON array", source_name, wudao_bytes / 1e6, len(wudao_docs), times["ours"],
                        "orjson.loads(whole file)", times["bare"], "streaming, bounded memory"))  # fmt: skip

        crawl_paths = inputs["crawl"]

        def crawl_ours() -> None:
            for path in crawl_paths:
                for _ in WarcReader().read(path, DropLog()):
                    pass

        def crawl_bare() -> int:
            payload = 0
            for path in crawl_paths:
                with open(path, "rb") as handle:
                    for record in ArchiveIterator(handle):
                        if record.rec_type == "response":
                            payload += len(record.content_stream().read())
            return payload

        crawl_docs = [d for path in crawl_paths for d in WarcReader().read(path, DropLog())]
        crawl_payload = crawl_bare()
        times = best_seconds({"ours": crawl_ours, "bare": crawl_bare}, repeats)
        rows.append(row("read WARC -> HTML main text", source_name, crawl_payload / 1e6, len(crawl_docs), times["ours"],
                        "warcio payload read only", times["bare"], ""))  # fmt: skip

        # ---- per-document stages on the texts of all sources ------------------------------------
        raw_texts = [d.text for d in pile_docs + wudao_docs + crawl_docs]
        texts = [normalize(t) for t in raw_texts]
        text_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        import unicodedata

        times = best_seconds(
            {
                "ours": lambda: [normalize(t) for t in raw_texts],
                "nfc": lambda: [unicodedata.normalize("NFC", t) for t in raw_texts],
            },
            repeats,
        )
        rows.append(row("normalize", source_name, text_mb, len(texts), times["ours"],
                        "unicodedata.normalize NFC only", times["nfc"], ""))  # fmt: skip

        identifier = LanguageIdentifier()
        identifier.identify(["load the model"])
        model = identifier._model
        prepared = [identifier.prepare(t) for t in texts]  # what identify() hands to fastText
        plain = [t.replace("\n", " ") for t in texts]  # one line per document, no CJK spacing

        def raw_predict(lines: list[str]) -> Callable[[], None]:
            def predict_all() -> None:
                predict = model.predict
                for line in lines:
                    predict(line, 1, 0.0, "replace")

            return predict_all

        times = best_seconds(
            {
                "ours": lambda: identifier.identify(texts),
                "raw": raw_predict(prepared),
                "plain": raw_predict(plain),
                "labels": lambda: model.multilinePredict(prepared, 1, 0.0, "replace"),
            },
            repeats,
        )
        rows.append(row("language ID: identify()", source_name, text_mb, len(texts), times["ours"],
                        "raw fastText f.predict, same lines", times["raw"], ">= 0.9x raw"))  # fmt: skip
        rows.append(row("  identify() vs unspaced text", source_name, text_mb, len(texts), times["ours"],
                        "raw f.predict, newlines only", times["plain"], "info"))  # fmt: skip
        rows.append(row("  fastText multilinePredict", source_name, text_mb, len(texts), times["labels"],
                        "(labels only, no scores)", None, "info"))  # fmt: skip

        quality = QualityFilter()
        langs = [lang for lang, _ in identifier.identify(texts)]
        sources = ["pile"] * len(pile_docs) + ["wudao"] * len(wudao_docs) + ["crawl"] * len(crawl_docs)
        quality.check(texts[0], langs[0], sources[0])  # build the character tables once

        def quality_batched() -> None:
            for start in range(0, len(texts), 128):
                quality.check_batch(
                    texts[start : start + 128], langs[start : start + 128], sources[start : start + 128]
                )

        def quality_single() -> None:
            for text, lang, source in zip(texts, langs, sources):
                quality.check(text, lang, source)

        times = best_seconds({"ours": quality_batched, "single": quality_single}, max(2, repeats // 2))
        rows.append(row("quality filters (batches of 128)", source_name, text_mb, len(texts), times["ours"],
                        "same filters, one document per call", times["single"], ""))  # fmt: skip
        for name, group in (("pile", "pile"), ("wudao", "wudao"), ("crawl", "crawl")):
            subset = [i for i, s in enumerate(sources) if s == group]
            sub_texts = [texts[i] for i in subset]
            sub_mb = sum(len(t.encode("utf-8")) for t in sub_texts) / 1e6

            def quality_subset(sub_texts: list[str] = sub_texts, subset: list[int] = subset) -> None:
                for start in range(0, len(sub_texts), 128):
                    chunk = subset[start : start + 128]
                    quality.check_batch(
                        sub_texts[start : start + 128], [langs[i] for i in chunk], [sources[i] for i in chunk]
                    )

            seconds = best_seconds({"ours": quality_subset}, max(2, repeats // 2))["ours"]
            rows.append(
                row(
                    f"  quality on {name} only",
                    source_name,
                    sub_mb,
                    len(sub_texts),
                    seconds,
                    "",
                    None,
                    "info",
                )
            )

        # ---- tokenize ---------------------------------------------------------------------------
        with tempfile.TemporaryDirectory() as model_dir:
            corpus = os.path.join(model_dir, "corpus.txt")
            with open(corpus, "w", encoding="utf-8") as handle:
                handle.write("\n".join(texts))
            model = train_tokenizer([corpus], os.path.join(model_dir, "ice_text.model"), vocab_size=TOKENIZER_VOCAB)
            tokenizer = GLMTokenizer(model["model"])
        processor = tokenizer.sentencepiece
        batches = [texts[start : start + TOKENIZE_BATCH] for start in range(0, len(texts), TOKENIZE_BATCH)]

        def tokenize_ours() -> None:
            for batch in batches:
                tokenizer.encode_batch(batch)

        def tokenize_bare() -> None:
            for batch in batches:
                processor.encode(batch, num_threads=1)

        times = best_seconds({"ours": tokenize_ours, "bare": tokenize_bare}, repeats)
        rows.append(row("tokenize (GLMTokenizer.encode_batch)", source_name, text_mb, len(texts), times["ours"],
                        "bare SentencePiece encode", times["bare"], ""))  # fmt: skip
    finally:
        if temporary is not None:
            temporary.cleanup()
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    headers = ["stage", "MB", "docs", "ours MB/s", "docs/s", "baseline", "base MB/s", "ratio", "target"]
    keys = ["stage", "MB", "docs", "ours_MB_s", "ours_docs_s", "baseline", "baseline_MB_s", "ratio", "target"]
    table = [headers] + [["" if r[k] is None else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    print(json.dumps(rows, indent=2, ensure_ascii=False) if args.json else format_table(rows))
    if not args.json:
        print(f"\ninput: {rows[0]['input']}; ratio = ours / baseline throughput; one process, one core")


if __name__ == "__main__":
    main()
