"""The ingest stage: raw files -> documents -> token shards per source, with a manifest, on Ray.

Three phases, each resumable and each deterministic whatever the number of workers:

1. **Per file** (Ray actors, one file per task): read -> normalize -> language ID -> quality ->
   tokenize, plus the exact-dedup hash and MinHash signature of every kept document. Each file's
   result is a complete "work shard" under `OUT/work/<file key>/`, written atomically and sealed by a
   `done.json` holding the file's drop counts. A rerun skips files whose `done.json` exists.
2. **Global dedup** (driver + Ray tasks over LSH partitions): exact duplicates by text hash, then
   MinHash LSH near-duplicates, across all sources. The first occurrence in input order survives an
   exact duplicate; near-duplicate clusters keep one survivor by the documented rule (pipeline/dedup).
3. **Final shards**: the kept documents of each source, in input order, copied into
   `OUT/<source>/<source>-NNNNN.{bin,idx,...}`, then `OUT/manifest.json` (written last).

Tokenizing before dedup reads every raw file exactly once; the price is tokenizing documents that
are later dropped as duplicates (a few percent on web data).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from common import storage
from common.atomic import atomic_write_json
from common.config import to_dict
from common.errors import ConfigError, GLMCorpusError
from common.memory import releasing_map, stage_memory
from common.progress import Progress
from pipeline import special_tokens
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.exact import text_hash
from pipeline.document import DropLog
from pipeline.langid import LangIdConfig
from pipeline.quality import QualityConfig
from shards.token_shards import TokenShardWriter

log = logging.getLogger(__name__)

WORK_DIR = "work"
DONE_FILE = "done.json"
MANIFEST = "manifest.json"
MAX_FILE_RETRIES = 3
"""Times a file is resubmitted after its worker's node was lost (beyond Ray's own task retries)."""
SPOOL_DIR = "spool"
STAGE_ROOT = "glm-corpus-stage"
DETECT_PREFIX_BYTES = 256 * 1024
"""Bytes of a remote file read to detect its format: detection decompresses 64 KiB, and a zstd block
(up to 128 KiB) or a few gzip blocks more than cover that."""
SOURCE_OF_FORMAT = {"pile": "pile", "wudao": "wudao", "warc": "crawl", "wet": "crawl", "jsonl": "crawl"}
WORK_EXTRA_SCHEMA = [
    pa.field("text_hash", pa.binary(16)),
    pa.field("text_chars", pa.int64()),
    pa.field("meta", pa.string()),
]


@dataclasses.dataclass
class IngestConfig:
    """Everything `glm-corpus ingest` needs; loadable from the `ingest` section of a run config."""

    inputs: list[str] = dataclasses.field(default_factory=list)
    out: str = ""
    tokenizer: str | None = None
    workers: int = 2
    ray_address: str | None = None
    object_store_mb: int = 256
    format: str | None = None
    strict: bool = False
    batch_size: int = 256
    shard_max_tokens: int = 1 << 28
    keep_work: bool = False
    """Keep the per-file work shards (OUT/work) after the final shards are written."""
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    """Optional source name per input path (prefix match); default: by format (pile, wudao, crawl)."""
    langid: LangIdConfig = dataclasses.field(default_factory=LangIdConfig)
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    dedup: DedupConfig = dataclasses.field(default_factory=DedupConfig)


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One input file: `path` is a local path or, for a remote file, its URI (and so its documents' path)."""

    path: str
    format: str
    source: str
    size: int

    @property
    def key(self) -> str:
        """A directory name for this file's work: readable, and unique by the path's hash."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(self.path).name)[:60]
        return f"{stem}-{xxhash.xxh64_hexdigest(self.path.encode())[:12]}"


def discover_inputs(config: IngestConfig) -> list[InputFile]:
    """Expand directories and URI prefixes, detect formats and sources; sorted by path (or URI) so the
    order is deterministic. `file://` URIs are local paths; remote files are listed through pyarrow.fs."""
    from pipeline.readers.detect import detect_format

    sizes: dict[str, int] = {}
    for item in config.inputs:
        if storage.is_remote(item):
            sizes.update((uri, size) for uri, size in storage.list_files(item) if not _name(uri).startswith("."))
            continue
        path = Path(storage.local_path(item))
        if path.is_dir():
            sizes.update((str(p), p.stat().st_size) for p in path.rglob("*")
                         if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            sizes[str(path)] = path.stat().st_size
        else:
            raise ConfigError(f"input {item} does not exist")
    files = []
    for path in sorted(sizes):
        if Path(_name(path)).suffix in {".md", ".html", ".py"}:  # documentation beside data files
            continue
        remote = storage.is_remote(path)
        fmt = config.format or (_detect_remote(path) if remote else detect_format(path))
        if fmt is None:
            log.warning("skipping %s: not a recognised input format (use --format to force one)", path)
            continue
        source = SOURCE_OF_FORMAT[fmt]
        for prefix, name in config.sources.items():
            if path.startswith(prefix):
                source = name
        files.append(InputFile(path, fmt, source, sizes[path]))
    if not files:
        raise ConfigError(f"no input files found in {', '.join(config.inputs)}")
    return files


def _name(path: str) -> str:
    """The file name of a local path or URI (without a URI's query)."""
    return PurePosixPath(urlsplit(path).path).name if storage.is_remote(path) else Path(path).name


def _detect_remote(uri: str) -> str | None:
    """`detect_format` on the first DETECT_PREFIX_BYTES of a remote file, saved under the file's own name
    (names matter to detection), so a remote file is detected as its local copy would be."""
    import tempfile

    from pipeline.readers.detect import detect_format

    with tempfile.TemporaryDirectory(prefix="glm-corpus-detect-") as tmp:
        head = Path(tmp) / (_name(uri) or "input")
        head.write_bytes(storage.read_prefix(uri, DETECT_PREFIX_BYTES))
        return detect_format(head)


def _read_input(reader: Any, file: InputFile, work_root: Path, drops: DropLog, stats: Any) -> Iterator[Any]:
    """The documents of one input file. A remote file is first copied (streamed) to a spool file under
    the work directory and read from there, so readers, offsets and drop reasons are those of a local
    file, while documents and drops name the URI; the spool file is removed once the file is read."""
    if not storage.is_remote(file.path):
        yield from reader.read(file.path, drops, stats)
        return
    spool = work_root / SPOOL_DIR / file.key
    try:
        storage.download(file.path, spool, expected_size=file.size)
        yield from reader.read(file.path, drops, stats, local_path=spool)
    finally:
        spool.unlink(missing_ok=True)


class FileWorker:
    """Processes whole files; one instance per Ray worker holds the loaded models (never pickled)."""

    def __init__(self, config_dict: dict[str, Any]) -> None:
        from common.config import from_mapping

        self.config = from_mapping(IngestConfig, config_dict)
        self._models: dict[str, Any] = {}

    def _get(self, name: str) -> Any:
        if name not in self._models:
            if name == "tokenizer":
                from pipeline.tokenizer import GLMTokenizer

                self._models[name] = GLMTokenizer(self.config.tokenizer)
            elif name == "minhash":
                from pipeline.dedup.signatures import SignatureMaker

                self._models[name] = SignatureMaker(self.config.dedup)
        return self._models[name]

    def process(self, file: InputFile, work_root: str) -> dict[str, Any]:
        """Run the per-document steps on one file and write its work shard; return its summary."""
        from pipeline.langid import LangIdStep
        from pipeline.normalize import NormalizeStep
        from pipeline.quality import QualityStep
        from pipeline.readers import ReadStats, make_reader

        config = self.config
        work = Path(work_root) / file.key
        started = time.perf_counter()
        drops = DropLog(strict=config.strict)
        reader = make_reader(file.format, source=file.source)
        read_stats = ReadStats()
        steps = [NormalizeStep(), LangIdStep(config.langid), QualityStep(config.quality)]
        docs = _read_input(reader, file, Path(work_root), drops, read_stats)
        for step in steps:
            docs = step.run(docs, drops)

        tokenizer = self._get("tokenizer")
        signer = self._get("minhash") if config.dedup.enabled else None
        signatures: list[np.ndarray] = []
        langs: Counter[str] = Counter()
        tokens_out = 0
        chars_out = 0
        writer = TokenShardWriter(work / "docs", extra_schema=WORK_EXTRA_SCHEMA)
        try:
            batch: list[Any] = []

            def flush() -> None:
                nonlocal tokens_out, chars_out
                if not batch:
                    return
                texts = [doc.text for doc in batch]
                encoded = tokenizer.encode_batch(texts)
                if signer is not None:
                    signatures.append(signer.signatures(texts))
                for doc, ids in zip(batch, encoded):
                    ids = np.append(np.asarray(ids, dtype=np.int32), np.int32(special_tokens.EOD))
                    writer.add(
                        ids,
                        doc_id=doc.doc_id,
                        source=doc.source,
                        input_file=doc.input_file,
                        offset=doc.offset,
                        lang=doc.lang,
                        quality=doc.quality,
                        text_hash=text_hash(doc.text),
                        text_chars=len(doc.text),
                        meta=orjson.dumps(doc.meta, option=orjson.OPT_SORT_KEYS).decode(),
                    )
                    langs[doc.lang] += 1
                    tokens_out += len(ids)
                    chars_out += len(doc.text)
                batch.clear()

            for doc in docs:
                doc.source = file.source
                batch.append(doc)
                if len(batch) >= config.batch_size:
                    flush()
            flush()
        except BaseException:
            writer.abort()
            raise
        writer.close()
        if signer is not None:
            matrix = np.concatenate(signatures) if signatures else np.zeros((0, config.dedup.num_perm), np.uint32)
            _save_npy(work / "signatures.npy", matrix)
        summary = {
            "file": dataclasses.asdict(file),
            "docs_in": len(writer) + drops.total(),
            "docs_kept": len(writer),
            "bytes_in": file.size,
            "chars_out": chars_out,
            "tokens_out": tokens_out,
            "langs": dict(sorted(langs.items())),
            "drops": drops.to_dict(),
            # The manifest's stage chain: read -> normalize -> langid -> quality -> tokenize. Read and
            # tokenize are not Steps, so their text bytes are those the next (previous) step measured.
            "steps": {
                "read": {
                    "name": "read", "docs_in": read_stats.records_seen, "docs_out": read_stats.docs_yielded,
                    "bytes_in": file.size, "bytes_out": steps[0].stats.bytes_in,
                    "dropped": dict(sorted(read_stats.dropped.items())),
                },
                **{step.name: step.stats.to_dict() for step in steps},
                "tokenize": {
                    "name": "tokenize", "docs_in": len(writer), "docs_out": len(writer),
                    "bytes_in": steps[-1].stats.bytes_out, "bytes_out": steps[-1].stats.bytes_out,
                    "tokens_out": tokens_out, "dropped": {},
                },
            },
            "reader": read_stats.to_dict(),
            "seconds": round(time.perf_counter() - started, 3),
        }
        atomic_write_json(work / DONE_FILE, summary)
        from common.memory import release_memory

        release_memory()  # a long-lived actor hands each file's freed heap back before the next file
        return summary


def _save_npy(path: Path, array: np.ndarray) -> None:
    from common.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def run_ingest(config: IngestConfig, progress: bool = True, stage: str | None = None) -> dict[str, Any]:
    """Run (or resume) the whole ingest stage; return the manifest.

    `config.out` may be a remote URI: the run is then staged locally (`stage`, default a directory under
    the system temp named by the URI) and uploaded, see `_run_ingest_remote`.
    """
    if not config.out:
        raise ConfigError("ingest needs an output directory (--out)")
    if storage.is_remote(config.out):
        return _run_ingest_remote(config, progress, stage)
    if storage.scheme(config.out) == "file":
        config = dataclasses.replace(config, out=storage.local_path(config.out))
    from pipeline.tokenizer import GLMTokenizer

    GLMTokenizer(config.tokenizer)  # fail now, clearly, rather than inside every worker
    out = Path(config.out)
    work_root = out / WORK_DIR
    files = discover_inputs(config)
    _check_writable(out)
    started = time.perf_counter()
    if (out / MANIFEST).exists():
        previous = read_manifest(out)
        if previous.get("inputs") == [dataclasses.asdict(f) for f in files] and previous.get("config") == to_dict(config):
            log.info("%s is complete for these inputs and config: nothing to do", out / MANIFEST)
            return previous

    pending = [f for f in files if not _done(work_root / f.key, f)]
    if len(pending) < len(files):
        log.info("resuming: %d of %d files already processed", len(files) - len(pending), len(files))
    phases: dict[str, float] = {}
    if pending:
        with stage_memory():
            _process_files(config, pending, work_root, progress)
    phases["files"] = time.perf_counter() - started
    summaries = [orjson.loads((work_root / f.key / DONE_FILE).read_bytes()) for f in files]

    with stage_memory():
        dedup = _deduplicate(config, files, work_root, progress) if config.dedup.enabled else None
    phases["dedup"] = time.perf_counter() - started - phases["files"]
    with stage_memory():
        manifest = _write_final_shards(config, files, summaries, dedup, work_root, out, progress)
    phases["write"] = time.perf_counter() - started - phases["files"] - phases["dedup"]
    log.info("ingest phases (s): %s", {k: round(v, 2) for k, v in phases.items()})
    manifest["inputs"] = [dataclasses.asdict(f) for f in files]
    atomic_write_json(out / MANIFEST, manifest)
    if not config.keep_work:
        shutil.rmtree(work_root, ignore_errors=True)
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    return manifest


def _run_ingest_remote(config: IngestConfig, progress: bool, stage: str | None) -> dict[str, Any]:
    """Run ingest into a local stage directory, then upload its outputs to the URI `config.out`.

    A previous manifest.json is deleted first and the new one is uploaded last, so a reader that sees a
    manifest sees a complete run (S3 and GCS objects appear whole when their upload completes; HDFS
    files do not). The stage keeps the work shards and done.json files: a rerun with the same stage
    resumes. The default stage is removed after the upload (unless keep_work); a given one is kept.
    """
    import tempfile

    storage.check_bucket(config.out)
    target = storage.join(config.out, MANIFEST)
    previous = storage.read_bytes(target)
    if previous is not None:
        manifest = orjson.loads(previous)
        if manifest.get("config") == to_dict(config) and \
                manifest.get("inputs") == [dataclasses.asdict(f) for f in discover_inputs(config)]:
            log.info("%s is complete for these inputs and config: nothing to do", target)
            return manifest
    default_stage = Path(tempfile.gettempdir()) / STAGE_ROOT / xxhash.xxh64_hexdigest(config.out.encode())
    stage_dir = Path(stage) if stage else default_stage
    result = run_ingest(dataclasses.replace(config, out=str(stage_dir)), progress)
    manifest = _restaged(orjson.loads((stage_dir / MANIFEST).read_bytes()), str(stage_dir), config.out)
    manifest.update(out=config.out, config=to_dict(config))
    storage.delete(target)
    for path in sorted(stage_dir.rglob("*")):
        relative = path.relative_to(stage_dir)
        if path.is_file() and relative.parts[0] != WORK_DIR and relative.as_posix() != MANIFEST and \
                not any(part.startswith(".") for part in relative.parts):  # hidden: atomic-write leftovers
            storage.upload(path, storage.join(config.out, relative.as_posix()))
    storage.write_bytes(target, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    if not stage and not config.keep_work:
        shutil.rmtree(stage_dir, ignore_errors=True)
    if "seconds" in result:
        manifest["seconds"] = result["seconds"]
    return manifest


def _restaged(value: Any, stage: str, uri: str) -> Any:
    """`value` with every path under the stage directory (the dedup listing's, say) as a URI under `uri`."""
    if isinstance(value, dict):
        return {key: _restaged(item, stage, uri) for key, item in value.items()}
    if isinstance(value, list):
        return [_restaged(item, stage, uri) for item in value]
    if isinstance(value, str) and value.startswith(stage + "/"):
        return storage.join(uri, value[len(stage) + 1 :])
    return value


def _check_writable(out: Path) -> None:
    """Fail before starting Ray if the output directory cannot be created or written."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write the output directory {out}: {exc.strerror or exc}") from None


def _done(work: Path, file: InputFile) -> bool:
    done = work / DONE_FILE
    if not done.exists():
        return False
    recorded = orjson.loads(done.read_bytes()).get("file", {})
    return recorded.get("size") == file.size and recorded.get("format") == file.format


def _process_files(config: IngestConfig, files: list[InputFile], work_root: Path, progress: bool) -> None:
    from pipeline.ray_runtime import ensure_ray

    ray = ensure_ray(config.workers, config.ray_address, config.object_store_mb)
    config_dict = to_dict(config)
    # SPREAD: on a cluster one actor per node before doubling up, so a lost node costs one actor, which
    # Ray restarts elsewhere (max_restarts) before retrying its file (max_task_retries).
    actor_cls = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2,
                           scheduling_strategy="SPREAD")(FileWorker)
    workers = [actor_cls.remote(config_dict) for _ in range(max(1, min(config.workers, len(files))))]
    # Largest files first so the last task to finish is a small one.
    queue = sorted(files, key=lambda f: (-f.size, f.path))
    in_flight: dict[Any, tuple[Any, InputFile]] = {}
    retries: dict[str, int] = {}
    with Progress("ingest", total=len(files), unit="file", enabled=progress) as bar:
        idle = list(workers)
        while queue or in_flight:
            while queue and idle:
                worker = idle.pop()
                file = queue.pop(0)
                in_flight[worker.process.remote(file, str(work_root))] = (worker, file)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            worker, file = in_flight.pop(ready[0])
            try:
                summary = ray.get(ready[0])
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.ActorDiedError) as exc:
                # The actor's node went away mid-file. A file's work is sealed atomically (done.json last),
                # so processing it again is safe: requeue it, on a fresh actor if this one is gone for good.
                retries[file.path] = retries.get(file.path, 0) + 1
                if retries[file.path] > MAX_FILE_RETRIES:
                    raise GLMCorpusError(f"{file.path}: its worker was lost {retries[file.path]} times: {exc}") from None
                log.warning("worker lost while processing %s (%s); retrying the file", file.path, type(exc).__name__)
                if isinstance(exc, ray.exceptions.ActorDiedError):
                    workers.remove(worker)
                    worker = actor_cls.remote(config_dict)
                    workers.append(worker)
                queue.insert(0, file)
                idle.append(worker)
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, GLMCorpusError) else None
                if cause is not None:
                    raise cause from None
                if isinstance(exc.cause, OSError):  # disk full, permissions: a clear message, no traceback
                    where = exc.cause.filename or file.path
                    raise GLMCorpusError(f"{where}: {exc.cause.strerror or exc.cause}") from None
                raise
            idle.append(worker)
            bar.update(1, bytes=file.size, docs=summary["docs_in"], tokens=summary["tokens_out"])
    for worker in workers:
        ray.kill(worker)


def _deduplicate(config: IngestConfig, files: list[InputFile], work_root: Path, progress: bool) -> dict[str, Any]:
    """Global exact + near dedup over every file's work shard; writes each shard's decisions beside it
    (`pipeline.dedup.global_dedup.DECISIONS`) and `OUT/dedup/dropped.parquet`; returns the summary.

    Files are numbered for dedup by `dedup.source_priority`, then path, so a copy in a curated source
    survives its crawled duplicate.
    """
    from pipeline.dedup.global_dedup import deduplicate_work_shards

    priority = {name: rank for rank, name in enumerate(config.dedup.source_priority)}
    order = sorted(range(len(files)),
                   key=lambda i: (priority.get(files[i].source, len(priority)), files[i].source, files[i].path))
    return deduplicate_work_shards(
        config.dedup,
        [work_root / files[i].key for i in order],
        [files[i].source for i in order],
        out=Path(config.out) / "dedup",
        workers=config.workers,
        progress=progress,
    )


def _write_final_shards(
    config: IngestConfig,
    files: list[InputFile],
    summaries: list[dict[str, Any]],
    dedup: dict[str, Any] | None,
    work_root: Path,
    out: Path,
    progress: bool,
) -> dict[str, Any]:
    """Plan each source's final shards in the driver, file by file, and write them as tasks
    (pipeline.final_shards); aggregate the manifest from the files' summaries and the shards' counts."""
    import functools
    from collections import deque

    from pipeline.dedup.global_dedup import ray_map
    from pipeline.final_shards import plan_source, write_shard

    sources: dict[str, dict[str, Any]] = {}
    by_source: dict[str, list[int]] = {}
    for i, file in enumerate(files):
        by_source.setdefault(file.source, []).append(i)
    for source in sorted(by_source):
        entry = sources[source] = {
            "docs_in": 0, "docs_out": 0, "dropped": Counter(), "bytes_in": 0, "tokens_out": 0,
            "langs": Counter(), "files": [], "shards": [], "stages": {},
        }
        for i in by_source[source]:
            file, summary = files[i], summaries[i]
            entry["docs_in"] += summary["docs_in"]
            entry["bytes_in"] += summary["bytes_in"]
            entry["dropped"].update(summary["drops"]["dropped"])
            for name, stats in summary["steps"].items():
                agg = entry["stages"].setdefault(
                    name, {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0, "dropped": Counter()}
                )
                for key in ("docs_in", "docs_out", "bytes_in", "bytes_out", "tokens_out"):
                    if key in stats:
                        agg[key] = agg.get(key, 0) + stats[key]
                agg["dropped"].update(stats.get("dropped", {}))
                if "seconds" in stats:  # read and tokenize run interleaved with the steps: not timed apart
                    agg["seconds"] = round(agg.get("seconds", 0.0) + stats["seconds"], 6)
            entry["files"].append(file.path)

    kept = sum(summary["docs_kept"] for summary in summaries)
    distributed = config.workers > 1 and kept >= config.dedup.distributed_min_docs
    mapper = ray_map(config.workers) if distributed else releasing_map
    job_sources: deque[str] = deque()
    with Progress("write shards", total=len(files), unit="file", enabled=progress) as bar:

        def jobs() -> Iterator[Any]:
            for source in sorted(by_source):
                work_dirs = [str(work_root / files[i].key) for i in by_source[source]]
                for _, job, drops in plan_source(source, work_dirs, config.shard_max_tokens, dedup is not None):
                    sources[source]["dropped"].update(drops)
                    if job is not None:
                        job_sources.append(source)
                        yield job
                bar.update(len(work_dirs))

        for result in mapper(functools.partial(write_shard, str(out), dedup is not None), jobs()):
            entry = sources[job_sources.popleft()]
            entry["shards"].append(result["prefix"])
            entry["docs_out"] += result["docs"]
            entry["tokens_out"] += result["tokens"]
            entry["langs"].update(result["langs"])
    for entry in sources.values():
        entry["dropped"] = dict(sorted(entry["dropped"].items()))
        entry["langs"] = dict(sorted(entry["langs"].items()))
        for stage in entry["stages"].values():
            stage["dropped"] = dict(sorted(stage["dropped"].items()))
    totals = {
        key: sum(entry[key] for entry in sources.values())
        for key in ("docs_in", "docs_out", "bytes_in", "tokens_out")
    }
    manifest = {
        "out": str(out),
        "tokenizer": config.tokenizer,
        "sources": sources,
        "totals": totals,
        "drop_examples": {
            Path(f.path).name: s["drops"]["examples"] for f, s in zip(files, summaries) if s["drops"]["examples"]
        },
        "dedup": dedup if dedup is not None else {"enabled": False},
        "config": to_dict(config),
    }
    return manifest


def read_manifest(out: str | Path) -> dict[str, Any]:
    return orjson.loads((Path(out) / MANIFEST).read_bytes())


def write_dropped_listing(path: Path, rows: dict[str, list[Any]]) -> None:
    from common.atomic import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(pa.table(rows), tmp, compression="zstd")
