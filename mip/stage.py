"""The MIP stage: instruction records -> caps -> tokens -> MIP token shards, plan and manifest.

    run_mip(MipConfig(inputs=["p3/", "deepstruct/"], out="out/mip"))

Two passes over the inputs. Pass 1 validates every record, counts what each dataset/template offers
and keeps only the seeded-hash keys the cap rule needs (mip/caps.py). Pass 2 re-reads the files that
hold selected examples, tokenizes prompt and target separately and writes one document per example:

    tokens = encode(prompt) + encode(target)        (no <eod>, [gMASK], [sop] or [eop]: masking adds them)
    provenance: doc_id, source = dataset, input_file, offset, lang, n_tokens,
                prompt_len (= len(encode(prompt))), dataset, template, family, split

Prompt and target are encoded as two separate texts, exactly as they stand in the record: no separator
is inserted or removed between them (in the GLM sample they sit in different parts, Part A and Part B),
so `prompt_len` is exact and `decode(tokens[:prompt_len]) == prompt`. An example longer than
`max_example_tokens` (the 2048-token row minus [gMASK] and [sop]; the [eop] is a target only) is dropped
as `too_long`, never truncated.

Records of a dataset the registry does not know (and the run did not allow with `allow_unknown` /
`allow_any_unknown`) fail the run with `UnknownDatasetsError` after pass 1, before anything is written,
naming every such dataset and its files; `skip_unknown` drops them instead, counted as `unknown_dataset`
and listed in the plan's `rejected_unknown`.

Output under OUT: `shards/<dataset>-00000.{bin,idx,provenance.parquet,checksum.json}` (one shard series
per dataset, so `glm-corpus verify` can check each source's count), `mip-plan.json`, `manifest.json`
(`docs_in = docs_out + sum(dropped)` per dataset). The output depends only on (inputs, seed, registry,
tokenizer): a rerun rewrites identical files.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa

from common.atomic import atomic_write_json
from common.errors import ConfigError, GLMCorpusError, TokenizerError
from common.memory import stage_memory
from common.progress import Progress
from mip.caps import CapSelector, DatasetSelection
from mip.plan import DEFAULT_TOKEN_RATIO, PLAN_FILE, DatasetPlan, Policy, TemplatePlan, build_plan, write_plan
from mip.readers import DatasetDrops, InputFile, MipExample, discover_inputs, read_examples
from mip.registry import DatasetInfo, Registry, UnknownDatasetsError, default_registry
from shards.token_shards import TokenShardWriter, shard_files

log = logging.getLogger(__name__)

ROW_LENGTH = 2048
MAX_EXAMPLE_TOKENS = ROW_LENGTH - 2
"""A MIP segment is prompt + [gMASK] + [sop] + target, so an example may hold 2046 text tokens."""
SHARDS_DIR = "shards"
MANIFEST_FILE = "manifest.json"
DEFAULT_SEED = 1234
MIP_EXTRA_SCHEMA = (
    pa.field("prompt_len", pa.int32()),
    pa.field("dataset", pa.string()),
    pa.field("template", pa.string()),
    pa.field("family", pa.string()),
    pa.field("split", pa.string()),
)
"""Provenance columns MIP shards add to the token-shard base columns."""


class Tokenizer(Protocol):
    """What the stage needs of `pipeline.tokenizer.GLMTokenizer`."""

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...


@dataclasses.dataclass
class MipConfig:
    """Everything a MIP run depends on (the CLI flags of `glm-corpus mip`)."""

    inputs: list[str]
    out: str
    tokenizer: str | None = None
    token_ratio: float = DEFAULT_TOKEN_RATIO
    seed: int = DEFAULT_SEED
    allow_unknown: list[str] = dataclasses.field(default_factory=list)
    """Unregistered dataset names to accept (family `unknown`)."""
    allow_any_unknown: bool = False
    """Accept every unregistered P3 folder / DeepStruct task as its own dataset."""
    skip_unknown: bool = False
    """Drop the records of unregistered, not allowed datasets (counted as `unknown_dataset`, listed in the
    plan's `rejected_unknown`) instead of failing the run with `UnknownDatasetsError`."""
    unknown_cap: int | None = 100_000
    caps: dict[str, int | None] = dataclasses.field(default_factory=dict)
    """Per-dataset cap overrides (None = uncapped)."""
    splits: list[str] | None = None
    strict: bool = False
    policy: Policy = dataclasses.field(default_factory=Policy)
    max_example_tokens: int = MAX_EXAMPLE_TOKENS
    shard_max_tokens: int = 1 << 26
    batch_size: int = 512


def load_tokenizer(path: str | None) -> Tokenizer:
    """`pipeline.tokenizer.GLMTokenizer(path)`; a clear error if the tokenizer module is missing."""
    try:
        from pipeline.tokenizer import GLMTokenizer
    except ModuleNotFoundError as exc:
        raise TokenizerError(f"the GLM tokenizer (pipeline.tokenizer) is not available: {exc}") from exc
    return GLMTokenizer(path)


def build_registry(config: MipConfig, registry: Registry | None = None) -> Registry:
    """The packaged registry with this run's allowed unknown names and cap overrides applied."""
    registry = registry or default_registry()
    registry = registry.with_unknown(
        config.allow_unknown, allow_any=config.allow_any_unknown, cap=config.unknown_cap
    )
    return registry.with_caps(config.caps) if config.caps else registry


def _info(registry: Registry, name: str) -> DatasetInfo:
    return registry.get(name) if name in registry else registry.adhoc(name)


class _DatasetWriter:
    """The shard series of one dataset under OUT/shards, rolled every `max_tokens` tokens."""

    def __init__(self, out: Path, info: DatasetInfo, max_tokens: int) -> None:
        self.out = out
        self.info = info
        self.max_tokens = max_tokens
        self.prefixes: list[str] = []
        self.summaries: list[dict[str, Any]] = []
        self._writer: TokenShardWriter | None = None
        self._tokens = 0

    def add(self, tokens: np.ndarray, example: MipExample, prompt_len: int) -> None:
        if self._writer is None or self._tokens >= self.max_tokens:
            self.close()
            relative = f"{SHARDS_DIR}/{self.info.slug}-{len(self.prefixes):05d}"
            self.prefixes.append(relative)
            self._writer = TokenShardWriter(self.out / relative, extra_schema=MIP_EXTRA_SCHEMA)
            self._tokens = 0
        self._tokens += len(tokens)
        self._writer.add(
            tokens,
            doc_id=f"{example.dataset}:{example.input_file}:{example.offset}",
            source=example.dataset,
            input_file=example.input_file,
            offset=example.offset,
            lang=self.info.lang,
            prompt_len=prompt_len,
            dataset=example.dataset,
            template=example.template,
            family=self.info.family,
            split=example.split,
        )

    def close(self) -> None:
        if self._writer is not None:
            summary = self._writer.close()
            summary["prefix"] = self.prefixes[-1]
            self.summaries.append(summary)
            self._writer = None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def _remove_previous_output(out: Path) -> None:
    """Delete a previous run's plan, manifest and the shards it lists, so nothing stale outlives a rerun.

    The new manifest and plan are written last: a run killed midway leaves no manifest, not an old one.
    """
    manifest = out / MANIFEST_FILE
    if manifest.exists():
        try:
            previous = orjson.loads(manifest.read_bytes())
        except orjson.JSONDecodeError:
            previous = {}
        for entry in previous.get("sources", {}).values():
            for prefix in entry.get("shards", []):
                for path in shard_files(out / prefix).values():
                    path.unlink(missing_ok=True)
        manifest.unlink()
    (out / PLAN_FILE).unlink(missing_ok=True)


@stage_memory()
def run_mip(
    config: MipConfig,
    tokenizer: Tokenizer | None = None,
    registry: Registry | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the MIP stage; returns the summary (also what `glm-corpus mip --json` prints)."""
    if not config.inputs:
        raise GLMCorpusError("glm-corpus mip needs at least one --input (or --demo)")
    if not 0.0 < config.token_ratio < 1.0:
        raise ConfigError(f"the MIP token ratio must be in (0, 1), got {config.token_ratio}")
    registry = build_registry(config, registry)
    out = Path(config.out)
    files, left_aside = discover_inputs(config.inputs, registry, config.splits)
    if not files:
        raise GLMCorpusError(
            f"no MIP data files under {', '.join(config.inputs)} (expected P3 folders with "
            f"<split>.jsonl/.parquet/.tfrecord* files, or DeepStruct .jsonl / .source+.target files)"
        )
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.tokenizer)
    drops = DatasetDrops(strict=config.strict)
    selection, plans, rejected_unknown = _select(files, registry, drops, config.seed, progress)
    if rejected_unknown and not config.skip_unknown:
        raise UnknownDatasetsError(_unknown_found(drops, rejected_unknown))
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_output(out)
    writers = _write_selected(out, files, registry, selection, plans, tokenizer, drops, config, progress)

    manifest = _manifest(files, left_aside, drops, plans, writers)
    for name, plan in plans.items():
        plan.dropped = drops.counts(name)
    plan_doc = build_plan(
        registry=registry,
        datasets=plans,
        seed=config.seed,
        token_ratio=config.token_ratio,
        policy=config.policy,
        inputs=[str(p) for p in config.inputs],
        splits=config.splits,
        allowed_unknown=list(config.allow_unknown),
        allow_any_unknown=config.allow_any_unknown,
        rejected_unknown=rejected_unknown,
        max_example_tokens=config.max_example_tokens,
        shards_dir=SHARDS_DIR,
    )
    plan_path = write_plan(out, plan_doc)
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return _summary(out, plan_path, plan_doc, manifest, rejected_unknown)


def _select(
    files: list[InputFile], registry: Registry, drops: DatasetDrops, seed: int, progress: bool
) -> tuple[dict[str, DatasetSelection], dict[str, DatasetPlan], list[str]]:
    """Pass 1: validate and count every record, apply the cap rule; the plan entries and rejected names."""
    selector = CapSelector(seed, lambda name: _info(registry, name).cap)
    files_of: dict[str, set[int]] = defaultdict(set)
    splits_seen: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with Progress("mip read", total=len(files), unit="file", enabled=progress) as bar:
        for index, input_file in enumerate(files):
            for example in read_examples(input_file, registry, drops):
                selector.offer(example, index)
                files_of[example.dataset].add(index)
                splits_seen[example.dataset][example.split] += 1
            bar.update(1)
    selection = selector.finish()
    plans: dict[str, DatasetPlan] = {}
    for name, chosen in selection.items():
        plans[name] = DatasetPlan(
            info=_info(registry, name),
            templates={t: TemplatePlan(s.available, s.quota) for t, s in chosen.templates.items()},
            splits=dict(splits_seen[name]),
            input_files=len(files_of[name]),
        )
        over_cap = chosen.available - chosen.selected
        if over_cap:
            detail = f"cap {chosen.cap} over {len(chosen.templates)} template(s)"
            drops.reject(name, "over_cap", "", None, detail, count=over_cap)
    rejected_unknown = sorted(
        name for name, log_ in drops.logs.items() if "unknown_dataset" in log_.counts and name not in plans
    )
    for name in drops.seen:  # resolved datasets none of whose records was valid stay in the plan
        resolvable = name in registry or registry.allow_any_unknown
        if name not in plans and name not in rejected_unknown and resolvable:
            plans[name] = DatasetPlan(info=_info(registry, name))
    return selection, plans, rejected_unknown


def _unknown_found(drops: DatasetDrops, names: list[str]) -> dict[str, tuple[int, list[str]]]:
    """(records, files) of each unknown dataset, for the error (files: those of the drop examples kept)."""
    found = {}
    for name in names:
        log_ = drops.logs[name]
        files = dict.fromkeys(example.path for example in log_.examples.get("unknown_dataset", []))
        found[name] = (log_.counts["unknown_dataset"], list(files))
    return found


def _write_selected(
    out: Path,
    files: list[InputFile],
    registry: Registry,
    selection: dict[str, DatasetSelection],
    plans: dict[str, DatasetPlan],
    tokenizer: Tokenizer,
    drops: DatasetDrops,
    config: MipConfig,
    progress: bool,
) -> dict[str, _DatasetWriter]:
    """Pass 2: re-read the selected records, tokenize, write them dataset by dataset in (file, offset) order."""
    writers: dict[str, _DatasetWriter] = {}
    total_selected = sum(s.selected for s in selection.values())
    with Progress("mip tokenize", total=total_selected, unit="example", enabled=progress) as bar:
        for name in sorted(selection):
            if not selection[name].chosen:
                continue
            writer = writers[name] = _DatasetWriter(out, plans[name].info, config.shard_max_tokens)
            wanted: dict[int, set[int]] = defaultdict(set)
            for file_index, offset in selection[name].chosen:
                wanted[file_index].add(offset)
            try:
                batch: list[MipExample] = []
                for file_index in sorted(wanted):
                    scratch = DatasetDrops()  # these records were counted in pass 1
                    for example in read_examples(
                        files[file_index], registry, scratch, only=name, offsets=wanted[file_index]
                    ):
                        batch.append(example)
                        if len(batch) >= config.batch_size:
                            _write_batch(batch, tokenizer, writer, plans[name], drops, config)
                            bar.update(len(batch))
                            batch = []
                if batch:
                    _write_batch(batch, tokenizer, writer, plans[name], drops, config)
                    bar.update(len(batch))
                writer.close()
            except BaseException:
                writer.abort()
                raise
    return writers


def _write_batch(
    batch: Sequence[MipExample],
    tokenizer: Tokenizer,
    writer: _DatasetWriter,
    plan: DatasetPlan,
    drops: DatasetDrops,
    config: MipConfig,
) -> None:
    prompts = tokenizer.encode_batch([example.prompt for example in batch])
    targets = tokenizer.encode_batch([example.target for example in batch])
    for example, prompt_ids, target_ids in zip(batch, prompts, targets):
        length = len(prompt_ids) + len(target_ids)
        if len(prompt_ids) == 0 or len(target_ids) == 0:
            drops.reject(
                example.dataset,
                "empty_after_tokenization",
                example.input_file,
                example.offset,
                "prompt or target encodes to no tokens",
            )
            continue
        if length > config.max_example_tokens:
            drops.reject(
                example.dataset,
                "too_long",
                example.input_file,
                example.offset,
                f"{length} tokens > {config.max_example_tokens}",
            )
            continue
        tokens = np.concatenate(
            [np.asarray(prompt_ids, dtype=np.int32), np.asarray(target_ids, dtype=np.int32)]
        )
        writer.add(tokens, example, len(prompt_ids))
        plan.written += 1
        plan.tokens += length
        plan.prompt_tokens += len(prompt_ids)
        plan.target_tokens += len(target_ids)
        plan.templates[example.template].written += 1


def _manifest(
    files: list[InputFile],
    left_aside: dict[str, list[str]],
    drops: DatasetDrops,
    plans: dict[str, DatasetPlan],
    writers: dict[str, _DatasetWriter],
) -> dict[str, Any]:
    """Per-dataset accounting in the layout `glm-corpus verify` checks (`sources`)."""
    sources = {}
    for name in sorted(set(drops.seen) | set(plans)):
        writer = writers.get(name)
        docs_out = plans[name].written if name in plans else 0
        dropped = drops.counts(name)
        docs_in = drops.seen[name]
        if docs_in != docs_out + sum(dropped.values()):
            raise GLMCorpusError(
                f"MIP accounting bug for {name!r}: {docs_in} records in, {docs_out} written, "
                f"{sum(dropped.values())} dropped"
            )
        sources[name] = {
            "docs_in": docs_in,
            "docs_out": docs_out,
            "dropped": dropped,
            "tokens": plans[name].tokens if name in plans else 0,
            "shards": writer.prefixes if writer else [],
        }
    merged = drops.merged().to_dict()
    return {
        "stage": "mip",
        "plan": PLAN_FILE,
        "input_files": len(files),
        "left_aside": left_aside,
        "docs_in": sum(s["docs_in"] for s in sources.values()),
        "docs_out": sum(s["docs_out"] for s in sources.values()),
        "dropped": merged["dropped"],
        "drop_examples": merged["examples"],
        "sources": sources,
        "shards": [summary for writer in writers.values() for summary in writer.summaries],
    }


def _summary(
    out: Path, plan_path: Path, plan: dict[str, Any], manifest: dict[str, Any], rejected_unknown: list[str]
) -> dict[str, Any]:
    datasets = plan["datasets"]
    families: dict[str, dict[str, int]] = {}
    for entry in datasets.values():
        family = families.setdefault(entry["family"], {"datasets": 0, "examples": 0, "tokens": 0})
        family["datasets"] += 1
        family["examples"] += entry["written"]
        family["tokens"] += entry["tokens"]
    return {
        "out": str(out),
        "plan": str(plan_path),
        "manifest": str(out / MANIFEST_FILE),
        "input_files": manifest["input_files"],
        "records_in": manifest["docs_in"],
        "examples_out": manifest["docs_out"],
        "tokens": plan["totals"]["tokens"],
        "token_ratio": plan["token_ratio"],
        "shards": len(manifest["shards"]),
        "families": dict(sorted(families.items())),
        "dropped": manifest["dropped"],
        "do_not_evaluate_included": sorted(
            n for n, e in datasets.items() if e["planned"] and e["do_not_evaluate"]
        ),
        "eval_included": sorted(n for n, e in datasets.items() if e["planned"] and e["eval"]),
        "unknown_rejected": rejected_unknown,
    }
