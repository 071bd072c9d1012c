"""The §4 attention rule of one row as a dense boolean matrix, from the row's segment table (numpy).

    mask[q, k] is True where query q may attend to key k:
      - q and k in the same segment, and k in Part A                 (everyone sees all of Part A)
      - q and k in the same segment, q in Part B and k <= q          (Part B is causal; Part A never sees B)
      - q == k                                                       (so padding rows are never empty)

Segments never see each other. `isolate_segments=False` gives GLM's own packing instead: the whole row is
one group, so every token sees every Part-A token of the row and Part B is causal over the row's Part-B
tokens. This is the same rule as the trainer's `kernels.glm_attention` (torch, batched); this numpy version
is what tools and tests use.
"""

from __future__ import annotations

import numpy as np


def token_layout(segments_of_one_row: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per position: the index of its segment (-1 outside every segment) and whether it is in Part B."""
    table = np.asarray(segments_of_one_row, dtype=np.int64).reshape(-1, 3)
    table = table[table[:, 0] >= 0]
    segment_ids = np.full(length, -1, dtype=np.int64)
    in_part_b = np.zeros(length, dtype=bool)
    for index, (start, sep, end) in enumerate(table):
        if not 0 <= start <= sep <= end <= length:
            raise ValueError(
                f"segment {index} ({start}, {sep}, {end}) is not a valid slice of a {length}-token row"
            )
        segment_ids[start:end] = index
        in_part_b[sep:end] = True
    return segment_ids, in_part_b


def dense_attention_mask(
    segments_of_one_row: np.ndarray, length: int = 2048, isolate_segments: bool = True
) -> np.ndarray:
    """bool [length, length], True where a query (row index) may attend to a key (column index).

    `segments_of_one_row` is [S, 3] rows of (start, sep, end) as `TrainingShards.batch` gives them (rows of -1
    are ignored)."""
    segment_ids, in_part_b = token_layout(segments_of_one_row, length)
    groups = segment_ids if isolate_segments else np.where(segment_ids >= 0, 0, -1)
    positions = np.arange(length)
    same_group = (groups[:, None] == groups[None, :]) & (groups[:, None] >= 0)
    key_in_part_a = ~in_part_b[None, :]
    causal_part_b = in_part_b[:, None] & (positions[None, :] <= positions[:, None])
    mask = same_group & (key_in_part_a | causal_part_b)
    mask[positions, positions] = True
    return mask
