"""Where row text comes from: the document stream mixed from sources by weight, and the MIP example stream.

Text. Each source is an endless sequence of epochs; epoch e of source s visits its documents in the order
`permutation(shuffle_seed, s, e)`. The stream interleaves sources by share: every document gets the tag
(tokens of its source before it) / w_s and the stream lists documents by tag (ties: the first source by
name), i.e. document j of source s is due when the stream has taken (tokens of s before j) / w_s
tokens, and documents come in that order. With natural weights (each source's own token count, the default)
the first pass holds every document exactly once, in a mix that stays within one document of the sources'
proportions all along; explicit weights up- or down-sample sources (a source that runs out starts its next
epoch). The stream ends after `budget` tokens (the last document is cut there): with `rows` unset,
budget = epochs x all text tokens, so one pass uses every document once.

The stream depends only on (lengths, weights, shuffle_seed, budget), not on the masking seed: a re-mask with a
new seed cuts the same text into different rows and masks.

MIP. All examples in one permutation(shuffle_seed) order (so datasets are spread over the run instead of
arriving one after another, the GLM-130B incident); with `repeat`, a new permutation per epoch. An example
whose prompt + target + 2 exceeds a row is truncated: the prompt keeps its last
min(P, mip_min_prompt, (row_length - 2) // 2) tokens at least, the target keeps its first tokens up to what is left, then the prompt takes what remains
(from its end). An example that would leave 1 or 2 slots of an otherwise empty row (too few for any
segment) loses that many more prompt tokens (or target tokens if the prompt is empty). Both are counted;
an example with an empty target is skipped (counted too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.errors import ConfigError
from common.memory import table_array


def permutation(n: int, *key: int) -> np.ndarray:
    """A permutation of range(n) keyed by integers (Philox, so it is the same on every machine).

    int32 while n fits (4 bytes a document): the same order as `generator.permutation(n)`, whose int64
    `arange` is shuffled by the same draws (the shuffle's random numbers do not depend on the item size)."""
    generator = np.random.Generator(np.random.Philox(np.random.SeedSequence(list(key))))
    order = table_array(n, np.int32 if n <= np.iinfo(np.int32).max else np.int64)
    order[...] = np.arange(n, dtype=order.dtype)
    generator.shuffle(order)
    return order


def resolve_weights(names: Sequence[str], tokens: Sequence[int], weights: dict[str, float]) -> np.ndarray:
    """Normalized token shares per source: natural (proportional to tokens) unless `weights` names them."""
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ConfigError(f"source_weights names unknown source(s) {unknown}; the sources are {list(names)}")
    raw = np.array(
        [float(weights.get(name, 0.0)) if weights else float(count) for name, count in zip(names, tokens)],
        dtype=np.float64,
    )
    raw[np.asarray(tokens) == 0] = 0.0
    if raw.sum() <= 0:
        raise ConfigError("no text to mask: every source is empty or has weight 0")
    return raw / raw.sum()


class _Epoch:
    """One epoch of one source: its document order, and the running token counts of a window of that order.

    Only the permutation is held per document (int32); the documents' lengths in epoch order and the tokens
    before each are computed for a window from `position` on, grown (doubling) as the stream advances."""

    def __init__(self, epoch: int, order: np.ndarray, base: int, lengths: np.ndarray, window: int) -> None:
        self.epoch = epoch
        self.order = order
        self.base = base  # tokens of the source before this epoch
        self.lengths = lengths
        self.window = window
        self.position = 0  # documents before this one are in the stream
        self.first = 0  # the window covers documents [first, first + len(before))
        self.ordered = lengths[:0]
        self.before = np.zeros(0, dtype=np.int64)  # tokens of this epoch before each document of the window
        self.after = 0  # tokens of this epoch before the window's end

    def stop(self, value: float) -> int:
        """The first document i >= position whose tokens-before (in this epoch) are >= value, else the epoch's
        length: what `np.searchsorted(before_of_all_documents, value)` gives, since every document before
        `position` has fewer tokens before it than an earlier, smaller value."""
        while True:
            k = int(np.searchsorted(self.before, value, side="left"))
            if k < len(self.before):
                return self.first + k
            end = self.first + len(self.before)
            if end >= len(self.order):
                return len(self.order)
            self._extend(end)

    def _extend(self, end: int) -> None:
        start = self.position
        tokens = int(self.before[start - self.first]) if start < end else self.after
        hi = min(len(self.order), end + max(self.window, end - start))
        ordered = self.lengths[self.order[start:hi]]
        running = np.cumsum(ordered, dtype=np.int64)
        self.after = tokens + int(running[-1])
        running -= ordered
        running += tokens
        self.first, self.ordered, self.before = start, ordered, running

    def take(self, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens before, document, length) of documents [position, stop), which lie in the window."""
        lo, hi = self.position - self.first, stop - self.first
        return self.before[lo:hi], self.order[self.position : stop], self.ordered[lo:hi]


class TextStream:
    """Documents as (source, doc, end, doc_length): tokens [0, end) of the document are in the stream.

    Document j of source s (counting on across epochs) gets the tag (tokens of s before it) / w_s; the stream
    is every document in (tag, source) order, produced in vectorized batches of `batch_tokens` of tag range.
    Memory per document: the lengths as given (int32 from the token store) and one int32 permutation per
    active source; everything else is per batch.
    """

    def __init__(
        self,
        lengths: Sequence[np.ndarray],
        weights: np.ndarray,
        shuffle_seed: int,
        budget: float,
        batch_tokens: int = 1 << 22,
        window: int = 1 << 16,
    ) -> None:
        self.lengths = [np.asarray(x) for x in lengths]
        self.source_tokens = [int(x.sum()) for x in self.lengths]
        self.weights = np.asarray(weights, dtype=np.float64)
        self.shuffle_seed = shuffle_seed
        self.budget = budget
        self.batch_tokens = batch_tokens
        self.window = window
        self.active = [
            s for s in range(len(self.lengths)) if self.weights[s] > 0 and self.source_tokens[s] > 0
        ]
        self.epochs_started = [0] * len(self.lengths)
        self._state: dict[int, _Epoch] = {}
        for s in self.active:
            self._state[s] = self._epoch(s, 0, 0)
        self.frontier = 0.0  # every document with a tag below this has been batched
        self.total = 0  # tokens emitted
        self._batch: list[tuple[int, int, int, int]] = []
        self._at = 0
        self._done = not self.active

    def _epoch(self, s: int, epoch: int, base: int) -> _Epoch:
        order = permutation(len(self.lengths[s]), self.shuffle_seed, s, epoch)
        return _Epoch(epoch, order, base, self.lengths[s], self.window)

    def _next_batch(self) -> None:
        while not self._batch and not self._done:
            end = self.frontier + self.batch_tokens
            tags, sources, docs, lengths, epochs = [], [], [], [], []
            for s in self.active:
                state = self._state[s]
                weight = self.weights[s]
                while True:
                    stop = state.stop(end * weight - state.base)
                    if stop > state.position:
                        before, order, ordered = state.take(stop)
                        tags.append((state.base + before) / weight)
                        sources.append(np.full(stop - state.position, s, dtype=np.int64))
                        docs.append(order)
                        lengths.append(ordered)
                        epochs.append(np.full(stop - state.position, state.epoch, dtype=np.int64))
                    if stop < len(state.order):
                        state.position = stop
                        break
                    state = self._state[s] = self._epoch(
                        s, state.epoch + 1, state.base + self.source_tokens[s]
                    )
            self.frontier = end
            if not tags:
                continue
            tag = np.concatenate(tags)
            source = np.concatenate(sources)
            by_tag = np.lexsort((source, tag))
            source, doc, length = (
                source[by_tag],
                np.concatenate(docs)[by_tag],
                np.concatenate(lengths)[by_tag],
            )
            epoch = np.concatenate(epochs)[by_tag]
            kept = length.copy()
            if self.budget != float("inf"):
                after = self.total + np.cumsum(length, dtype=np.int64)
                over = np.flatnonzero(after >= self.budget)
                if len(over):
                    cut = int(over[0])
                    source, doc, length, kept = (
                        source[: cut + 1],
                        doc[: cut + 1],
                        length[: cut + 1],
                        kept[: cut + 1],
                    )
                    kept[cut] = int(self.budget - (after[cut] - length[cut]))
                    self._done = True
            self.total += int(kept.sum())
            for s in np.unique(source[: len(kept)]).tolist():
                self.epochs_started[s] = max(
                    self.epochs_started[s], int(epoch[: len(kept)][source[: len(kept)] == s].max()) + 1
                )
            self._batch = list(zip(source.tolist(), doc.tolist(), kept.tolist(), length.tolist()))
            self._at = 0

    @property
    def exhausted(self) -> bool:
        return self._done and self._at >= len(self._batch)

    def next(self) -> tuple[int, int, int, int] | None:
        """The next document as (source, doc, end, doc_length), or None at the end of the stream."""
        if self._at >= len(self._batch):
            self._batch = []
            self._next_batch()
            if not self._batch:
                return None
        item = self._batch[self._at]
        self._at += 1
        return item


class MipStream:
    """MIP examples as (doc, window offset, prompt tokens kept, target tokens kept), truncated to fit a row."""

    def __init__(
        self,
        lengths: np.ndarray,
        prompt_lengths: np.ndarray,
        shuffle_seed: int,
        repeat: bool,
        row_length: int,
        min_prompt: int,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.prompt_lengths = np.minimum(np.asarray(prompt_lengths, dtype=np.int64), self.lengths)
        self.shuffle_seed = shuffle_seed
        self.repeat = repeat
        self.row_length = row_length
        self.min_prompt = min_prompt
        self.epoch = 0
        self.order = permutation(len(self.lengths), shuffle_seed, 1 << 20, 0)
        self.cursor = 0
        self.truncated = 0
        self.truncated_tokens = 0
        self.skipped_empty = 0
        self.any_target = bool((self.lengths > self.prompt_lengths).any())
        self._head: tuple[int, int, int, int] | None = None

    def peek(self) -> tuple[int, int, int, int] | None:
        """The next example as (doc, offset, prompt kept, target kept), or None when they ran out."""
        while self._head is None:
            if self.cursor == len(self.order):
                if not self.repeat or not self.any_target:
                    return None
                self.epoch += 1
                self.order = permutation(len(self.lengths), self.shuffle_seed, 1 << 20, self.epoch)
                self.cursor = 0
            doc = int(self.order[self.cursor])
            target = int(self.lengths[doc] - self.prompt_lengths[doc])
            if target == 0:  # nothing to learn: the example is skipped (counted)
                self.skipped_empty += 1
                self.cursor += 1
                continue
            self._head = (doc, *self.fit(int(self.prompt_lengths[doc]), target))
        return self._head

    def pop(self) -> None:
        head = self._head
        assert head is not None
        doc, offset, prompt, target = head
        dropped = int(self.lengths[doc]) - prompt - target
        if dropped:
            self.truncated += 1
            self.truncated_tokens += dropped
        self._head = None
        self.cursor += 1

    def fit(self, prompt: int, target: int) -> tuple[int, int, int]:
        """(offset of the kept window in the example, prompt kept, target kept) under the truncation rule."""
        room = self.row_length - 2
        kept_prompt, kept_target = prompt, target
        if prompt + target > room:
            kept_target = min(target, room - min(prompt, self.min_prompt, room // 2))
            kept_prompt = min(prompt, room - kept_target)
        leftover = room - kept_prompt - kept_target
        if leftover in (1, 2):  # an example alone in a row must leave 0 or >= 3 slots
            cut = 3 - leftover
            from_prompt = min(cut, kept_prompt)
            kept_prompt -= from_prompt
            kept_target -= cut - from_prompt
        return prompt - kept_prompt, kept_prompt, kept_target
