"""`mip-plan.json`: what a MIP run intended, in the form the audit (`glm-corpus audit --plan`) checks.

The plan is written by `glm-corpus mip` beside its shards. It is self-contained: it names every dataset
the run selected with its family, cap and flags, the GLM-130B do-not-evaluate list and T0's evaluation
sets as resolved names, the token ratio MIP should reach in training, the seed, the datasets allowed
without being registered, and the policy switches that tell the audit which findings fail it. So an
audit needs only the plan and the training shards, not the registry of the version that made them.

Format (`"format": "glm-corpus/mip-plan"`, `"version": 1`); see docs/MIP.md for every field.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson

from common.atomic import atomic_write_json
from common.errors import ConfigError
from mip.registry import DO_NOT_EVALUATE_LIST_NAME, DatasetInfo, Registry

PLAN_FORMAT = "glm-corpus/mip-plan"
PLAN_VERSION = 1
PLAN_FILE = "mip-plan.json"
DEFAULT_TOKEN_RATIO = 0.05
CAP_RULE = (
    "per dataset: template quotas by water-filling (each template min(available, L), L the highest level "
    "whose sum fits the cap; leftovers one each to the levelled templates in name order); within a "
    "template the quota smallest xxh3_64(seed, dataset, template, prompt, target) keys, ties by (file, offset)"
)


@dataclasses.dataclass
class Policy:
    """Which audit findings make `glm-corpus audit` exit nonzero (all on by default)."""

    fail_on_contamination: bool = True
    fail_on_over_cap: bool = True
    fail_on_planned_absent: bool = True


@dataclasses.dataclass
class TemplatePlan:
    """One template of a dataset: valid examples found, kept by the cap rule, and written as tokens."""

    available: int
    selected: int
    written: int = 0


@dataclasses.dataclass
class DatasetPlan:
    """One dataset of the run: its registry facts and what the run found and kept of it."""

    info: DatasetInfo
    templates: dict[str, TemplatePlan] = dataclasses.field(default_factory=dict)
    splits: dict[str, int] = dataclasses.field(default_factory=dict)
    input_files: int = 0
    written: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    target_tokens: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def available(self) -> int:
        return sum(t.available for t in self.templates.values())

    @property
    def selected(self) -> int:
        return sum(t.selected for t in self.templates.values())

    def to_dict(self) -> dict[str, Any]:
        info = self.info.to_dict()
        del info["name"]
        return {
            **info,
            "planned": self.written > 0,
            "available": self.available,
            "selected": self.selected,
            "written": self.written,
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "target_tokens": self.target_tokens,
            "templates": {name: dataclasses.asdict(t) for name, t in sorted(self.templates.items())},
            "splits": dict(sorted(self.splits.items())),
            "input_files": self.input_files,
            "dropped": dict(sorted(self.dropped.items())),
        }


def build_plan(
    *,
    registry: Registry,
    datasets: dict[str, DatasetPlan],
    seed: int,
    token_ratio: float,
    policy: Policy,
    inputs: list[str],
    splits: list[str] | None,
    allowed_unknown: list[str],
    allow_any_unknown: bool,
    rejected_unknown: list[str],
    max_example_tokens: int,
    shards_dir: str,
) -> dict[str, Any]:
    """The plan document (a plain dict, JSON-ready)."""
    if not 0.0 < token_ratio < 1.0:
        raise ConfigError(f"the MIP token ratio must be in (0, 1), got {token_ratio}")
    entries = {name: plan.to_dict() for name, plan in sorted(datasets.items())}
    tokens = sum(plan.tokens for plan in datasets.values())
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "seed": seed,
        "token_ratio": token_ratio,
        "policy": dataclasses.asdict(policy),
        "inputs": inputs,
        "splits": splits,
        "allowed_unknown": {
            "names": sorted(allowed_unknown),
            "any": allow_any_unknown,
            "cap": registry.unknown_cap,
        },
        "rejected_unknown": sorted(rejected_unknown),
        "max_example_tokens": max_example_tokens,
        "cap_rule": CAP_RULE,
        "registry": registry.describe(),
        "do_not_evaluate": {
            "name": registry.do_not_evaluate_list.get("name", DO_NOT_EVALUATE_LIST_NAME),
            "datasets": registry.do_not_evaluate_names(),
            "listed_as": registry.do_not_evaluate_list["p3"] + registry.do_not_evaluate_list["deepstruct"],
        },
        "eval_datasets": registry.eval_names(),
        "shards": shards_dir,
        "datasets": entries,
        "totals": {
            "datasets": len(entries),
            "planned": sum(1 for entry in entries.values() if entry["planned"]),
            "available": sum(entry["available"] for entry in entries.values()),
            "selected": sum(entry["selected"] for entry in entries.values()),
            "written": sum(entry["written"] for entry in entries.values()),
            "tokens": tokens,
            # Text tokens that make MIP exactly `token_ratio` of all training tokens, if all MIP is used once.
            "text_tokens_for_ratio": round(tokens * (1 - token_ratio) / token_ratio),
        },
    }


def write_plan(out_dir: str | Path, plan: dict[str, Any]) -> Path:
    path = Path(out_dir) / PLAN_FILE
    atomic_write_json(path, plan)
    return path


def read_plan(path: str | Path) -> dict[str, Any]:
    """Load and sanity-check a plan (for the audit and the masking stage)."""
    path = Path(path)
    if path.is_dir():
        path = path / PLAN_FILE
    if not path.exists():
        raise ConfigError(f"MIP plan {path} does not exist (run `glm-corpus mip` first)")
    try:
        plan = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    if plan.get("format") != PLAN_FORMAT:
        raise ConfigError(f"{path}: not a MIP plan (format {plan.get('format')!r}, expected {PLAN_FORMAT!r})")
    if plan.get("version") != PLAN_VERSION:
        raise ConfigError(
            f"{path}: plan version {plan.get('version')} is not supported (expected {PLAN_VERSION})"
        )
    return plan
