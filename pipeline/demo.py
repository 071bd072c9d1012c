"""`glm-corpus demo`: every stage that exists, on the built-in corpus, in one command.

Each stage is called through the same CLI a user would type, so the demo doubles as a tour of the
commands; the printed layout at the end says where everything went and what to try next. Rerunning
the demo resumes: finished stages are skipped by the stages themselves.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any

from common.errors import GLMCorpusError
from pipeline.default_data import build_default_data, tokenizer_training_text

log = logging.getLogger(__name__)

DEMO_VOCAB_SIZE = 16000
DEMO_ROWS = 1024
DEMO_TRAIN_STEPS = 20


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return False
        raise
    return True


def _cli(argv: list[str]) -> None:
    from cli import main

    print(f"\n$ glm-corpus {' '.join(argv)}", flush=True)
    code = main(argv)
    if code != 0:
        raise GLMCorpusError(f"demo stage `glm-corpus {argv[0]}` exited with code {code}")


def run_demo(out: Path, workers: int = 2, scale: float = 1.0, ray_address: str | None = None,
             train_steps: int = DEMO_TRAIN_STEPS) -> dict[str, Any]:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw"
    timings: dict[str, float] = {}

    def stage(name: str) -> float:
        timings[name] = round(time.perf_counter() - t0, 1)
        return timings[name]

    t0 = time.perf_counter()
    print(f"== building the default raw corpus in {raw}", flush=True)
    raw_summary = build_default_data(raw, scale=scale)
    print(f"   {raw_summary['documents']} records, {raw_summary['bytes']} bytes", flush=True)
    stage("raw")

    t0 = time.perf_counter()
    model = out / "tokenizer" / "ice_text.model"
    if not model.exists():
        corpus = tokenizer_training_text(raw_summary, out / "tokenizer" / "corpus.txt")
        _cli(["tokenizer", "train", "--input", str(corpus), "--out", str(model),
              "--vocab-size", str(DEMO_VOCAB_SIZE if scale >= 0.5 else 8000)])
    stage("tokenizer")

    t0 = time.perf_counter()
    common = ["--workers", str(workers)] + (["--ray-address", ray_address] if ray_address else [])
    _cli(["ingest", "--input", str(raw), "--out", str(out / "tokens"), "--tokenizer", str(model), *common])
    stage("ingest")

    done = ["raw", "tokenizer", "tokens"]
    if _available("mip.stage"):
        t0 = time.perf_counter()
        _cli(["mip", "--demo", "--out", str(out / "mip"), "--tokenizer", str(model)])
        stage("mip")
        done.append("mip")
    if _available("masking.stage"):
        t0 = time.perf_counter()
        argv = ["mask", "--tokens", str(out / "tokens"), "--out", str(out / "train"),
                "--rows", str(DEMO_ROWS if scale >= 0.5 else 64), "--workers", str(workers)]
        if "mip" in done:
            argv += ["--mip", str(out / "mip")]
        _cli(argv)
        stage("mask")
        done.append("train")
    if _available("mip.audit") and "train" in done:
        t0 = time.perf_counter()
        _cli(["audit", "--train", str(out / "train"), "--plan", str(out / "mip" / "mip-plan.json"),
              "--steps", f"0:{train_steps}", "--output", str(out / "audit.json")])
        stage("audit")
        done.append("audit.json")
    if _available("trainer.train") and "train" in done:
        t0 = time.perf_counter()
        _cli(["train", "--train", str(out / "train"), "--steps", str(train_steps), "--out", str(out / "checkpoints")])
        stage("train")
        done.append("checkpoints")
    if _available("report.html_report"):
        t0 = time.perf_counter()
        _cli(["report", str(out)])
        stage("report")
        done.append("report.html")
    _cli(["verify", str(out)])

    layout = {
        "raw": "raw input in the three formats (Pile .jsonl.zst, WuDao .json, crawl .warc.gz)",
        "tokenizer": "tokenizer/ice_text.model: the default icetk-layout SentencePiece model",
        "tokens": "tokens/<source>/*.bin|idx: Megatron token shards + provenance; tokens/manifest.json",
        "mip": "mip/: MIP token shards and mip-plan.json",
        "train": "train/: packed 2048-token GLM training shards and stats.json",
        "audit.json": "audit.json: which MIP datasets the run contains, against the plan",
        "checkpoints": "checkpoints/: the reference trainer's checkpoints",
        "report.html": "report.html: the run report with plots",
    }
    lines = [f"\nDemo finished in {time.perf_counter() - started:.0f} s. Outputs under {out}/:"]
    lines += [f"  {layout[name]}" for name in done if name in layout]
    lines += [
        "\nNext, try:",
        f"  glm-corpus shards info {out}/tokens",
        f"  glm-corpus verify {out}/tokens",
        f"  glm-corpus tokenizer encode 'GLM-130B 是一个双语模型' --tokenizer {model}",
        "  glm-corpus dedup --explain --threshold 0.8",
    ]
    if "train" in done:
        lines.append(f"  glm-corpus inspect {out}/train 0")
    if "audit.json" in done:
        lines.append(f"  glm-corpus audit --train {out}/train --plan {out}/mip/mip-plan.json")
    return {"out": str(out), "outputs": done, "seconds": timings, "text": "\n".join(lines)}
