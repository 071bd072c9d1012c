"""Which rows each step trains on, and a background loader that has them ready.

Sampler (pure numpy, importable without torch.distributed, so the audit stage reproduces it exactly):
the global sample stream is epoch 0's permutation of the row indices, then epoch 1's, ...; the permutation of
epoch e is `np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, e]))).permutation(n_rows)`.
Step s (0-based) consumes global samples [s*G, (s+1)*G) of that stream; DP rank d of D takes the contiguous
slice [d*G/D, (d+1)*G/D) of the step's rows and splits it into micro-batches in order. A checkpoint records the
consumed-sample count (s*G after s steps), so a resumed run continues with exactly the rows it would have seen,
and a run with another DP size trains on the same rows per step.

Loader: a thread builds the next steps' batches (`source.batch(rows)` then numpy -> torch) into a bounded queue
while the model computes; the trainer records how long it waited for data (target < 1% of step time).

Any object with `__len__` and `.batch(rows) -> dict of numpy arrays` is a row source: `shards.TrainingShards`
(DESIGN §10) or `SyntheticRows` below, which builds valid GLM rows for tests and benchmarks without shards.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from common.errors import ConfigError
from pipeline import special_tokens

BATCH_KEYS = ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids", "segments")


class RowSource(Protocol):
    """What the trainer reads: `len()` rows, and a dict of [B, L] arrays (plus `segments` [B, S, 3]) per batch."""

    def __len__(self) -> int: ...

    def batch(self, rows: Sequence[int] | np.ndarray) -> dict[str, Any]: ...


# -------------------------------------------------------------------------------------------------- sampler


@functools.lru_cache(maxsize=4)
def epoch_permutation(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The order of rows in epoch `epoch`: a Philox permutation keyed by (seed, epoch)."""
    generator = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, epoch])))
    order = generator.permutation(n_rows)
    order.flags.writeable = False
    return order


def rows_for_samples(n_rows: int, first_sample: int, count: int, seed: int) -> np.ndarray:
    """Row indices of global samples [first_sample, first_sample + count) of the stream (int64)."""
    if n_rows < 1:
        raise ConfigError("the training data has no rows")
    samples = np.arange(first_sample, first_sample + count, dtype=np.int64)
    epochs, positions = np.divmod(samples, n_rows)
    rows = np.empty(count, dtype=np.int64)
    for epoch in np.unique(epochs):
        chosen = epochs == epoch
        rows[chosen] = epoch_permutation(n_rows, seed, int(epoch))[positions[chosen]]
    return rows


def rows_for_step(n_rows: int, step: int, global_batch: int, seed: int) -> np.ndarray:
    """The G rows step `step` (0-based) trains on, in sampler order, across all DP ranks."""
    return rows_for_samples(n_rows, step * global_batch, global_batch, seed)


def rows_for_steps(n_rows: int, first_step: int, last_step: int, global_batch: int, seed: int) -> np.ndarray:
    """Rows of steps [first_step, last_step) as an array [steps, G] (the audit's step ranges)."""
    count = (last_step - first_step) * global_batch
    return rows_for_samples(n_rows, first_step * global_batch, count, seed).reshape(-1, global_batch)


def rows_for_rank(
    n_rows: int, step: int, global_batch: int, seed: int, dp_rank: int, dp_size: int
) -> np.ndarray:
    """The slice of step `step`'s rows that DP rank `dp_rank` of `dp_size` trains on."""
    if global_batch % dp_size:
        raise ConfigError(f"global batch {global_batch} does not split across {dp_size} DP ranks")
    per_rank = global_batch // dp_size
    return rows_for_step(n_rows, step, global_batch, seed)[dp_rank * per_rank : (dp_rank + 1) * per_rank]


@dataclasses.dataclass(frozen=True)
class DistributedSampler:
    """The deterministic sampler of one DP rank: rows -> micro-batches for every step."""

    n_rows: int
    global_batch_size: int
    micro_batch_size: int
    seed: int
    dp_rank: int = 0
    dp_size: int = 1

    def micro_batches(self, step: int) -> list[np.ndarray]:
        rows = rows_for_rank(self.n_rows, step, self.global_batch_size, self.seed, self.dp_rank, self.dp_size)
        if len(rows) % self.micro_batch_size:
            raise ConfigError(
                f"{len(rows)} rows per DP rank do not split into micro-batches of {self.micro_batch_size}"
            )
        return np.split(rows, len(rows) // self.micro_batch_size)


# ------------------------------------------------------------------------------------------ numpy -> torch


def to_torch_batch(
    batch: dict[str, Any], seq_length: int | None = None, pin_memory: bool = False
) -> dict[str, Any]:
    """The model's input from a row source's batch: int64 ids, bool loss mask, optionally truncated rows.

    Truncation to `seq_length` clips the segment table at the cut (segments starting after it are dropped).
    """
    import torch

    out: dict[str, Any] = {}
    length = np.asarray(batch["tokens"]).shape[1]
    cut = length if seq_length is None or seq_length >= length else seq_length
    for key in BATCH_KEYS[:-1]:
        array = np.asarray(batch[key])[:, :cut]
        array = array.astype(bool) if key == "loss_mask" else array.astype(np.int64)
        out[key] = torch.from_numpy(np.ascontiguousarray(array))
    segments = np.asarray(batch["segments"]).astype(np.int64)
    if cut < length:
        segments = segments.copy()
        dropped = segments[..., 0] >= cut
        segments[..., 1:] = np.minimum(segments[..., 1:], cut)
        segments[dropped] = -1
    out["segments"] = torch.from_numpy(np.ascontiguousarray(segments))
    if pin_memory:
        out = {key: value.pin_memory() for key, value in out.items()}
    return out


# ------------------------------------------------------------------------------------------------- loader


@dataclasses.dataclass
class StepBatch:
    """One step's data for one DP rank."""

    step: int
    micro_batches: list[dict[str, Any]]
    rows: np.ndarray


class PrefetchLoader:
    """Iterates steps [start_step, stop_step) with a background thread keeping `depth` steps ready.

    `wait_seconds` is the time the last `next()` blocked (data-wait); exceptions of the thread re-raise here.
    """

    def __init__(
        self,
        source: RowSource,
        sampler: DistributedSampler,
        start_step: int,
        stop_step: int,
        *,
        depth: int = 2,
        seq_length: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.source = source
        # The trainer never needs provenance; TrainingShards builds it per segment in Python unless told not to.
        self._batch_kwargs = (
            {"provenance": False} if "provenance" in inspect.signature(source.batch).parameters else {}
        )
        self.sampler = sampler
        self.seq_length = seq_length
        self.pin_memory = pin_memory
        self.wait_seconds = 0.0
        self.total_wait_seconds = 0.0
        self._queue: queue.Queue[StepBatch | BaseException | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._steps = range(start_step, stop_step)
        self._thread = threading.Thread(target=self._produce, name="glm-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for step in self._steps:
                micro_rows = self.sampler.micro_batches(step)
                micro_batches = [
                    to_torch_batch(
                        self.source.batch(rows, **self._batch_kwargs), self.seq_length, self.pin_memory
                    )
                    for rows in micro_rows
                ]
                if not self._put(StepBatch(step, micro_batches, np.concatenate(micro_rows))):
                    return
            self._put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item: StepBatch | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[StepBatch]:
        return self

    def __next__(self) -> StepBatch:
        started = time.perf_counter()
        item = self._queue.get()
        self.wait_seconds = time.perf_counter() - started
        self.total_wait_seconds += self.wait_seconds
        if item is None:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> PrefetchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_training_data(path: str) -> RowSource:
    """The masking stage's training shards at `path` (`shards.TrainingShards`)."""
    try:
        from shards.training_shards import TrainingShards
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "shards.training_shards is not available in this checkout; build it, or train on synthetic rows "
            "with --synthetic N"
        ) from exc
    return TrainingShards(path)


# ---------------------------------------------------------------------------------------------- synthetic


class SyntheticRows:
    """Valid GLM rows (DESIGN §4 layout) from a seed, for tests and benchmarks; `batch` like TrainingShards.

    Each row holds 1-3 segments (30% [MASK] with 1-2 spans, 70% [gMASK]) and sometimes a padded tail. The text
    of a segment is an arithmetic progression modulo a 64-token alphabet, so blanks are predictable from context
    and a tiny model's loss falls quickly. Row r depends only on (seed, r). With `vocab_size` below GLM's 150,528
    the special tokens move to the top of the small vocabulary (`special_ids`).
    """

    ALPHABET = 64

    def __init__(
        self, n_rows: int, seq_length: int = 128, vocab_size: int = special_tokens.VOCAB_SIZE, seed: int = 0
    ):
        if seq_length < 16:
            raise ConfigError("synthetic rows need at least 16 tokens")
        self.n_rows = n_rows
        self.seq_length = seq_length
        self.seed = seed
        if vocab_size >= special_tokens.VOCAB_SIZE:
            self.special_ids = {
                "[MASK]": special_tokens.MASK,
                "[gMASK]": special_tokens.GMASK,
                "[sop]": special_tokens.SOP,
                "[eop]": special_tokens.EOP,
            }
            self.text_start = special_tokens.IMAGE_TOKENS + 100
        else:
            if vocab_size < self.ALPHABET + 8:
                raise ConfigError(f"synthetic rows need a vocabulary of at least {self.ALPHABET + 8}")
            top = vocab_size - 4
            self.special_ids = {"[MASK]": top, "[gMASK]": top + 1, "[sop]": top + 2, "[eop]": top + 3}
            self.text_start = 1

    def __len__(self) -> int:
        return self.n_rows

    def batch(self, rows: Sequence[int] | np.ndarray) -> dict[str, Any]:
        built = [self._row(int(r)) for r in rows]
        max_segments = max(len(b["segments"]) for b in built)
        out: dict[str, Any] = {key: np.stack([b[key] for b in built]) for key in BATCH_KEYS[:-1]}
        segments = np.full((len(built), max_segments, 3), -1, dtype=np.int32)
        for i, b in enumerate(built):
            segments[i, : len(b["segments"])] = b["segments"]
        out["segments"] = segments
        out["provenance"] = [b["provenance"] for b in built]
        return out

    def _row(self, row: int) -> dict[str, Any]:
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([self.seed, row])))
        length = self.seq_length
        arrays = {key: np.zeros(length, dtype=np.int32) for key in BATCH_KEYS[:-1]}
        used = length - (int(rng.integers(1, length // 8)) if rng.random() < 0.25 else 0)
        n_segments = int(rng.integers(1, 4)) if used >= 48 else 1
        cuts = (
            np.sort(rng.choice(np.arange(12, used - 11), size=n_segments - 1, replace=False))
            if n_segments > 1
            else []
        )
        bounds = [0, *[int(c) for c in cuts], used]
        if any(b - a < 12 for a, b in zip(bounds[:-1], bounds[1:])):
            bounds = [0, used]
        segments, provenance = [], []
        for start, end in zip(bounds[:-1], bounds[1:]):
            kind = "mask" if rng.random() < 0.3 else "gmask"
            text = self._text(rng, end - start)
            pieces = (
                self._mask_segment(rng, text, end - start)
                if kind == "mask"
                else self._gmask_segment(rng, text, end - start)
            )
            part_a_len = len(pieces["part_a"])
            for key in ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids"):
                arrays[key][start:end] = pieces[key]
            segments.append((start, start + part_a_len, end))
            provenance.append({"kind": kind, "source": "synthetic", "doc_ids": [f"synthetic:{row}:{start}"]})
        return {**arrays, "segments": np.array(segments, dtype=np.int32), "provenance": provenance}

    def _text(self, rng: np.random.Generator, n: int) -> np.ndarray:
        first, stride = int(rng.integers(self.ALPHABET)), int(rng.integers(1, 4))
        return self.text_start + (first + stride * np.arange(n)) % self.ALPHABET

    def _gmask_segment(self, rng: np.random.Generator, text: np.ndarray, n: int) -> dict[str, np.ndarray]:
        ids = self.special_ids
        words = text[: n - 2]
        prefix = int(rng.integers(1, len(words)))
        part_a = np.concatenate([words[:prefix], [ids["[gMASK]"]]])
        suffix = words[prefix:]
        part_b_inputs = np.concatenate([[ids["[sop]"]], suffix])
        part_b_targets = np.concatenate([suffix, [ids["[eop]"]]])
        nb = len(part_b_inputs)
        return {
            "part_a": part_a,
            "tokens": np.concatenate([part_a, part_b_inputs]),
            "targets": np.concatenate([np.zeros(len(part_a), dtype=np.int64), part_b_targets]),
            "loss_mask": np.concatenate([np.zeros(len(part_a)), np.ones(nb)]),
            "position_ids": np.concatenate([np.arange(len(part_a)), np.full(nb, prefix)]),
            "block_position_ids": np.concatenate([np.zeros(len(part_a)), np.arange(1, nb + 1)]),
        }

    def _mask_segment(self, rng: np.random.Generator, text: np.ndarray, n: int) -> dict[str, np.ndarray]:
        ids = self.special_ids
        n_spans = 1 if n < 24 else int(rng.integers(1, 3))
        window = text[: n - 2 * n_spans]
        part_len = len(window) // n_spans
        spans = []  # (start in window, length); each span ends at least one token before its part's end
        for i in range(n_spans):
            span_len = int(rng.integers(1, min(4, part_len - 2) + 1))
            offset = int(rng.integers(1, part_len - span_len))
            spans.append((i * part_len + offset, span_len))
        part_a, mask_positions, cursor = [], [], 0
        for start, span_len in spans:
            part_a.extend(window[cursor:start])
            mask_positions.append(len(part_a))
            part_a.append(ids["[MASK]"])
            cursor = start + span_len
        part_a.extend(window[cursor:])
        tokens, targets, positions, blocks = (
            list(part_a),
            [0] * len(part_a),
            list(range(len(part_a))),
            [0] * len(part_a),
        )
        for span in rng.permutation(n_spans):
            start, span_len = spans[span]
            content = list(window[start : start + span_len])
            tokens += [ids["[sop]"], *content]
            targets += [*content, ids["[eop]"]]
            positions += [mask_positions[span]] * (span_len + 1)
            blocks += list(range(1, span_len + 2))
        nb = len(tokens) - len(part_a)
        return {
            "part_a": np.array(part_a),
            "tokens": np.array(tokens),
            "targets": np.array(targets),
            "loss_mask": np.concatenate([np.zeros(len(part_a)), np.ones(nb)]),
            "position_ids": np.array(positions),
            "block_position_ids": np.array(blocks),
        }
