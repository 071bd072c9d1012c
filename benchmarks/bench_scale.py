"""The whole chain at growing corpus size: ingest -> dedup -> final shards -> MIP -> mask -> audit (issue 12).

For each size a bilingual raw corpus is generated in the three raw formats (Pile `.jsonl.zst`, WuDao JSON
arrays, crawl `.warc.gz`) by recombining real text: paragraphs of the shared Pile sample, sentences of the
shared WuDao sample (`../shared/corpora`), else the built-in default corpus (`pipeline.default_data`). A
document's length is drawn from the real documents of its source, so documents per byte follow the real
samples; a controlled share of documents are exact copies or near copies (one word, or CJK character, in 100
replaced: Jaccard ~0.9) of earlier ones, some across sources. Every byte depends only on the seed.

Each configuration runs the chain in a fresh driver process (`--chain`, the stages' public functions:
`run_ingest`, `run_mip`, `run_masking`, `run_audit`) while this process samples /proc every 0.2 s: RSS and
anonymous RSS (heap; RSS also counts memory-mapped shard pages, which are file-backed and reclaimable) of the
driver, of every Ray worker and of the Ray daemons (raylet, GCS, ...), the size of the output directory and
of Ray's spill directory. Configurations (`--configs`): 1 worker, 2 workers (embedded Ray) and, at the
smallest size (`--cluster-at`), a 2-node local Ray cluster (two `ray start` on this machine, 1 CPU each, as
tests/local_cluster.py does) that must write byte-identical output (sha256 of every non-JSON output file).
After the 2-worker run (else the 1-worker one) the global dedup pass is rerun alone on its work shards, in
the driver and forced onto Ray (`distributed_min_docs=0`), to measure what the driver holds per document.

The acceptance rows (issue 12) are computed from the data, each as the issue states it and in the variant
docs/SCALE.md argues for: throughput per core smallest -> largest for the whole chain, and without the
one-time Ray start and the fixed-size MIP stage; peak memory per process kind (driver, largest Ray worker,
largest Ray daemon) as RSS and as anonymous memory; 2-node byte identity. A second table gives the peak
anonymous memory of the driver and of the largest Ray worker in each stage's window, per size.

    .venv/bin/python -m benchmarks.bench_scale --json /tmp/s.json  # 50, 200, 1000 MB (~30-40 min on 2 cores)
    .venv/bin/python -m benchmarks.bench_scale --sizes 5 20    # other sizes (MB of raw text)
    .venv/bin/python -m benchmarks.bench_scale --configs "1 worker" cluster  # some configurations only
    .venv/bin/python -m benchmarks.bench_scale --replot /tmp/s.json  # plots and tables again from a --json file
    .venv/bin/python -m benchmarks --only bench_scale --quick  # 1 and 2 MB smoke run, no plots
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import html
import io
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.local_cluster import LocalCluster, ray_command

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMG = ROOT / "docs" / "img"
SIZES_MB = (50, 200, 1000)
"""20x from the smallest to the largest, as issue 12 asks."""
QUICK_SIZES_MB = (1, 2)
SHARES = {"pile": 1.2 / 2.45, "wudao": 1.0 / 2.45, "crawl": 0.25 / 2.45}
"""GLM-130B's raw mix: 1.2 TB Pile, 1.0 TB WuDao, 250 GB crawl."""
CRAWL_CHINESE = 0.7
"""Share of crawl pages in Chinese (GLM-130B's crawl is Chinese forums, encyclopedia and QA)."""
FILE_MB = 2.0
"""Raw text per input file: real corpora come in many files, and one file is one ingest task."""
EXACT_RATE = 0.03
NEAR_RATE = 0.03
VOCAB_SIZE = 8000
SAMPLE_SECONDS = 0.2
CONFIGS = {"1 worker": (1, False), "2 workers": (2, False), "2-node cluster": (2, True)}
"""Configuration name -> (workers, on a 2-node local cluster)."""
CONFIG_ALIASES = {"1": "1 worker", "2": "2 workers", "cluster": "2-node cluster", "2-node": "2-node cluster"}
MEMORY_STAGES = ("ingest: per-file", "ingest: global dedup", "ingest: final shards", "mip", "mask", "audit")
TOLERANCE = 1.2
"""Issue 12: within 20%."""
MB = 1e6


# ------------------------------------------------------------------------------------------ the raw corpus


@dataclasses.dataclass
class TextPools:
    """Units to recombine and real document lengths (UTF-8 bytes) per source."""

    where: str
    en_units: list[str]
    zh_units: list[str]
    lengths: dict[str, list[int]]
    real: dict[str, dict[str, float]]
    """Per source: docs and text bytes of the real samples (documents per byte)."""


def load_pools() -> TextPools:
    from benchmarks.common import chinese_texts, english_texts, shared_corpus

    en_where, english = english_texts(1 << 40)
    zh_where, chinese = chinese_texts(1 << 40)
    crawl_texts: list[str] = []
    crawl_dir = shared_corpus("crawl")
    if crawl_dir is not None:
        from pipeline.document import DropLog
        from pipeline.readers import make_reader

        for path in sorted(crawl_dir.glob("*.warc.gz")):
            crawl_texts += [d.text for d in make_reader("warc", source="crawl").read(str(path), DropLog())]
    crawl_texts = crawl_texts or english[::3] + chinese[::3]
    en_units = []
    for text in english:
        for paragraph in re.split(r"\n\s*\n", text):
            pieces = paragraph.split("\n") if len(paragraph) > 2000 else [paragraph]
            en_units += [p.strip() for p in pieces if len(p.strip()) >= 20]
    zh_units = []
    for text in chinese:
        for line in text.split("\n"):
            unit = ""
            for clause in re.split(r"(?<=[。！？；，、!?;,.])", line.strip()):
                unit += clause
                if len(unit) >= 20:
                    zh_units.append(unit)
                    unit = ""
            if len(unit) >= 10:
                zh_units.append(unit)

    def size(texts: list[str]) -> list[int]:
        return [len(t.encode()) for t in texts if t.strip()]

    lengths = {"pile": size(english), "wudao": size(chinese), "crawl": size(crawl_texts)}
    real = {s: {"docs": len(v), "bytes": sum(v), "docs_per_mb": len(v) / (sum(v) / MB)} for s, v in lengths.items()}
    where = f"{en_where}; {zh_where}; crawl: {'shared WARCs' if crawl_dir else 'built-in texts'}"
    return TextPools(where, en_units, zh_units, lengths, real)


class CorpusGenerator:
    """Documents as pure functions of (seed, source, index); duplicates regenerate the document they copy."""

    def __init__(self, pools: TextPools, seed: int) -> None:
        self.pools = pools
        self.seed = seed
        self.counts: dict[str, int] = {}
        self.en_bytes = [len(u.encode()) for u in pools.en_units]
        self.zh_bytes = [len(u.encode()) for u in pools.zh_units]

    def _fresh(self, source: str, rng: random.Random) -> tuple[str, str]:
        zh = source == "wudao" or (source == "crawl" and rng.random() < CRAWL_CHINESE)
        units, sizes = (self.pools.zh_units, self.zh_bytes) if zh else (self.pools.en_units, self.en_bytes)
        target = min(max(rng.choice(self.pools.lengths[source]), 200), 200_000)
        chosen: list[str] = []
        total = 0
        while total < target:
            k = rng.randrange(len(units))
            chosen.append(units[k])
            total += sizes[k]
        joiner = "" if source == "wudao" else ("\n" if zh else "\n\n")
        return joiner.join(chosen), "zh" if zh else "en"

    def kind(self, source: str, index: int) -> tuple[str, random.Random]:
        rng = random.Random(f"{self.seed}:{source}:{index}")
        u = rng.random()
        if index > 0 and u < EXACT_RATE:
            return "exact", rng
        if index > 0 and u < EXACT_RATE + NEAR_RATE:
            return "near", rng
        return "fresh", rng

    def text(self, source: str, index: int) -> tuple[str, str]:
        kind, rng = self.kind(source, index)
        if kind == "fresh":
            return self._fresh(source, rng)
        other = source
        if source == "crawl" and rng.random() < 0.5:  # a crawled copy of a curated document
            other = rng.choice(["pile", "wudao"])
        limit = index if other == source else self.counts[other]
        text, lang = self.text(other, rng.randrange(limit))
        if kind == "near":
            text = _near_copy(text, lang, rng.randrange(100))
        return text, lang


def _near_copy(text: str, lang: str, offset: int) -> str:
    """Replace one word (English) or CJK character (Chinese) in every 100 by its neighbour."""
    if lang == "en":
        words = text.split(" ")
        for i in range(offset, len(words) - 1, 100):
            words[i] = words[i + 1]
        return " ".join(words)
    chars = list(text)
    for i in range(offset, len(chars) - 1, 100):
        if "\u4e00" <= chars[i] <= "\u9fff":
            chars[i] = "的" if chars[i] != "的" else "是"
    return "".join(chars)


def _page(title: str, text: str) -> bytes:
    paragraphs = "\n".join(f"<p>{html.escape(p, quote=False)}</p>" for p in text.split("\n") if p.strip())
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        "<script>var t = 1;</script></head>\n<body><nav><a href='/'>首页</a> | <a href='/about'>About</a></nav>\n"
        f"<h1>{html.escape(title)}</h1>\n{paragraphs}\n<footer>Copyright bench.example</footer></body></html>\n"
    ).encode()


def _write_raw_file(stem: Path, source: str, batch: list[Any]) -> Path:
    """One raw input file in its source's format: Pile jsonl.zst lines, a WuDao JSON array, or a WARC of pages."""
    import orjson
    import zstandard
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    stem.parent.mkdir(parents=True, exist_ok=True)
    if source == "pile":
        path = stem.with_suffix(".jsonl.zst")
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(b"\n".join(batch) + b"\n"))
    elif source == "wudao":
        path = stem.with_suffix(".json")
        path.write_bytes(orjson.dumps(batch))
    else:
        path = stem.with_suffix(".warc.gz")
        buffer = io.BytesIO()
        writer = WARCWriter(buffer, gzip=True)
        for url, body in batch:
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                                  ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
            record_id = uuid.UUID(bytes=hashlib.sha1(url.encode()).digest()[:16])
            writer.write_record(writer.create_warc_record(
                url, "response", payload=io.BytesIO(body), http_headers=headers,
                warc_headers_dict={"WARC-Date": "2026-01-01T00:00:00Z", "WARC-Record-ID": f"<urn:uuid:{record_id}>"}))
        path.write_bytes(buffer.getvalue())
    return path


def build_corpus(out: Path, pools: TextPools, total_mb: float, seed: int = 12) -> dict[str, Any]:
    """Write about `total_mb` MB of document text under out/{pile,wudao,crawl}/; return what was written."""
    import orjson

    gen = CorpusGenerator(pools, seed)
    summary: dict[str, Any] = {"sources": {}, "text_bytes": 0, "docs": 0, "files": 0, "file_bytes": 0}
    for source in ("wudao", "pile", "crawl"):  # crawl last: it copies documents of the other two
        target = int(SHARES[source] * total_mb * MB)
        entry = {"docs": 0, "text_bytes": 0, "exact_copies": 0, "near_copies": 0, "files": 0}
        batch: list[Any] = []
        batch_bytes = 0
        index = 0
        while entry["text_bytes"] < target:
            text, _ = gen.text(source, index)
            kind, _ = gen.kind(source, index)
            if kind != "fresh":
                entry[f"{kind}_copies"] += 1
            if source == "pile":
                batch.append(orjson.dumps({"text": text, "meta": {"pile_set_name": "bench_scale"}}))
            elif source == "wudao":
                batch.append({"id": index, "uniqueKey": f"{seed:04d}{index:028d}", "titleUkey": "",
                              "dataType": "bench", "title": "", "content": text})
            else:
                batch.append((f"http://bench-{index % 97}.example.cn/page/{index:08d}.html", _page(f"页面 {index}", text)))
            size = len(text.encode())
            entry["docs"] += 1
            entry["text_bytes"] += size
            batch_bytes += size
            index += 1
            if batch_bytes >= FILE_MB * MB or entry["text_bytes"] >= target:
                path = _write_raw_file(out / source / f"part-{entry['files']:05d}", source, batch)
                entry["files"] += 1
                summary["file_bytes"] += path.stat().st_size
                batch, batch_bytes = [], 0
        gen.counts[source] = index
        summary["sources"][source] = entry
        for key in ("text_bytes", "docs", "files"):
            summary[key] += entry[key]
    return summary


def prepare_shared_inputs(root: Path, pools: TextPools) -> dict[str, Any]:
    """The tokenizer (trained once, small), the MIP input and a held-out evaluation set for the audit."""
    from benchmarks.common import shared_corpus
    from pipeline.tokenizer import train_tokenizer

    rng = random.Random(7)
    corpus = root / "tokenizer-corpus.txt"
    sample = rng.sample(pools.en_units, min(len(pools.en_units), 4000))
    sample += rng.sample(pools.zh_units, min(len(pools.zh_units), 12000))
    corpus.write_text("\n".join(sample), encoding="utf-8")
    model = root / "ice_text.model"
    started = time.perf_counter()
    train_tokenizer([corpus], model, vocab_size=VOCAB_SIZE)
    tokenizer_seconds = time.perf_counter() - started
    mip = shared_corpus("mip")
    if mip is not None:
        mip_inputs = [str(mip / "p3"), str(mip / "deepstruct")]
    else:
        from mip.demo_data import write_demo_instructions

        mip_inputs = [write_demo_instructions(root / "mip-input", 300)["out"]]
    eval_path = root / "eval" / "heldout.jsonl"
    eval_path.parent.mkdir(parents=True, exist_ok=True)
    texts = rng.sample([u for u in pools.en_units if len(u) > 200], 100)
    texts += rng.sample([u for u in pools.zh_units if len(u) > 60], 100)
    eval_path.write_text("".join(json.dumps({"id": f"h{k}", "text": t}, ensure_ascii=False) + "\n"
                                 for k, t in enumerate(texts)), encoding="utf-8")
    return {"model": str(model), "mip_inputs": mip_inputs, "eval": [str(eval_path)],
            "tokenizer_seconds": tokenizer_seconds}


# ----------------------------------------------------------------------------- the chain (a driver process)


def run_chain(spec: dict[str, Any]) -> dict[str, Any]:
    """Every stage in this process (the driver), as a user would run them; returns timings and counts."""
    from masking.config import MaskingConfig
    from masking.stage import run_masking
    from mip.audit import AuditConfig, run_audit
    from mip.stage import MipConfig, run_mip
    from pipeline.ingest import IngestConfig, run_ingest
    from pipeline.ray_runtime import ensure_ray

    out = Path(spec["out"])
    workers, address = spec["workers"], spec.get("ray_address")
    stages: list[dict[str, Any]] = []

    def stage(name: str, started: float, **counts: Any) -> None:
        stages.append({"stage": name, "start": started, "end": time.time(), "driver_maxrss_MB": _maxrss_mb(),
                       **counts})

    phases: dict[str, float] = {}

    class PhaseLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("ingest phases"):
                args = record.args if isinstance(record.args, dict) else record.args[0]
                phases.update(args)

    ingest_log = logging.getLogger("pipeline.ingest")
    ingest_log.setLevel(logging.INFO)
    ingest_log.addHandler(PhaseLog())
    imported = time.time()
    stage("imports", imported)

    t = time.time()
    ensure_ray(workers, address, 256)
    stage("ray start", t)

    t = time.time()
    config = IngestConfig(inputs=[spec["raw"]], out=str(out / "tokens"), tokenizer=spec["model"],
                          workers=workers, ray_address=address, keep_work=True)
    manifest = run_ingest(config, progress=False)
    ingest_end = time.time()
    totals = manifest["totals"]
    dedup_docs = sum(orjson_load(p)["docs_kept"] for p in (out / "tokens" / "work").glob("*/done.json"))
    if "write" in phases:  # anchored at the end: before the phases run_ingest loads the tokenizer and lists
        dedup_end = ingest_end - phases["write"]  # the inputs, after them it only writes the manifest
        files_end = dedup_end - phases.get("dedup", 0.0)
    else:
        files_end = t + phases.get("files", 0.0)
        dedup_end = files_end + phases.get("dedup", 0.0)
    stages.append({"stage": "ingest: per-file", "start": t, "end": files_end, "docs": totals["docs_in"]})
    stages.append({"stage": "ingest: global dedup", "start": files_end, "end": dedup_end, "docs": dedup_docs})
    stage("ingest: final shards", dedup_end, docs=totals["docs_out"], tokens=totals["tokens_out"])
    steps: dict[str, float] = {}
    for entry in manifest["sources"].values():
        for name, step in entry["stages"].items():
            if "seconds" in step:
                steps[name] = steps.get(name, 0.0) + step["seconds"]
    busy = sum(orjson_load(p)["seconds"] for p in (out / "tokens" / "work").glob("*/done.json"))
    steps["read + tokenize + minhash + write (rest)"] = busy - sum(steps.values())

    t = time.time()
    mip = run_mip(MipConfig(inputs=spec["mip_inputs"], out=str(out / "mip"), tokenizer=spec["model"]),
                  progress=False)
    stage("mip", t, docs=mip["records_in"], tokens=_first(mip, ("tokens",)))

    t = time.time()
    masked = run_masking(out / "tokens", out / "train", MaskingConfig(workers=workers), mip=out / "mip",
                         progress=False)
    stage("mask", t, tokens=masked["tokens"], rows=_first(masked, ("rows",)))

    t = time.time()
    audit = run_audit(AuditConfig(train=str(out / "train"), plan=str(out / "mip"), eval=spec["eval"],
                                  tokenizer=spec["model"], workers=workers, ray_address=address))
    scan = audit.get("contamination_scan") or audit.get("scan") or {}
    stage("audit", t, rows=_first(scan, ("rows",)), tokens=_first(audit.get("ratio", {}), ("tokens",)))
    return {"stages": stages, "ingest_steps": steps, "ingest_busy_seconds": busy, "totals": totals,
            "dedup": manifest["dedup"], "mask_rows": _first(masked, ("rows",)),
            "audit_engine": scan.get("engine")}


class _AnonPeak(threading.Thread):
    """This process's peak anonymous RSS, polled every 5 ms (a short pass would slip between 0.2 s samples)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.before = self.peak = _anon_bytes()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.005):
            self.peak = max(self.peak, _anon_bytes())

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.peak = max(self.peak, _anon_bytes())


def _maxrss_mb() -> float:
    """This process's peak RSS so far (Linux reports KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def orjson_load(path: Path) -> Any:
    import orjson

    return orjson.loads(path.read_bytes())


def _first(summary: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if isinstance(summary.get(key), (int, float)):
            return summary[key]
    return None


def _dedup_pass(raw: str, work: Path, out: Path, workers: int) -> dict[str, Any]:
    """The ingest's global dedup pass alone over kept work shards: `pipeline.ingest._deduplicate` (which orders
    the files as the ingest does) where it exists, else `deduplicate_work_shards` as it was first called.
    A changed signature raises TypeError: the caller skips the measurement."""
    import pipeline.ingest as ingest
    from pipeline.dedup.config import DedupConfig

    dedup = DedupConfig()
    if workers > 1 and hasattr(dedup, "distributed_min_docs"):
        dedup = dataclasses.replace(dedup, distributed_min_docs=0)
    config = ingest.IngestConfig(inputs=[raw], out=str(out), workers=workers, dedup=dedup, keep_work=True)
    files = ingest.discover_inputs(config)
    if hasattr(ingest, "_deduplicate"):
        return ingest._deduplicate(config, files, work, progress=False)
    from pipeline.dedup.global_dedup import deduplicate_work_shards

    priority = {name: rank for rank, name in enumerate(dedup.source_priority)}
    files.sort(key=lambda f: (priority.get(f.source, len(priority)), f.source, f.path))
    return deduplicate_work_shards(dedup, [work / f.key for f in files], [f.source for f in files],
                                   out=out / "dedup", workers=workers, progress=False)


def run_dedup_alone(spec: dict[str, Any]) -> dict[str, Any]:
    """The global dedup pass alone over kept work shards, the driver's anonymous memory polled every 5 ms."""
    import pipeline.dedup.global_dedup  # noqa: F401  imported before the poller starts: not the pass's memory
    import pipeline.ingest  # noqa: F401

    work = Path(spec["work"])
    docs = sum(orjson_load(p).get("docs_kept", 0) for p in work.glob("*/done.json"))
    if spec["workers"] > 1:
        from pipeline.ray_runtime import ensure_ray

        ensure_ray(spec["workers"], None, 256)
    poller = _AnonPeak()
    started, before = time.time(), _maxrss_mb()
    poller.start()
    try:
        result = _dedup_pass(spec["raw"], work, Path(spec["out"]), spec["workers"])
    except TypeError as exc:  # the dedup entry point's signature changed under this benchmark
        return {"skipped": f"dedup pass not measured, the call failed with TypeError: {exc}"}
    finally:
        poller.stop()
    ended = time.time()
    summary = result.get("summary", {}) if isinstance(result, dict) else {}
    near = summary.get("near", {}) if isinstance(summary.get("near"), dict) else {}
    return {"stages": [{"stage": "dedup alone", "start": started, "end": ended,
                        "docs": summary.get("docs", docs), "maxrss_before_MB": before,
                        "maxrss_after_MB": _maxrss_mb(), "anon_before_MB": poller.before / MB,
                        "anon_peak_MB": poller.peak / MB}],
            "entry": "pipeline.ingest._deduplicate" if _has_ingest_dedup() else "deduplicate_work_shards",
            "bands": near.get("bands"), "band_entries": near.get("band_entries")}


def _has_ingest_dedup() -> bool:
    import pipeline.ingest as ingest

    return hasattr(ingest, "_deduplicate")


# ----------------------------------------------------------------------------------------- measurement


def _proc_table() -> dict[int, tuple[int, int, int, float]]:
    """pid -> (ppid, session, RSS bytes, CPU seconds so far) of every live process."""
    page = os.sysconf("SC_PAGE_SIZE")
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != b"Z":
                table[int(entry.name)] = (int(fields[1]), int(fields[3]), int(fields[21]) * page,
                                          (int(fields[11]) + int(fields[12])) / tick)
    return table


def _anon_bytes(pid: int | str = "self") -> int:
    """Resident anonymous memory (heap, not file-backed or shared pages such as memory-mapped shards)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            fields = handle.read().split()
    except OSError:
        return 0
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")




def _kind(pid: int, driver: int) -> str:
    if pid == driver:
        return "driver"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "ray daemons"
    if cmdline.startswith(b"ray::") or b"default_worker.py" in cmdline:
        return "ray worker"
    return "ray daemons"


def _tree_bytes(path: Path, match: str | None = None) -> int:
    total = 0
    for folder, _, names in os.walk(path):
        if match is not None and match not in folder:
            continue
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


class Sampler(threading.Thread):
    """RSS of the driver, its descendants and the given process sessions; disk of the out and spill dirs."""

    def __init__(self, driver: int, sessions: list[int], out: Path, ray_tmp: Path) -> None:
        super().__init__(daemon=True)
        self.driver, self.sessions, self.out, self.ray_tmp = driver, set(sessions), out, ray_tmp
        self.samples: list[tuple[float, dict[str, int], dict[str, int], int]] = []
        self.disk: list[tuple[float, int, int]] = []
        self.kinds: dict[int, str] = {}
        self.cpu_seen: dict[int, float] = {}
        self.cpu_total: dict[str, float] = {}
        """CPU seconds per process kind, summed over every process seen (a process's CPU after its last
        sample is lost: at most 0.2 s of its life)."""
        self.stopped = threading.Event()

    def run(self) -> None:
        tick = 0
        while not self.stopped.is_set():
            now = time.time()
            table = _proc_table()
            children: dict[int, list[int]] = {}
            for pid, (ppid, *_) in table.items():
                children.setdefault(ppid, []).append(pid)
            tracked, stack = set(), [self.driver]
            while stack:
                pid = stack.pop()
                if pid in table and pid not in tracked:
                    tracked.add(pid)
                    stack.extend(children.get(pid, []))
            tracked |= {pid for pid, (_, sid, *_) in table.items() if sid in self.sessions}
            peak: dict[str, int] = {}
            total: dict[str, int] = {}
            for pid in tracked:
                kind = self.kinds.get(pid)
                if kind is None or kind == "ray daemons":  # a worker's title changes once it starts
                    kind = self.kinds[pid] = _kind(pid, self.driver)
                rss, cpu = table[pid][2], table[pid][3]
                peak[kind] = max(peak.get(kind, 0), rss)
                anon = _anon_bytes(pid)
                peak[kind + " anon"] = max(peak.get(kind + " anon", 0), anon)
                total["anon"] = total.get("anon", 0) + anon
                total[kind] = total.get(kind, 0) + rss
                self.cpu_total[kind] = self.cpu_total.get(kind, 0.0) + cpu - self.cpu_seen.get(pid, 0.0)
                self.cpu_seen[pid] = cpu
            everything = sum(v for k, v in total.items() if k != "anon")
            self.samples.append((now, peak, total, everything, dict(self.cpu_total)))
            if tick % 5 == 0:
                self.disk.append((now, _tree_bytes(self.out), _tree_bytes(self.ray_tmp, "spill")))
            tick += 1
            self.stopped.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self.stopped.set()
        self.join()

    def window(self, start: float, end: float) -> dict[str, float]:
        """Peak RSS and anonymous RSS (MB) per process kind ("<kind>" and "<kind> anon": the largest process of
        the kind), and of all processes together, over the samples taken between start and end; a window
        shorter than the sampling interval gets the sample nearest its middle, so a stage's peak is its own
        and not its neighbour's (a Ray worker killed at a stage's end can still be seen early in the next)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside and self.samples:
            middle = (start + end) / 2
            inside = [min(self.samples, key=lambda s: abs(s[0] - middle))]
        out: dict[str, float] = {}
        for _, peak, total, everything, _ in inside:
            for kind, rss in peak.items():
                out[kind] = max(out.get(kind, 0.0), rss / MB)
            out["all"] = max(out.get("all", 0.0), everything / MB)
            out["all anon"] = max(out.get("all anon", 0.0), total.get("anon", 0) / MB)
        return out

    def cpu(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds per process kind (and "all") spent between start and end."""

        def at(when: float) -> dict[str, float]:
            before = [s for s in self.samples if s[0] <= when]
            return (before[-1] if before else self.samples[0])[4]

        a, b = at(start), at(end + SAMPLE_SECONDS)
        out = {kind: b[kind] - a.get(kind, 0.0) for kind in b}
        out["all"] = sum(out.values())
        return out

    def rss_at(self, when: float, kind: str = "driver") -> float:
        before = [s for s in self.samples if s[0] <= when]
        sample = before[-1] if before else self.samples[0]
        return sample[1].get(kind, 0) / MB


def measure(mode: str, spec: dict[str, Any], root: Path, cluster: bool = False) -> dict[str, Any]:
    """Run `--chain` or `--dedup` in a fresh driver process and sample it; return its result and samples."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir=root))
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="disabled")
    spec_path = ray_tmp.with_suffix(".json")
    result_path = ray_tmp.with_suffix(".result.json")
    load_before = os.getloadavg()
    # 1 CPU per node: 2 workers, one on each node (the shared test cluster gives each node 2).
    context = LocalCluster(ray_tmp, cpus_per_node=1, object_store_bytes=256 << 20, env=env) if cluster else None
    cluster_seconds = 0.0
    try:
        if context is not None:
            started = time.perf_counter()
            context.__enter__()
            cluster_seconds = time.perf_counter() - started
            spec = {**spec, "ray_address": context.address}
        spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_scale", f"--{mode}", str(spec_path)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = Sampler(proc.pid, context.sessions if context else [], Path(spec["out"]), ray_tmp)
        sampler.start()
        output, _ = proc.communicate(timeout=3600)
        sampler.stop()
    finally:
        if context is not None:
            context.__exit__()
    if proc.returncode != 0:
        raise RuntimeError(f"bench_scale --{mode} failed:\n{output[-4000:]}")
    result = json.loads(result_path.read_text())
    result["load"] = (load_before[0], os.getloadavg()[0])
    result["cluster_seconds"] = cluster_seconds
    result["sampler"] = sampler
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return result


def output_hashes(out: Path) -> dict[str, str]:
    """sha256 of every output file but the JSON ones (manifests, stats and checksum records carry timings and
    output paths) and the ingest's scratch work shards."""
    hashes = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not rel.startswith("tokens/work/") and not path.name.endswith(".json"):
            hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


# ------------------------------------------------------------------------------------------------ the run


def _stage_rows(size: float, config: str, cores: int, corpus: dict[str, Any], result: dict[str, Any]) -> list[dict]:
    sampler: Sampler = result["sampler"]
    rows = []
    stages = [s for s in result["stages"] if s["stage"] != "imports"]
    chain_start, chain_end = stages[0]["start"], stages[-1]["end"]
    text_mb = corpus["text_bytes"] / MB
    for s in stages + [{"stage": "whole chain", "start": chain_start, "end": chain_end,
                        "docs": corpus["docs"]}]:
        seconds = max(s["end"] - s["start"], 1e-6)
        peaks = sampler.window(s["start"], s["end"])
        cpu = sampler.cpu(s["start"], s["end"])
        per_mb = s["stage"].startswith(("ingest", "whole", "mask", "audit"))
        row = {
            "size MB": size, "config": config, "stage": s["stage"], "seconds": seconds,
            "MB/s": text_mb / seconds if per_mb else None,
            "MB/s per core": text_mb / seconds / cores if per_mb else None,
            "docs/s per core": s["docs"] / seconds / cores if s.get("docs") else None,
            "tokens/s per core": s["tokens"] / seconds / cores if s.get("tokens") else None,
            "CPU s": cpu["all"], "driver CPU s": cpu.get("driver", 0.0),
            "MB per CPU-s": text_mb / cpu["all"] if per_mb and cpu["all"] > 0 else None,
            "driver MB": peaks.get("driver"), "driver anon MB": peaks.get("driver anon"),
            "worker MB": peaks.get("ray worker"), "worker anon MB": peaks.get("ray worker anon"),
            "ray daemons MB": peaks.get("ray daemons"), "ray daemons anon MB": peaks.get("ray daemons anon"),
            "all processes MB": peaks.get("all"),
            "all anon MB": peaks.get("all anon"),
        }
        if s["stage"] == "whole chain":
            disk = [d for d in sampler.disk] or [(0, 0, 0)]
            row["disk peak MB"] = max(d[1] for d in disk) / MB
            row["spill peak MB"] = max(d[2] for d in disk) / MB
            row["load 1-min before/after"] = "{:.1f}/{:.1f}".format(*result["load"])
        rows.append(row)
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The harness's entry (`python -m benchmarks`): one table of stage rows, then the acceptance checks."""
    rows, checks, _, _ = measure_all(quick=quick)
    return rows + checks


def resolve_configs(names: list[str] | None) -> tuple[str, ...]:
    """Configuration names in run order, from full names or the aliases 1, 2, cluster."""
    if not names:
        return tuple(CONFIGS)
    chosen = set()
    for name in names:
        full = CONFIG_ALIASES.get(name.strip().lower(), name.strip())
        if full not in CONFIGS:
            raise SystemExit(f"--configs: unknown configuration {name!r}; choose from "
                             + ", ".join(repr(c) for c in CONFIGS) + " (or 1, 2, cluster)")
        chosen.add(full)
    return tuple(c for c in CONFIGS if c in chosen)


def plan(sizes: tuple[float, ...], configs: tuple[str, ...], cluster_at: float) -> dict[float, list[str]]:
    """Size -> the configurations run at it: the cluster only at `cluster_at`."""
    return {size: [c for c in configs if not CONFIGS[c][1] or size == cluster_at] for size in sizes}


PER_FILE_MB_S = 1.5
"""The ingest per-file phase's marginal rate per core measured on the 2-core machine (docs/SCALE.md); it is
~85% of the chain, so the whole run's length follows from it."""


def estimate_seconds(planned: dict[float, list[str]]) -> float:
    """Rough wall time of the whole run on an idle 2-core machine: per chain ~12 s of start-up and fixed-size
    stages, the per-file phase at PER_FILE_MB_S per core (1.8x on 2 workers), the other stages ~15% on top;
    the cluster's two `ray start` ~15 s; corpus generation ~25 MB/s; each dedup-alone run ~8 s + 150 MB/s."""
    total = 0.0
    for size, configs in planned.items():
        total += size / 25
        for name in configs:
            workers, cluster = CONFIGS[name]
            total += 12 + 1.15 * size / (PER_FILE_MB_S * (1.8 if workers > 1 else 1.0)) + (15 if cluster else 0)
        if _dedup_host(configs):
            total += 2 * (8 + size / 150)
    return total


def _dedup_host(configs: list[str]) -> str | None:
    """The configuration whose work shards the dedup pass is rerun on: 2 workers, else 1 worker."""
    return next((c for c in ("2 workers", "1 worker") if c in configs), None)


def measure_all(quick: bool = False, sizes: tuple[float, ...] | None = None, plots: Path | None = None,
                seed: int = 12, json_path: Path | None = None, configs: tuple[str, ...] | None = None,
                cluster_at: float | None = None, keep: Path | None = None) -> tuple[list, list, list, dict[str, Any]]:
    """(stage rows, acceptance rows, projection rows, everything measured). With `keep`, the raw corpora and
    every configuration's outputs are left in that directory (else a temporary one, removed)."""
    sizes = tuple(sorted(sizes or (QUICK_SIZES_MB if quick else SIZES_MB)))
    configs = tuple(configs or CONFIGS)
    cluster_at = sizes[0] if cluster_at is None else cluster_at
    if plots is None and not quick and sizes == SIZES_MB:
        plots = DEFAULT_IMG
    planned = plan(sizes, configs, cluster_at)
    if "2-node cluster" in configs and not Path(ray_command()).exists():
        print(f"note: no `ray` command at {ray_command()}: the 2-node cluster run is skipped", flush=True)
        planned = {size: [c for c in names if c != "2-node cluster"] for size, names in planned.items()}
    if "2-node cluster" in configs and cluster_at not in sizes:
        print(f"note: --cluster-at {cluster_at:g} MB is not one of the sizes: no 2-node cluster run", flush=True)
    print(f"plan: {'; '.join(f'{size:g} MB: ' + ', '.join(names) for size, names in planned.items())}; "
          f"estimated ~{estimate_seconds(planned) / 60:.0f} min on an idle 2-core machine", flush=True)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    root = keep if keep is not None else Path(tempfile.mkdtemp(prefix="gs", dir="/tmp"))
    try:
        pools = load_pools()
        shared = prepare_shared_inputs(root, pools)
        print(f"text from: {pools.where}; real samples, docs per MB: "
              + ", ".join(f"{s} {v['docs_per_mb']:.0f}" for s, v in pools.real.items()), flush=True)
        rows: list[dict[str, Any]] = []
        report: dict[str, Any] = {"pools": pools.real, "where": pools.where, "sizes": {},
                                  "configs": list(configs), "cluster_at": cluster_at}
        run_started = time.perf_counter()
        for size in sizes:
            raw = root / f"raw-{size:g}"
            started = time.perf_counter()
            corpus = build_corpus(raw, pools, size, seed)
            corpus["seconds"] = time.perf_counter() - started
            entry = report["sizes"][size] = {"corpus": corpus, "configs": {}}
            host = _dedup_host(planned[size])
            for name in planned[size]:
                workers, cluster = CONFIGS[name]
                out = root / f"out-{size:g}-{workers}{'c' if cluster else ''}"
                spec = {"raw": str(raw), "out": str(out), "workers": workers, **shared}
                print(f"-- {size:g} MB, {name} (load {os.getloadavg()[0]:.1f})", flush=True)
                result = measure("chain", spec, root, cluster=cluster)
                result["hashes"] = output_hashes(out)
                result["bytes"] = {part: _tree_bytes(out / part) for part in ("tokens", "mip", "train")}
                result["bytes"]["work"] = _tree_bytes(out / "tokens" / "work")
                result["bytes"]["tokens"] -= result["bytes"]["work"]
                stage_rows = _stage_rows(size, name, workers, corpus, result)
                whole = stage_rows[-1]
                result["peaks"] = {"driver": whole["driver MB"], "ray worker": whole["worker MB"],
                                   "ray daemons": whole["ray daemons MB"], "all": whole["all processes MB"],
                                   "driver anon": whole["driver anon MB"], "ray worker anon": whole["worker anon MB"],
                                   "ray daemons anon": whole["ray daemons anon MB"], "all anon": whole["all anon MB"]}
                result["workers"] = workers
                rows += stage_rows
                print(_brief(stage_rows), flush=True)
                if name == host:
                    for mode, dedup_workers in (("in driver", 1), ("on Ray (forced)", 2)):
                        alone = _measure_dedup_alone(raw, out, root, dedup_workers)
                        if "skipped" in alone:
                            print(f"   dedup alone, {mode}: {alone['skipped']}", flush=True)
                            entry.setdefault("dedup_alone_skipped", {})[mode] = alone["skipped"]
                        else:
                            entry.setdefault("dedup_alone", {})[mode] = alone
                            print(f"   dedup alone, {mode}: {alone['seconds']:.1f}s, {alone['docs']} docs, driver "
                                  f"anonymous +{_dedup_growth(alone):.1f} MB", flush=True)
                result.pop("sampler")
                entry["configs"][name] = result
                if keep is None:
                    shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(root / "dedup-alone", ignore_errors=True)
            if keep is None:
                shutil.rmtree(raw, ignore_errors=True)
        report["seconds"] = time.perf_counter() - run_started
        checks = _summary_rows(report, sizes)
        memory = stage_memory_rows(rows, sizes)
        projected = projection(report, sizes)
        if plots is not None:
            _plots(rows, report, sizes, plots)
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps({"rows": rows, "checks": checks, "stage_memory": memory,
                                             "projection": projected, "report": report}, indent=1, default=str))
        return rows, checks, projected, report
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def _measure_dedup_alone(raw: Path, out: Path, root: Path, workers: int) -> dict[str, Any]:
    """The dedup pass alone on the work shards of `out`, in a fresh driver; {"skipped": why} if it could not run."""
    try:
        alone = measure("dedup", {"raw": str(raw), "work": str(out / "tokens" / "work"),
                                  "out": str(root / "dedup-alone"), "workers": workers}, root)
    except RuntimeError as exc:  # a failure in the pipeline must not lose the chain's measurements
        return {"skipped": f"dedup pass failed: {str(exc)[-1500:]}"}
    if "skipped" in alone:
        return {"skipped": alone["skipped"]}
    s = alone["stages"][0]
    sampler: Sampler = alone["sampler"]
    peaks = sampler.window(s["start"], s["end"])
    return {
        "seconds": s["end"] - s["start"], "docs": s["docs"], "driver_before_MB": sampler.rss_at(s["start"]),
        "driver_peak_MB": peaks.get("driver", 0.0), "worker_peak_MB": peaks.get("ray worker"),
        "worker_anon_peak_MB": peaks.get("ray worker anon"),
        "maxrss_before_MB": s["maxrss_before_MB"], "maxrss_after_MB": s["maxrss_after_MB"],
        "anon_before_MB": s["anon_before_MB"], "anon_peak_MB": s["anon_peak_MB"],
        "bands": alone.get("bands"), "band_entries": alone.get("band_entries"), "entry": alone.get("entry"),
    }


def _brief(rows: list[dict[str, Any]]) -> str:
    return "   " + "; ".join(f"{r['stage']} {r['seconds']:.1f}s" for r in rows)


CHAIN_MARGINAL = "chain without Ray start, MIP"
"""The chain less the one-time Ray start (a cluster is started once, not per corpus) and the MIP stage (its
input is the same P3/DeepStruct set at every size): the variant of the throughput check docs/SCALE.md argues
for."""
PROCESS_KINDS = (("driver", "driver"), ("ray worker", "largest Ray worker"), ("ray daemons", "largest Ray daemon"))


def _mb_per_s_per_core(entry: dict[str, Any], config: str, stage: str) -> float | None:
    result = entry["configs"][config]
    seconds = _seconds(result, stage)
    if not seconds:
        return None
    return entry["corpus"]["text_bytes"] / MB / seconds / CONFIGS.get(config, (result.get("workers", 1),))[0]


def _summary_rows(report: dict[str, Any], sizes: tuple[float, ...]) -> list[dict[str, Any]]:
    """The acceptance checks of issue 12, each as the issue states it and in docs/SCALE.md's variant, then the
    per-stage details and what the projection needs, one row each."""
    out: list[dict[str, Any]] = []
    small, large = report["sizes"][sizes[0]], report["sizes"][sizes[-1]]
    growth = f"{sizes[0]:g} -> {sizes[-1]:g} MB"
    factor = large["corpus"]["text_bytes"] / max(small["corpus"]["text_bytes"], 1)
    within = f"{1 / TOLERANCE:.3g} .. {TOLERANCE:g}"

    def check(name: str, config: str, stage: str, value: Any, target: str, met: bool | None) -> None:
        out.append({"check": name, "config": config, "stage": stage, "value": value, "target": target,
                    "met": "" if met is None else "yes" if met else "no"})

    both = [c for c in small["configs"] if c in large["configs"]] if len(sizes) > 1 else []
    for config in both:
        for variant, stage in (("as stated: whole chain", "whole chain"),
                               ("SCALE.md: without Ray start and MIP", CHAIN_MARGINAL)):
            ta, tb = _mb_per_s_per_core(small, config, stage), _mb_per_s_per_core(large, config, stage)
            if ta and tb:
                ratio = tb / ta
                check(f"issue 12: throughput per core, {growth} ({factor:.0f}x), {variant}", config,
                      f"{stage}: {ta:.3g} -> {tb:.3g} MB/s per core", ratio, within,
                      1 / TOLERANCE <= ratio <= TOLERANCE)
    for config in both:
        a, b = small["configs"][config], large["configs"][config]
        for suffix, variant in (("", "as stated: RSS"), (" anon", "SCALE.md: anonymous (heap)")):
            for kind, label in PROCESS_KINDS:
                pa, pb = _peak(a, kind + suffix), _peak(b, kind + suffix)
                if pa and pb:
                    check(f"issue 12: peak memory per process, {growth} ({factor:.0f}x), {variant}", config,
                          f"{label}: {pa:.0f} -> {pb:.0f} MB", pb / pa, f"<= {TOLERANCE:g}", pb / pa <= TOLERANCE)
    for size in sizes:
        configs = report["sizes"][size]["configs"]
        if "2-node cluster" not in configs:
            continue
        cluster = configs["2-node cluster"]["hashes"]
        for config in ("1 worker", "2 workers"):
            if config not in configs:
                continue
            other = configs[config]["hashes"]
            differ = sorted(k for k in set(cluster) | set(other) if cluster.get(k) != other.get(k))
            check(f"issue 12: 2-node output byte-identical, {size:g} MB", f"2-node cluster vs {config}",
                  f"{len(cluster)} files (sha256)", "identical" if not differ else f"{len(differ)} differ: "
                  + ", ".join(differ[:3]), "identical", not differ)
        if not any(c in configs for c in ("1 worker", "2 workers")):
            check(f"issue 12: 2-node output byte-identical, {size:g} MB", "2-node cluster",
                  "no single-node run at this size to compare with", None, "identical", None)

    for config in both:  # details: which stage keeps throughput, which process kind grows
        a, b = small["configs"][config], large["configs"][config]
        for stage in ("ingest: per-file", "ingest: global dedup", "ingest: final shards", "mask", "audit"):
            ta, tb = _mb_per_s_per_core(small, config, stage), _mb_per_s_per_core(large, config, stage)
            if ta and tb:
                check(f"throughput per core, {growth}, per stage", config, stage, tb / ta, within,
                      1 / TOLERANCE <= tb / ta <= TOLERANCE)
        for kind in ("all anon", "all"):
            pa, pb = _peak(a, kind), _peak(b, kind)
            if pa and pb:
                what = "anonymous" if kind.endswith("anon") else "RSS"
                check(f"peak memory of all processes together, {growth}, {what}", config,
                      f"all processes: {pa:.0f} -> {pb:.0f} MB", pb / pa, "", None)
    for config in CONFIGS:
        if len(sizes) < 2 or not all(config in report["sizes"][size]["configs"] for size in sizes):
            continue
        cores = CONFIGS[config][0]
        for stage in FIT_STAGES:
            fit = stage_fit(report, sizes, config, stage)
            if fit is None:
                continue
            fixed, per_mb = fit
            check(f"fit seconds = fixed + MB / rate over {', '.join(f'{x:g}' for x in sizes)} MB", config, stage,
                  f"fixed {fixed:.2f} s, marginal " + (f"{1 / per_mb / cores:.3g} MB/s per core" if per_mb > 0
                                                       else "n/a (time does not grow with size)"), "", None)
    for size in sizes:
        configs = report["sizes"][size]["configs"]
        if "1 worker" in configs and "2 workers" in configs:
            one, two = configs["1 worker"], configs["2 workers"]
            for stage in ("whole chain", "ingest: per-file"):
                if _seconds(one, stage) and _seconds(two, stage):
                    speedup = _seconds(one, stage) / _seconds(two, stage)
                    check(f"2 workers / 1 worker speed-up, {size:g} MB", "2 workers", stage, speedup,
                          ">= 1.7 (DESIGN §8)", speedup >= 1.7)
        for mode, alone in report["sizes"][size].get("dedup_alone", {}).items():
            check(f"dedup pass alone, {size:g} MB: {alone['docs']} docs, {alone['seconds']:.2f} s", mode,
                  "driver anonymous RSS growth during the pass, MB", _dedup_growth(alone), "", None)
        for mode, why in report["sizes"][size].get("dedup_alone_skipped", {}).items():
            check(f"dedup pass alone, {size:g} MB", mode, why[:200], None, "", None)
    for mode, per_doc in dedup_bytes_per_doc(report, sizes).items():
        check(f"dedup pass: driver bytes per document, slope {growth}", mode, "driver anonymous RSS growth / docs",
              per_doc, "<= 200 B/doc per process (DESIGN §8)", per_doc <= 200)
    return out


def stage_memory_rows(rows: list[dict[str, Any]], sizes: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per configuration and stage window: the peak anonymous memory (MB) of the driver and of the largest Ray
    worker at each size, and the ratio and growth from the smallest to the largest size (what grows, and
    where)."""
    out = []
    configs = [c for c in CONFIGS if any(r.get("config") == c for r in rows)]
    for config in configs:
        for stage in MEMORY_STAGES + ("whole chain",):
            found = {r["size MB"]: r for r in rows
                     if r.get("config") == config and r.get("stage") == stage and "seconds" in r}
            if not found:
                continue
            row: dict[str, Any] = {"config": config, "stage": stage}
            for key, label in (("driver anon MB", "driver anon"), ("worker anon MB", "worker anon")):
                values = {size: found[size].get(key) if size in found else None for size in sizes}
                for size, value in values.items():
                    row[f"{label} MB, {size:g} MB"] = value
                first, last = values[sizes[0]], values[sizes[-1]]
                ok = len(sizes) > 1 and bool(first) and last is not None
                row[f"{label} ratio"] = last / first if ok else None
                row[f"{label} +MB"] = last - first if ok else None
            row["seconds, largest"] = found[sizes[-1]]["seconds"] if sizes[-1] in found else None
            out.append(row)
    return out


def _dedup_growth(alone: dict[str, Any]) -> float:
    """MB the driver's anonymous memory rose during the pass (polled in the process every 5 ms; memory-mapped
    signature pages, which the kernel can drop, are not counted)."""
    return alone["anon_peak_MB"] - alone["anon_before_MB"]


def dedup_bytes_per_doc(report: dict[str, Any], sizes: tuple[float, ...]) -> dict[str, float]:
    """Driver bytes per document of the dedup pass: the growth's slope from the smallest to the largest size
    (fixed costs such as lazily built tables cancel out)."""
    small = report["sizes"][sizes[0]].get("dedup_alone", {})
    large = report["sizes"][sizes[-1]].get("dedup_alone", {})
    out = {}
    for mode in small:
        if mode not in large or len(sizes) < 2:
            continue
        docs = large[mode]["docs"] - small[mode]["docs"]
        if docs > 0:
            out[mode] = (_dedup_growth(large[mode]) - _dedup_growth(small[mode])) * MB / docs
    return out


FIT_STAGES = ("whole chain", "ray start", "ingest: per-file", "ingest: global dedup", "ingest: final shards", "mip",
              "mask", "audit")


def stage_fit(report: dict[str, Any], sizes: tuple[float, ...], config: str,
              stage: str) -> tuple[float, float] | None:
    """Least-squares (fixed seconds, seconds per MB of raw text) of one stage over the sizes; None if the
    configuration or the stage is missing at one of them."""
    if not all(config in report["sizes"][size]["configs"] for size in sizes):
        return None
    xs = [report["sizes"][size]["corpus"]["text_bytes"] / MB for size in sizes]
    ys = [_seconds(report["sizes"][size]["configs"][config], stage) for size in sizes]
    if any(y is None for y in ys):
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def _peak(result: dict[str, Any], kind: str) -> float | None:
    return result["peaks"].get(kind)


def _seconds(result: dict[str, Any], stage: str) -> float | None:
    """Wall seconds of a stage (None if the run has no such stage), of the whole chain, or of CHAIN_MARGINAL."""
    stages = [s for s in result["stages"] if s["stage"] != "imports"]
    if stage == "whole chain":
        return stages[-1]["end"] - stages[0]["start"]
    if stage in (CHAIN_MARGINAL, "chain without fixed-size stages"):
        return sum(s["end"] - s["start"] for s in stages if s["stage"] not in ("ray start", "mip"))
    return next((s["end"] - s["start"] for s in stages if s["stage"] == stage), None)


COMPONENT_BYTES_PER_DOC = 60
"""What the near-dedup components task holds per clustered document (docs/DEDUP.md): forest edge, labels,
quality, length, offset, survivor, similarity."""


def projection(report: dict[str, Any], sizes: tuple[float, ...], cores: tuple[int, ...] = (64, 512, 4096),
               raw_tb: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """GLM-130B's 2.5 TB raw on N cores: the marginal seconds per MB of each stage (1 worker, fitted over the
    sizes), the real samples' documents per byte, the driver's dedup bytes per document and this run's output
    bytes per raw byte; the assumptions are the columns (docs/SCALE.md states them)."""
    raw_tb = raw_tb or {"pile": 1.2, "wudao": 1.0, "crawl": 0.25}
    if len(sizes) < 2 or any(stage_fit(report, sizes, "1 worker", stage) is None for stage in
                             ("ingest: per-file", "mask", "audit", "ingest: global dedup", "ingest: final shards")):
        return []  # the fits need the 1-worker run at every size
    large = report["sizes"][sizes[-1]]
    one = large["configs"]["1 worker"]
    text = large["corpus"]["text_bytes"]
    total = sum(raw_tb.values()) * 1e12
    docs = sum(raw_tb[s] * 1e12 / MB * report["pools"][s]["docs_per_mb"] for s in raw_tb)
    kept = one["totals"]["docs_out"] / max(one["totals"]["docs_in"], 1)
    parallel = {stage: max(stage_fit(report, sizes, "1 worker", stage)[1], 0.0) / MB
                for stage in ("ingest: per-file", "ingest: global dedup", "ingest: final shards", "mask", "audit")}
    # seconds per raw byte on one core: dedup and final shards are tasks too (one per file / partition / shard)
    near = one.get("dedup", {}).get("near", {})
    clustered = near.get("clustered_docs", 0) / max(near.get("docs", 1), 1)
    bands = near.get("bands", 9)
    shuffle = docs * (bands * 12 + 32)  # band key u64 + doc offset u32 per band; exact: 2 x u64 key, doc, offset
    disk = {part: one["bytes"][part] / text for part in ("work", "tokens", "train")}
    rows = []
    for n in cores:
        parallel_h = sum(v * total for v in parallel.values()) / n / 3600
        rows.append({
            "cores": n, "documents": docs, "kept share": kept, "clustered share": clustered,
            "parallel stages h (per-file, dedup, final shards, mask, audit)": parallel_h,
            "components task GB (one process)": docs * clustered * COMPONENT_BYTES_PER_DOC / 1e9,
            "shuffle GB (disk)": shuffle / 1e9,
            "work shards TB": disk["work"] * total / 1e12, "token shards TB": disk["tokens"] * total / 1e12,
            "training shards TB": disk["train"] * total / 1e12,
        })
    return rows


def _plots(rows: list[dict[str, Any]], report: dict[str, Any], sizes: tuple[float, ...], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    stage_rows = [r for r in rows if "stage" in r and "seconds" in r]
    configs = ("1 worker", "2 workers", "2-node cluster")
    markers = {"1 worker": "o-", "2 workers": "s-", "2-node cluster": "D"}

    def series(config: str, stage: str, key: str) -> tuple[list[float], list[float]]:
        pts = [(r["size MB"], r[key]) for r in stage_rows
               if r["config"] == config and r["stage"] == stage and r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for config in configs:
        x, y = series(config, "whole chain", "MB/s per core")
        if x:
            axes[0].plot(x, y, markers[config], label=config)
    axes[0].set(xscale="log", xlabel="raw text (MB)", ylabel="raw MB/s per core", title="whole chain, per core")
    axes[0].set_ylim(bottom=0)
    axes[0].legend()
    for stage in ("ingest: per-file", "ingest: global dedup", "ingest: final shards", "mask", "audit"):
        x, y = series("1 worker", stage, "MB/s per core")
        axes[1].plot(x, y, "o-", label=stage)
    axes[1].set(xscale="log", yscale="log", xlabel="raw text (MB)", ylabel="raw MB/s per core",
                title="per stage, 1 worker")
    axes[1].legend(fontsize=8)
    for ax in axes:
        _size_ticks(ax, sizes)
    fig.tight_layout()
    fig.savefig(folder / "scale-throughput.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, config in zip(axes, ("1 worker", "2 workers")):
        for key, label, style in (("driver anon MB", "driver, anonymous", "C0o-"),
                                  ("driver MB", "driver, incl. mapped files", "C0o--"),
                                  ("worker anon MB", "largest Ray worker, anonymous", "C1s-"),
                                  ("worker MB", "largest Ray worker, incl. mapped files", "C1s--"),
                                  ("ray daemons MB", "largest Ray daemon", "C2^-")):
            x, y = series(config, "whole chain", key)
            ax.plot(x, y, style, label=label)
        x, y = series("2-node cluster", "whole chain", "driver anon MB")
        if config == "2 workers" and x:
            ax.plot(x, y, "kD", label="driver anonymous, 2-node cluster")
        ax.set(xscale="log", xlabel="raw text (MB)", ylabel="peak RSS (MB)", title=f"peak RSS per process, {config}")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        _size_ticks(ax, sizes)
    fig.tight_layout()
    fig.savefig(folder / "scale-memory.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 4.2))
    stages = ("ray start", "ingest: per-file", "ingest: global dedup", "ingest: final shards", "mip", "mask", "audit")
    labels, bottoms = [], []
    bars = [(size, config) for size in sizes for config in configs if config in report["sizes"][size]["configs"]]
    shares = {stage: [] for stage in stages}
    for size, config in bars:
        result = report["sizes"][size]["configs"][config]
        whole = _seconds(result, "whole chain")
        for stage in stages:
            shares[stage].append(100 * (_seconds(result, stage) or 0.0) / whole)
        labels.append(f"{size:g} MB\n{config}")
    bottoms = [0.0] * len(bars)
    for stage in stages:
        ax.bar(range(len(bars)), shares[stage], bottom=bottoms, label=stage)
        bottoms = [b + v for b, v in zip(bottoms, shares[stage])]
    ax.set_xticks(range(len(bars)), labels, fontsize=8)
    ax.set(ylabel="% of the chain's wall time", title="where the time goes")
    ax.legend(fontsize=8, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    fig.tight_layout()
    fig.savefig(folder / "scale-stages.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, who in ((axes[0], "driver anon MB", "driver"), (axes[1], "worker anon MB", "largest Ray worker")):
        for k, stage in enumerate(MEMORY_STAGES):
            for config, style in (("1 worker", "o-"), ("2 workers", "s--")):
                x, y = series(config, stage, key)
                if x:
                    ax.plot(x, y, f"C{k}{style}", label=f"{stage}, {config}")
        ax.set(xscale="log", xlabel="raw text (MB)", ylabel="peak anonymous RSS (MB)",
               title=f"{who}: peak anonymous memory per stage")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=6, ncol=2)
        _size_ticks(ax, sizes)
    fig.tight_layout()
    fig.savefig(folder / "scale-stage-memory.png", dpi=90)
    plt.close(fig)


def _size_ticks(ax: Any, sizes: tuple[float, ...]) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(list(sizes), [f"{x:g}" for x in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())


def replot(json_path: Path, folder: Path) -> dict[str, list[dict[str, Any]]]:
    """The plots again from a `--json` file of an earlier run; returns its tables, the acceptance and per-stage
    memory ones recomputed from the measurements (so a file from an older version gets today's rows)."""
    saved = json.loads(json_path.read_text())
    report = saved["report"]
    report["sizes"] = {float(k): v for k, v in report["sizes"].items()}
    sizes = tuple(sorted(report["sizes"]))
    _plots(saved["rows"], report, sizes, folder)
    return {"rows": saved["rows"], "checks": _summary_rows(report, sizes),
            "stage_memory": stage_memory_rows(saved["rows"], sizes), "projection": projection(report, sizes),
            "report": report}


# ------------------------------------------------------------------------------------------------- entry


def print_tables(rows: list[dict[str, Any]], checks: list[dict[str, Any]], memory: list[dict[str, Any]],
                 projected: list[dict[str, Any]], report: dict[str, Any]) -> None:
    from benchmarks.common import format_table

    print("\n## stages\n\n" + format_table(rows))
    steps = []
    for size, entry in report["sizes"].items():
        corpus = entry["corpus"]
        for config, result in entry["configs"].items():
            busy = result["ingest_busy_seconds"] or float("nan")
            dedup = result.get("dedup") or {}
            steps.append({"size MB": size, "config": config, "docs": corpus["docs"], "files": corpus["files"],
                          "planted copies": sum(s["exact_copies"] + s["near_copies"] for s in corpus["sources"].values()),
                          "dropped as duplicates": dedup.get("exact_dropped", 0) + dedup.get("near_dropped", 0),
                          "worker busy s": busy,
                          **{f"{name} %": 100 * t / busy for name, t in result["ingest_steps"].items()},
                          "work MB": result["bytes"]["work"] / MB, "token shards MB": result["bytes"]["tokens"] / MB,
                          "training shards MB": result["bytes"]["train"] / MB, "audit": result["audit_engine"]})
    print("\n## ingest per-file phase: worker time by step, and output sizes\n\n" + format_table(steps))
    print("\n## acceptance\n\n" + format_table(checks))
    print("\n## peak anonymous memory per stage window: driver and largest Ray worker\n\n" + format_table(memory))
    print("\n## projection: GLM-130B's 2.5 TB raw\n\n" + format_table(projected))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES_MB} MB, no plots")
    parser.add_argument("--sizes", nargs="+", type=float, help=f"MB of raw text per corpus (default {SIZES_MB})")
    parser.add_argument("--configs", nargs="+", metavar="CONFIG",
                        help="configurations to run, of " + ", ".join(repr(c) for c in CONFIGS)
                        + " (aliases 1, 2, cluster; default all)")
    parser.add_argument("--cluster-at", type=float, metavar="MB",
                        help="size at which the 2-node cluster runs (default the smallest)")
    parser.add_argument("--plots", type=Path, help=f"write scale-*.png here (default {DEFAULT_IMG} for the "
                                                   "default sizes)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="generate the corpora and write every output in DIR, and leave them there")
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="only redraw the plots (and print the tables) from a --json file")
    parser.add_argument("--chain", help=argparse.SUPPRESS)
    parser.add_argument("--dedup", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for mode, function in (("chain", run_chain), ("dedup", run_dedup_alone)):
        spec_path = getattr(args, mode)
        if spec_path:
            spec = json.loads(Path(spec_path).read_text())
            result = function(spec)
            Path(spec["result"]).write_text(json.dumps(result))
            return 0
    if args.replot:
        saved = replot(args.replot, args.plots or DEFAULT_IMG)
        print_tables(saved["rows"], saved["checks"], saved["stage_memory"], saved["projection"], saved["report"])
        return 0
    configs = resolve_configs(args.configs)
    rows, checks, projected, report = measure_all(
        quick=args.quick, sizes=tuple(args.sizes) if args.sizes else None, plots=args.plots, seed=args.seed,
        json_path=args.json, configs=configs, cluster_at=args.cluster_at, keep=args.keep)
    sizes = tuple(sorted(report["sizes"]))
    print_tables(rows, checks, stage_memory_rows(rows, sizes), projected, report)
    print(f"\n(measured in {report['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
