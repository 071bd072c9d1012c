"""Rebuild a batch of GLM rows (DESIGN §4) from their reconstruction recipes, in vectorized numpy.

A training shard stores per row only the final token layout (Part A with its mask tokens, then Part B
inputs: `[sop]` + span, span after span) and two small tables (shards/training_shards.py):

    segment  (start, sep, end, kind)      sep = first index of Part B, end exclusive, row-relative
    span     (mask_position, length)      in Part-B order; block j of a segment starts at
                                          sep + sum over earlier blocks of (length + 1)

Everything else follows from the §4 rules:

    position_ids        Part A: index within the segment (0..sep-start-1)
                        Part B: the segment-relative index of the span's mask token, for every token of the block
    block_position_ids  Part A: 0; Part B: 1..length+1 within each block ([sop] = 1)
    targets             Part B: the next input token of the block, and [eop] at the block's last position
                        Part A: the token itself (GLM's convention; never trained on)
    loss_mask           1.0 on Part B, 0.0 elsewhere
    padding             (after the last segment of the final row) token PAD, target PAD, positions 0, loss 0

`reconstruct_batch` does this with a handful of whole-batch passes: every position learns the start of its
run (a segment's Part A, or one Part-B block) from a running maximum over run-start markers, and everything
else is arithmetic on that. `reconstruct_reference` is the obvious per-row, per-segment loop; tests and
`verify` check that both agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline.special_tokens import EOP, GMASK, PAD

BATCH_ARRAYS = ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids")
"""The [B, L] arrays of a batch (plus `segments` [B, S, 3], and `provenance` added by the shard reader)."""


@dataclasses.dataclass
class RowRecipes:
    """The recipes of B rows: tokens [B, L] and the segment/span tables of those rows, in row order.

    Segments are listed row by row (`segment_row` nondecreasing) and in order within a row; spans are listed
    segment by segment (`segment_span_count` of them each), each segment's spans in Part-B order.
    """

    tokens: np.ndarray
    segment_row: np.ndarray
    segment_start: np.ndarray
    segment_sep: np.ndarray
    segment_end: np.ndarray
    segment_kind: np.ndarray
    segment_span_count: np.ndarray
    span_mask_position: np.ndarray
    span_length: np.ndarray


def segment_table(recipes: RowRecipes) -> np.ndarray:
    """[B, S, 3] int32 rows of (start, sep, end), S the most segments of any row, padded with -1."""
    batch = recipes.tokens.shape[0]
    rows = np.asarray(recipes.segment_row, dtype=np.int64)
    counts = np.bincount(rows, minlength=batch) if len(rows) else np.zeros(batch, np.int64)
    width = max(int(counts.max()) if batch else 0, 1)
    table = np.full((batch, width, 3), -1, dtype=np.int32)
    if len(rows):
        first = np.cumsum(counts) - counts
        slot = np.arange(len(rows)) - first[rows]
        table[rows, slot, 0] = recipes.segment_start
        table[rows, slot, 1] = recipes.segment_sep
        table[rows, slot, 2] = recipes.segment_end
    return table


def _block_layout(recipes: RowRecipes, row_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat start index, length and segment-relative mask position of every Part-B block."""
    counts = np.asarray(recipes.segment_span_count, dtype=np.int64)
    lengths = np.asarray(recipes.span_length, dtype=np.int64)
    span_segment = np.repeat(np.arange(len(counts)), counts)
    sizes = lengths + 1
    ends = np.cumsum(sizes)
    starts = ends - sizes  # exclusive running sum over all blocks of the batch
    first_span = np.cumsum(counts) - counts
    offset_in_part_b = starts - starts[first_span][span_segment] if len(starts) else starts
    row_base = np.asarray(recipes.segment_row, dtype=np.int64) * row_length
    sep_flat = row_base + np.asarray(recipes.segment_sep, dtype=np.int64)
    block_start = sep_flat[span_segment] + offset_in_part_b
    mask_relative = (
        np.asarray(recipes.span_mask_position, dtype=np.int64)
        - np.asarray(recipes.segment_start, dtype=np.int64)[span_segment]
    )
    return block_start, lengths, mask_relative


def reconstruct_batch(recipes: RowRecipes) -> dict[str, Any]:
    """The §4 arrays of a batch: tokens, targets, loss_mask, position_ids, block_position_ids ([B, L]) and
    segments ([B, S, 3]). Vectorized over the whole batch: no Python loop over rows, segments or spans."""
    tokens = np.ascontiguousarray(recipes.tokens, dtype=np.int32)
    batch, row_length = tokens.shape
    total = batch * row_length
    index_dtype = np.int32 if total < 2**31 - 1 else np.int64
    flat_tokens = tokens.reshape(-1)

    block_start, block_length, mask_relative = _block_layout(recipes, row_length)
    segment_start_flat = np.asarray(recipes.segment_row, dtype=np.int64) * row_length + np.asarray(
        recipes.segment_start, dtype=np.int64
    )

    # Every position's run start: the latest segment start or Part-B block start at or before it.
    run_start = np.zeros(total, dtype=index_dtype)
    run_start[segment_start_flat] = segment_start_flat
    run_start[block_start] = block_start
    np.maximum.accumulate(run_start, out=run_start)
    offset = np.arange(total, dtype=index_dtype)
    offset -= run_start  # position within its run

    is_block_start = np.zeros(total, dtype=bool)
    is_block_start[block_start] = True
    in_part_b = is_block_start[run_start]
    block_mask_position = np.zeros(total, dtype=np.int32)
    block_mask_position[block_start] = mask_relative
    position_ids = np.where(in_part_b, block_mask_position[run_start], offset).astype(np.int32, copy=False)
    block_position_ids = np.where(in_part_b, offset + 1, 0).astype(np.int32, copy=False)

    next_tokens = np.empty_like(flat_tokens)
    next_tokens[:-1] = flat_tokens[1:]
    next_tokens[-1:] = PAD
    targets = np.where(in_part_b, next_tokens, flat_tokens)
    targets[block_start + block_length] = EOP
    loss_mask = in_part_b.astype(np.float32)

    covered = int(
        (np.asarray(recipes.segment_end, np.int64) - np.asarray(recipes.segment_start, np.int64)).sum()
    )
    if covered != total:  # padding (the final row of a dataset): no segment covers it
        delta = np.zeros(total + 1, dtype=np.int8)
        np.add.at(delta, segment_start_flat, 1)
        np.add.at(
            delta,
            np.asarray(recipes.segment_row, np.int64) * row_length
            + np.asarray(recipes.segment_end, np.int64),
            -1,
        )
        outside = np.cumsum(delta[:-1], dtype=np.int8) == 0
        position_ids[outside] = 0
        block_position_ids[outside] = 0
        targets[outside] = PAD
        loss_mask[outside] = 0.0

    shape = (batch, row_length)
    return {
        "tokens": tokens,
        "targets": targets.reshape(shape),
        "loss_mask": loss_mask.reshape(shape),
        "position_ids": position_ids.reshape(shape),
        "block_position_ids": block_position_ids.reshape(shape),
        "segments": segment_table(recipes),
    }


def reconstruct_reference(recipes: RowRecipes) -> dict[str, Any]:
    """The same arrays, built the obvious way: loop over rows, segments and spans, following §4 literally."""
    tokens = np.array(recipes.tokens, dtype=np.int32)
    batch, row_length = tokens.shape
    targets = tokens.copy()
    loss_mask = np.zeros((batch, row_length), dtype=np.float32)
    position_ids = np.zeros((batch, row_length), dtype=np.int32)
    block_position_ids = np.zeros((batch, row_length), dtype=np.int32)
    covered = np.zeros((batch, row_length), dtype=bool)
    span = 0
    for segment in range(len(recipes.segment_row)):
        row = int(recipes.segment_row[segment])
        start, sep, end = (
            int(recipes.segment_start[segment]),
            int(recipes.segment_sep[segment]),
            int(recipes.segment_end[segment]),
        )
        covered[row, start:end] = True
        for i in range(start, sep):  # Part A
            position_ids[row, i] = i - start
        cursor = sep
        for _ in range(int(recipes.segment_span_count[segment])):  # Part B, block by block
            length = int(recipes.span_length[span])
            mask_position = int(recipes.span_mask_position[span]) - start
            for j in range(length + 1):
                i = cursor + j
                position_ids[row, i] = mask_position
                block_position_ids[row, i] = j + 1
                loss_mask[row, i] = 1.0
                targets[row, i] = tokens[row, i + 1] if j < length else EOP
            cursor += length + 1
            span += 1
    targets[~covered] = PAD
    return {
        "tokens": tokens,
        "targets": targets,
        "loss_mask": loss_mask,
        "position_ids": position_ids,
        "block_position_ids": block_position_ids,
        "segments": segment_table(recipes),
    }


def glm130b_position_ids(batch: dict[str, Any]) -> np.ndarray:
    """GLM-130B's 1D positions, derived from the 2D ones: a [MASK] span's tokens keep the mask's position;
    a [gMASK] (or MIP) suffix counts on from the [gMASK]: mask position + block position."""
    tokens = np.asarray(batch["tokens"])
    position_ids = np.asarray(batch["position_ids"], dtype=np.int64)
    block_position_ids = np.asarray(batch["block_position_ids"], dtype=np.int64)
    segments = np.asarray(batch["segments"])
    batch_size, row_length = tokens.shape
    # Segment start of every position: the largest start <= position (segments tile each row in order).
    starts = np.zeros((batch_size, row_length), dtype=np.int64)
    rows, slots = np.nonzero(segments[..., 0] >= 0)
    starts[rows, segments[rows, slots, 0]] = segments[rows, slots, 0]
    starts = np.maximum.accumulate(starts, axis=1)
    mask_index = np.clip(starts + position_ids, 0, row_length - 1)
    is_gmask = np.take_along_axis(tokens, mask_index, axis=1) == GMASK
    return np.where(
        (block_position_ids > 0) & is_gmask, position_ids + block_position_ids, position_ids
    ).astype(np.int32)
