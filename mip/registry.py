"""The MIP dataset registry: which instruction datasets exist, their family, cap and evaluation flags.

The facts live in `mip/registry.json` (data, not code): every dataset of T0's, T0+'s and T0++'s training
mixtures, T0's held-out evaluation sets, DeepStruct's datasets and the built-in demo sets, plus the
GLM-130B "do not evaluate" list verbatim. This module loads and checks them and answers the two questions
the MIP stage asks:

- which registered dataset a P3 folder or DeepStruct task name belongs to (`match`), where names are
  compared after mapping every non-alphanumeric character to `_` (P3 writes `super_glue_wsc.fixed`,
  copies of it `super_glue_wsc_fixed`), and the longest registered name that is followed by `_` or the
  end of the string wins (P3 joins dataset, subset and template with `_`, so prefixes are ambiguous);
- what a dataset's cap, family and flags are (`get`), where an unknown name is an error unless the run
  allowed it explicitly (`with_unknown`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from common.errors import ConfigError

REGISTRY_PATH = Path(__file__).with_name("registry.json")

DO_NOT_EVALUATE_LIST_NAME = "GLM-130B MIP list"
"""Name of the fact list of datasets GLM-130B was trained on in MIP (so must not be evaluated on)."""

GLM130B_P3_COUNT = 57
GLM130B_DEEPSTRUCT_COUNT = 13

FAMILIES = ("T0", "T0+", "T0++", "P3", "DeepStruct", "demo", "unknown")
"""`unknown` is the family of datasets a run allowed without registering them."""

MIXTURES_OF_FAMILY: dict[str, tuple[str, ...]] = {
    "T0": ("T0", "T0+", "T0++"),
    "T0+": ("T0+", "T0++"),
    "T0++": ("T0++",),
}
"""T0 ⊂ T0+ ⊂ T0++: a dataset's family is the first mixture that contains it."""


class UnknownDatasetError(ConfigError):
    """A dataset name or P3 folder that the registry does not know, and the run did not allow."""


class UnknownDatasetsError(UnknownDatasetError):
    """A MIP run's inputs hold records of datasets the registry does not know and the run did not allow.

    Raised after the first pass, before anything is written, so one run names every unknown dataset
    at once. `unknown` maps each name to (records, the files they were found in).
    """

    MAX_FILES = 3

    def __init__(self, unknown: Mapping[str, tuple[int, list[str]]]) -> None:
        self.unknown = {name: (count, list(files)) for name, (count, files) in sorted(unknown.items())}
        described = []
        for name, (count, files) in self.unknown.items():
            shown = ", ".join(files[: self.MAX_FILES]) + (", ..." if len(files) > self.MAX_FILES else "")
            described.append(f"{name!r} ({count} record(s) in {shown})")
        super().__init__(
            f"MIP inputs hold records of {len(self.unknown)} dataset(s) not in the registry "
            f"(mip/registry.json): {'; '.join(described)}. Register them, train on them as datasets of "
            f"family 'unknown' with `--allow-unknown NAME ...` (config `mip.allow_unknown`; a bare "
            f"`--allow-unknown` accepts every unknown folder/task), or drop them, counted as "
            f"unknown_dataset and listed in the plan, with `--skip-unknown` (config `mip.skip_unknown: "
            f"true`)"
        )

    def __reduce__(self):  # picklable despite the custom __init__
        return (type(self), (self.unknown,))


def normalize_name(name: str) -> str:
    """Lower-case ASCII letters and digits kept, every other character mapped to `_` (length-preserving).

    Keeping the length lets a match on the normalized folder name cut the original one at the same place,
    so the template keeps its spelling.
    """
    return "".join(c.lower() if c.isascii() and c.isalnum() else "_" for c in name)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """One registered (or explicitly allowed) MIP dataset."""

    name: str
    family: str
    task: str = ""
    cap: int | None = None
    eval: bool = False
    aliases: tuple[str, ...] = ()
    glm130b_name: str | None = None
    lang: str = "en"
    t0_train_size: int | None = None
    registered: bool = True

    @property
    def do_not_evaluate(self) -> bool:
        """On GLM-130B's do-not-evaluate list (it was in GLM-130B's MIP data)."""
        return self.glm130b_name is not None

    @property
    def mixtures(self) -> tuple[str, ...]:
        """The T0 training mixtures that contain this dataset (empty outside the T0 families)."""
        return MIXTURES_OF_FAMILY.get(self.family, ())

    @property
    def slug(self) -> str:
        """A file-name-safe form of the name (`super_glue/wsc.fixed` -> `super_glue__wsc.fixed`)."""
        return self.name.replace("/", "__")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "task": self.task,
            "cap": self.cap,
            "eval": self.eval,
            "do_not_evaluate": self.do_not_evaluate,
            "glm130b_name": self.glm130b_name,
            "mixtures": list(self.mixtures),
            "lang": self.lang,
            "registered": self.registered,
        }


@dataclasses.dataclass(frozen=True)
class Match:
    """A name resolved to a dataset: `rest` is what followed the dataset's name (the P3 template)."""

    dataset: DatasetInfo
    rest: str


class Registry:
    """The datasets a MIP run may use, looked up by name, alias or P3 folder prefix."""

    def __init__(
        self,
        datasets: Iterable[DatasetInfo],
        family_caps: Mapping[str, int | None],
        do_not_evaluate: Mapping[str, Any],
        version: int = 1,
        digest: str = "",
        allow_any_unknown: bool = False,
        unknown_cap: int | None = None,
    ) -> None:
        self.family_caps = dict(family_caps)
        self.do_not_evaluate_list = {
            "name": do_not_evaluate.get("name", DO_NOT_EVALUATE_LIST_NAME),
            "p3": list(do_not_evaluate.get("p3", [])),
            "deepstruct": list(do_not_evaluate.get("deepstruct", [])),
        }
        self.version = version
        self.digest = digest
        self.allow_any_unknown = allow_any_unknown
        self.unknown_cap = unknown_cap
        self._by_name: dict[str, DatasetInfo] = {}
        self._by_key: dict[str, DatasetInfo] = {}
        for info in datasets:
            if info.family not in FAMILIES:
                raise ConfigError(f"MIP registry: dataset {info.name!r} has unknown family {info.family!r}")
            if info.name in self._by_name:
                raise ConfigError(f"MIP registry: dataset {info.name!r} is listed twice")
            self._by_name[info.name] = info
            for spelling in (info.name, *info.aliases):
                key = normalize_name(spelling)
                other = self._by_key.get(key)
                if other is not None and other.name != info.name:
                    raise ConfigError(
                        f"MIP registry: {spelling!r} of {info.name!r} and a spelling of {other.name!r} "
                        f"both normalize to {key!r}; names must stay distinct after normalization"
                    )
                self._by_key[key] = info
        # Longest keys first: the first key that matches is the longest registered prefix.
        self._keys = sorted(self._by_key, key=lambda k: (-len(k), k))

    # Lookup -------------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._by_key

    def __iter__(self) -> Iterator[DatasetInfo]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> DatasetInfo:
        """The dataset called `name` (or an alias of it); `UnknownDatasetError` if there is none."""
        info = self._by_key.get(normalize_name(name))
        if info is None:
            raise UnknownDatasetError(
                f"MIP dataset {name!r} is not in the registry (mip/registry.json). Check the spelling "
                f"(registered names look like 'super_glue/boolq' or 'conll04'), or allow it explicitly "
                f"with `--allow-unknown {name}`"
            )
        return info

    def match(self, text: str) -> Match | None:
        """The dataset whose name is the longest prefix of `text` (a P3 folder or DeepStruct task name).

        A prefix counts only when followed by a non-alphanumeric character or the end of `text`, so
        `ade` does not claim `adversarial_qa_dbidaf_...`. Returns None when nothing matches.
        """
        normalized = normalize_name(text)
        for key in self._keys:
            if normalized == key or (normalized.startswith(key) and normalized[len(key)] == "_"):
                return Match(self._by_key[key], text[len(key) + 1 :])
        return None

    def families(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for info in self:
            out.setdefault(info.family, []).append(info.name)
        return out

    def do_not_evaluate_names(self) -> list[str]:
        """Registered names of the datasets on GLM-130B's do-not-evaluate list."""
        return sorted(info.name for info in self if info.do_not_evaluate)

    def eval_names(self) -> list[str]:
        """Registered names of T0's held-out evaluation datasets."""
        return sorted(info.name for info in self if info.eval)

    # Variants for one run -----------------------------------------------------------------------

    def with_unknown(
        self, names: Iterable[str] = (), allow_any: bool = False, cap: int | None = None
    ) -> Registry:
        """A registry that also accepts `names` (family `unknown`, cap `cap`), or any name if `allow_any`.

        Names already registered are left as they are (allowing a known dataset changes nothing).
        """
        extra = [
            DatasetInfo(name=name, family="unknown", cap=cap, lang="", registered=False)
            for name in dict.fromkeys(names)
            if name not in self
        ]
        return Registry(
            [*self, *extra],
            self.family_caps,
            self.do_not_evaluate_list,
            version=self.version,
            digest=self.digest,
            allow_any_unknown=allow_any or self.allow_any_unknown,
            unknown_cap=cap,
        )

    def with_caps(self, caps: Mapping[str, int | None]) -> Registry:
        """A registry with the caps of some datasets replaced (`None` = uncapped)."""
        replaced = {self.get(name).name: cap for name, cap in caps.items()}
        datasets = [dataclasses.replace(info, cap=replaced.get(info.name, info.cap)) for info in self]
        return Registry(
            datasets,
            self.family_caps,
            self.do_not_evaluate_list,
            version=self.version,
            digest=self.digest,
            allow_any_unknown=self.allow_any_unknown,
            unknown_cap=self.unknown_cap,
        )

    def adhoc(self, name: str) -> DatasetInfo:
        """The entry for an unregistered dataset seen in a run that allows any unknown name."""
        if not self.allow_any_unknown:
            self.get(name)  # raises UnknownDatasetError with the standard advice
        return DatasetInfo(name=name, family="unknown", cap=self.unknown_cap, lang="", registered=False)

    def describe(self) -> dict[str, Any]:
        """What a plan records about the registry it was made with."""
        return {
            "path": "mip/registry.json",
            "version": self.version,
            "sha256": self.digest,
            "family_caps": self.family_caps,
            "datasets": len(self),
        }


def load_registry(path: str | Path = REGISTRY_PATH) -> Registry:
    """Read and check a registry file (the packaged `mip/registry.json` by default).

    Checks: families and caps are known; every name of the GLM-130B list is linked by exactly one
    dataset (57 P3-style and 13 DeepStruct names for the packaged file); normalized names are unique.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    families = data.get("families", {})
    family_caps = {name: spec.get("cap") for name, spec in families.items()}
    datasets = []
    for entry in data.get("datasets", []):
        family = entry["family"]
        if family not in family_caps:
            raise ConfigError(f"{path}: dataset {entry['name']!r} has family {family!r} with no cap rule")
        datasets.append(
            DatasetInfo(
                name=entry["name"],
                family=family,
                task=entry.get("task", ""),
                cap=entry.get("cap", family_caps[family]),
                eval=bool(entry.get("eval", False)),
                aliases=tuple(entry.get("aliases", ())),
                glm130b_name=entry.get("glm130b_name"),
                lang=entry.get("lang", "en"),
                t0_train_size=entry.get("t0_train_size"),
            )
        )
    dne = data.get("do_not_evaluate", {})
    listed = [*dne.get("p3", []), *dne.get("deepstruct", [])]
    linked = [info.glm130b_name for info in datasets if info.glm130b_name is not None]
    if sorted(listed) != sorted(linked):
        missing = sorted(set(listed) - set(linked))
        extra = sorted(set(linked) - set(listed))
        raise ConfigError(
            f"{path}: the {dne.get('name', DO_NOT_EVALUATE_LIST_NAME)} and the datasets' glm130b_name "
            f"links disagree (unlinked: {missing}; linked but not listed: {extra})"
        )
    return Registry(
        datasets,
        family_caps,
        dne,
        version=int(data.get("version", 1)),
        digest=hashlib.sha256(raw).hexdigest(),
    )


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The packaged registry, loaded once per process."""
    return load_registry(REGISTRY_PATH)
