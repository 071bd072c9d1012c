"""One config file for a whole run, and the driver that runs every stage of it (`glm-corpus run CONFIG`).

    config = load_run_config("run.yaml", overrides=["masking.rows=128"])
    summary = run_pipeline(config)          # OUT/tokens, mip, train, audit.json, checkpoints, report.html

The file (YAML, or TOML by its `.toml` suffix) names the output directory, the raw sources, the tokenizer,
and one section per stage whose keys are the fields of that stage's typed config:

    ingest   -> pipeline.ingest.IngestConfig   (inputs/out/tokenizer/sources/format come from the run)
    mip      -> mip.stage.MipConfig            (out/tokenizer come from the run) + demo, demo_examples
    masking  -> masking.config.MaskingConfig
    audit    -> mip.audit.AuditConfig          (train/plan/tokenizer/train_config come from the run)
                                               + stop_on_violation
    train    -> trainer.config.TrainConfig

Everything is checked when the file is loaded, before any stage starts: unknown keys and wrongly typed
values are `ConfigError`s naming the key. A section that is absent (or `false`) skips its stage; an empty
one runs it with defaults. Relative paths are relative to the config file's directory, so a run does
not depend on where it is started from. `EXAMPLE_CONFIG` (`glm-corpus config example`) documents every
top-level key.

The driver runs the stages in the data-flow order into the layout of `glm-corpus demo` and skips what is
complete: ingest and masking resume themselves (their manifests record inputs and config); MIP and the
audit are skipped when a stamp under `OUT/.run/` records the same config and input fingerprint; training
resumes from `OUT/checkpoints/latest` and is skipped once it holds `train.steps` steps. `OUT/run.json` records
each stage's status and seconds (the report's timings), rewritten after every stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO, TypeVar

import orjson
import yaml

from common.atomic import atomic_write_json, atomic_write_text
from common.config import from_mapping, merge, parse_overrides, read_config_file, to_dict
from common.errors import ConfigError, GLMCorpusError
from masking.config import MaskingConfig
from mip.stage import MipConfig
from pipeline.ingest import IngestConfig
from trainer.config import TrainConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

FORMATS = ("pile", "wudao", "warc", "wet", "jsonl")
STAGES = ("default_data", "tokenizer", "ingest", "mip", "masking", "audit", "train", "report")
"""Stage names in run order (the keys of `run.json`'s `stages`)."""
STATE_DIR = ".run"
RUN_STATE_FILE = "run.json"
RESOLVED_CONFIG_FILE = "run-config.json"
TRAIN_CONFIG_FILE = "train.yaml"
"""OUT/.run/train.yaml: the run's `train` section as a trainer config file (for the trainer and the audit)."""
TRAIN_LOG_FILE = "train_log.jsonl"
"""Per-step trainer records written by the run under OUT/checkpoints (what the report plots)."""


# ----------------------------------------------------------------------------------------------- schema


@dataclasses.dataclass
class SourceSpec:
    """One raw corpus: a file or directory, its source name and (optionally) its format."""

    path: str
    name: str | None = None
    """Source name in shards, manifest, mixing weights and the report; None = by format (pile, wudao, crawl)."""
    format: str | None = None
    """pile, wudao, warc, wet or jsonl; None = detected per file."""


@dataclasses.dataclass
class DefaultDataSpec:
    """Build the built-in bilingual corpus (`pipeline.default_data`) into OUT/raw and ingest it."""

    scale: float = 0.1


@dataclasses.dataclass
class TokenizerTrainSpec:
    """Train an icetk-layout SentencePiece model when the model file does not exist yet."""

    vocab_size: int = 16000
    model_type: str = "unigram"
    inputs: list[str] = dataclasses.field(default_factory=list)
    """Plain-text files; empty = a sample of the built-in corpus (`pipeline.default_data`)."""


@dataclasses.dataclass
class TokenizerSpec:
    path: str | None = None
    """The ice_text.model to use (or to train into); None = OUT/tokenizer/ice_text.model when `train` is set,
    else icetk's cache ~/.icetk_models/ice_text.model."""
    train: TokenizerTrainSpec | None = None


@dataclasses.dataclass
class MipRunOptions:
    """Keys of the `mip` section that are not `MipConfig` fields."""

    demo: bool = False
    """Write the built-in demo instruction set to OUT/mip/demo-instructions and add it to the inputs."""
    demo_examples: int = 300
    """Demo examples per template."""


@dataclasses.dataclass
class AuditRunOptions:
    """Keys of the `audit` section that are not `mip.audit.AuditConfig` fields."""

    stop_on_violation: bool = True
    """A failing finding (the plan's policy decides which fail) stops the run before training; the report is
    still written and the run exits nonzero."""


@dataclasses.dataclass
class RunFile:
    """The top level of a run config file, before the stage sections are turned into typed configs."""

    out: str = ""
    workers: int = 2
    ray_address: str | None = None
    default_data: DefaultDataSpec | None = None
    sources: list[SourceSpec] = dataclasses.field(default_factory=list)
    tokenizer: TokenizerSpec = dataclasses.field(default_factory=TokenizerSpec)
    ingest: dict[str, Any] = dataclasses.field(default_factory=dict)
    mip: dict[str, Any] | None = None
    masking: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    report: bool = True


STAGE_SECTIONS = ("ingest", "mip", "masking", "audit", "train")


@dataclasses.dataclass
class RunConfig:
    """A loaded run: every path absolute, every stage's config typed (None = the stage is not run)."""

    path: Path | None
    out: Path
    workers: int
    ray_address: str | None
    default_data: DefaultDataSpec | None
    sources: list[SourceSpec]
    tokenizer: TokenizerSpec
    ingest: IngestConfig
    mip: MipConfig | None
    mip_options: MipRunOptions
    masking: MaskingConfig | None
    audit: Any | None
    """A `mip.audit.AuditConfig` (imported only when a run has an audit section)."""
    audit_options: AuditRunOptions
    train: TrainConfig | None
    report: bool

    @property
    def model_path(self) -> str | None:
        """The tokenizer model every stage uses (None = the tokenizer's own default, icetk's cache)."""
        return self.ingest.tokenizer

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what `glm-corpus config check` prints and the run records in OUT/run-config.json."""
        data = {
            "config_file": str(self.path) if self.path else None,
            "out": str(self.out),
            "workers": self.workers,
            "ray_address": self.ray_address,
            "default_data": to_dict(self.default_data) if self.default_data else None,
            "sources": [to_dict(s) for s in self.sources],
            "tokenizer": to_dict(self.tokenizer),
            "ingest": to_dict(self.ingest),
            "mip": {**to_dict(self.mip), **to_dict(self.mip_options)} if self.mip else None,
            "masking": to_dict(self.masking) if self.masking else None,
            "audit": {**to_dict(self.audit), **to_dict(self.audit_options)} if self.audit else None,
            "train": to_dict(self.train) if self.train else None,
            "report": self.report,
        }
        return orjson.loads(orjson.dumps(data, default=str))


# ---------------------------------------------------------------------------------------------- loading


def load_run_config(path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML/TOML run config, apply `key.sub=value` overrides, and check and type every section."""
    path = Path(path).resolve()
    data = merge(read_config_file(path), parse_overrides(overrides))
    return parse_run_config(data, base_dir=path.parent, path=path)


def parse_run_config(data: Mapping[str, Any], base_dir: str | Path, path: Path | None = None) -> RunConfig:
    """Type a run config mapping; relative paths are taken relative to `base_dir`."""
    base = Path(base_dir).resolve()
    data = dict(data)
    if data.get("ingest") is False:
        raise ConfigError("ingest: every run ingests its sources; the section cannot be false")
    for section in STAGE_SECTIONS:  # `masking:` (YAML null) runs with defaults; `masking: false` skips
        if section in data and data[section] is None:
            data[section] = {}
        elif section in data and data[section] is False:
            del data[section]
    run = from_mapping(RunFile, data)
    if not run.out:
        raise ConfigError("run config: `out` (the output directory) is required")
    if run.workers < 1:
        raise ConfigError(f"run config: workers must be >= 1, got {run.workers}")
    out = _absolute(run.out, base)
    sources = [dataclasses.replace(s, path=str(_absolute(s.path, base))) for s in run.sources]
    if run.default_data is not None:
        if not 0 < run.default_data.scale <= 1:
            raise ConfigError(f"default_data.scale must be in (0, 1], got {run.default_data.scale}")
        sources.append(SourceSpec(path=str(out / "raw")))
    if not sources:
        raise ConfigError("run config: give `sources` (raw corpora to ingest) or `default_data`")
    for source in sources:
        if source.format is not None and source.format not in FORMATS:
            raise ConfigError(f"sources: format of {source.path} must be one of {', '.join(FORMATS)}, "
                              f"got {source.format!r}")

    tokenizer = run.tokenizer
    if tokenizer.train is not None and tokenizer.train.model_type not in ("unigram", "bpe"):
        raise ConfigError(f"tokenizer.train.model_type must be unigram or bpe, got {tokenizer.train.model_type!r}")
    model: str | None = None
    if tokenizer.path:
        model = str(_absolute(tokenizer.path, base))
    elif tokenizer.train is not None:
        model = str(out / "tokenizer" / "ice_text.model")
    train_spec = None
    if tokenizer.train is not None:
        train_spec = dataclasses.replace(tokenizer.train,
                                         inputs=[str(_absolute(p, base)) for p in tokenizer.train.inputs])
        if not train_spec.inputs and run.default_data is None:
            raise ConfigError("tokenizer.train.inputs is empty: give text files to train on, or set default_data "
                              "(its text is the default training sample)")
    tokenizer = TokenizerSpec(path=model, train=train_spec)

    ingest = _ingest_config(run, sources, out, model, base)
    mip, mip_options = (None, MipRunOptions())
    if run.mip is not None:
        mip, mip_options = _mip_config(run.mip, out, model, base)
    masking = None
    if run.masking is not None:
        masking = _section(MaskingConfig, run.masking, "masking.", defaults={"workers": run.workers})
        masking.validate()
    train = _section(TrainConfig, run.train, "train.") if run.train is not None else None
    audit, audit_options = (None, AuditRunOptions())
    if run.audit is not None:
        audit, audit_options = _audit_config(run.audit, out, model, base, with_train=train is not None)
    _check_dependencies(masking, mip, audit, train)
    return RunConfig(path=path, out=out, workers=run.workers, ray_address=run.ray_address,
                     default_data=run.default_data, sources=sources, tokenizer=tokenizer, ingest=ingest, mip=mip,
                     mip_options=mip_options, masking=masking, audit=audit, audit_options=audit_options,
                     train=train, report=run.report)


def _absolute(path: str, base: Path) -> Path:
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else (base / expanded).resolve()


def _section(cls: type[T], section: Mapping[str, Any], where: str, *, set_by_run: Mapping[str, Any] | None = None,
             defaults: Mapping[str, Any] | None = None) -> T:
    """`cls` from a section: defaults < the section < the values the run sets (which the section may not set)."""
    set_by_run = set_by_run or {}
    clash = sorted(set(section) & set(set_by_run))
    if clash:
        raise ConfigError(f"{', '.join(where + k for k in clash)}: set by the run itself (from `out`, `sources` "
                          f"and `tokenizer`); remove it from the section")
    return from_mapping(cls, {**(defaults or {}), **section, **set_by_run}, where=where)


def _ingest_config(run: RunFile, sources: list[SourceSpec], out: Path, model: str | None, base: Path) -> IngestConfig:
    formats = {s.format for s in sources}
    if len(formats) > 1:
        raise ConfigError(
            "sources: a format given for one source must be given, equal, for every source (ingest detects "
            "formats per file; a format override applies to all inputs); remove `format` to detect it"
        )
    names = {s.path: s.name for s in sources if s.name}
    config = _section(
        IngestConfig, run.ingest, "ingest.",
        set_by_run={"inputs": [s.path for s in sources], "out": str(out / "tokens"), "tokenizer": model,
                    "sources": names, "format": formats.pop()},
        defaults={"workers": run.workers, "ray_address": run.ray_address},
    )
    if config.langid.model_path:
        config.langid.model_path = str(_absolute(config.langid.model_path, base))
    return config


def _mip_config(section: Mapping[str, Any], out: Path, model: str | None, base: Path) -> tuple[MipConfig, MipRunOptions]:
    option_keys = {f.name for f in dataclasses.fields(MipRunOptions)}
    options = from_mapping(MipRunOptions, {k: v for k, v in section.items() if k in option_keys}, where="mip.")
    rest = {k: v for k, v in section.items() if k not in option_keys}
    inputs = rest.pop("inputs", []) or []
    if isinstance(inputs, str) or not isinstance(inputs, list):
        raise ConfigError(f"mip.inputs: expected a list of paths, got {inputs!r}")
    inputs = [str(_absolute(str(p), base)) for p in inputs]
    if options.demo:
        inputs.append(str(out / "mip" / "demo-instructions"))
    if not inputs:
        raise ConfigError("mip: give `inputs` (P3 folders / DeepStruct files) or `demo: true`")
    config = _section(MipConfig, rest, "mip.", set_by_run={"out": str(out / "mip"), "tokenizer": model,
                                                          "inputs": inputs})
    return config, options


def _audit_config(section: Mapping[str, Any], out: Path, model: str | None, base: Path,
                  with_train: bool) -> tuple[Any, AuditRunOptions]:
    try:
        from mip.audit import AuditConfig, parse_steps
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the audit section needs `glm-corpus audit` (mip.audit), which this build lacks: {exc}"
        ) from exc
    option_keys = {f.name for f in dataclasses.fields(AuditRunOptions)}
    options = from_mapping(AuditRunOptions, {k: v for k, v in section.items() if k in option_keys}, where="audit.")
    rest = {k: v for k, v in section.items() if k not in option_keys}
    if isinstance(rest.get("steps"), str):
        rest["steps"] = list(parse_steps(rest["steps"]))
    rest["eval"] = [str(_absolute(str(p), base)) for p in rest.get("eval") or []]
    config = _section(AuditConfig, rest, "audit.", set_by_run={
        "train": str(out / "train"), "plan": str(out / "mip" / "mip-plan.json"), "tokenizer": model,
        "train_config": str(out / STATE_DIR / TRAIN_CONFIG_FILE) if with_train else None, "progress": False,
    })
    return config, options


def _check_dependencies(masking: MaskingConfig | None, mip: MipConfig | None, audit: Any | None,
                        train: TrainConfig | None) -> None:
    if audit is not None and (masking is None or mip is None):
        raise ConfigError("the audit section needs a masking section (training rows) and a mip section (the plan)")
    if train is not None and masking is None:
        raise ConfigError("the train section needs a masking section: the trainer reads its training shards")


# ----------------------------------------------------------------------------------------------- example

EXAMPLE_CONFIG = """\
# glm-corpus run config: one file for a whole run.      glm-corpus run THIS_FILE
#
# Relative paths are relative to this file's directory. A stage runs when its section is present (an
# empty section, {}, runs it with defaults) and is skipped when the section is absent or `false`.
# Unknown keys are errors. Rerunning the same file resumes: complete stages are skipped.
# Check a file without running it: glm-corpus config check THIS_FILE

# Output directory, in the layout of `glm-corpus demo`: tokens/, mip/, train/, audit.json, checkpoints/,
# report.html, plus run.json (stage status and timings) and run-config.json (this file, resolved).
out: glm-run

# Ray workers for ingest and masking (a stage section may set its own `workers`).
workers: 2
# An existing Ray cluster (HOST:PORT); null = an embedded Ray sized to `workers`.
ray_address: null

# Build the built-in bilingual corpus (Python docs in English; People's Daily and reviews in Chinese;
# from installed packages, no download) into OUT/raw in the Pile, WuDao and crawl formats, and ingest it
# as well as `sources`. scale: fraction of the corpus (1.0 is the full demo corpus). Remove for your data only.
default_data:
  scale: 0.1

# Raw corpora to ingest. path: a file or directory; name: the source name used in shards, mixing weights
# and the report (default by format: pile, wudao, crawl); format: pile, wudao, warc, wet or jsonl (default:
# detected per file; a format set on one source must be set, equal, on all).
sources: []
#  - {path: /data/pile/train, name: pile}
#  - {path: /data/wudao, name: wudao}
#  - {path: /data/crawl, name: crawl}

tokenizer:
  # An existing ice_text.model (GLM-130B's from icetk, or one trained here). null: OUT/tokenizer/
  # ice_text.model when `train` is set, else icetk's cache ~/.icetk_models/ice_text.model.
  path: null
  # Train an icetk-layout SentencePiece model when the model file does not exist yet (omit: never train).
  train:
    vocab_size: 2000          # SentencePiece pieces (ids are piece + 20000, GLM-130B's layout)
    model_type: unigram       # unigram or bpe
    inputs: []                # plain-text files; empty: a sample of the built-in corpus

# Ingest (pipeline.ingest.IngestConfig): read -> normalize -> language ID -> quality -> dedup -> tokenize
# -> Megatron token shards per source + manifest. inputs, out, tokenizer, sources and format come from the
# keys above; every other IngestConfig field may be set here.
ingest:
  strict: false               # true: fail on the first malformed record instead of counting it
  batch_size: 256             # documents per tokenizer / MinHash batch
  shard_max_tokens: 268435456 # tokens per output shard before a new one is started
  langid:
    min_score: 0.5            # documents whose top fastText lid.176 score is lower are dropped
    expected:                 # languages kept per source name (other languages are dropped)
      pile: [en]
      wudao: [zh]
      crawl: [zh, en]
  quality:
    min_words: 50             # shorter space-delimited documents are dropped (min_cjk_tokens for CJK)
    min_cjk_tokens: 50
  dedup:
    enabled: true             # exact (xxh3-128) + near (MinHash LSH) dedup across all sources
    threshold: 0.8            # Jaccard similarity of 5-gram shingle sets at which documents are near duplicates
    num_perm: 128             # MinHash permutations
    bands: 0                  # LSH bands x rows; 0 and 0: chosen for the threshold (glm-corpus dedup --explain)
    rows: 0

# MIP (mip.stage.MipConfig): P3 / DeepStruct instruction data -> capped, tokenized MIP shards + mip-plan.json.
mip:
  demo: true                  # write the built-in demo instruction set to OUT/mip/demo-instructions and use it
  demo_examples: 300          # demo examples per template
  inputs: []                  # P3 folders (<dataset>_<template>/<split>.jsonl|parquet|tfrecord) / DeepStruct files
  token_ratio: 0.05           # MIP share of all training tokens (recorded in the plan; masking follows it)
  seed: 1234                  # seed of the cap selection
  caps: {}                    # per-dataset cap overrides, e.g. {super_glue/rte: 50000}; null = uncapped
  allow_unknown: []           # dataset names the registry does not know, to train on anyway (family `unknown`)
  skip_unknown: false         # true: drop records of unknown datasets (counted); false: unknown ones fail the run

# Masking (masking.config.MaskingConfig): token shards (+ MIP shards) -> 2048-token GLM training rows.
masking:
  seed: 1234                  # masking seed (modes, spans, suffixes, Part-B order)
  rows: 64                    # rows to write; null: one pass over all text tokens
  mask_fraction: 0.3          # share of text tokens in [MASK] segments; the rest are in [gMASK] segments
  mask_ratio: 0.15            # share of a [MASK] window covered by spans
  span_lambda: 3.0            # span lengths ~ Poisson(span_lambda) truncated to 1..span_max_length
  cross_document: false       # true: GLM-130B's layout, one segment per row, documents separated by <eod>
  source_weights: {}          # relative token share per source name; {}: each source's own size

# Audit (mip.audit.AuditConfig, `glm-corpus audit`): which MIP datasets the steps the trainer will consume
# contain, against mip-plan.json (caps, planned datasets, MIP token ratio), plus n-gram contamination.
# train, plan, tokenizer and the trainer config come from the run; the sampler is the train section's.
audit:
  eval: []                    # evaluation files/directories (jsonl/json/SQuAD-style; NAME=PATH names a set)
  steps: null                 # step range "A:B" (B exclusive); null: train.steps (one epoch without train)
  ngram: 13                   # n-gram size of the contamination scan
  windows: 10                 # step windows of the MIP-ratio check
  workers: 1                  # > 1: the contamination scan runs as Ray tasks over row ranges (big runs)
  fail_on: []                 # finding kinds that fail the audit besides the plan's policy (e.g. [ratio])
  no_fail_on: []              # kinds only reported
  stop_on_violation: true     # a failing finding stops the run before training (the report is still written)

# Training (trainer.config.TrainConfig): the reference GLM trainer, checkpoints in OUT/checkpoints.
train:
  steps: 32                   # optimizer steps in total: one epoch of the 64 rows (a rerun resumes)
  global_batch_size: 2        # rows per step
  micro_batch_size: 1
  lr: 0.003
  tp: 1                       # tensor-parallel ranks (tp x dp > 1 runs under torchrun)
  model:
    num_layers: 2
    hidden_size: 64
    num_heads: 4

# Write OUT/report.html (glm-corpus report OUT) at the end.
report: true
"""


# ------------------------------------------------------------------------------------------------ driver


@dataclasses.dataclass
class StageOutcome:
    status: str
    """ran, up to date, not configured, unavailable, or failed."""
    seconds: float = 0.0
    detail: str = ""


class RunState:
    """OUT/run.json: the status and seconds of every stage, rewritten after each one."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.stages: dict[str, StageOutcome] = {}
        self.started = _now()

    def record(self, name: str, outcome: StageOutcome) -> None:
        self.stages[name] = outcome
        self.write()

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": str(self.config.path) if self.config.path else None,
            "out": str(self.config.out),
            "started": self.started,
            "updated": _now(),
            "stages": {name: dataclasses.asdict(o) for name, o in self.stages.items()},
        }

    def write(self) -> None:
        atomic_write_json(self.config.out / RUN_STATE_FILE, self.to_dict())


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_pipeline(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every configured stage in order; return {out, stages: {name: outcome}, report}."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RESOLVED_CONFIG_FILE, config.to_dict())
    state = RunState(config)
    steps: list[tuple[str, Callable[[], StageOutcome] | None]] = [
        ("default_data", (lambda: _stage_default_data(config)) if config.default_data else None),
        ("tokenizer", (lambda: _stage_tokenizer(config)) if config.tokenizer.train else None),
        ("ingest", lambda: _stage_ingest(config, progress)),
        ("mip", (lambda: _stage_mip(config, progress)) if config.mip else None),
        ("masking", (lambda: _stage_masking(config, progress)) if config.masking else None),
        ("audit", (lambda: _stage_audit(config)) if config.audit else None),
        ("train", (lambda: _stage_train(config)) if config.train else None),
    ]
    stop: str | None = None
    for name, action in steps:
        if action is None:
            state.record(name, StageOutcome("not configured"))
            continue
        if stop is not None:
            state.record(name, StageOutcome("not run", detail=stop))
            continue
        _announce(name)
        started = time.perf_counter()
        try:
            outcome = action()
        except BaseException as exc:
            state.record(name, StageOutcome("failed", round(time.perf_counter() - started, 3), str(exc)[:500]))
            raise
        outcome.seconds = round(time.perf_counter() - started, 3)
        state.record(name, outcome)
        if outcome.status == "violations" and config.audit_options.stop_on_violation:
            stop = f"the audit found violations ({outcome.detail}); see audit.json"
    report_path = None
    if config.report:
        from report.html_report import build_report

        _announce("report")
        started = time.perf_counter()
        summary = build_report(out)
        report_path = summary["path"]
        state.record("report", StageOutcome("ran", round(time.perf_counter() - started, 3),
                                            f"{summary['images']} plots"))
    else:
        state.record("report", StageOutcome("not configured"))
    result = {"out": str(out), "stages": {k: dataclasses.asdict(v) for k, v in state.stages.items()},
              "report": report_path}
    if stop is not None:
        raise GLMCorpusError(f"run stopped before training: {stop}" + (f"; report: {report_path}" if report_path else ""))
    return result


def _announce(name: str) -> None:
    print(f"== {name}", file=sys.stderr, flush=True)


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def _fingerprint(paths: Iterable[str | Path]) -> list[list[Any]]:
    """(path, size, mtime) of every file under `paths`: what decides whether a stamped stage is up to date."""
    entries = []
    for item in paths:
        path = Path(item)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.exists():
                stat = file.stat()
                entries.append([str(file), stat.st_size, stat.st_mtime_ns])
            else:
                entries.append([str(file), None, None])
    return entries


def _stamp_path(config: RunConfig, stage: str) -> Path:
    return config.out / STATE_DIR / f"{stage}.json"


def _up_to_date(config: RunConfig, stage: str, key: Any, outputs: Iterable[Path]) -> bool:
    stamp = _stamp_path(config, stage)
    if not stamp.exists() or not all(p.exists() for p in outputs):
        return False
    try:
        return orjson.loads(stamp.read_bytes()).get("key") == orjson.loads(orjson.dumps(key, default=str))
    except orjson.JSONDecodeError:
        return False


def _write_stamp(config: RunConfig, stage: str, key: Any) -> None:
    atomic_write_json(_stamp_path(config, stage), {"key": orjson.loads(orjson.dumps(key, default=str))})


def _stage_default_data(config: RunConfig) -> StageOutcome:
    from pipeline.default_data import build_default_data

    raw = config.out / "raw"
    key = {"scale": config.default_data.scale}
    if _up_to_date(config, "default_data", {**key, "files": _fingerprint([raw])}, [raw]):
        return StageOutcome("up to date")
    summary = build_default_data(raw, scale=config.default_data.scale)
    _write_stamp(config, "default_data", {**key, "files": _fingerprint([raw])})
    return StageOutcome("ran", detail=f"{summary.get('documents')} records, {summary.get('bytes')} bytes")


def _stage_tokenizer(config: RunConfig) -> StageOutcome:
    from pipeline.tokenizer import train_tokenizer

    spec = config.tokenizer.train
    model = Path(config.model_path)
    if model.exists():
        return StageOutcome("up to date", detail=str(model))
    inputs = [Path(p) for p in spec.inputs]
    if not inputs:
        from pipeline.default_data import tokenizer_training_text

        inputs = [tokenizer_training_text({}, model.parent / "corpus.txt")]
    train_tokenizer(inputs, model, vocab_size=spec.vocab_size, model_type=spec.model_type)
    return StageOutcome("ran", detail=str(model))


def _stage_ingest(config: RunConfig, progress: bool) -> StageOutcome:
    from pipeline.ingest import MANIFEST, run_ingest

    manifest_path = Path(config.ingest.out) / MANIFEST
    before = _mtime(manifest_path)
    manifest = run_ingest(config.ingest, progress=progress)
    totals = manifest.get("totals", {})
    detail = f"{totals.get('docs_out')} of {totals.get('docs_in')} records kept, {totals.get('tokens_out')} tokens"
    return StageOutcome("up to date" if before is not None and before == _mtime(manifest_path) else "ran",
                        detail=detail)


def _stage_mip(config: RunConfig, progress: bool) -> StageOutcome:
    from mip.plan import PLAN_FILE
    from mip.stage import MANIFEST_FILE, run_mip

    mip, options = config.mip, config.mip_options
    out = Path(mip.out)
    demo_dir = out / "demo-instructions"
    user_inputs = [p for p in mip.inputs if Path(p) != demo_dir]
    key = {"config": to_dict(mip), "options": to_dict(options),
           "inputs": _fingerprint(user_inputs + ([demo_dir] if options.demo else [])),
           "tokenizer": _fingerprint([config.model_path]) if config.model_path else None}
    if _up_to_date(config, "mip", key, [out / PLAN_FILE, out / MANIFEST_FILE]):
        return StageOutcome("up to date")
    if options.demo:
        from mip.demo_data import write_demo_instructions

        write_demo_instructions(demo_dir, options.demo_examples)
        key["inputs"] = _fingerprint(user_inputs + [demo_dir])
    summary = run_mip(mip, progress=progress)
    _write_stamp(config, "mip", key)
    return StageOutcome("ran", detail=f"{summary.get('examples_out')} examples, {summary.get('tokens')} tokens")


def _stage_masking(config: RunConfig, progress: bool) -> StageOutcome:
    from masking.stage import run_masking

    report = run_masking(config.out / "tokens", config.out / "train", config.masking,
                         mip=config.mip.out if config.mip else None, progress=progress)
    detail = f"{report.get('rows')} rows, MIP share {report.get('mip', {}).get('share', 0):.4f}"
    return StageOutcome("up to date" if report.get("skipped") else "ran", detail=detail)


def _train_config_file(config: RunConfig) -> Path:
    """Write the run's `train` section where the trainer (`--config`) and the audit read it."""
    path = config.out / STATE_DIR / TRAIN_CONFIG_FILE
    text = yaml.safe_dump({"train": to_dict(config.train)}, sort_keys=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path


def _stage_audit(config: RunConfig) -> StageOutcome:
    from mip.audit import render_audit, run_audit
    from report.html_report import read_json_object

    audit = config.audit
    output = config.out / "audit.json"
    inputs = [config.out / "train" / "training_shards.json", config.out / "train" / "stats.json", Path(audit.plan)]
    if config.train is not None:
        inputs.append(_train_config_file(config))
    key = {"audit": to_dict(audit), "inputs": _fingerprint(inputs + [Path(p.split("=", 1)[-1]) for p in audit.eval])}
    if _up_to_date(config, "audit", key, [output]):
        summary = read_json_object(output) or {}
        status = "up to date"
    else:
        summary = run_audit(audit)
        atomic_write_json(output, summary)
        _write_stamp(config, "audit", key)
        print(render_audit(summary), file=sys.stderr, flush=True)
        status = "ran"
    violations = [v for v in summary.get("violations") or [] if isinstance(v, dict)]
    failing = [v for v in violations if v.get("fails", True)]
    if summary.get("failed", bool(failing)):
        kinds = sorted({str(v.get("kind")) for v in failing})
        return StageOutcome("violations", detail=f"{len(failing)} failing finding(s): {', '.join(kinds)}")
    notes = f", {len(violations)} reported finding(s)" if violations else ""
    return StageOutcome(status, detail=f"no failing findings{notes}")


class _StepLog(io.TextIOBase):
    """Stands in for stdout while the trainer runs: JSON step records go to a log file, readable lines to the
    terminal (the trainer prints one JSON object per step under `as_json`)."""

    def __init__(self, log_path: Path, echo: TextIO) -> None:
        from trainer.train import format_record

        self._format = format_record
        self._echo = echo
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        try:
            record = orjson.loads(line) if line.startswith("{") else None
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict) and "step" in record and "loss" in record:
            self._log.write(line + "\n")
            self._log.flush()
            self._echo.write(self._format(record) + "\n")
        else:
            self._echo.write(line + "\n")
        self._echo.flush()

    def close(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        self._log.close()
        super().close()


def _stage_train(config: RunConfig) -> StageOutcome:
    from trainer.checkpoint import latest_checkpoint
    from trainer.launch import run_training

    train = config.train
    checkpoints = config.out / "checkpoints"
    latest = latest_checkpoint(checkpoints) if checkpoints.exists() else None
    done = 0
    if latest is not None:
        done = int(orjson.loads((latest / "meta.json").read_bytes()).get("step", 0))
        if done >= train.steps:
            return StageOutcome("up to date", detail=f"{done} steps in {latest}")
    train_file = _train_config_file(config)
    step_log = _StepLog(checkpoints / TRAIN_LOG_FILE, sys.stdout)
    try:
        with contextlib.redirect_stdout(step_log):
            summary = run_training(str(config.out / "train"), config=str(train_file), out=str(checkpoints),
                                   resume=latest is not None, as_json=True)
    finally:
        step_log.close()
    return StageOutcome("ran", detail=f"steps {done}..{train.steps}, final loss {summary.get('final_loss')}")
