"""Rotary position embedding (RoPE) for GLM: 2D (GLM's two position axes) or 1D (GLM-130B's own).

A GLM sample has two position axes (DESIGN §4): `position_ids` (where a token is in Part A; every Part-B token of
a span carries its [MASK]'s position) and `block_position_ids` (0 in Part A, 1..len+1 inside a span). 2D RoPE
rotates the first half of every query/key head by the first axis and the second half by the second axis, so the
attention score q·k depends on each axis only through the difference of positions (tested). 1D RoPE rotates the
whole head by one position per token.

Rotation convention: "rotate half" within each rotated chunk of width n: the pairs are (x[i], x[i + n/2]) with
angle pos * base^(-2i/n). Angles and the rotation are computed in float32 and the result cast back to the input
dtype, so fp16/bf16 runs rotate exactly like fp32 ones.

`apply_rotary_qk` is the model's entry point: on CUDA it rotates q and k with one `torch.compile`d fused
kernel (forward and backward); on CPU it is `apply_rotary` on each, bit for bit (tests/test_gpu.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class RotaryTables:
    """cos/sin for one batch, shaped [B, 1, L, head_dim] to broadcast over heads; shared by every layer."""

    cos: Tensor
    sin: Tensor
    chunks: int
    """How many equal chunks of the head are rotated independently (1 = 1D RoPE, 2 = 2D RoPE)."""


def rotary_tables(position_axes: Sequence[Tensor], head_dim: int, base: float = 10_000.0) -> RotaryTables:
    """Tables for `apply_rotary`: one position tensor [B, L] per axis; each axis rotates head_dim/len(axes)."""
    chunks = len(position_axes)
    width = head_dim // chunks
    if width * chunks != head_dim or width % 2:
        raise ValueError(f"head_dim {head_dim} cannot be split into {chunks} rotary chunks of even width")
    device = position_axes[0].device
    inv_freq = base ** (-torch.arange(0, width, 2, device=device, dtype=torch.float32) / width)  # [width/2]
    cos_parts, sin_parts = [], []
    for positions in position_axes:
        angles = positions.to(torch.float32)[..., None] * inv_freq  # [B, L, width/2]
        angles = torch.cat([angles, angles], dim=-1)  # the pair (i, i + width/2) shares angle i
        cos_parts.append(angles.cos())
        sin_parts.append(angles.sin())
    cos = torch.cat(cos_parts, dim=-1)[:, None]  # [B, 1, L, head_dim]
    sin = torch.cat(sin_parts, dim=-1)[:, None]
    return RotaryTables(cos=cos, sin=sin, chunks=chunks)


def rotate_half(x: Tensor, chunks: int) -> Tensor:
    """Per chunk of the last dim, (x1, x2) -> (-x2, x1): the 90-degree turn of every rotated pair."""
    shaped = x.unflatten(-1, (chunks, 2, x.shape[-1] // (2 * chunks)))
    first, second = shaped.unbind(dim=-2)
    return torch.stack([-second, first], dim=-2).flatten(-3)


def apply_rotary(x: Tensor, tables: RotaryTables) -> Tensor:
    """Rotate queries or keys [B, heads, L, head_dim] by the batch's positions."""
    xf = x.float()
    return (xf * tables.cos + rotate_half(xf, tables.chunks) * tables.sin).to(x.dtype)


def rope_2d_tables(
    position_ids: Tensor, block_position_ids: Tensor, head_dim: int, base: float = 10_000.0
) -> RotaryTables:
    """GLM's 2D RoPE: first half of each head by `position_ids`, second half by `block_position_ids`."""
    return rotary_tables([position_ids, block_position_ids], head_dim, base)


def rope_1d_tables(positions: Tensor, head_dim: int, base: float = 10_000.0) -> RotaryTables:
    """Plain (1D) RoPE over the whole head, as GLM-130B uses with its 1D positions."""
    return rotary_tables([positions], head_dim, base)


# ------------------------------------------------------------------------------------- compiled (CUDA) path


def _rotate_qk(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, chunks: int) -> tuple[Tensor, Tensor]:
    """`apply_rotary`'s maths on q and k in one function, so that the compiler fuses both into one pass."""
    qf, kf = q.float(), k.float()
    q_out = qf * cos + rotate_half(qf, chunks) * sin
    k_out = kf * cos + rotate_half(kf, chunks) * sin
    return q_out.to(q.dtype), k_out.to(k.dtype)


@functools.cache
def compiled_rotate_qk(backend: str = "inductor") -> Callable[..., tuple[Tensor, Tensor]]:
    """`_rotate_qk` under `torch.compile` (one graph, no breaks; shapes specialised, as in the trainer where every
    layer of a batch has the same shapes). Inductor fuses the elementwise graph into one kernel per pass: the forward
    reads q, k, cos, sin once and writes the rotated q and k; the backward (the transposed rotation) is
    generated from the same graph. `backend="aot_eager"` traces the same graph without code generation (CPU
    tests)."""
    return torch.compile(_rotate_qk, backend=backend, dynamic=False, fullgraph=True)


def apply_rotary_qk(
    q: Tensor, k: Tensor, tables: RotaryTables, *, compiled: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Rotate queries and keys [B, heads, L, head_dim] by the batch's positions (1D or 2D tables).

    On CUDA (or with `compiled=True`) this runs the compiled fused kernel, equal to `apply_rotary` within float32
    rounding (the compiler may contract a multiply-add into an FMA; 16-bit outputs can then differ by one unit
    in the last place). Elsewhere it is exactly `apply_rotary` on q and on k, so CPU results are unchanged.
    """
    use_compiled = q.device.type == "cuda" if compiled is None else compiled
    if not use_compiled:
        return apply_rotary(q, tables), apply_rotary(k, tables)
    return compiled_rotate_qk()(q, k, tables.cos, tables.sin, tables.chunks)
