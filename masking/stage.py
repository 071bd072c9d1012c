"""The masking stage: token shards (+ MIP token shards) -> training shards of 2048-token GLM rows, + stats.

    summary = run_masking("out/tokens", "out/train", MaskingConfig(seed=7), mip="out/mip")

The driver plans rows sequentially (masking/packing.py: cheap, reads only document lengths) one shard
(`rows_per_shard` rows) at a time and hands each planned shard to a worker that builds and writes it
(`build_shard`: masking/segments.py, block by block, one RNG per block keyed by (seed, block)). Workers are
Ray tasks (`workers > 1`, Ray embedded unless already initialized) or the driver itself (`workers = 1`, or
fewer text tokens to mask than `ray_min_tokens`: below that Ray costs more than it saves); both write
byte-identical shards, because nothing a worker does depends on which worker it is or when it runs.

Driver memory per document: the planner's int32 document lengths and one int32 permutation per source
(masking/mixing.py); building in this process adds the int32 token offsets and the `doc_id` column as one
Arrow array per source (masking/store.py). Tokens and `.idx` arrays stay memory-mapped.
The manifest (`training_shards.json`) and `stats.json` are written last, atomically.

A rerun with the same inputs and config finds the manifest and returns its stats without rebuilding
(`force=True` rebuilds).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from common.atomic import atomic_write_json
from common.config import load_config
from common.errors import ConfigError, ShardFormatError
from common.memory import releasing_map, stage_memory
from common.progress import Progress
from masking.config import MaskingConfig
from masking.gmask import suffix_histogram
from masking.mixing import MipStream, TextStream, resolve_weights
from masking.packing import PlanChunk, Planner
from masking.segments import Sources, block_generator, build_block
from masking.stats import SUFFIX_BINS, MaskingStats, render
from masking.store import clear_cache, open_store
from shards.token_shards import CHECKSUM_SUFFIX, IDX_SUFFIX
from shards.training_shards import (
    MANIFEST,
    SHARD_PREFIX,
    SHARD_SUFFIXES,
    TrainingShardWriter,
    read_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)

STATS_FILE = "stats.json"
DEFAULT_MIP_SHARE = 0.05
MIP_PLAN_FILE = "mip-plan.json"


# ------------------------------------------------------------------------------------------------- inputs


def _has_shards(directory: Path) -> bool:
    return any(directory.glob("*" + IDX_SUFFIX))


def discover_text_sources(tokens: str | Path) -> tuple[list[str], list[str]]:
    """(names, directories) of the text sources: the sources of DIR/manifest.json (the pipeline's output), else
    DIR/<source>/ per subdirectory holding shards (the ingest's `work/` scratch excepted), or DIR itself as one
    source when its shards sit directly in it."""
    tokens = Path(tokens)
    if not tokens.is_dir():
        raise ConfigError(f"--tokens {tokens}: no such directory")
    manifest = tokens / "manifest.json"
    if manifest.is_file():
        sources = orjson.loads(manifest.read_bytes()).get("sources")
        if isinstance(sources, dict):
            names = sorted(name for name in sources if _has_shards(tokens / name))
            if names:
                return names, [str(tokens / name) for name in names]
    subdirs = sorted(
        p for p in tokens.iterdir() if p.is_dir() and p.name != "work" and any(p.rglob("*" + IDX_SUFFIX))
    )
    if subdirs:
        return [p.name for p in subdirs], [str(p) for p in subdirs]
    if _has_shards(tokens):
        return [tokens.name], [str(tokens)]
    raise ShardFormatError(str(tokens), "no token shards (*.idx) found", "run `glm-corpus ingest` first")


def discover_mip(mip: str | Path) -> Path:
    """The directory holding the MIP token shards (DIR/shards/ as `glm-corpus mip` writes it, or DIR)."""
    mip = Path(mip)
    for candidate in (mip / "shards", mip):
        if candidate.is_dir() and any(candidate.rglob("*" + IDX_SUFFIX)):
            return candidate
    raise ShardFormatError(str(mip), "no MIP token shards (*.idx) found", "run `glm-corpus mip` first")


def resolve_mip_share(config: MaskingConfig, mip: str | Path | None) -> float:
    """config.mip_share, else the MIP plan's token_ratio, else 5%."""
    if mip is None:
        return 0.0
    if config.mip_share is not None:
        return config.mip_share
    plan = Path(mip) / MIP_PLAN_FILE
    if plan.is_file():
        ratio = orjson.loads(plan.read_bytes()).get("token_ratio")
        if isinstance(ratio, (int, float)) and 0 <= ratio < 1:
            return float(ratio)
    return DEFAULT_MIP_SHARE


def _fingerprint(paths: list[str]) -> list[dict[str, Any]]:
    """What the inputs are, cheaply: every shard prefix with its recorded checksum."""
    out = []
    for path in paths:
        for record in sorted(Path(path).rglob("*" + CHECKSUM_SUFFIX)):
            data = orjson.loads(record.read_bytes())
            out.append(
                {
                    "shard": str(record)[: -len(CHECKSUM_SUFFIX)],
                    "bin_xxh3_128": data.get("bin_xxh3_128"),
                    "sequences": data.get("sequences"),
                }
            )
    return out


# ------------------------------------------------------------------------------------------------- workers


@dataclasses.dataclass
class ShardJob:
    """Everything one worker needs to build one training shard."""

    index: int
    out: str
    text_paths: list[str]
    text_names: list[str]
    mip_path: str | None
    config: MaskingConfig
    chunk: PlanChunk


_SOURCES: dict[tuple[Any, ...], Sources] = {}


def _sources(job: ShardJob) -> Sources:
    key = (tuple(job.text_paths), tuple(job.text_names), job.mip_path)
    text = open_store(job.text_paths)
    mip = open_store([job.mip_path]) if job.mip_path else None
    cached = _SOURCES.get(key)
    if cached is None or cached.text is not text or cached.mip is not mip:
        cached = _SOURCES[key] = Sources(text, job.text_names, mip)
    return cached


def build_shard(job: ShardJob) -> dict[str, Any]:
    """Build and write one training shard; return its manifest entry and the builders' statistics."""
    config = job.config
    sources = _sources(job)
    chunk = job.chunk
    writer = TrainingShardWriter(job.out, job.index, chunk.row_length, chunk.first_row)
    observed = np.zeros(SUFFIX_BINS, dtype=np.int64)
    expected = np.zeros(SUFFIX_BINS, dtype=np.float64)
    count = 0
    try:
        for lo in range(0, chunk.n_rows, config.rows_per_block):
            hi = min(lo + config.rows_per_block, chunk.n_rows)
            block = (chunk.first_row + lo) // config.rows_per_block
            built = build_block(chunk.rows(lo, hi), sources, config, block_generator(config.seed, block))
            writer.add(
                built.tokens,
                built.row_segment_count,
                built.segments,
                built.spans,
                built.provenance,
                built.pad_tokens,
            )
            obs, exp = suffix_histogram(
                built.gmask_window,
                built.gmask_suffix,
                config.gmask_suffix_min_fraction,
                config.gmask_min_prefix,
                bins=SUFFIX_BINS,
            )
            observed += obs
            expected += exp
            count += int(obs.sum())
    except BaseException:
        writer.abort()
        raise
    return {
        "index": job.index,
        "entry": writer.close(),
        "suffix_observed": observed,
        "suffix_expected": expected,
        "suffix_count": count,
    }


class _InProcess:
    """Shards built in this process, one after another, handing freed heap back after each."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def submit(self, job: ShardJob) -> None:
        self.results.extend(releasing_map(build_shard, [job]))

    def drain(self, wait_all: bool) -> list[dict[str, Any]]:
        done, self.results = self.results, []
        return done

    def close(self) -> None:
        pass


class _RayPool:
    """Ray tasks over shards, at most `2 x workers` in flight (the driver keeps planning meanwhile)."""

    def __init__(self, workers: int, object_store_mb: int) -> None:
        from pipeline.ray_runtime import ensure_ray

        self.ray = ensure_ray(workers, object_store_mb=object_store_mb)
        self.remote = self.ray.remote(num_cpus=1, max_retries=3)(build_shard)
        self.limit = 2 * workers
        self.pending: list[Any] = []

    def submit(self, job: ShardJob) -> None:
        self.pending.append(self.remote.remote(job))

    def drain(self, wait_all: bool) -> list[dict[str, Any]]:
        out = []
        while self.pending and (wait_all or len(self.pending) >= self.limit):
            ready, self.pending = self.ray.wait(self.pending, num_returns=1)
            out.extend(self.ray.get(ready))
        return out

    def close(self) -> None:
        for ref in self.pending:
            self.ray.cancel(ref, force=True)


# -------------------------------------------------------------------------------------------------- driver


@stage_memory()
def run_masking(
    tokens: str | Path,
    out: str | Path,
    config: MaskingConfig | None = None,
    mip: str | Path | None = None,
    *,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Build training shards under `out` from the token shards under `tokens` (and MIP shards under `mip`).

    Returns the stats report (also written to out/stats.json)."""
    try:
        return _run_masking(tokens, out, config, mip, progress=progress, force=force)
    finally:
        # This process's stores (per-document lengths, offsets, ids) go with the stage; a Ray worker's are
        # kept for the next shard task it runs.
        _SOURCES.clear()
        clear_cache()


def _run_masking(
    tokens: str | Path,
    out: str | Path,
    config: MaskingConfig | None,
    mip: str | Path | None,
    *,
    progress: bool,
    force: bool,
) -> dict[str, Any]:
    config = (config or MaskingConfig()).validate()
    out = Path(out)
    names, paths = discover_text_sources(tokens)
    mip_path = str(discover_mip(mip)) if mip is not None else None
    mip_share = resolve_mip_share(config, mip)
    inputs = {
        "tokens": str(tokens),
        "sources": dict(zip(names, paths)),
        "mip": mip_path,
        "fingerprint": _fingerprint(paths + ([mip_path] if mip_path else [])),
    }
    if not force and (out / MANIFEST).exists() and (out / STATS_FILE).exists():
        try:
            manifest = read_manifest(out)
        except ShardFormatError:
            manifest = {}
        if manifest.get("config") == config.output_defining() and manifest.get("inputs") == inputs:
            report = orjson.loads((out / STATS_FILE).read_bytes())
            report["skipped"] = True
            log.info("training shards in %s are up to date; skipping (force=True rebuilds)", out)
            return report

    started = time.perf_counter()
    text_store = open_store(paths)
    lengths = [text_store.lengths(i) for i in range(len(paths))]
    source_tokens = [int(x.sum()) for x in lengths]
    weights = resolve_weights(names, source_tokens, config.source_weights)
    budget = (
        float("inf")
        if config.rows is not None
        else config.epochs * sum(t for t, w in zip(source_tokens, weights) if w > 0)
    )
    text = TextStream(lengths, weights, config.shuffle_seed, budget)
    mip_stream, dataset_of, datasets = None, None, []
    if mip_path is not None:
        mip_store = open_store([mip_path])
        mip_columns = mip_store.sources[0].column_names
        if "prompt_len" not in mip_columns:
            raise ShardFormatError(
                mip_path,
                "MIP shards lack the provenance column 'prompt_len'",
                "build them with `glm-corpus mip`",
            )
        dataset_column = "dataset" if "dataset" in mip_columns else "source"
        datasets, dataset_of = np.unique(
            np.array(mip_store.column(0, dataset_column).to_pylist(), dtype=object), return_inverse=True
        )
        datasets = [str(d) for d in datasets]
        mip_stream = MipStream(
            mip_store.lengths(0),
            mip_store.column(0, "prompt_len").to_numpy(zero_copy_only=False),
            config.shuffle_seed,
            config.mip_repeat,
            config.row_length,
            config.mip_min_prompt,
        )
    planner = Planner(config, text, mip_stream, mip_share)
    stats = MaskingStats(config, names, datasets)
    out.mkdir(parents=True, exist_ok=True)

    planned_tokens = config.rows * config.row_length if config.rows is not None else budget
    on_ray = config.workers > 1 and planned_tokens >= config.ray_min_tokens
    if config.workers > 1 and not on_ray:
        log.info(
            "masking %d text tokens in this process (< ray_min_tokens %d): Ray would cost more than it saves",
            planned_tokens,
            config.ray_min_tokens,
        )
    pool = _RayPool(config.workers, config.object_store_mb) if on_ray else _InProcess()
    built: dict[int, dict[str, Any]] = {}
    expected_rows = config.rows
    bar = Progress("mask", total=expected_rows, unit="row", enabled=progress)

    def collect(results: list[dict[str, Any]]) -> None:
        for result in results:
            built[result["index"]] = result
            bar.update(result["entry"]["rows"], tokens=result["entry"]["rows"] * config.row_length)

    try:
        index = 0
        while (chunk := planner.plan(config.rows_per_shard)) is not None:
            stats.add_plan(chunk, dataset_of)
            pool.submit(ShardJob(index, str(out), paths, names, mip_path, config, chunk))
            index += 1
            collect(pool.drain(wait_all=False))
        collect(pool.drain(wait_all=True))
    except BaseException:
        pool.close()
        bar.close()
        raise
    bar.close()
    if not built:
        raise ConfigError("no rows were planned: the token shards hold no text")
    # Shards finish in any order under Ray; their float statistics are summed in shard order so that
    # stats.json, like the shards, is the same for any number of workers.
    entries = [built[index]["entry"] for index in sorted(built)]
    for index in sorted(built):
        result = built[index]
        stats.add_build(result["suffix_observed"], result["suffix_expected"], result["suffix_count"])

    seconds = time.perf_counter() - started
    manifest = write_manifest(
        out,
        row_length=config.row_length,
        shards=entries,
        extra={"config": config.output_defining(), "inputs": inputs},
    )
    _remove_stale_shards(out, {entry["name"] for entry in entries})
    planner_summary = planner.summary()
    planner_summary["text_epochs_started"] = dict(zip(names, planner_summary["text_epochs_started"]))
    report = stats.report(
        planner_summary, mip_share, mip_exhausted=bool(mip_stream and mip_stream.peek() is None)
    )
    report.update(
        {
            "out": str(out),
            "shards": len(entries),
            "bytes": manifest["bytes"],
            "bytes_per_token": manifest["bytes_per_token"],
            "seconds": round(seconds, 3),
            "tokens_per_second": report["tokens"] / max(seconds, 1e-9),
            "workers": config.workers,
        }
    )
    atomic_write_json(out / STATS_FILE, report)
    return report


def _remove_stale_shards(out: Path, keep: set[str]) -> None:
    """Shards of an earlier, larger run in the same directory (not in the new manifest)."""
    for path in out.glob(SHARD_PREFIX + "*"):
        for suffix in SHARD_SUFFIXES:
            if path.name.endswith(suffix) and path.name[: -len(suffix)] not in keep:
                path.unlink(missing_ok=True)


def load_masking_config(path: str | None, overrides: list[str], values: dict[str, Any]) -> MaskingConfig:
    """MaskingConfig from defaults, a YAML/TOML file's `masking` section, flag values and key=value overrides."""
    return load_config(MaskingConfig, path, section="masking", overrides=overrides, values=values).validate()


__all__ = [
    "build_shard",
    "discover_mip",
    "discover_text_sources",
    "load_masking_config",
    "render",
    "run_masking",
]
