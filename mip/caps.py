"""Per-dataset caps across templates: how many examples each template may give, and which ones.

The rule (docs/MIP.md, "Caps"):

1. **Quotas by water-filling.** A dataset capped at C examples with templates holding a_1..a_T valid
   examples gets, per template, min(a_t, L) where L is the highest level with sum(min(a_t, L)) <= C;
   the few examples left over (fewer than the number of templates at the level) go one each to those
   templates, in template-name order. So every template gets about C/T, a template with fewer examples
   gives all it has and its unused share is spread over the others, and the quotas sum to exactly
   min(C, sum a_t). Uncapped datasets (cap None) keep everything.
2. **Selection by seeded hash.** Within a template the examples kept are the `quota` ones with the
   smallest key xxh3_64(seed, dataset, template, prompt, target), ties broken by (input file, offset).
   The key depends only on the example's content, so the choice is reproducible and independent of the
   order in which files or records are read; a different seed draws a different subset.

`CapSelector` applies the rule to a stream without holding it: per template it keeps at most ~2C
(key, file, offset) triples, pruning to the C smallest whenever the buffer doubles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import xxhash

from mip.readers import MipExample

KEY_SEPARATOR = "\x1f"


def selection_key(seed: int, dataset: str, template: str, prompt: str, target: str) -> int:
    """The example's seeded hash: smaller keys are kept first (unsigned 64-bit)."""
    text = KEY_SEPARATOR.join((str(seed), dataset, template, prompt, target))
    return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))


def template_quotas(available: Mapping[str, int], cap: int | None) -> dict[str, int]:
    """Water-filling quotas: how many examples each template gives under a dataset cap (see module doc)."""
    if cap is None or sum(available.values()) <= cap:
        return dict(available)
    if cap < 0:
        raise ValueError(f"a cap must be >= 0, got {cap}")
    quotas: dict[str, int] = {}
    remaining = cap
    by_size = sorted(available.items(), key=lambda item: (item[1], item[0]))
    for position, (template, count) in enumerate(by_size):
        share = remaining // (len(by_size) - position)
        if count <= share:
            quotas[template] = count
            remaining -= count
            continue
        # Every template from here on holds more than the equal share of what is left: level them.
        level_templates = sorted(name for name, _ in by_size[position:])
        extra = remaining - share * len(level_templates)
        for rank, name in enumerate(level_templates):
            quotas[name] = share + (1 if rank < extra else 0)
        break
    return {template: quotas[template] for template in available}


class _TemplatePool:
    """The smallest-key candidates of one template, with the count of everything offered."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.available = 0
        self._keys: list[int] = []
        self._files: list[int] = []
        self._offsets: list[int] = []
        self._kept: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def offer(self, key: int, file_index: int, offset: int) -> None:
        self.available += 1
        self._keys.append(key)
        self._files.append(file_index)
        self._offsets.append(offset)
        if self.limit is not None and len(self._keys) >= 2 * max(self.limit, 1024):
            self._compact()

    def _compact(self) -> None:
        keys = np.fromiter(self._keys, dtype=np.uint64, count=len(self._keys))
        files = np.asarray(self._files, dtype=np.int64)
        offsets = np.asarray(self._offsets, dtype=np.int64)
        if self._kept is not None:
            keys = np.concatenate([self._kept[0], keys])
            files = np.concatenate([self._kept[1], files])
            offsets = np.concatenate([self._kept[2], offsets])
        order = np.lexsort((offsets, files, keys))
        if self.limit is not None:
            order = order[: self.limit]
        self._kept = (keys[order], files[order], offsets[order])
        self._keys, self._files, self._offsets = [], [], []

    def smallest(self, quota: int) -> list[tuple[int, int]]:
        """(file index, offset) of the `quota` smallest-key candidates."""
        self._compact()
        assert self._kept is not None
        _, files, offsets = self._kept
        return list(zip(files[:quota].tolist(), offsets[:quota].tolist()))


@dataclasses.dataclass
class TemplateSelection:
    available: int
    quota: int


@dataclasses.dataclass
class DatasetSelection:
    """What the cap rule decided for one dataset."""

    cap: int | None
    templates: dict[str, TemplateSelection]
    chosen: set[tuple[int, int]]
    """(file index, offset) of every selected example."""

    @property
    def available(self) -> int:
        return sum(t.available for t in self.templates.values())

    @property
    def selected(self) -> int:
        return len(self.chosen)


class CapSelector:
    """Stream examples in, get the capped selection out (the rule in the module docstring).

        selector = CapSelector(seed=1234, cap_of=lambda dataset: registry.get(dataset).cap)
        for example, file_index in stream:
            selector.offer(example, file_index)
        selection = selector.finish()   # {dataset: DatasetSelection}

    `file_index` must be the position of the example's file in a path-sorted list, so that ties between
    identical examples break the same way whatever order files were read in.
    """

    def __init__(self, seed: int, cap_of: Callable[[str], int | None]) -> None:
        self.seed = seed
        self._cap_of = cap_of
        self._caps: dict[str, int | None] = {}
        self._pools: dict[str, dict[str, _TemplatePool]] = {}

    def offer(self, example: MipExample, file_index: int) -> None:
        dataset = example.dataset
        if dataset not in self._caps:
            self._caps[dataset] = self._cap_of(dataset)
            self._pools[dataset] = {}
        pools = self._pools[dataset]
        pool = pools.get(example.template)
        if pool is None:
            pool = pools[example.template] = _TemplatePool(self._caps[dataset])
        key = selection_key(self.seed, dataset, example.template, example.prompt, example.target)
        pool.offer(key, file_index, example.offset)

    def finish(self) -> dict[str, DatasetSelection]:
        out: dict[str, DatasetSelection] = {}
        for dataset in sorted(self._pools):
            pools = self._pools[dataset]
            cap = self._caps[dataset]
            quotas = template_quotas({name: pool.available for name, pool in pools.items()}, cap)
            chosen: set[tuple[int, int]] = set()
            templates = {}
            for name in sorted(pools):
                chosen.update(pools[name].smallest(quotas[name]))
                templates[name] = TemplateSelection(pools[name].available, quotas[name])
            out[dataset] = DatasetSelection(cap, templates, chosen)
        return out


def select_examples(
    examples: Iterable[MipExample], caps: Mapping[str, int | None] | Callable[[str], int | None], seed: int
) -> list[MipExample]:
    """Apply the cap rule to examples held in memory; the result is in (dataset, file, offset) order.

    For small inputs and tests; the MIP stage streams with `CapSelector` instead.
    """
    examples = list(examples)
    files = sorted({example.input_file for example in examples})
    file_index = {path: i for i, path in enumerate(files)}
    cap_of = caps if callable(caps) else (lambda dataset: caps.get(dataset))
    selector = CapSelector(seed, cap_of)
    for example in examples:
        selector.offer(example, file_index[example.input_file])
    selection = selector.finish()
    kept = [
        example
        for example in examples
        if (file_index[example.input_file], example.offset) in selection[example.dataset].chosen
    ]
    return sorted(kept, key=lambda e: (e.dataset, file_index[e.input_file], e.offset))
