"""Part A / Part B construction: planned rows -> final token layout + recipe tables (vectorized per block).

For a block of rows (masking/packing.py planned them) `build_block` does, for all of the block's segments at
once, with one RNG stream keyed by (seed, block):

1. gather every piece's tokens into one window array (`TokenStore.gather`);
2. place the planned [MASK] spans (`place_spans`: random order, sorted uniform places), draw each [gMASK]
   suffix length (`sample_suffix_lengths`), take each MIP target as its one "span";
3. Part A: the window with each span's first token replaced by its mask token and the rest of the span
   dropped (one boolean compress over the block);
4. Part B: the spans of each segment in a random order, each as [sop] + span (one gather);
5. scatter Part A and Part B of every segment to its slots in the rows.

Random draws, in this order: span order keys, span places (both in `place_spans`), [gMASK] suffix lengths,
Part-B order keys. Row r's content is a function of (seed, plan, tokens) only.

`build_segment_reference` is the plain per-segment version of steps 3-4 from explicit span positions; tests
check the vectorized builder against it, and the benchmark's per-sample baseline uses it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from common.errors import GLMCorpusError
from kernels.ranges import concatenated_ranges as _ranges
from masking.config import MaskingConfig
from masking.gmask import sample_suffix_lengths
from masking.packing import STORE_MIP, PlanChunk
from masking.spans import place_spans
from pipeline.special_tokens import EOD, GMASK, MASK, SOP
from shards.training_shards import KIND_GMASK, KIND_MASK, KIND_MIP, KIND_NAMES, PROVENANCE_SCHEMA


def block_generator(seed: int, block: int) -> np.random.Generator:
    """The RNG of row block `block` (domain 1; the planner uses domain 0)."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, 1, block])))


@dataclasses.dataclass
class BuiltRows:
    """A block's rows in the training-shard form, plus what the stats need."""

    tokens: np.ndarray  # [R, L] int32
    row_segment_count: np.ndarray
    segments: dict[
        str, np.ndarray
    ]  # segment_start, segment_sep, segment_end, segment_kind, segment_span_count
    spans: dict[str, np.ndarray]  # span_mask_position, span_length (Part-B order)
    provenance: pa.Table
    gmask_window: np.ndarray  # n of every [gMASK] segment
    gmask_suffix: np.ndarray  # its suffix length
    pad_tokens: int


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.int64)
    return np.cumsum(values) - values




def _alternating_runs(starts: np.ndarray, ends: np.ndarray, total: int, inside: bool) -> np.ndarray:
    """bool [total]: `inside` on the sorted, disjoint intervals [starts, ends), `not inside` elsewhere.

    One np.repeat over the run lengths (a memset per run), much cheaper than a cumsum over a difference array."""
    bounds = np.empty(2 * len(starts) + 2, dtype=np.int64)
    bounds[0] = 0
    bounds[1:-1:2] = starts
    bounds[2:-1:2] = ends
    bounds[-1] = total
    values = np.empty(len(bounds) - 1, dtype=bool)
    values[0::2] = not inside
    values[1::2] = inside
    return np.repeat(values, np.diff(bounds))


MIP_DEFAULT_TEMPLATE = "default"
"""The template a MIP segment's provenance names when its MIP shard records none (no `template` column, or an
empty value): the name `glm-corpus mip` gives a P3 folder that names no template. Never empty, so every MIP
segment names its dataset and a template."""


class Sources:
    """What the builder reads: the text store (one source per text directory) and the MIP store, with names."""

    def __init__(self, text: Any, text_names: list[str], mip: Any = None) -> None:
        self.text = text
        self.text_names = np.array(text_names, dtype=object)
        self.mip = mip
        if mip is not None:
            self.mip_dataset = np.array(_column_or(mip, "dataset", "source"), dtype=object)
            self.mip_template = np.array(
                [template or MIP_DEFAULT_TEMPLATE for template in _column_or(mip, "template", None)],
                dtype=object,
            )

    def gather(self, plan: PlanChunk) -> np.ndarray:
        lengths = plan.piece_length.astype(np.int64)
        window = np.empty(int(lengths.sum()), dtype=np.int32)
        starts = _exclusive_cumsum(lengths)
        text = plan.piece_store != STORE_MIP
        if text.any():
            self.text.gather(
                plan.piece_source[text],
                plan.piece_doc[text],
                plan.piece_offset[text],
                lengths[text],
                out=window,
                out_start=starts[text],
            )
        if (~text).any():
            mip = ~text
            self.mip.gather(
                np.zeros(int(mip.sum()), np.int64),
                plan.piece_doc[mip],
                plan.piece_offset[mip],
                lengths[mip],
                out=window,
                out_start=starts[mip],
            )
        return window

    def doc_ids(self, plan: PlanChunk) -> pa.Array:
        """The document id of every piece, in piece order (Arrow throughout: no Python object per piece)."""
        text = plan.piece_store != STORE_MIP
        parts, where = [], []
        if text.any():
            parts.append(self.text.take(plan.piece_source[text], plan.piece_doc[text], "doc_id"))
            where.append(np.flatnonzero(text))
        if (~text).any():
            parts.append(
                self.mip.take(np.zeros(int((~text).sum()), np.int64), plan.piece_doc[~text], "doc_id")
            )
            where.append(np.flatnonzero(~text))
        if not parts:
            return pa.array([], type=pa.string())
        parts = [p.cast(pa.string()) for p in parts]
        if len(parts) == 1:
            return parts[0]
        order = np.empty(len(text), dtype=np.int64)
        order[np.concatenate(where)] = np.arange(len(text))
        return pa.concat_arrays(parts).take(pa.array(order))


def _column_or(store: Any, name: str, fallback: str | None) -> list[Any]:
    names = store.sources[0].column_names
    for column in (name, fallback):
        if column is not None and column in names:
            return store.column(0, column).to_pylist()
    return [""] * len(store.sources[0])


def build_block(
    plan: PlanChunk, sources: Sources, config: MaskingConfig, generator: np.random.Generator
) -> BuiltRows:
    """Build the rows of `plan` (one block) in vectorized numpy."""
    length = plan.row_length
    rows = plan.n_rows
    kind = plan.segment_kind.astype(np.int64)
    n_segments = len(kind)
    piece_length = plan.piece_length.astype(np.int64)
    piece_start = _exclusive_cumsum(piece_length)
    window = sources.gather(plan)
    pointer = plan.segment_piece_pointer
    cumulative = np.append(piece_start, piece_start[-1] + piece_length[-1] if len(piece_length) else 0)
    segment_window_start = cumulative[pointer[:-1]]
    segment_n = cumulative[pointer[1:]] - segment_window_start
    piece_segment = np.repeat(np.arange(n_segments), np.diff(pointer))

    # [MASK] spans: planned lengths, placed now.
    span_count = np.diff(plan.piece_span_pointer)
    span_piece = np.repeat(np.arange(len(piece_length)), span_count)
    usable = piece_length - plan.piece_eod.astype(np.int64)
    order, start_in_piece = place_spans(generator, span_piece, plan.span_length, usable)
    mask_piece = span_piece[order]
    mask_start = piece_start[mask_piece] + start_in_piece
    mask_length = plan.span_length.astype(np.int64)[order]
    if len(mask_start):
        inside = _ranges(mask_start, mask_length)
        if (window[inside] == EOD).any():
            bad = int(
                np.searchsorted(
                    np.cumsum(mask_length), np.flatnonzero(window[inside] == EOD)[0], side="right"
                )
            )
            piece = int(mask_piece[bad])
            raise GLMCorpusError(
                f"document {int(plan.piece_doc[piece])} of source {int(plan.piece_source[piece])} holds <eod> "
                "before its end; token shards must carry exactly one <eod>, at the end of each document"
            )

    # [gMASK] suffixes and MIP targets: one span each, at the end of the window.
    gmask = np.flatnonzero(kind == KIND_GMASK)
    suffix = sample_suffix_lengths(
        generator, segment_n[gmask], config.gmask_suffix_min_fraction, config.gmask_min_prefix
    )
    mip = np.flatnonzero(kind == KIND_MIP)
    target = segment_n[mip] - plan.piece_prompt[pointer[mip]].astype(np.int64)
    single = np.concatenate([gmask, mip])
    single_length = np.concatenate([suffix, target]).astype(np.int64)

    hole_start = np.concatenate(
        [mask_start, segment_window_start[single] + segment_n[single] - single_length]
    )
    hole_length = np.concatenate([mask_length, single_length])
    hole_segment = np.concatenate([piece_segment[mask_piece], single])
    hole_token = np.concatenate(
        [np.full(len(mask_start), MASK, np.int32), np.full(len(single), GMASK, np.int32)]
    )
    by_position = np.argsort(hole_start, kind="stable")
    hole_start, hole_length = hole_start[by_position], hole_length[by_position]
    hole_segment, hole_token = hole_segment[by_position], hole_token[by_position]

    # Part A: drop every span but its first token, which becomes the mask token.
    keep = _alternating_runs(hole_start, hole_start + hole_length, len(window), inside=False)
    keep[hole_start] = True
    marked = window.copy()
    marked[hole_start] = hole_token
    part_a = marked[keep]
    holes_per_segment = np.bincount(hole_segment, minlength=n_segments)
    hole_tokens = np.bincount(hole_segment, weights=hole_length, minlength=n_segments).astype(np.int64)
    part_a_length = segment_n - hole_tokens + holes_per_segment
    first_hole = _exclusive_cumsum(holes_per_segment)
    dropped_before = _exclusive_cumsum(hole_length - 1)
    mask_index = (
        hole_start
        - segment_window_start[hole_segment]
        - (dropped_before - dropped_before[first_hole[hole_segment]])
    )

    # Part B: each segment's spans in a random order, [sop] + span each.
    part_b_order = np.argsort(hole_segment + generator.random(len(hole_segment)), kind="stable")
    block_segment = hole_segment[part_b_order]
    block_length = hole_length[part_b_order]
    block_source = hole_start[part_b_order]
    block_size = block_length + 1
    block_first = _exclusive_cumsum(block_size)
    index_dtype = np.int32 if len(window) < 2**31 - 1 else np.int64
    source_index = _ranges(block_source - 1, block_size, index_dtype)
    source_index[block_first] = 0  # the [sop] slot (its own token comes next)
    part_b = window[source_index]
    part_b[block_first] = SOP

    # Scatter both parts into the rows.
    cost = plan.segment_cost.astype(np.int64)
    part_b_length = np.bincount(block_segment, weights=block_size, minlength=n_segments).astype(np.int64)
    if not np.array_equal(part_a_length + part_b_length, cost):
        bad = int(np.flatnonzero(part_a_length + part_b_length != cost)[0])
        raise GLMCorpusError(
            f"row {plan.first_row + int(plan.segment_row[bad])}: segment {bad} built "
            f"{part_a_length[bad] + part_b_length[bad]} tokens for {cost[bad]} planned slots "
            "(internal error)"
        )
    # Segments tile the rows from slot 0 (padding only after the last one), so the rows are Part A and Part B
    # of each segment in turn: two boolean-mask writes instead of per-token destination indices.
    segment_out = plan.segment_row.astype(np.int64) * length + plan.segment_start
    covered = int(cost.sum())
    in_part_a = _alternating_runs(segment_out, segment_out + part_a_length, covered, inside=True)
    out = np.zeros(rows * length, dtype=np.int32)
    used = out[:covered]
    used[in_part_a] = part_a
    used[~in_part_a] = part_b

    segment_start = plan.segment_start.astype(np.int64)
    segments = {
        "segment_start": segment_start,
        "segment_sep": segment_start + part_a_length,
        "segment_end": segment_start + cost,
        "segment_kind": kind.astype(np.uint8),
        "segment_span_count": np.bincount(block_segment, minlength=n_segments).astype(np.int64),
    }
    spans = {
        "span_mask_position": segment_start[block_segment] + mask_index[part_b_order],
        "span_length": block_length,
    }
    row_segment_count = np.bincount(plan.segment_row, minlength=rows).astype(np.int64)
    return BuiltRows(
        tokens=out.reshape(rows, length),
        row_segment_count=row_segment_count,
        segments=segments,
        spans=spans,
        provenance=_provenance(plan, sources, kind, row_segment_count),
        gmask_window=segment_n[gmask],
        gmask_suffix=np.asarray(suffix, dtype=np.int64),
        pad_tokens=plan.pad_tokens,
    )


def _provenance(
    plan: PlanChunk, sources: Sources, kind: np.ndarray, row_segment_count: np.ndarray
) -> pa.Table:
    """One provenance row per segment (PROVENANCE_SCHEMA)."""
    n_segments = len(kind)
    pointer = plan.segment_piece_pointer
    first_piece = pointer[:-1]
    is_mip = plan.piece_store == STORE_MIP
    piece_name = np.empty(len(is_mip), dtype=object)
    piece_name[~is_mip] = sources.text_names[plan.piece_source[~is_mip]]
    template = np.full(n_segments, "", dtype=object)
    if is_mip.any():
        piece_name[is_mip] = sources.mip_dataset[plan.piece_doc[is_mip]]
        mip_segments = np.flatnonzero(kind == KIND_MIP)
        template[mip_segments] = sources.mip_template[plan.piece_doc[first_piece[mip_segments]]]
    source = piece_name[first_piece] if n_segments else np.zeros(0, dtype=object)
    for segment in np.flatnonzero(np.diff(pointer) > 1).tolist():  # cross-document windows
        names = dict.fromkeys(piece_name[pointer[segment] : pointer[segment + 1]].tolist())
        source[segment] = "+".join(names)
    offsets = pa.array(pointer.astype(np.int32))
    row = plan.first_row + plan.segment_row.astype(np.int64)
    index_in_row = np.arange(n_segments) - _exclusive_cumsum(row_segment_count)[plan.segment_row]
    return pa.Table.from_arrays(
        [
            pa.array(row, pa.int64()),
            pa.array(index_in_row.astype(np.int32), pa.int32()),
            pa.array(np.array(KIND_NAMES, dtype=object)[kind], pa.string()),
            pa.array(source, pa.string()),
            pa.ListArray.from_arrays(offsets, sources.doc_ids(plan)),
            pa.ListArray.from_arrays(offsets, pa.array(plan.piece_offset.astype(np.int64))),
            pa.ListArray.from_arrays(offsets, pa.array(plan.piece_length.astype(np.int32))),
            pa.array(template, pa.string()),
        ],
        schema=PROVENANCE_SCHEMA,
    )


# ----------------------------------------------------------------------------------- per-sample reference


def build_segment_reference(
    window: np.ndarray, kind: int, span_starts: list[int], span_lengths: list[int], part_b_order: list[int]
) -> dict[str, Any]:
    """One GLM sample the plain way: Part A, Part B, and the recipe of its spans.

    `span_starts`/`span_lengths` are window-relative and in text order; `part_b_order` lists span indices in
    Part-B order. For [gMASK]/MIP pass the suffix/target as the single span.
    """
    mask_token = MASK if kind == KIND_MASK else GMASK
    part_a: list[int] = []
    mask_index: list[int] = []
    cursor = 0
    for start, span_length in zip(span_starts, span_lengths):
        part_a.extend(int(t) for t in window[cursor:start])
        mask_index.append(len(part_a))
        part_a.append(mask_token)
        cursor = start + span_length
    part_a.extend(int(t) for t in window[cursor:])
    part_b: list[int] = []
    for j in part_b_order:
        part_b.append(SOP)
        part_b.extend(int(t) for t in window[span_starts[j] : span_starts[j] + span_lengths[j]])
    return {
        "tokens": np.array(part_a + part_b, dtype=np.int32),
        "sep": len(part_a),
        "span_mask_position": [mask_index[j] for j in part_b_order],
        "span_length": [span_lengths[j] for j in part_b_order],
    }
