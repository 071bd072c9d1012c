"""GPU benchmark (issue 9, DESIGN §8 GPU row): GLM attention against plain causal FlexAttention and SDPA, the
compiled 2D RoPE, and the reference trainer's tokens/s and MFU for a ~1B-parameter GLM, on one CUDA GPU.

    python -m benchmarks.gpu_attention [--quick] [--markdown FILE] [--cpu-smoke] [--batch 4 --heads 16 ...]

Without CUDA it prints `skipped: no CUDA` and exits 0, unless `--cpu-smoke` is given: then every code path that
runs on a CPU runs at tiny sizes (FlexAttention forward only, eagerly: it has no CPU backward in torch 2.13;
SDPA and the naive path forward and backward; the RoPE graph traced with the `aot_eager` backend; three steps of
the trainer on a tiny model). Its file name does not start with `bench_`, so `python -m benchmarks` (the CPU
suite, run on 2-core machines) does not pick it up; its tables have the same format (`benchmarks.common`).

Sections (on CUDA; bf16; batch 4 x 16 heads x head_dim 128 x 2048 tokens unless told otherwise):

1. **attention**, forward and forward + backward, per segment table built as [B, S, 3] (start, sep, end) and
   turned into masks by `kernels.glm_attention.build_attention_mask`:
   (a) one segment per row, Part A about half the row; (b) 16-32 short segments per row, Part A ~60-90% of each
   (packed MIP rows: prompt + [gMASK], then a short target). Implementations: the GLM attention (compiled
   FlexAttention with the table's block mask: the trainer's CUDA path), plain causal FlexAttention (compiled,
   `create_block_mask` with a causal mask_mod), SDPA with the dense boolean GLM mask, naive matmul-softmax
   with that mask, and SDPA `is_causal=True` as a reference point. Times are medians of `--iters` CUDA-event
   samples, each over `--inner` back-to-back calls (launch overhead overlapped, as in training), after
   warm-up; the first call (compile) is reported on its own. TFLOP/s count 4·H·D FLOPs per
   visible (query, key) pair forward (q k^T and P v, 2 FLOPs per multiply-add) and 2.5x that backward (dq, dk,
   dv, dP and the recomputed scores), summed over the batch; the dense-equivalent figure counts all L^2 pairs.
2. **GLM / causal flex**: throughput (tokens/s of forward + backward at the same shape) of the GLM attention
   over plain causal FlexAttention, PASS at >= 0.70 (DESIGN §8); the ratio of TFLOP/s on visible pairs is shown
   beside it (kernel efficiency: how much of the computed work was wanted).
3. **correctness**: fresh random q, k, v (float32, on the GPU) and random segment tables; the GLM FlexAttention
   output and dq, dk, dv against attention computed entirely in float64 under the dense mask
   (`float64_attention`: `kernels.glm_attention.reference_attention` keeps a float32 softmax).
4. **2D RoPE**: `kernels.rope.apply_rotary_qk` (compiled fused kernel) against eager `apply_rotary` on q and k,
   forward + backward, bf16, the model's memory layout.
5. **trainer**: `trainer.train.train` (the real step: forward, backward, gradient clipping, AdamW) on a GLM of
   24 layers, hidden 2048, 16 heads, vocabulary 150,528 (1.52B parameters, 1.21B of them outside the
   embedding) with bf16 autocast, on `trainer.data.SyntheticRows` rows of 2048 tokens; tokens/s and MFU (the
   trainer's own: model FLOPs of a step / step time / 989 TFLOP/s, the H100/H200 SXM bf16 dense peak).

The whole run takes a few minutes on an H200, most of it compiling (docs/GPU.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import format_table
from kernels.glm_attention import (
    build_attention_mask,
    glm_attention,
    naive_attention,
    segment_layout,
)

TARGET_RATIO = 0.70
"""GLM attention >= 70% of plain causal FlexAttention throughput at 2048, forward + backward (DESIGN §8)."""
PEAK_TFLOPS = 989.0
"""H100/H200 SXM bf16 dense peak, the MFU denominator (the trainer's CUDA default)."""
BACKWARD_FLOPS_FACTOR = 2.5
"""Backward FLOPs / forward FLOPs of attention: 5 matmuls (recomputed scores, dP, dV, dQ, dK) against 2."""

# Tolerances of the float32 check against float64. A float32 kernel's error here is ~1e-6 on outputs of size
# ~0.05-1 (rounding of 128-term dot products and of softmax sums over <= 2048 keys) and ~1e-5 on gradients of
# size ~1-10: the bounds below leave a ~100x margin over that, yet stay ~10x under what one wrongly visible key
# does (a row seeing ~1000 keys moves by ~1/1000 of |v| ~ 1e-3; that key's dk, dv by ~1e-2).
OUTPUT_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
GRAD_TOLERANCE = {"atol": 1e-3, "rtol": 1e-4}


@dataclass(frozen=True)
class Shape:
    batch: int
    heads: int
    length: int
    head_dim: int

    def describe(self) -> str:
        return f"{self.batch} x {self.heads} heads x {self.length} tokens x head_dim {self.head_dim}"


# ------------------------------------------------------------------------------------------ segment tables


def _pad_tables(rows: list[list[tuple[int, int, int]]]) -> np.ndarray:
    """Per-row segment lists -> [B, S, 3] int64, padded with -1 (the training shards' table layout)."""
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width, 3), -1, dtype=np.int64)
    for b, segments in enumerate(rows):
        out[b, : len(segments)] = segments
    return out


def one_segment_table(batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """One GLM segment filling each row; Part A (the context) about half of it, 45-55%."""
    rows = []
    for _ in range(batch):
        sep = int(round(length * rng.uniform(0.45, 0.55)))
        rows.append([(0, sep, length)])
    return _pad_tables(rows)


def mip_segment_table(
    batch: int, length: int, rng: np.random.Generator, segments: tuple[int, int] = (16, 32)
) -> np.ndarray:
    """Rows packed with 16-32 short segments like MIP examples: Part A (prompt + [gMASK]) 60-90% of each,
    Part B (sop + target) the rest; segment lengths vary (random cuts), rows filled to the last token."""
    rows = []
    for _ in range(batch):
        count = int(rng.integers(segments[0], segments[1] + 1))
        count = max(1, min(count, length // 8))
        cuts = np.sort(rng.choice(np.arange(8, length - 7), size=count - 1, replace=False))
        bounds = [0, *[int(c) for c in cuts], length]
        row = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            part_a = max(1, min(end - start - 1, int(round((end - start) * rng.uniform(0.6, 0.9)))))
            row.append((start, start + part_a, end))
        rows.append(row)
    return _pad_tables(rows)


def random_segment_table(batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Awkward tables for correctness checks: padding gaps between segments (tokens outside every segment),
    Part B sometimes empty, segment sizes from 2 tokens to half the row, table rows in random order."""
    rows = []
    for _ in range(batch):
        row, cursor = [], 0
        while True:
            cursor += int(rng.integers(0, 5))
            if cursor >= length - 1:
                break
            end = min(length, cursor + int(rng.integers(2, max(3, length // 2))))
            sep = int(rng.integers(cursor + 1, end + 1))  # Part A has a token; Part B may be empty
            row.append((cursor, sep, end))
            cursor = end
        rng.shuffle(row)
        rows.append(row or [(0, 1, 1)])
    return _pad_tables(rows)


TABLE_CASES: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "one segment, Part A ~1/2": one_segment_table,
    "16-32 MIP segments": mip_segment_table,
}


def float64_attention(q: Tensor, k: Tensor, v: Tensor, dense: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d), masked) v with every step in float64, dense mask [B, 1, L, L].

    Not `kernels.glm_attention.reference_attention`: that one reuses the naive path, whose softmax upcasts to
    float32 whatever the input, so its "float64" result carries float32 softmax rounding (~1e-7).
    """
    q, k, v = q.double(), k.double(), v.double()
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~dense, float("-inf")), dim=-1) @ v


def visible_pairs(dense: Tensor) -> int:
    """Number of (query, key) pairs a dense mask [B, 1, L, L] lets through, summed over the batch."""
    return int(dense.sum())


def attention_flops(pairs: int, heads: int, head_dim: int, backward: bool) -> float:
    forward = 4.0 * heads * head_dim * pairs
    return forward * (1 + BACKWARD_FLOPS_FACTOR) if backward else forward


# -------------------------------------------------------------------------------------------------- timing


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, iters: int, inner: int = 1) -> float:
    """Median milliseconds per call over `iters` samples; a sample times `inner` calls back to back (CUDA events
    around them on a GPU, so the host's launch overhead overlaps the kernels as in training; perf_counter on a
    CPU) and divides by `inner`."""
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / inner)
        else:
            started = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append(1000 * (time.perf_counter() - started) / inner)
    return statistics.median(times)


def first_call_s(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call, synchronized: the compile (and autotune) of a compiled function's first call."""
    _synchronize(device)
    started = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------------------ settings


@dataclass
class Settings:
    device: torch.device
    smoke: bool
    quick: bool
    shape: Shape
    dtype: torch.dtype
    iters: int
    warmup: int
    inner: int
    """Calls per timing sample (back to back)."""
    check_shape: Shape
    seed: int
    rope_backend: str
    trainer: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace, device: torch.device) -> Settings:
        seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") % 2**31
        if device.type != "cuda":  # --cpu-smoke: every path at toy sizes, float32
            return cls(
                device=device, smoke=True, quick=args.quick, shape=Shape(2, 2, 256, 32), dtype=torch.float32,
                iters=2, warmup=1, inner=1, check_shape=Shape(2, 2, 128, 32), seed=seed, rope_backend="aot_eager",
                trainer=not args.skip_trainer,
            )  # fmt: skip
        return cls(
            device=device,
            smoke=False,
            quick=args.quick,
            shape=Shape(args.batch, args.heads, args.length, args.head_dim),
            dtype=torch.bfloat16,
            iters=args.iters or (5 if args.quick else 20),
            warmup=1 if args.quick else 3,
            inner=args.inner,
            check_shape=Shape(2, 4, args.length // 2 if args.quick else args.length, args.head_dim),
            seed=seed,
            rope_backend="inductor",
            trainer=not args.skip_trainer,
        )


def _random_qkv(shape: Shape, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> list[Tensor]:
    return [
        torch.randn(shape.batch, shape.heads, shape.length, shape.head_dim, generator=generator, device=device)
        .to(dtype)
        .requires_grad_()
        for _ in range(3)
    ]


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------------------------------- 1. attention


def causal_mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    return kv_idx <= q_idx


@functools.lru_cache(maxsize=1)
def _compiled_plain_flex() -> Callable[..., Tensor]:
    """Plain FlexAttention compiled the way `kernels.glm_attention` compiles it (a separate cache, same options)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _plain_flex(device: torch.device) -> Callable[..., Tensor]:
    if device.type == "cuda":
        return _compiled_plain_flex()
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention  # eager, forward only (CPU smoke)


GLM_FLEX = "GLM FlexAttention (block mask from the table)"
CAUSAL_FLEX = "plain causal FlexAttention"


@dataclass
class Implementation:
    name: str
    fn: Callable[[Tensor, Tensor, Tensor], Tensor]
    pairs: int
    """Visible (query, key) pairs of its mask, summed over the batch: the FLOP count's basis."""
    backward: bool
    """False for FlexAttention on CPU (no backward there): timed and checked forward only."""


def implementations(segments: Tensor, s: Settings, isolate_segments: bool = True) -> list[Implementation]:
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = s.shape.batch, s.shape.length
    on_gpu = s.device.type == "cuda"
    glm_flex = build_attention_mask(segments, length, isolate_segments=isolate_segments, backend="flex")
    glm_dense = build_attention_mask(segments, length, isolate_segments=isolate_segments, backend="sdpa")
    pairs = visible_pairs(glm_dense.dense)
    causal_pairs = batch * length * (length + 1) // 2
    causal_block = create_block_mask(
        causal_mask_mod, B=None, H=None, Q_LEN=length, KV_LEN=length, device=s.device
    )
    plain_flex = _plain_flex(s.device)
    dense = glm_dense.dense
    return [
        Implementation(GLM_FLEX, lambda q, k, v: glm_attention(q, k, v, glm_flex), pairs, on_gpu),  # fmt: skip
        Implementation(CAUSAL_FLEX, lambda q, k, v: plain_flex(q, k, v, block_mask=causal_block), causal_pairs, on_gpu),  # fmt: skip
        Implementation("SDPA + dense GLM mask", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dense), pairs, True),  # fmt: skip
        Implementation("naive matmul-softmax + dense GLM mask", lambda q, k, v: naive_attention(q, k, v, dense), pairs, True),  # fmt: skip
        Implementation("SDPA is_causal=True (reference point)", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), causal_pairs, True),  # fmt: skip
    ]


@contextlib.contextmanager
def _quiet_eager_flex() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        yield


def measure(impl: Implementation, qkv: list[Tensor], upstream: Tensor, s: Settings) -> dict[str, Any]:
    """First call (compile), then medians of forward and of forward + backward."""
    q, k, v = qkv

    detached = [t.detach() for t in qkv]  # FlexAttention on CPU refuses inputs that require grad

    def forward() -> None:
        if impl.backward:
            impl.fn(q, k, v)
        else:
            impl.fn(*detached)

    def forward_backward() -> None:
        out = impl.fn(q, k, v)
        torch.autograd.grad(out, (q, k, v), upstream)

    main = forward_backward if impl.backward else forward
    with _quiet_eager_flex():
        first = first_call_s(main, s.device)
        for _ in range(s.warmup):
            main()
        _synchronize(s.device)
        fwd_ms = time_ms(forward, s.device, s.iters, s.inner)
        both_ms = time_ms(forward_backward, s.device, s.iters, s.inner) if impl.backward else None
    shape = s.shape
    dense_pairs = shape.batch * shape.length**2
    tokens = shape.batch * shape.length
    row: dict[str, Any] = {
        "implementation": impl.name,
        "visible pairs %": 100 * impl.pairs / dense_pairs,
        "first call s": first,
        "fwd ms": fwd_ms,
        "fwd TFLOP/s (visible)": attention_flops(impl.pairs, shape.heads, shape.head_dim, False) / fwd_ms / 1e9,
        "fwd+bwd ms": both_ms,
        "fwd+bwd TFLOP/s (visible)": None,
        "fwd+bwd TFLOP/s (dense-equiv)": None,
        "fwd+bwd tokens/s": None,
    }
    if both_ms is not None:
        row["fwd+bwd TFLOP/s (visible)"] = (
            attention_flops(impl.pairs, shape.heads, shape.head_dim, True) / both_ms / 1e9
        )
        row["fwd+bwd TFLOP/s (dense-equiv)"] = (
            attention_flops(dense_pairs, shape.heads, shape.head_dim, True) / both_ms / 1e9
        )
        row["fwd+bwd tokens/s"] = tokens / (both_ms / 1000)
    return row


def bench_attention(s: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(timing rows, GLM / causal flex rows) for every segment-table case."""
    rng = np.random.default_rng(0)  # the benchmark's tables are fixed; the correctness check draws fresh ones
    generator = _generator(s.device, 0)
    qkv = _random_qkv(s.shape, s.dtype, s.device, generator)
    upstream = torch.randn(qkv[0].shape, generator=generator, device=s.device).to(s.dtype)
    rows, ratios = [], []
    for case, make_table in TABLE_CASES.items():
        table = make_table(s.shape.batch, s.shape.length, rng)
        segments = torch.from_numpy(table).to(s.device)
        mask_ms = time_ms(
            lambda seg=segments: build_attention_mask(seg, s.shape.length), s.device, max(2, s.iters // 4)
        )
        by_name = {}
        for impl in implementations(segments, s):
            _log(f"attention: {case}: {impl.name}")
            row = {"case": f"{case} (segments/row {_segments_per_row(table)})", **measure(impl, qkv, upstream, s)}
            if impl.name == GLM_FLEX:
                row["mask build ms"] = mask_ms
            rows.append(row)
            by_name[impl.name] = row
        ratios.append(_ratio_row(case, by_name[GLM_FLEX], by_name[CAUSAL_FLEX]))
    return rows, ratios


def _segments_per_row(table: np.ndarray) -> str:
    counts = (table[..., 0] >= 0).sum(axis=1)
    return f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"


def _ratio_row(case: str, glm: dict[str, Any], causal: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "case": case,
        "GLM fwd+bwd ms": glm["fwd+bwd ms"],
        "causal flex fwd+bwd ms": causal["fwd+bwd ms"],
        "GLM / causal flex (tokens/s, fwd+bwd)": None,
        "GLM / causal flex (visible TFLOP/s, fwd+bwd)": None,
        "GLM / causal flex (tokens/s, fwd)": causal["fwd ms"] / glm["fwd ms"],
        f"target >= {TARGET_RATIO:.2f}": "n/a (CPU smoke: no flex backward)",
    }
    if glm["fwd+bwd ms"] is not None and causal["fwd+bwd ms"] is not None:
        ratio = causal["fwd+bwd ms"] / glm["fwd+bwd ms"]
        row["GLM / causal flex (tokens/s, fwd+bwd)"] = ratio
        row["GLM / causal flex (visible TFLOP/s, fwd+bwd)"] = (
            glm["fwd+bwd TFLOP/s (visible)"] / causal["fwd+bwd TFLOP/s (visible)"]
        )
        row[f"target >= {TARGET_RATIO:.2f}"] = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    return row


# -------------------------------------------------------------------------------------- 3. correctness


@contextlib.contextmanager
def _float32_highest() -> Iterator[None]:
    """IEEE float32 matmuls (no TF32) for the check; FlexAttention's kernels follow the same setting."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _error(got: Tensor, want: Tensor, tolerance: dict[str, float]) -> tuple[float, float]:
    """(max |got - want|, max of |got - want| / (atol + rtol |want|)): the second <= 1 passes, as assert_close."""
    diff = (got.double() - want).abs()
    allowed = tolerance["atol"] + tolerance["rtol"] * want.abs()
    return float(diff.max()), float((diff / allowed).max())


def check_cases(s: Settings) -> list[tuple[str, np.ndarray, bool]]:
    rng = np.random.default_rng(s.seed)
    batch, length = s.check_shape.batch, s.check_shape.length
    return [
        ("one segment, Part A ~1/2", one_segment_table(batch, length, rng), True),
        ("16-32 MIP segments", mip_segment_table(batch, length, rng), True),
        ("random table (padding gaps, empty Part B, unordered)", random_segment_table(batch, length, rng), True),
        ("random table, isolate_segments=False", random_segment_table(batch, length, rng), False),
    ]


def correctness(s: Settings) -> tuple[list[dict[str, Any]], bool]:
    """Fresh random float32 q, k, v, upstream gradient and tables (seed printed) against float64 maths."""
    rows, passed = [], True
    shape = s.check_shape
    with _float32_highest():
        for number, (case, table, isolate) in enumerate(check_cases(s)):
            _log(f"correctness: {case}")
            segments = torch.from_numpy(table).to(s.device)
            generator = _generator(s.device, s.seed + number)
            qkv = _random_qkv(shape, torch.float32, s.device, generator)
            upstream = torch.randn(qkv[0].shape, generator=generator, device=s.device)
            dense = build_attention_mask(segments, shape.length, isolate_segments=isolate, backend="sdpa").dense
            qkv64 = [t.detach().double().requires_grad_() for t in qkv]
            reference = float64_attention(*qkv64, dense)
            ref_grads = torch.autograd.grad((reference * upstream.double()).sum(), qkv64)
            reference = reference.detach()
            flex = build_attention_mask(segments, shape.length, isolate_segments=isolate, backend="flex")
            candidates = [
                ("GLM FlexAttention" + (" (compiled)" if s.device.type == "cuda" else " (eager, fwd only)"),
                 lambda q, k, v, m=flex: glm_attention(q, k, v, m), s.device.type == "cuda"),
                ("SDPA + dense GLM mask", lambda q, k, v, m=dense: F.scaled_dot_product_attention(q, k, v, attn_mask=m), True),
            ]  # fmt: skip
            if s.smoke:
                candidates.append(("naive + dense GLM mask", lambda q, k, v, m=dense: naive_attention(q, k, v, m), True))
            for name, fn, backward in candidates:
                with _quiet_eager_flex():
                    out = fn(*qkv) if backward else fn(*(t.detach() for t in qkv))
                grads = torch.autograd.grad((out * upstream).sum(), qkv) if backward else None
                row: dict[str, Any] = {"case": case, "implementation": name}
                worst = 0.0
                err, ratio = _error(out.detach(), reference, OUTPUT_TOLERANCE)
                row["out max |err|"], worst = err, max(worst, ratio)
                for label, got, want in zip(("dq", "dk", "dv"), grads or (None,) * 3, ref_grads):
                    if got is None:
                        row[f"{label} max |err|"] = None
                        continue
                    err, ratio = _error(got, want, GRAD_TOLERANCE)
                    row[f"{label} max |err|"], worst = err, max(worst, ratio)
                row["worst err / tolerance"] = worst
                row["result"] = "PASS" if worst <= 1.0 else "FAIL"
                passed &= worst <= 1.0
                rows.append(row)
            del segments, reference, ref_grads
    rows.append(
        {
            "case": f"seed {s.seed} (--seed to repeat), {shape.describe()}, float32 "
            f"(matmul precision 'highest'), reference float64",
            "implementation": f"tolerance out {OUTPUT_TOLERANCE}, grads {GRAD_TOLERANCE}",
        }
    )
    return rows, passed


# ------------------------------------------------------------------------------------------------ 4. RoPE


def bench_rope(s: Settings) -> list[dict[str, Any]]:
    """Eager `apply_rotary` on q and k against the compiled fused entry point, in the model's memory layout
    (q, k views of one [B, L, 3, heads, head_dim] QKV output), forward + backward."""
    from kernels.rope import apply_rotary, apply_rotary_qk, compiled_rotate_qk, rope_2d_tables

    shape = s.shape
    generator = _generator(s.device, 1)
    qkv = torch.randn(
        shape.batch, shape.length, 3, shape.heads, shape.head_dim, generator=generator, device=s.device
    ).to(s.dtype)
    qkv.requires_grad_()
    table = one_segment_table(shape.batch, shape.length, np.random.default_rng(1))
    layout = segment_layout(torch.from_numpy(table).to(s.device), shape.length)
    index = torch.arange(shape.length, device=s.device)
    sep = torch.from_numpy(table[:, 0, 1]).to(s.device)[:, None]
    position_ids = torch.where(layout.in_part_b, sep - 1, index)  # Part B: the [gMASK]'s position
    block_position_ids = torch.where(layout.in_part_b, index - sep + 1, 0)
    tables = rope_2d_tables(position_ids, block_position_ids, shape.head_dim)
    upstream = [torch.randn(shape.batch, shape.heads, shape.length, shape.head_dim, generator=generator,
                            device=s.device).to(s.dtype) for _ in range(2)]  # fmt: skip

    def views() -> tuple[Tensor, Tensor]:
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k

    def eager() -> tuple[Tensor, Tensor]:
        q, k = views()
        return apply_rotary(q, tables), apply_rotary(k, tables)

    def fused() -> tuple[Tensor, Tensor]:
        q, k = views()
        if s.device.type == "cuda":
            return apply_rotary_qk(q, k, tables)  # the model's entry point: compiled on CUDA
        return compiled_rotate_qk(s.rope_backend)(q, k, tables.cos, tables.sin, tables.chunks)

    def run(fn: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, ...]:
        outs = fn()
        return (*outs, *torch.autograd.grad(outs, qkv, upstream))

    first = first_call_s(lambda: run(fused), s.device)
    for _ in range(s.warmup):
        run(fused)
        run(eager)
    eager_ms = time_ms(lambda: run(eager), s.device, s.iters, s.inner)
    fused_ms = time_ms(lambda: run(fused), s.device, s.iters, s.inner)
    want, got = run(eager), run(fused)
    differences = [float((a.detach().float() - b.detach().float()).abs().max()) for a, b in zip(got, want)]
    try:
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)  # the dtype's default tolerance (bf16: rtol 1.6e-2)
        matches = "yes"
    except AssertionError:
        matches = "NO"
    # Least traffic of a fused pass: forward reads q, k, cos, sin and writes q, k; backward the same with grads.
    elements = shape.batch * shape.heads * shape.length * shape.head_dim
    table_bytes = 2 * shape.batch * shape.length * shape.head_dim * 4
    least_bytes = 2 * (4 * elements * qkv.element_size() + table_bytes)
    return [
        {
            "case": f"2D RoPE on q and k, fwd+bwd, {shape.describe()}, {str(s.dtype).removeprefix('torch.')}",
            "eager ms": eager_ms,
            "compiled ms": fused_ms,
            "speed-up": eager_ms / fused_ms,
            "compiled GB/s (least traffic)": least_bytes / (fused_ms / 1000) / 1e9,
            "first call s": first,
            "max |diff| out q, k / grad": ", ".join(f"{d:.2g}" for d in differences[:2])
            + f" / {differences[2]:.2g}",
            "matches eager": matches,
            "backend": s.rope_backend,
        }
    ]


# --------------------------------------------------------------------------------------------- 5. trainer


def install_orjson_stand_in() -> bool:
    """The CUDA image of the device machine has no orjson; `trainer.train` imports it but only needs it to print
    JSON lines and write checkpoints, which this benchmark does not do. Returns True if the stand-in was used."""
    try:
        import orjson  # noqa: F401
    except ModuleNotFoundError:
        module = types.ModuleType("orjson")
        module.dumps = lambda obj, option=0: json.dumps(obj, sort_keys=bool(option)).encode()  # type: ignore[attr-defined]
        module.loads = json.loads  # type: ignore[attr-defined]
        module.OPT_INDENT_2 = module.OPT_SORT_KEYS = 1  # type: ignore[attr-defined]
        sys.modules["orjson"] = module
        return True
    return False


def bench_trainer(s: Settings) -> list[dict[str, Any]]:
    stand_in = install_orjson_stand_in()
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import SyntheticRows
    from trainer.parallel import ParallelContext, init_parallel
    from trainer.train import train

    if s.smoke:
        model = ModelConfig(vocab_size=1024, num_layers=2, hidden_size=64, num_heads=4)
        length, micro, global_batch, steps, skip = 256, 2, 2, 3, 1
        ctx, peak = ParallelContext(), None
    else:
        model = ModelConfig(num_layers=24, hidden_size=2048, num_heads=16)  # GLM-130B's vocabulary
        length, micro, global_batch = 2048, 4, 8
        steps, skip = (5, 2) if s.quick else (12, 2)
        ctx, peak = init_parallel(1, None, device="cuda"), PEAK_TFLOPS
    cfg = TrainConfig(
        model=model,
        steps=steps,
        global_batch_size=global_batch,
        micro_batch_size=micro,
        seq_length=length,
        precision="bf16",
        lr=1e-4,
        warmup_steps=2,
        peak_tflops=peak,
        device=ctx.device.type,
    )
    source = SyntheticRows(global_batch * steps, seq_length=length, vocab_size=model.vocab_size, seed=0)
    _log(f"trainer: building and training {model.num_layers} layers x hidden {model.hidden_size} for {steps} steps")
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    threads = torch.get_num_threads()
    started = time.perf_counter()
    try:
        result = train(cfg, source, ctx)
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - started
    history = result.history
    timed = history[skip:]
    counts = result.summary["parameters"]
    step_s = float(np.mean([r["step_time_s"] for r in timed]))
    tokens = global_batch * length
    row = {
        "case": f"GLM {model.num_layers} layers x hidden {model.hidden_size} x {model.num_heads} heads "
        f"(head_dim {model.head_dim}, GeGLU {model.ffn_hidden_size}), vocab {model.vocab_size:,}",
        "parameters": f"{counts['total'] / 1e9:.3g}B ({counts['non_embedding'] / 1e9:.3g}B non-embedding "
        f"+ {counts['embedding'] / 1e9:.3g}B embedding)",
        "step": f"{global_batch} x {length} tokens (micro-batches of {micro}), bf16 autocast, "
        f"attention {'flex' if s.device.type == 'cuda' else 'sdpa'}",
        "first step s (compile)": history[0]["step_time_s"],
        f"step ms (mean of steps {skip}..{steps - 1})": 1000 * step_s,
        "tokens/s": tokens / step_s,
        "MFU %": 100 * float(np.mean([r["mfu"] for r in timed])),
        "loss first -> last": f"{history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}",
        "skipped steps": result.summary["skipped_steps"],
        "wall s (incl. model init)": wall,
    }
    if s.device.type == "cuda":
        row["peak GPU memory GB"] = torch.cuda.max_memory_allocated() / 1e9
    note = {
        "case": "MFU = model FLOPs of a step / step time / peak; model FLOPs (trainer.train.model_flops) = "
        "6 x non-embedding params x tokens + 6 x vocab x hidden x loss tokens + 12 x layers x hidden x L x tokens; "
        f"peak: {result.summary['mfu_peak']}"
        + ("; orjson stand-in used (not installed)" if stand_in else ""),
    }
    finite = all(math.isfinite(r["loss"]) for r in history)
    if not finite:
        raise RuntimeError(f"non-finite loss in the trainer run: {[r['loss'] for r in history]}")
    return [row, note]


# ---------------------------------------------------------------------------------------------------- main


def _log(message: str) -> None:
    print(f"[gpu_attention {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def environment(s: Settings) -> list[dict[str, Any]]:
    row: dict[str, Any] = {
        "device": torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else f"CPU ({platform.machine()})",
        "torch": torch.__version__,
        "CUDA": torch.version.cuda,
        "Python": platform.python_version(),
        "attention shape": f"{s.shape.describe()}, {str(s.dtype).removeprefix('torch.')}",
        "timing": f"median of {s.iters} samples of {s.inner} back-to-back calls, after {s.warmup} warm-up "
        + ("(CUDA events)" if s.device.type == "cuda" else "(perf_counter)"),
    }
    with contextlib.suppress(ImportError):
        import triton

        row["triton"] = triton.__version__
    return [row]


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_attention", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and trainer steps")
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables to this Markdown file")
    parser.add_argument("--cpu-smoke", action="store_true", help="without CUDA: run every CPU-capable path, tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--iters", type=int, help="timing samples per measurement (default 20, 5 with --quick)")
    parser.add_argument("--inner", type=int, default=10, help="calls per timing sample on CUDA (default 10)")
    parser.add_argument("--seed", type=int, help="seed of the correctness check (default: fresh)")
    parser.add_argument("--skip-trainer", action="store_true", help="leave out the trainer section")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    elif args.cpu_smoke:
        device = torch.device("cpu")
    else:
        print("skipped: no CUDA (run with --cpu-smoke to exercise the CPU paths)")
        return 0
    s = Settings.from_args(args, device)
    # Several masks and dtypes go through one compiled flex_attention (kernels.glm_attention); keep them compiled.
    from torch._dynamo import config

    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), 32))
    if s.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))

    sections: list[tuple[str, list[dict[str, Any]]]] = []
    failed: list[str] = []

    def section(name: str, fn: Callable[[], list[dict[str, Any]]]) -> None:
        started = time.perf_counter()
        print(f"\n## gpu_attention: {name}", flush=True)
        try:
            rows = fn()
        except Exception as exc:  # one broken section must not hide the others' tables
            traceback.print_exc()
            failed.append(name)
            print(f"FAILED: {type(exc).__name__}: {exc}", flush=True)
            sections.append((name, [{"FAILED": f"{type(exc).__name__}: {exc}"}]))
            return
        print(format_table(rows), flush=True)
        print(f"({time.perf_counter() - started:.0f} s)", flush=True)
        sections.append((name, rows))

    section("environment", lambda: environment(s))
    check_passed = [True]

    def run_correctness() -> list[dict[str, Any]]:
        rows, check_passed[0] = correctness(s)
        return rows

    section("correctness against float64 (fresh random inputs)", run_correctness)
    ratios: list[dict[str, Any]] = []

    def run_attention() -> list[dict[str, Any]]:
        rows, found = bench_attention(s)
        ratios.extend(found)
        return rows

    section(f"attention, {s.shape.describe()}", run_attention)
    if ratios:
        section("GLM attention / plain causal FlexAttention", lambda: ratios)
    section("2D RoPE: compiled fused kernel vs eager", lambda: bench_rope(s))
    if s.trainer:
        section("trainer tokens/s and MFU", lambda: bench_trainer(s))

    if args.markdown:
        command = "python -m benchmarks.gpu_attention" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
        header = (
            f"Command: `{command}` on {environment(s)[0]['device']}, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}\n\n"
        )
        body = "\n".join(f"## {name}\n\n{format_table(rows)}\n" for name, rows in sections)
        Path(args.markdown).write_text(header + body, encoding="utf-8")
    if not check_passed[0]:
        failed.append("correctness")
    if failed:
        print(f"\nFAILED sections: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
