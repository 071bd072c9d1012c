"""The whole ingest (raw -> token shards, with dedup) against its stage floor, and 2 Ray workers vs 1.

The stage floor is 1 / sum(1 / t_i): the throughput one core would reach running every per-document
stage back to back with no overhead (each stage timed alone on the same documents in this process).
The whole ingest is then timed through `run_ingest` on Ray with 1 and 2 workers (Ray already started,
so its start-up is not counted; actor start-up, the global dedup and the final shard copy are).

Input: ../shared/corpora (Pile sample, WuDao samples, crawl WARCs) when present, else the built-in
default corpus; the Pile and WuDao files are split into 4 parts each so that two workers have work to
share (real corpora come in many files).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import zstandard

from benchmarks.common import shared_corpus


def _split_inputs(raw: Path, copies: int = 1) -> list[Path]:
    files: list[Path] = []
    pile = shared_corpus("pile", "pile_sample.jsonl.zst")
    wudao = shared_corpus("wudao", "wudao_sample.json")
    crawl = sorted(shared_corpus("crawl").glob("*.warc.gz")) if shared_corpus("crawl") else []
    if pile is None or wudao is None:
        from pipeline.default_data import build_default_data

        summary = build_default_data(raw / "default")
        pile = Path(summary["files"]["pile"])
        wudao = Path(summary["files"]["wudao"])
        crawl = [Path(summary["files"]["crawl"])]
    lines = zstandard.ZstdDecompressor().stream_reader(pile.open("rb")).read().splitlines() * copies
    records = orjson.loads(wudao.read_bytes()) * copies
    for part in range(4):
        path = raw / "pile" / f"part-{part}.jsonl.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines[part::4]) + b"\n"))
        files.append(path)
        path = raw / "wudao" / f"part-{part}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(records[part::4]))
        files.append(path)
    for path in crawl:
        target = raw / "crawl" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        files.append(target)
    return files


def _stage_times(files: list[Path], model: Path) -> tuple[dict[str, float], int, int]:
    from pipeline.dedup.signatures import SignatureMaker
    from pipeline.document import DropLog
    from pipeline.ingest import IngestConfig
    from pipeline.langid import LangIdStep
    from pipeline.normalize import NormalizeStep
    from pipeline.quality import QualityStep
    from pipeline.readers import detect_format, make_reader
    from pipeline.tokenizer import GLMTokenizer

    config = IngestConfig()
    times: dict[str, float] = {}
    started = time.process_time()
    docs = []
    for path in files:
        fmt = detect_format(path)
        source = {"pile": "pile", "wudao": "wudao"}.get(fmt, "crawl")
        docs.extend(make_reader(fmt, source=source).read(str(path), DropLog()))
    times["read + parse"] = time.process_time() - started
    text_bytes = sum(len(d.text.encode()) for d in docs)
    for step in (NormalizeStep(), LangIdStep(config.langid), QualityStep(config.quality)):
        started = time.process_time()
        docs = list(step.run(docs, DropLog()))
        times[step.name] = time.process_time() - started
    texts = [d.text for d in docs]
    tokenizer = GLMTokenizer(model)
    started = time.process_time()
    for i in range(0, len(texts), 256):
        tokenizer.encode_batch(texts[i : i + 256])
    times["tokenize"] = time.process_time() - started
    signer = SignatureMaker(config.dedup)
    started = time.process_time()
    for i in range(0, len(texts), 256):
        signer.signatures(texts[i : i + 256])
    times["minhash"] = time.process_time() - started
    return times, text_bytes, len(docs)


def run(quick: bool = False) -> list[dict[str, Any]]:
    from pipeline.ingest import IngestConfig, run_ingest
    from pipeline.ray_runtime import ensure_ray
    from pipeline.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = _split_inputs(root / "raw", copies=1 if quick else 3)
        corpus = root / "corpus.txt"
        corpus.write_bytes(b"\n".join(p.read_bytes()[:2_000_000] for p in files if p.suffix == ".json"))
        model = root / "ice_text.model"
        train_tokenizer([corpus], model, vocab_size=8000)
        times, text_bytes, kept = _stage_times(files, model)
        floor_seconds = sum(times.values())
        rows: list[dict[str, Any]] = [
            {"case": f"stage alone: {name}", "seconds (1 core)": t, "MB/s": text_bytes / t / 1e6}
            for name, t in times.items()
        ]
        rows.append({"case": "stage floor 1/sum(1/t_i)", "seconds (1 core)": floor_seconds,
                     "MB/s": text_bytes / floor_seconds / 1e6})
        ensure_ray(2)
        walls = {}
        for workers in (1, 2):
            config = IngestConfig(inputs=[str(root / "raw")], out=str(root / f"out{workers}"),
                                  tokenizer=str(model), workers=workers)
            started = time.perf_counter()
            run_ingest(config, progress=False)
            walls[workers] = time.perf_counter() - started
            rows.append({"case": f"whole ingest, {workers} worker(s) (wall)", "seconds (1 core)": walls[workers],
                         "MB/s": text_bytes / walls[workers] / 1e6,
                         "ratio": floor_seconds / walls[workers] if workers == 1 else walls[1] / walls[2]})
        rows[-2]["note"] = "ratio = fraction of the stage floor (target >= 0.7)"
        rows[-1]["note"] = f"ratio = speed-up over 1 worker (target >= 1.7); {len(files)} files, {kept} docs kept"
        for a, b in zip(sorted((root / "out1").rglob("*.bin")), sorted((root / "out2").rglob("*.bin"))):
            assert a.read_bytes() == b.read_bytes(), f"{a} differs between 1 and 2 workers"
        return rows


if __name__ == "__main__":
    from benchmarks.common import format_table

    print(format_table(run()))
