"""GLM attention over packed segments (DESIGN §4), with three interchangeable implementations.

The rule, per row: a row holds segments (start, sep, end) (end exclusive, sep = first index of Part B).
Inside a segment every token sees all of Part A; Part A never sees Part B; a Part-B token at i sees Part-B
tokens j <= i of the same segment (causal). Segments never see each other, and a token outside every
segment (padding) sees only itself, so no softmax row is empty. With `isolate_segments=False` the row is one GLM
block structure instead (GLM's original packing): every token sees every Part-A token of the row, and Part B is
causal over all Part-B tokens of the row.

The mask is described per token by a `SegmentLayout` (segment index, Part-B flag), built from the segment table
in vectorized torch for a whole batch. From it:

- **SDPA path** (CPU and the default off CUDA): a dense boolean mask [B, 1, L, L] for
  `torch.nn.functional.scaled_dot_product_attention`. FlexAttention has no backward on CPU (torch 2.13), and
  SDPA's CPU flash kernel with a boolean mask is ~3.6x faster than matmul-softmax at 2048, fwd+bwd
  (benchmarks/bench_trainer.py).
- **FlexAttention path** (CUDA): the same rule as a `mask_mod` over the per-token tensors, turned into a block
  mask once per batch and shared by every layer; fully masked blocks (other segments, Part A -> Part B) are
  skipped, which is where the speed over a dense mask comes from.
- **naive path**: scores = q k^T, masked, softmax in float32 (GLM-130B's "FP32 softmax": scores of a 16-bit run
  are upcast before the softmax so they cannot overflow), then weights @ v. The baseline the benchmark compares
  with. The fused kernels (SDPA flash/efficient, FlexAttention) keep the softmax statistics in fp32 internally.

`reference_attention` is a float64 version of the naive path for tests.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Backend = Literal["auto", "sdpa", "flex", "naive"]


@dataclasses.dataclass(frozen=True)
class SegmentLayout:
    """Per-token view of a batch's segment table: what the attention rule needs, [B, L] each."""

    segment_ids: Tensor
    """Index of the token's segment in the table (its slot), -1 outside every segment."""
    in_part_b: Tensor
    """True for tokens at or after their segment's sep."""
    segment_starts: Tensor
    """Start index of the token's segment (0 outside every segment)."""


def segment_layout(segments: Tensor, length: int) -> SegmentLayout:
    """Vectorized: segments [B, S, 3] (start, sep, end; rows padded with -1) -> per-token layout [B, L]."""
    segments = segments.to(torch.long)
    starts, seps, ends = segments.unbind(dim=-1)  # [B, S]
    index = torch.arange(length, device=segments.device)
    inside = (index >= starts[..., None]) & (index < ends[..., None]) & (starts[..., None] >= 0)  # [B, S, L]
    in_any = inside.any(dim=1)
    slot = inside.to(torch.uint8).argmax(dim=1)  # the (only) segment holding each token
    segment_ids = torch.where(in_any, slot, -1)
    token_sep = torch.gather(seps, 1, slot)
    token_start = torch.where(in_any, torch.gather(starts, 1, slot), 0)
    in_part_b = in_any & (index >= token_sep)
    return SegmentLayout(segment_ids=segment_ids, in_part_b=in_part_b, segment_starts=token_start)


def _visibility(layout: SegmentLayout, isolate_segments: bool) -> tuple[Tensor, Tensor]:
    """The (group id, Part-B flag) pair the rule compares: segments, or the whole row as one group."""
    groups = layout.segment_ids if isolate_segments else torch.where(layout.segment_ids >= 0, 0, -1)
    return groups, layout.in_part_b


def dense_mask(layout: SegmentLayout, isolate_segments: bool = True) -> Tensor:
    """Boolean mask [B, 1, L, L], True where query i may attend to key j."""
    groups, in_b = _visibility(layout, isolate_segments)
    length = groups.shape[-1]
    index = torch.arange(length, device=groups.device)
    query_group, key_group = groups[:, :, None], groups[:, None, :]
    same_group = (query_group == key_group) & (query_group >= 0)
    key_in_a = ~in_b[:, None, :]
    causal_b = in_b[:, :, None] & (index[None, :] <= index[:, None])  # key in Part B at or before the query
    itself = torch.eye(length, dtype=torch.bool, device=groups.device)
    return ((same_group & (key_in_a | causal_b)) | itself)[:, None]


def glm_mask_mod(layout: SegmentLayout, isolate_segments: bool = True) -> Any:
    """The same rule as `dense_mask`, as a FlexAttention `mask_mod(b, h, q_idx, kv_idx)`."""
    groups, in_b = _visibility(layout, isolate_segments)

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        query_group, key_group = groups[b, q_idx], groups[b, kv_idx]
        same_group = (query_group == key_group) & (query_group >= 0)
        visible = ~in_b[b, kv_idx] | (in_b[b, q_idx] & (kv_idx <= q_idx))
        return (same_group & visible) | (q_idx == kv_idx)

    return mask_mod


@dataclasses.dataclass
class GLMAttentionMask:
    """A batch's mask in the form its backend wants; built once per batch, shared by every layer."""

    backend: Literal["sdpa", "flex", "naive"]
    dense: Tensor | None = None
    """[B, 1, L, L] bool for 'sdpa' and 'naive'."""
    block_mask: Any = None
    """FlexAttention BlockMask for 'flex'."""


def resolve_backend(backend: Backend, device: torch.device) -> Literal["sdpa", "flex", "naive"]:
    if backend == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    return backend


def build_attention_mask(
    segments: Tensor,
    length: int,
    *,
    isolate_segments: bool = True,
    backend: Backend = "auto",
    layout: SegmentLayout | None = None,
) -> GLMAttentionMask:
    """The batch's attention mask from its segment table [B, S, 3] (or its layout, if already built)."""
    layout = layout if layout is not None else segment_layout(segments, length)
    chosen = resolve_backend(backend, segments.device)
    if chosen == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        block_mask = create_block_mask(
            glm_mask_mod(layout, isolate_segments),
            B=segments.shape[0],
            H=None,
            Q_LEN=length,
            KV_LEN=length,
            device=segments.device,
        )
        return GLMAttentionMask(backend="flex", block_mask=block_mask)
    return GLMAttentionMask(backend=chosen, dense=dense_mask(layout, isolate_segments))


@functools.lru_cache(maxsize=1)
def _compiled_flex_attention() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def glm_attention(q: Tensor, k: Tensor, v: Tensor, mask: GLMAttentionMask) -> Tensor:
    """Attention of q, k, v [B, heads, L, head_dim] under the batch's GLM mask; scale 1/sqrt(head_dim)."""
    if mask.backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense)
    if mask.backend == "flex":
        flex = _compiled_flex_attention() if q.device.type == "cuda" else _eager_flex_attention()
        return flex(q, k, v, block_mask=mask.block_mask)
    return naive_attention(q, k, v, mask.dense)


def _eager_flex_attention() -> Any:
    """Uncompiled FlexAttention (CPU, forward only): lets tests check the mask_mod without a GPU."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def naive_attention(q: Tensor, k: Tensor, v: Tensor, dense: Tensor) -> Tensor:
    """Matmul-softmax attention; the softmax runs in float32 whatever the input dtype (GLM-130B)."""
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    # At least float32: 16-bit scores are upcast, float64 ones (the reference) stay float64.
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)).masked_fill(~dense, float("-inf"))
    weights = torch.softmax(scores, dim=-1).to(v.dtype)  # FP32 softmax
    return weights @ v


def reference_attention(q: Tensor, k: Tensor, v: Tensor, dense: Tensor) -> Tensor:
    """Float64 matmul-softmax attention under a dense mask: the ground truth for tests."""
    return naive_attention(q.double(), k.double(), v.double(), dense)
