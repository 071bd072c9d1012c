"""`glm-corpus audit`: what a step range of a training run actually fed the model, checked against the MIP plan.

    summary = run_audit(AuditConfig(train="out/train", plan="out/mip", steps=(0, 20_000), eval=["rte.jsonl"]))

The rows of step s are the trainer's own (`trainer.data.rows_for_steps`: epoch permutations keyed by the data
seed, G rows per step), so the audit answers for exactly the samples the trainer consumed, repeats across
epochs included. From the training shards it reads only the recipes (segment kinds and lengths) and the
provenance sidecars (MIP dataset and document of every segment), never the batches themselves, except for the
contamination scan, which restores the text of every distinct row of the range (mip/contamination.py).

Findings (`violations`, each `{"kind", "dataset", "detail", "fails"}`):

- `over_cap`: more *distinct* examples (document ids) of a dataset in the range than its cap; a row seen again
  in a later epoch repeats examples without counting twice.
- `unplanned`: a MIP dataset in the range that the plan does not have (or has with no examples).
- `planned_absent`: a planned dataset with no sample in the range although at least `min_expected` were
  expected there. Expected = written x max(K / W, p T / M), with `written` the dataset's examples in the plan,
  W all planned examples, K the MIP samples in the range, p the plan's token ratio, T the tokens of the range
  and M all planned MIP tokens: a dataset should have its plan share of the MIP the range holds, and of the
  MIP the plan says the range should hold (p T tokens), whatever the range actually holds. (A 1-step range
  is not expected to hold every dataset; 20k steps are.)
- `ratio`: the MIP token share of the range (MIP segment tokens, [gMASK] and [sop] included, over all non-pad
  tokens) is outside plan ratio p +- tol, tol = z * sqrt(p (1 - p) * L / T) + 0.01 p, with T the tokens of
  the range, L the row length and z = 3. MIP arrives row by row (the masking stage packs MIP into some rows),
  so the range's share behaves like a binomial proportion over T / L rows; z = 3 keeps false alarms near
  0.3%, and the 1% relative term allows for packing granularity. Checked for the whole range and for each
  window of steps (`windows`).
- `do_not_evaluate`: a dataset on GLM-130B's do-not-evaluate list in the range. Always flagged per dataset;
  a violation only when the plan's policy says `fail_on_do_not_evaluate`.
- `contamination`: an evaluation set with examples whose n-grams occur in the range's rows. The scan runs in
  this process, or as Ray tasks over contiguous row ranges with `workers` > 1 and at least `ray_min_rows`
  distinct rows (identical report; mip/contamination.py).

Which findings fail the audit (exit code 1): the plan's `policy` (`fail_on_<kind>`; by default contamination,
over_cap and planned_absent fail, the others are reported), overridden by `--fail-on` / `--no-fail-on`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from common.errors import ConfigError
from common.memory import release_memory, stage_memory
from common.progress import Progress
from mip.plan import PLAN_FILE, read_plan
from shards.training_shards import KIND_MIP, PROVENANCE_SUFFIX, TrainingShards, read_recipe

VIOLATION_KINDS = ("over_cap", "unplanned", "planned_absent", "ratio", "do_not_evaluate", "contamination")
DEFAULT_FAIL = {
    "contamination": True,
    "over_cap": True,
    "planned_absent": True,
    "unplanned": False,
    "ratio": False,
    "do_not_evaluate": False,
}
"""Which kinds fail the audit unless the plan's policy (`fail_on_<kind>`) or the command line says otherwise."""
RATIO_Z = 3.0
RATIO_RELATIVE_SLACK = 0.01
MIN_EXPECTED = 5.0
RANGE = "*"
RAY_MIN_ROWS = 16_384
"""~34M tokens of 2048-token rows, ~3-5 s of single-core scan: about what starting Ray and its workers costs, so
smaller scans are faster in one process (benchmarks/bench_contamination.py)."""
"""The `dataset` of a finding about the whole range (the MIP ratio)."""


@dataclasses.dataclass
class AuditConfig:
    """Everything `glm-corpus audit` takes (its flags)."""

    train: str
    plan: str | None = None
    """mip-plan.json or its directory; None = the plan recorded with the training shards, if any."""
    eval: list[str] = dataclasses.field(default_factory=list)
    """Evaluation files or directories (`NAME=PATH` names one); see mip/eval_sets.py."""
    steps: tuple[int | None, int | None] | None = None
    """[A, B) 0-based; None = the trainer config's steps (with `train_config`), else one epoch."""
    global_batch: int | None = None
    seed: int | None = None
    train_config: str | None = None
    """The trainer's YAML/TOML config (section `train`): global_batch_size, data_seed, steps."""
    tokenizer: str | None = None
    ngram: int = 13
    windows: int = 10
    """Step windows for the MIP ratio over time (at most this many, equal in steps)."""
    ratio_z: float = RATIO_Z
    min_expected: float = MIN_EXPECTED
    fail_on: list[str] = dataclasses.field(default_factory=list)
    no_fail_on: list[str] = dataclasses.field(default_factory=list)
    batch_rows: int = 64
    first_ids: int = 5
    progress: bool = False
    workers: int = 1
    """Ray tasks for the contamination scan when > 1 (contiguous row ranges, merged in row order: the same
    report as one process); `ray_address` joins an existing cluster instead of starting Ray here."""
    ray_min_rows: int = RAY_MIN_ROWS
    """With workers > 1, scans of fewer distinct rows stay in this process (Ray's start-up would cost more)."""
    ray_address: str | None = None


# ---------------------------------------------------------------------------------------------- inputs


def parse_steps(text: str | None) -> tuple[int | None, int | None] | None:
    """`A:B` -> (A, B); `A:` and `:B` leave a side open; `N` alone means `0:N`."""
    if text is None:
        return None
    first, sep, last = text.partition(":")
    try:
        if not sep:
            return 0, int(first)
        return (int(first) if first.strip() else None, int(last) if last.strip() else None)
    except ValueError:
        raise ConfigError(f"--steps {text!r}: expected A:B (0-based, B exclusive), A:, :B or N") from None


def find_recorded_plan(train: Path, manifest: dict[str, Any], stats: dict[str, Any]) -> Path | None:
    """The plan the masking stage used: recorded in stats.json / the manifest, or beside its MIP shards.

    Recorded paths are tried as given (absolute, or relative to the working directory), then relative to the
    training directory and its parent; last, the demo layout RUN/mip/mip-plan.json beside RUN/train.
    """
    mip_stats = stats.get("mip") if isinstance(stats.get("mip"), dict) else {}
    inputs = manifest.get("inputs") or {}
    recorded: list[Any] = [stats.get("mip_plan"), mip_stats.get("plan"), inputs.get("mip_plan")]
    fallbacks: list[Path] = []
    if inputs.get("mip"):
        mip = Path(inputs["mip"])
        recorded += [mip / PLAN_FILE, mip.parent / PLAN_FILE]
        fallbacks = [train.parent / mip.parent.name / PLAN_FILE, train.parent / mip.name / PLAN_FILE]
    candidates = [base / Path(c) for c in recorded if c for base in (Path.cwd(), train, train.parent)]
    for path in candidates + fallbacks:
        if path.is_dir():
            path = path / PLAN_FILE
        if path.is_file():
            return path
    return None


def sampler_settings(config: AuditConfig, n_rows: int) -> dict[str, Any]:
    """Global batch, data seed and step range: flags, then the trainer config, then the trainer's defaults."""
    from trainer.config import TrainConfig

    if config.train_config is not None:
        from common.config import load_config

        train_config = load_config(TrainConfig, config.train_config, section="train")
        origin = config.train_config
    else:
        train_config, origin = TrainConfig(), "trainer defaults"
    global_batch = config.global_batch or train_config.global_batch_size
    seed = config.seed if config.seed is not None else train_config.data_seed
    if global_batch < 1:
        raise ConfigError(f"--global-batch must be >= 1, got {global_batch}")
    first, last = config.steps if config.steps is not None else (None, None)
    if last is None:
        last = train_config.steps if config.train_config is not None else math.ceil(n_rows / global_batch)
    first = first or 0
    if not 0 <= first < last:
        raise ConfigError(f"--steps {first}:{last}: need 0 <= A < B")
    return {
        "global_batch": global_batch,
        "seed": seed,
        "first_step": first,
        "last_step": last,
        "from": origin,
        "default_range": config.steps is None or config.steps[1] is None,
    }


# ------------------------------------------------------------------------------------------ accounting


@dataclasses.dataclass
class _Usage:
    """What the range consumed of one MIP dataset."""

    samples: int = 0
    tokens: int = 0
    doc_hashes: list[np.ndarray] = dataclasses.field(default_factory=list)

    def distinct(self) -> int:
        return int(len(np.unique(np.concatenate(self.doc_hashes)))) if self.doc_hashes else 0


def account(shards: TrainingShards, counts: np.ndarray) -> dict[str, Any]:
    """Per-row token totals and per-dataset MIP usage, weighting every row by how often the range uses it.

    Reads each shard's recipe and three provenance columns; MIP documents are counted as xxh3-64 hashes of
    their ids (8 bytes per distinct example).
    """
    n_rows = len(shards)
    # Per row: at most row_length (<= 65,535) tokens, so int32 (4 bytes a row each, not 8).
    row_tokens = np.zeros(n_rows, dtype=np.int32)
    row_mip = np.zeros(n_rows, dtype=np.int32)
    usage: dict[str, _Usage] = {}
    text_tokens: dict[str, int] = {}
    for number, entry in enumerate(shards.manifest["shards"]):
        if number:
            release_memory()  # the previous shard's tables: freed, but fragmented over Arrow's threads
        prefix = shards.path / entry["name"]
        recipe = read_recipe(str(prefix) + ".recipe")
        first_row = recipe.first_row
        pointer = np.asarray(recipe.row_segment_pointer, dtype=np.int64)
        segment_row = first_row + np.repeat(np.arange(recipe.rows), np.diff(pointer))
        length = recipe.segment_end.astype(np.int64) - recipe.segment_start.astype(np.int64)
        is_mip = recipe.segment_kind == KIND_MIP
        rows_here = slice(first_row, first_row + recipe.rows)
        row_tokens[rows_here] = np.bincount(segment_row - first_row, weights=length, minlength=recipe.rows)
        row_mip[rows_here] = np.bincount(
            segment_row[is_mip] - first_row, weights=length[is_mip], minlength=recipe.rows
        )
        weight = counts[segment_row]
        used = weight > 0
        if not used.any():
            continue
        table = pq.read_table(str(prefix) + PROVENANCE_SUFFIX, columns=["source", "doc_ids"])
        if table.num_rows != recipe.segments:
            raise ConfigError(
                f"{prefix}{PROVENANCE_SUFFIX}: {table.num_rows} provenance rows for "
                f"{recipe.segments} segments; run `glm-corpus verify`"
            )
        source = table.column("source").combine_chunks().dictionary_encode()
        names = source.dictionary.to_pylist()
        code = source.indices.to_numpy(zero_copy_only=False)
        text = used & ~is_mip
        if text.any():
            sums = np.bincount(code[text], weights=(weight * length)[text], minlength=len(names))
            for name, total in zip(names, sums.tolist()):
                if total:
                    text_tokens[name] = text_tokens.get(name, 0) + int(total)
        mip = np.flatnonzero(used & is_mip)
        if len(mip) == 0:
            continue
        doc_ids = table.column("doc_ids").combine_chunks().take(pa.array(mip))
        flat = pc.list_flatten(doc_ids).to_pylist()
        parent = pc.list_parent_indices(doc_ids).to_numpy(zero_copy_only=False)
        hashes = np.fromiter(
            (xxhash.xxh3_64_intdigest(d.encode()) for d in flat), dtype=np.uint64, count=len(flat)
        )
        mip_code = code[mip]
        samples = np.bincount(mip_code, weights=weight[mip], minlength=len(names))
        tokens = np.bincount(mip_code, weights=(weight * length)[mip], minlength=len(names))
        for number in np.unique(mip_code).tolist():
            entry_usage = usage.setdefault(names[number], _Usage())
            entry_usage.samples += int(samples[number])
            entry_usage.tokens += int(tokens[number])
            entry_usage.doc_hashes.append(np.unique(hashes[mip_code[parent] == number]))
    return {"row_tokens": row_tokens, "row_mip": row_mip, "usage": usage, "text_tokens": text_tokens}


def ratio_tolerance(p: float, tokens: int, row_length: int, z: float = RATIO_Z) -> float:
    """tol = z * sqrt(p (1 - p) * L / T) + 0.01 p (see the module docstring)."""
    if tokens <= 0:
        return math.inf
    return z * math.sqrt(p * (1 - p) * row_length / tokens) + RATIO_RELATIVE_SLACK * p


def _windows(step_rows: np.ndarray, first_step: int, count: int) -> list[tuple[int, int]]:
    steps = step_rows.shape[0]
    count = max(1, min(count, steps))
    bounds = np.linspace(0, steps, count + 1).round().astype(int)
    return [(first_step + int(a), first_step + int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


# ---------------------------------------------------------------------------------------------- policy


def resolve_policy(plan: dict[str, Any] | None, fail_on: list[str], no_fail_on: list[str]) -> dict[str, bool]:
    """kind -> fails?: the defaults, then the plan's `policy.fail_on_<kind>`, then the command line."""
    policy = dict(DEFAULT_FAIL)
    for key, value in ((plan or {}).get("policy") or {}).items():
        kind = key.removeprefix("fail_on_")
        if kind in policy and isinstance(value, bool):
            policy[kind] = value
    for kinds, value in ((fail_on, True), (no_fail_on, False)):
        for kind in kinds:
            kind = kind.replace("-", "_")
            if kind not in policy:
                raise ConfigError(f"unknown audit finding {kind!r}; known: {', '.join(VIOLATION_KINDS)}")
            policy[kind] = value
    return policy


# ------------------------------------------------------------------------------------------------ audit


@stage_memory()
def run_audit(config: AuditConfig) -> dict[str, Any]:
    """Audit a step range of a run; returns the summary (DESIGN §6 keys plus details), `exit_code` included."""
    train = Path(config.train)
    shards = TrainingShards(train)
    manifest = shards.manifest
    stats = shards.stats
    n_rows = len(shards)
    row_length = shards.row_length
    sampler = sampler_settings(config, n_rows)
    first, last, global_batch = sampler["first_step"], sampler["last_step"], sampler["global_batch"]

    from trainer.data import rows_for_steps

    step_rows = rows_for_steps(n_rows, first, last, global_batch, sampler["seed"])
    counts = np.bincount(step_rows.reshape(-1), minlength=n_rows)
    usage = account(shards, counts)

    plan_path = Path(config.plan) if config.plan else find_recorded_plan(train, manifest, stats)
    if plan_path is not None and plan_path.is_dir():
        plan_path = plan_path / PLAN_FILE
    plan = read_plan(plan_path) if plan_path is not None else None
    policy = resolve_policy(plan, config.fail_on, config.no_fail_on)

    tokens = int((counts * usage["row_tokens"]).sum())
    mip_tokens = int((counts * usage["row_mip"]).sum())
    ratio = mip_tokens / max(tokens, 1)
    target = plan.get("token_ratio") if plan else (stats.get("mip") or {}).get("target_share")
    violations: list[dict[str, Any]] = []

    def violate(kind: str, dataset: str, detail: str) -> None:
        violations.append({"kind": kind, "dataset": dataset, "detail": detail, "fails": policy[kind]})

    ratio_report: dict[str, Any] = {
        "observed": ratio,
        "mip_tokens": mip_tokens,
        "tokens": tokens,
        "target": target,
        "z": config.ratio_z,
    }
    windows = []
    for a, b in _windows(step_rows, first, config.windows):
        rows = step_rows[a - first : b - first].reshape(-1)
        window_tokens = int(usage["row_tokens"][rows].sum())
        window_mip = int(usage["row_mip"][rows].sum())
        window = {
            "steps": [a, b],
            "tokens": window_tokens,
            "mip_tokens": window_mip,
            "mip_token_ratio": window_mip / max(window_tokens, 1),
        }
        if target:
            window["tolerance"] = ratio_tolerance(target, window_tokens, row_length, config.ratio_z)
        windows.append(window)
    if target:
        tolerance = ratio_tolerance(target, tokens, row_length, config.ratio_z)
        ratio_report["tolerance"] = tolerance
        if abs(ratio - target) > tolerance:
            violate(
                "ratio",
                RANGE,
                f"MIP token ratio {ratio:.4f} in steps {first}:{last} is outside the plan's "
                f"{target:.4f} +- {tolerance:.4f} ({mip_tokens} of {tokens} tokens)",
            )
        if len(windows) > 1:
            for window in windows:
                if abs(window["mip_token_ratio"] - target) > window["tolerance"]:
                    a, b = window["steps"]
                    violate(
                        "ratio",
                        RANGE,
                        f"MIP token ratio {window['mip_token_ratio']:.4f} in window {a}:{b} is "
                        f"outside the plan's {target:.4f} +- {window['tolerance']:.4f}",
                    )

    datasets, dne_seen = _dataset_report(
        plan,
        usage["usage"],
        counts,
        tokens,
        config.min_expected,
        violate,
        dne_is_violation=policy["do_not_evaluate"],
    )

    contamination: dict[str, Any] = {}
    scan: dict[str, Any] | None = None
    if config.eval:
        contamination, scan = _contamination(config, shards, manifest, np.unique(step_rows), violate)

    fails = any(v["fails"] for v in violations)
    dne = plan.get("do_not_evaluate", {}) if plan else {}
    summary: dict[str, Any] = {
        "steps": [first, last],
        "mip_token_ratio": ratio,
        "datasets": datasets,
        "violations": violations,
        "contamination": contamination,
        "train": str(train),
        "plan": str(plan_path) if plan_path is not None else None,
        "plan_checks": plan is not None,
        "sampler": {key: sampler[key] for key in ("global_batch", "seed", "from")},
        "rows": {
            "in_run": n_rows,
            "samples": int(step_rows.size),
            "distinct": int((counts > 0).sum()),
            "row_length": row_length,
            "epochs": step_rows.size / max(n_rows, 1),
        },
        "ratio": ratio_report,
        "windows": windows,
        "text_sources": dict(sorted(usage["text_tokens"].items())),
        "do_not_evaluate_list": dne.get("name", _registry_list_name()),
        "do_not_evaluate_seen": dne_seen,
        "policy": {f"fail_on_{kind}": value for kind, value in policy.items()},
        "failed": fails,
        "exit_code": 1 if fails else 0,
    }
    if scan is not None:
        summary["contamination_scan"] = scan
    return summary


def _registry_list_name() -> str:
    from mip.registry import DO_NOT_EVALUATE_LIST_NAME

    return DO_NOT_EVALUATE_LIST_NAME


def _dataset_report(
    plan: dict[str, Any] | None,
    usage: dict[str, _Usage],
    counts: np.ndarray,
    range_tokens: int,
    min_expected: float,
    violate: Any,
    dne_is_violation: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """The `datasets` object and the plan findings (over_cap, unplanned, planned_absent; do_not_evaluate only
    when the policy makes it a violation, otherwise it is the dataset's flag and `do_not_evaluate_seen`)."""
    from mip.registry import default_registry

    registry = default_registry()
    planned_entries = {
        name: e for name, e in ((plan or {}).get("datasets") or {}).items() if e.get("planned")
    }
    listed = set(
        ((plan or {}).get("do_not_evaluate") or {}).get("datasets") or registry.do_not_evaluate_names()
    )
    written_total = sum(int(e.get("written", 0)) for e in planned_entries.values())
    planned_tokens = sum(int(e.get("tokens", 0)) for e in planned_entries.values())
    planned_ratio = float((plan or {}).get("token_ratio") or 0.0)
    mip_samples = sum(u.samples for u in usage.values())
    datasets: dict[str, Any] = {}
    dne_seen: list[str] = []
    for name in sorted(set(usage) | set(planned_entries)):
        used = usage.get(name, _Usage())
        entry = (plan or {}).get("datasets", {}).get(name)
        if entry is not None:
            cap, family = entry.get("cap"), entry.get("family")
            do_not_evaluate = bool(entry.get("do_not_evaluate")) or name in listed
        elif name in registry:
            info = registry.get(name)
            cap, family, do_not_evaluate = info.cap, info.family, info.do_not_evaluate or name in listed
        else:
            cap, family, do_not_evaluate = None, None, name in listed
        distinct = used.distinct()
        report: dict[str, Any] = {
            "samples": used.samples,
            "tokens": used.tokens,
            "distinct": distinct,
            "cap": cap,
            "planned": name in planned_entries,
            "do_not_evaluate": do_not_evaluate,
            "family": family,
        }
        if name in planned_entries:
            written = int(planned_entries[name].get("written", 0))
            share = max(mip_samples / max(written_total, 1), planned_ratio * range_tokens / max(planned_tokens, 1))
            report["written"] = written
            report["expected_samples"] = written * share
        datasets[name] = report
        if cap is not None and distinct > cap:
            violate("over_cap", name, f"{distinct} distinct examples in the range, cap {cap}")
        if used.samples and plan is not None and name not in planned_entries:
            why = "not in the plan" if entry is None else "in the plan with no examples written"
            violate("unplanned", name, f"{used.samples} samples of a dataset {why}")
        if name in planned_entries and used.samples == 0 and report["expected_samples"] >= min_expected:
            violate(
                "planned_absent",
                name,
                f"planned ({report['written']} examples written) but absent from the "
                f"range, where {report['expected_samples']:.1f} samples were expected",
            )
        if used.samples and do_not_evaluate:
            dne_seen.append(name)
        if used.samples and do_not_evaluate and dne_is_violation:
            violate(
                "do_not_evaluate",
                name,
                f"{used.samples} samples of a dataset on the GLM-130B do-not-evaluate "
                "list: evaluations of the model on it are not zero-shot",
            )
    return datasets, dne_seen


def resolve_tokenizer_path(config: AuditConfig, manifest: dict[str, Any]) -> str | None:
    """--tokenizer, else the demo layout's RUN/tokenizer/ice_text.model, else what the token shards recorded."""
    if config.tokenizer:
        return config.tokenizer
    train = Path(config.train)
    candidates = [train.parent / "tokenizer" / "ice_text.model"]
    tokens_dir = (manifest.get("inputs") or {}).get("tokens")
    if tokens_dir:
        token_manifest = Path(tokens_dir) / "manifest.json"
        if token_manifest.is_file():
            recorded = orjson.loads(token_manifest.read_bytes()).get("tokenizer")
            if recorded:
                candidates.append(Path(recorded))
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return None  # the tokenizer's own default (icetk's cache)


def _contamination(
    config: AuditConfig, shards: TrainingShards, manifest: dict[str, Any], rows: np.ndarray, violate: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    from mip.contamination import NgramIndex, VocabText, scan_rows, scan_rows_on_ray
    from mip.eval_sets import read_eval_sets
    from pipeline.tokenizer import GLMTokenizer

    eval_sets = read_eval_sets(config.eval)
    index = NgramIndex.build(eval_sets, n=config.ngram)
    tokenizer = GLMTokenizer(resolve_tokenizer_path(config, manifest))
    vocab = VocabText(tokenizer)
    on_ray = config.workers > 1 and len(rows) >= config.ray_min_rows
    ranges = 1
    bar = Progress("audit scan", total=len(rows), unit="row", enabled=config.progress)
    try:
        if on_ray:
            stats, ranges = scan_rows_on_ray(
                str(shards.path),
                rows,
                index,
                vocab,
                workers=config.workers,
                batch_rows=config.batch_rows,
                describe_factory=_SegmentDescriber,
                match_limit=config.first_ids,
                progress=bar,
                address=config.ray_address,
            )
        else:
            stats = scan_rows(
                shards,
                rows,
                index,
                vocab,
                batch_rows=config.batch_rows,
                describe_segment=_SegmentDescriber(shards),
                match_limit=config.first_ids,
                progress=bar,
            )
    finally:
        bar.close()
    report = index.report(first_ids=config.first_ids)
    for eval_set in eval_sets:
        entry = report[eval_set.name]
        entry["file"] = eval_set.describe()
        if entry["contaminated"]:
            violate(
                "contamination",
                eval_set.name,
                f"{entry['contaminated']} of {entry['examples']} examples share a {config.ngram}-gram with the "
                f"range's rows (e.g. {', '.join(entry['first_contaminated_ids'])})",
            )
    scan = {
        "ngram": config.ngram,
        "tokenizer": str(tokenizer.path) if tokenizer.path else None,
        **stats.to_dict(),
        "index": index.memory,
        "engine": f"ray ({config.workers} workers, {ranges} row ranges)" if on_ray else "in-process",
    }
    return report, scan


class _SegmentDescriber:
    """Names a training segment (kind, source, first document) for the contamination report; reads a shard's
    provenance (three columns, kept as Arrow arrays) only when one of its segments matches, and keeps only the
    last shard read: the scan goes in row order, so matches come shard after shard, and memory stays one
    shard's columns however many shards match."""

    def __init__(self, shards: TrainingShards) -> None:
        self.shards = shards
        self.shard: int | None = None
        self.columns: dict[str, pa.Array] = {}

    def __call__(self, shard: int, segment: int, row: int) -> dict[str, Any]:
        if shard != self.shard:
            name = self.shards.manifest["shards"][shard]["name"]
            table = pq.read_table(
                str(self.shards.path / name) + PROVENANCE_SUFFIX, columns=["kind", "source", "doc_ids"]
            )
            self.shard, self.columns = shard, {c: table.column(c).combine_chunks() for c in table.column_names}
        columns = self.columns
        doc_ids = columns["doc_ids"][segment].as_py()
        return {
            "kind": columns["kind"][segment].as_py(),
            "source": columns["source"][segment].as_py(),
            "doc_id": doc_ids[0] if doc_ids else None,
        }


# ---------------------------------------------------------------------------------------------- output


def render_audit(summary: dict[str, Any]) -> str:
    """The human-readable report: header, MIP ratio, datasets table (flags marked), violations, contamination."""
    first, last = summary["steps"]
    sampler, rows = summary["sampler"], summary["rows"]
    lines = [
        f"audit of {summary['train']}, steps {first}:{last} (global batch {sampler['global_batch']}, data seed "
        f"{sampler['seed']} from {sampler['from']}): {rows['samples']} samples, {rows['distinct']} distinct of "
        f"{rows['in_run']} rows ({rows['epochs']:.2f} epochs)",
        f"plan: {summary['plan'] or 'none (plan checks skipped; give --plan)'}",
    ]
    ratio = summary["ratio"]
    target = ratio.get("target")
    expected = f" (plan {target:.4f} +- {ratio['tolerance']:.4f})" if target and "tolerance" in ratio else ""
    lines.append(
        f"MIP token ratio {summary['mip_token_ratio']:.4f}{expected}: {ratio['mip_tokens']} of "
        f"{ratio['tokens']} tokens"
    )
    if len(summary["windows"]) > 1:
        lines.append(
            "  by window: "
            + "  ".join(
                f"{w['steps'][0]}:{w['steps'][1]} {w['mip_token_ratio']:.4f}" for w in summary["windows"]
            )
        )
    flagged = {(v["kind"], v["dataset"]) for v in summary["violations"]}
    if summary["datasets"]:
        width = max(28, *(len(name) for name in summary["datasets"]))
        lines.append("")
        lines.append(
            f"{'dataset':<{width}} {'family':<10} {'samples':>8} {'distinct':>8} {'tokens':>10} "
            f"{'cap':>8}  flags"
        )
        for name, entry in summary["datasets"].items():
            flags = [kind for kind in ("over_cap", "unplanned", "planned_absent") if (kind, name) in flagged]
            if entry["do_not_evaluate"]:
                flags.append("do-not-evaluate")
            if not entry["planned"] and "unplanned" not in flags and summary["plan_checks"]:
                flags.append("not planned")
            cap = "none" if entry["cap"] is None else str(entry["cap"])
            lines.append(
                f"{name:<{width}} {str(entry['family'] or '-'):<10} {entry['samples']:>8} "
                f"{entry['distinct']:>8} {entry['tokens']:>10} {cap:>8}  {', '.join(flags)}"
            )
    else:
        lines.append("no MIP datasets in the range")
    if summary["contamination"]:
        lines.append("")
        for name, entry in summary["contamination"].items():
            ids = (
                f"; e.g. {', '.join(entry['first_contaminated_ids'])}"
                if entry["first_contaminated_ids"]
                else ""
            )
            lines.append(
                f"contamination {name}: {entry['contaminated']} of {entry['examples']} examples "
                f"({entry['fraction']:.2%}){ids}"
            )
        scan = summary.get("contamination_scan") or {}
        if scan:
            lines.append(
                f"  scanned {scan['rows']} rows, {scan['tokens']} tokens with {scan['ngram']}-grams at "
                f"{scan['tokens_per_second']:,.0f} tokens/s; index {scan['index']['ngrams']} n-grams, "
                f"{scan['index']['bytes_per_ngram']:.1f} bytes each ({scan.get('engine', 'in-process')})"
            )
    lines.append("")
    if summary["violations"]:
        lines.append(f"violations ({sum(v['fails'] for v in summary['violations'])} failing):")
        for v in summary["violations"]:
            lines.append(f"  {'FAIL' if v['fails'] else 'note'} {v['kind']} {v['dataset']}: {v['detail']}")
    else:
        lines.append("no violations")
    lines.append(f"audit {'FAILED' if summary['failed'] else 'passed'}")
    return "\n".join(lines)
