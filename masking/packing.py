"""Row planning: a cheap sequential pass over document lengths that decides every row's segments.

The plan fixes, for each row, its segments (slot range, kind) and their text pieces (document, token range)
and, for [MASK] pieces, the span lengths; it reads no tokens. Building rows from a plan (masking/segments.py)
needs only the plan and a per-block RNG, so workers build disjoint row ranges independently, and the output
depends on (seed, shuffle_seed, inputs, config) only.

Row filling. A segment of n text tokens occupies n + 2 slots as [gMASK] and n + 2k slots as [MASK] with k
spans; MIP: prompt + target + 2. Rows are filled exactly:

- A document's remainder that fits the free slots is one segment; one that does not is cut so that its
  segment fills the row (gMASK: n = free - 2; MASK: the fill rule of masking/spans.py), and the rest of the
  document starts the next row.
- Every segment needs >= 3 slots, so a remainder that would leave 1 or 2 free slots is shortened by 3 - left
  tokens (that tail is served right after the next document's first piece, which fills the 3 freed slots).
  A remainder too short to shorten waits behind the next document instead.
- `cross_document`: a text row is one segment; documents follow each other with their <eod>; [MASK] rows
  give every document piece its own spans (so no span crosses a boundary); a piece too small for a span (the
  last 1-2 slots) has none.

Modes. Each text segment is [MASK] with probability q chosen so that, in expectation, `mask_fraction` of its
tokens are in [MASK] segments whatever its size: with n_g its text tokens as [gMASK] and n_m (estimated) as
[MASK], q = f n_g / ((1 - f) n_m + f n_g); q = f when the piece fits either way.

MIP rows. A row is a MIP row when the MIP slots so far are below `mip_share` x (rows so far + 1/2) x row
length: examples are packed in stream order while they fit (leaving 0 or >= 3 slots) and text fills the rest.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

from common.errors import GLMCorpusError
from masking.config import MaskingConfig
from masking.mixing import MipStream, TextStream
from masking.spans import SpanPool, fit_spans, truncated_poisson_mean
from shards.training_shards import KIND_GMASK, KIND_MASK, KIND_MIP

STORE_TEXT, STORE_MIP = 0, 1
MAX_WAITING = 64
"""Consecutive documents allowed to wait behind the next one before the input is declared unpackable."""


@dataclasses.dataclass
class PlanChunk:
    """The plan of rows [first_row, first_row + n_rows): segments, their pieces, the pieces' span lengths.

    Segments are in row order (`segment_row` is chunk-relative); pieces in segment order; spans in piece
    order. `piece_eod` marks pieces that end at their document's end (whose last token is the <eod>).
    """

    first_row: int
    n_rows: int
    row_length: int
    segment_row: np.ndarray
    segment_start: np.ndarray
    segment_cost: np.ndarray
    segment_kind: np.ndarray
    segment_piece_pointer: np.ndarray
    piece_store: np.ndarray
    piece_source: np.ndarray
    piece_doc: np.ndarray
    piece_offset: np.ndarray
    piece_length: np.ndarray
    piece_prompt: np.ndarray
    piece_eod: np.ndarray
    piece_span_pointer: np.ndarray
    span_length: np.ndarray
    pad_tokens: int

    def rows(self, lo: int, hi: int) -> PlanChunk:
        """The sub-plan of chunk rows [lo, hi) (row numbers stay relative to the new first row)."""
        s0, s1 = np.searchsorted(self.segment_row, [lo, hi], side="left")
        p0, p1 = int(self.segment_piece_pointer[s0]), int(self.segment_piece_pointer[s1])
        q0, q1 = int(self.piece_span_pointer[p0]), int(self.piece_span_pointer[p1])
        last = hi == self.n_rows
        return PlanChunk(
            first_row=self.first_row + lo,
            n_rows=hi - lo,
            row_length=self.row_length,
            segment_row=self.segment_row[s0:s1] - lo,
            segment_start=self.segment_start[s0:s1],
            segment_cost=self.segment_cost[s0:s1],
            segment_kind=self.segment_kind[s0:s1],
            segment_piece_pointer=self.segment_piece_pointer[s0 : s1 + 1] - p0,
            piece_store=self.piece_store[p0:p1],
            piece_source=self.piece_source[p0:p1],
            piece_doc=self.piece_doc[p0:p1],
            piece_offset=self.piece_offset[p0:p1],
            piece_length=self.piece_length[p0:p1],
            piece_prompt=self.piece_prompt[p0:p1],
            piece_eod=self.piece_eod[p0:p1],
            piece_span_pointer=self.piece_span_pointer[p0 : p1 + 1] - q0,
            span_length=self.span_length[q0:q1],
            pad_tokens=self.pad_tokens if last else 0,
        )


class Planner:
    """Plans rows chunk by chunk (`plan(n)`), keeping the stream state between chunks."""

    def __init__(
        self, config: MaskingConfig, text: TextStream, mip: MipStream | None, mip_share: float
    ) -> None:
        self.config = config
        self.length = config.row_length
        self.text = text
        self.mip = mip
        self.mip_share = mip_share if mip is not None else 0.0
        generator = np.random.Generator(np.random.Philox(np.random.SeedSequence([config.seed, 0])))
        self.generator = generator
        self.pool = SpanPool(
            generator,
            config.span_lambda,
            config.span_max_length,
            config.mask_ratio,
            min_ahead=self.length + 1,
        )
        self._uniforms = self._uniform_stream()
        self.rho = config.mask_fraction
        mean = truncated_poisson_mean(config.span_lambda, config.span_max_length)
        self.mask_density = 1.0 / (1.0 + 2.0 * config.mask_ratio / mean)  # text tokens per slot as [MASK]
        self.pending: deque[list[int]] = deque()  # [source, doc, offset, end, doc_length]
        self.row = 0
        self.done = False
        self.mip_slots = 0
        self.counters = {
            "spans_shortened": 0,
            "mask_fallbacks": 0,
            "shortened_for_fit": 0,
            "waited_documents": 0,
            "dropped_tokens": 0,
        }
        self._reset_chunk()

    # ------------------------------------------------------------------------------------------ recording

    def _reset_chunk(self) -> None:
        self._seg: list[tuple[int, int, int, int, int]] = []  # row, start, cost, kind, first piece
        self._piece: list[tuple[int, int, int, int, int, int, int, int]] = []
        # store, source, doc, offset, length, prompt, eod, first span
        self._spans: list[np.ndarray] = []
        self._span_count = 0
        self._pad = 0

    def _segment(self, start: int, cost: int, kind: int) -> None:
        self._seg.append((self.row, start, cost, kind, len(self._piece)))

    def _add_piece(
        self,
        store: int,
        source: int,
        doc: int,
        offset: int,
        length: int,
        prompt: int,
        eod: bool,
        spans: np.ndarray | None,
    ) -> None:
        self._piece.append((store, source, doc, offset, length, prompt, int(eod), self._span_count))
        if spans is not None and len(spans):
            self._spans.append(spans)
            self._span_count += len(spans)

    def _chunk(self, first_row: int) -> PlanChunk:
        seg = np.array(self._seg, dtype=np.int64).reshape(-1, 5)
        piece = np.array(self._piece, dtype=np.int64).reshape(-1, 8)
        chunk = PlanChunk(
            first_row=first_row,
            n_rows=self.row - first_row,
            row_length=self.length,
            segment_row=(seg[:, 0] - first_row).astype(np.int32),
            segment_start=seg[:, 1].astype(np.int32),
            segment_cost=seg[:, 2].astype(np.int32),
            segment_kind=seg[:, 3].astype(np.int8),
            segment_piece_pointer=np.append(seg[:, 4], len(piece)).astype(np.int64),
            piece_store=piece[:, 0].astype(np.int8),
            piece_source=piece[:, 1].astype(np.int32),
            piece_doc=piece[:, 2],
            piece_offset=piece[:, 3],
            piece_length=piece[:, 4].astype(np.int32),
            piece_prompt=piece[:, 5].astype(np.int32),
            piece_eod=piece[:, 6].astype(bool),
            piece_span_pointer=np.append(piece[:, 7], self._span_count).astype(np.int64),
            span_length=np.concatenate(self._spans).astype(np.int16)
            if self._spans
            else np.zeros(0, np.int16),
            pad_tokens=self._pad,
        )
        self._reset_chunk()
        return chunk

    # ------------------------------------------------------------------------------------------- streams

    def _uniform_stream(self) -> Iterator[float]:
        """Uniforms for mode draws, 4096 at a time from the planner's generator (shared with the span pool)."""
        while True:
            yield from self.generator.random(4096).tolist()

    def _uniform(self) -> float:
        return next(self._uniforms)

    def _peek(self) -> list[int] | None:
        if not self.pending:
            doc = self.text.next()
            if doc is None:
                return None
            source, index, end, length = doc
            self.pending.append([source, index, 0, end, length])
        return self.pending[0]

    def _second(self) -> list[int] | None:
        """The item after the current one (pulling a document if needed)."""
        if len(self.pending) < 2:
            doc = self.text.next()
            if doc is None:
                return None
            source, index, end, length = doc
            self.pending.append([source, index, 0, end, length])
        return self.pending[1]

    def _advance(self, item: list[int], used: int) -> None:
        item[2] += used
        if item[2] >= item[3]:
            self.pending.popleft()

    # ------------------------------------------------------------------------------------------ planning

    def plan(self, max_rows: int) -> PlanChunk | None:
        """Plan up to `max_rows` more rows; None once everything is planned."""
        if self.done:
            return None
        first = self.row
        limit = self.config.rows
        while self.row - first < max_rows and not self.done:
            if limit is not None and self.row >= limit:
                self.done = True
                break
            if self._peek() is None:
                self.done = True
                break
            self._plan_row()
            self.row += 1
        if self.row == first:
            return None
        return self._chunk(first)

    def _plan_row(self) -> None:
        start, free = 0, self.length
        if self.mip is not None and self.mip_slots < self.mip_share * (self.row + 0.5) * self.length:
            start, free = self._pack_mip(start, free)
        if free:
            fill = self._fill_cross if self.config.cross_document else self._fill_default
            pad = fill(start, free)
            if pad:
                self._pad = pad
                self.done = True

    def _pack_mip(self, start: int, free: int) -> tuple[int, int]:
        while True:
            example = self.mip.peek()
            if example is None:
                break
            doc, offset, prompt, target = example
            cost = prompt + target + 2
            left = free - cost
            if left < 0 or left in (1, 2):
                break
            self._segment(start, cost, KIND_MIP)
            self._add_piece(STORE_MIP, 0, doc, offset, prompt + target, prompt, False, None)
            self.mip.pop()
            self.mip_slots += cost
            start += cost
            free = left
        return start, free

    def _mode(self, remainder: int, free: int, eligible: bool) -> int:
        if not eligible or self.rho <= 0.0:
            return KIND_GMASK
        n_gmask = min(remainder, free - 2)
        n_mask = min(remainder, int(free * self.mask_density))
        if n_mask <= 0:
            return KIND_GMASK
        q = self.rho * n_gmask / ((1.0 - self.rho) * n_mask + self.rho * n_gmask)
        return KIND_MASK if self._uniform() < q else KIND_GMASK

    def _mask_piece(self, remainder: int, eod: bool, free: int) -> tuple[int, np.ndarray] | None:
        """(text tokens, span lengths) of a [MASK] piece of `remainder` tokens in `free` slots, or None."""
        pool = self.pool
        n = -1
        if remainder < free:
            k = pool.whole(remainder)
            if remainder + 2 * k <= free:
                n = remainder
        if n < 0:
            k = pool.fill(free)
            n = free - 2 * k
            if n < 1:
                return None
        usable = n - 1 if (eod and n == remainder) else n
        if pool.total(k) + k - 1 <= usable:
            return n, pool.take(k)
        lengths, shortened = fit_spans(pool.peek(k), usable)
        if lengths is None:
            return None
        pool.take(k)
        self.counters["spans_shortened"] += 1
        return n, lengths

    def _fill_default(self, start: int, free: int) -> int:
        """Fill slots [start, start + free) with one segment per document piece; return the padding left.

        The planner's hot loop (one iteration per segment), kept free of helper calls where it matters."""
        segments, pieces, span_parts = self._seg, self._piece, self._spans
        row = self.row
        pending = self.pending
        next_document = self.text.next
        uniforms = self._uniforms
        rho = self.rho
        density = self.mask_density
        waited = 0
        while free > 0:
            if pending:
                item = pending[0]
            else:
                document = next_document()
                if document is None:
                    return free
                item = [document[0], document[1], 0, document[2], document[3]]
                pending.append(item)
            if free < 3:
                raise GLMCorpusError(f"row {row}: {free} slot(s) left that no segment fits (internal error)")
            source, doc, offset, end, doc_length = item
            remainder = end - offset
            eod = end == doc_length
            kind = KIND_GMASK
            n_gmask = remainder if remainder < free - 2 else free - 2
            if rho > 0.0 and (remainder - eod >= 1 or n_gmask < remainder):
                n_mask = int(free * density)
                if n_mask > remainder:
                    n_mask = remainder
                if n_mask > 0 and next(uniforms) * ((1.0 - rho) * n_mask + rho * n_gmask) < rho * n_gmask:
                    kind = KIND_MASK
            spans = None
            if kind == KIND_MASK:
                piece = self._mask_piece(remainder, eod, free)
                if piece is None:
                    kind = KIND_GMASK
                    self.counters["mask_fallbacks"] += 1
                else:
                    n, spans = piece
                    cost = n + 2 * len(spans)
            if kind == KIND_GMASK:
                n = n_gmask
                cost = n + 2
            left = free - cost
            if (left == 1 or left == 2) and n == remainder and self._second() is not None:
                cut = 3 - left
                ok = n - cut >= 1
                if ok and spans is not None:
                    refit, shortened = fit_spans(spans, n - cut)
                    ok = refit is not None
                    if ok:
                        spans = refit
                        self.counters["spans_shortened"] += int(shortened)
                if not ok:
                    # Too short to shorten: let the next document go first.
                    waited += 1
                    if waited > MAX_WAITING:
                        raise GLMCorpusError(
                            "cannot fill rows exactly: too many consecutive documents of 1-2 tokens; "
                            "drop empty documents from the token shards"
                        )
                    self.counters["waited_documents"] += 1
                    pending.popleft()
                    pending.insert(1, item)
                    continue
                n -= cut
                cost -= cut
                self.counters["shortened_for_fit"] += 1
                # The shortened piece now; its tail right after the next document's first piece.
                segments.append((row, start, cost, kind, len(pieces)))
                pieces.append((STORE_TEXT, source, doc, offset, n, 0, 0, self._span_count))
                if spans is not None:
                    span_parts.append(spans)
                    self._span_count += len(spans)
                pending.popleft()
                following = pending.popleft()
                pending.appendleft([source, doc, offset + n, end, doc_length])
                pending.appendleft(following)
                start += cost
                free = 3
                continue
            segments.append((row, start, cost, kind, len(pieces)))
            pieces.append(
                (STORE_TEXT, source, doc, offset, n, 0, int(eod and n == remainder), self._span_count)
            )
            if spans is not None:
                span_parts.append(spans)
                self._span_count += len(spans)
            if n == remainder:
                pending.popleft()
            else:
                item[2] = offset + n
            start += cost
            free = left
        return 0

    def _fill_cross(self, start: int, free: int) -> int:
        """Fill slots [start, start + free) with one segment whose pieces follow the document stream."""
        item = self._peek()
        if item is None:
            return free
        kind = self._mode(free, free, eligible=True)
        segment_start = start
        self._segment(start, 0, kind)  # cost set below
        spans_total = 0
        if kind == KIND_GMASK:
            need = free - 2
            while need > 0:
                item = self._peek()
                if item is None:
                    break
                source, doc, offset, end, doc_length = item
                n = min(end - offset, need)
                self._add_piece(STORE_TEXT, source, doc, offset, n, 0, offset + n == doc_length, None)
                self._advance(item, n)
                need -= n
            text_tokens = free - 2 - need
            cost = text_tokens + 2 if text_tokens else 0
        else:
            remaining = free
            while remaining > 0:
                item = self._peek()
                if item is None:
                    break
                source, doc, offset, end, doc_length = item
                remainder = end - offset
                eod = end == doc_length
                piece = self._mask_piece(remainder, eod, remaining) if remaining >= 3 else None
                if piece is None:  # no span fits: the piece joins the window unmasked
                    n, spans = min(remainder, remaining), None
                else:
                    n, spans = piece
                k = len(spans) if spans is not None else 0
                self._add_piece(STORE_TEXT, source, doc, offset, n, 0, eod and n == remainder, spans)
                self._advance(item, n)
                remaining -= n + 2 * k
                spans_total += k
            cost = free - remaining
            if spans_total == 0 and cost:
                # Only at the very end of the input: a window without spans becomes [gMASK] if it can.
                kind = KIND_GMASK
                if remaining < 2:
                    self._trim_last_piece(2 - remaining)
                    cost -= 2 - remaining
                cost += 2
        row, seg_start, _, _, first_piece = self._seg[-1]
        if cost == 0:
            self._seg.pop()
            return free
        self._seg[-1] = (row, seg_start, cost, kind, first_piece)
        return free - cost if self._peek() is None else self._check_full(segment_start, cost, free)

    def _check_full(self, start: int, cost: int, free: int) -> int:
        if cost != free:
            raise GLMCorpusError(
                f"row {self.row}: a cross-document segment filled {cost} of {free} slots (internal error)"
            )
        return 0

    def _trim_last_piece(self, tokens: int) -> None:
        store, source, doc, offset, length, prompt, eod, first_span = self._piece[-1]
        self._piece[-1] = (store, source, doc, offset, length - tokens, prompt, 0, first_span)
        self.counters["dropped_tokens"] += tokens

    def summary(self) -> dict[str, Any]:
        out = dict(self.counters)
        out["mip_truncated_examples"] = self.mip.truncated if self.mip else 0
        out["mip_truncated_tokens"] = self.mip.truncated_tokens if self.mip else 0
        out["mip_skipped_empty_targets"] = self.mip.skipped_empty if self.mip else 0
        out["mip_epochs"] = (self.mip.epoch + 1) if self.mip else 0
        out["text_epochs_started"] = list(self.text.epochs_started)
        return out
