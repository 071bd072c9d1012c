"""The CUDA paths of the trainer's kernels (issue 9), and what of them can be checked on a CPU.

On CUDA (marked `gpu`, skipped without it): the GLM attention as the trainer runs it there (compiled
FlexAttention with the segment table's block mask) against float64 maths, forward and gradients; the compiled
fused RoPE against eager `apply_rotary`, forward and backward; the whole model on CUDA against the same model on
the CPU. On the CPU (always run): `apply_rotary_qk` is exactly `apply_rotary` there, its compiled graph traces
whole (no graph break) and matches eager, and the block mask visits exactly the blocks with a visible pair.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.gpu_attention import (
    GRAD_TOLERANCE,
    OUTPUT_TOLERANCE,
    float64_attention,
    install_orjson_stand_in,
    mip_segment_table,
    one_segment_table,
    random_segment_table,
)
from kernels.glm_attention import build_attention_mask, glm_attention, segment_layout
from kernels.rope import (
    apply_rotary,
    apply_rotary_qk,
    compiled_rotate_qk,
    rope_1d_tables,
    rope_2d_tables,
)

CUDA = torch.cuda.is_available()


def cuda_only(test):
    """Marked `gpu` and skipped cleanly without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")(test))


TABLES = {
    "one segment": (one_segment_table, True),
    "MIP segments": (mip_segment_table, True),
    "random table": (random_segment_table, True),
    "random table, not isolated": (random_segment_table, False),
}


def _model_layout_qk(
    batch: int, heads: int, length: int, head_dim: int, dtype: torch.dtype, device: str, seed: int
) -> torch.Tensor:
    """A [B, L, 3, heads, head_dim] QKV output, as the model's q and k are views of (leaf, requires grad)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(batch, length, 3, heads, head_dim, generator=generator, device=device).to(dtype)
    return qkv.requires_grad_()


def _views(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k


def _tables(kind: str, batch: int, length: int, head_dim: int, device: str, seed: int):
    generator = torch.Generator().manual_seed(seed)
    position_ids = torch.randint(0, length, (batch, length), generator=generator).to(device)
    if kind == "1d":
        return rope_1d_tables(position_ids, head_dim)
    block_position_ids = torch.randint(0, 40, (batch, length), generator=generator).to(device)
    return rope_2d_tables(position_ids, block_position_ids, head_dim)


def _rotate_and_grad(rotate, qkv: torch.Tensor, upstream: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    q_out, k_out = rotate(*_views(qkv))
    (grad,) = torch.autograd.grad((q_out, k_out), qkv, upstream)
    return q_out.detach(), k_out.detach(), grad


# -------------------------------------------------------------------------------------------------- CPU


@pytest.mark.parametrize("kind", ["2d", "1d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rotary_qk_entry_point_is_exactly_apply_rotary_on_cpu(kind: str, dtype: torch.dtype) -> None:
    """The model's RoPE entry point changes nothing on a CPU: same bits forward and backward."""
    qkv = _model_layout_qk(2, 3, 40, 16, dtype, "cpu", seed=0)
    tables = _tables(kind, 2, 40, 16, "cpu", seed=1)
    upstream = [torch.randn(2, 3, 40, 16).to(dtype) for _ in range(2)]
    got = _rotate_and_grad(lambda q, k: apply_rotary_qk(q, k, tables), qkv, upstream)
    want = _rotate_and_grad(lambda q, k: (apply_rotary(q, tables), apply_rotary(k, tables)), qkv, upstream)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == dtype
        assert torch.equal(a, b)


def test_compiled_rotary_graph_traces_whole_and_matches_eager_on_cpu() -> None:
    """The graph the CUDA path compiles, traced by dynamo + AOTAutograd without code generation (`aot_eager`,
    fullgraph: a graph break would raise), forward and the derived backward."""
    qkv = _model_layout_qk(2, 2, 32, 16, torch.float32, "cpu", seed=2)
    tables = _tables("2d", 2, 32, 16, "cpu", seed=3)
    upstream = [torch.randn(2, 2, 32, 16) for _ in range(2)]
    compiled = compiled_rotate_qk("aot_eager")
    got = _rotate_and_grad(lambda q, k: compiled(q, k, tables.cos, tables.sin, tables.chunks), qkv, upstream)
    want = _rotate_and_grad(lambda q, k: (apply_rotary(q, tables), apply_rotary(k, tables)), qkv, upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_block_mask_visits_exactly_the_blocks_holding_a_visible_pair() -> None:
    """Where the speed of the FlexAttention path comes from: a 128 x 128 block is visited iff the dense mask has
    a visible pair in it, so blocks of other segments and Part A -> Part B blocks are skipped; packed MIP rows
    leave little more than the diagonal band."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    rng = np.random.default_rng(0)
    length, block = 2048, 128
    sparsity = {}
    for name, make_table in (("one", one_segment_table), ("mip", mip_segment_table), ("random", random_segment_table)):
        segments = torch.from_numpy(make_table(2, length, rng))
        mask = build_attention_mask(segments, length, backend="flex").block_mask
        dense = build_attention_mask(segments, length, backend="sdpa").dense[:, 0]
        holds_pair = dense.view(2, length // block, block, length // block, block).any(dim=4).any(dim=2)
        assert torch.equal(mask.to_dense()[:, 0].bool(), holds_pair), name
        sparsity[name] = mask.sparsity()
    assert sparsity["mip"] > 80, sparsity


# ------------------------------------------------------------------------------------------------- CUDA


@cuda_only
@pytest.mark.parametrize("case", list(TABLES))
def test_glm_flex_attention_forward_and_backward_match_float64_on_cuda(case: str) -> None:
    """The trainer's CUDA attention (compiled FlexAttention, block mask from the table) on fresh float32 inputs
    against float64 maths; tolerances as the benchmark's check (benchmarks/gpu_attention.py says why)."""
    make_table, isolate = TABLES[case]
    batch, heads, length, head_dim = 2, 4, 2048, 128
    rng = np.random.default_rng(list(TABLES).index(case))
    segments = torch.from_numpy(make_table(batch, length, rng)).cuda()
    generator = torch.Generator(device="cuda").manual_seed(10 + list(TABLES).index(case))
    q, k, v = (
        torch.randn(batch, heads, length, head_dim, generator=generator, device="cuda").requires_grad_()
        for _ in range(3)
    )
    upstream = torch.randn(batch, heads, length, head_dim, generator=generator, device="cuda")
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # IEEE float32: FlexAttention's kernels follow it
    try:
        mask = build_attention_mask(segments, length, isolate_segments=isolate)
        assert mask.backend == "flex"  # the default on CUDA
        out = glm_attention(q, k, v, mask)
        grads = torch.autograd.grad((out * upstream).sum(), (q, k, v))
    finally:
        torch.set_float32_matmul_precision(precision)
    dense = build_attention_mask(segments, length, isolate_segments=isolate, backend="sdpa").dense
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    reference = float64_attention(q64, k64, v64, dense)
    ref_grads = torch.autograd.grad((reference * upstream.double()).sum(), (q64, k64, v64))
    torch.testing.assert_close(out.double(), reference, **OUTPUT_TOLERANCE)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **GRAD_TOLERANCE)


@cuda_only
@pytest.mark.parametrize(
    "kind,dtype", [("2d", torch.float32), ("2d", torch.bfloat16), ("1d", torch.float32)], ids=str
)
def test_compiled_rope_equals_eager_on_cuda(kind: str, dtype: torch.dtype) -> None:
    """The fused compiled kernel against eager `apply_rotary`, forward and backward, in the model's layout.
    Both compute in float32 from the same cos/sin tables; the compiler may contract a multiply-add into an FMA,
    so float32 results agree to rounding (default float32 tolerance) and bf16 ones within one bf16 unit."""
    batch, heads, length, head_dim = 4, 16, 2048, 128
    qkv = _model_layout_qk(batch, heads, length, head_dim, dtype, "cuda", seed=4)
    tables = _tables(kind, batch, length, head_dim, "cuda", seed=5)
    generator = torch.Generator(device="cuda").manual_seed(6)
    upstream = [
        torch.randn(batch, heads, length, head_dim, generator=generator, device="cuda").to(dtype)
        for _ in range(2)
    ]
    got = _rotate_and_grad(lambda q, k: apply_rotary_qk(q, k, tables), qkv, upstream)
    want = _rotate_and_grad(lambda q, k: (apply_rotary(q, tables), apply_rotary(k, tables)), qkv, upstream)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(a, b)


@cuda_only
def test_model_on_cuda_matches_the_model_on_cpu() -> None:
    """The GLM model with its CUDA paths (FlexAttention block mask, compiled RoPE) against the same weights on the
    CPU paths (SDPA + dense mask, eager RoPE), float32: loss and every parameter's gradient."""
    install_orjson_stand_in()  # the trainer package imports orjson; the CUDA image may not have it
    from trainer.config import ModelConfig
    from trainer.data import SyntheticRows, to_torch_batch
    from trainer.model import GLMModel
    from trainer.parallel import ParallelContext

    cfg = ModelConfig(vocab_size=1024, num_layers=2, hidden_size=128, num_heads=2)
    batch = to_torch_batch(SyntheticRows(2, seq_length=256, vocab_size=1024, seed=7).batch([0, 1]))
    results = []
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for device in ("cpu", "cuda"):
            model = GLMModel(cfg, ParallelContext(device=torch.device(device)), seed=8).to(device)
            loss_sum, count = model.loss({key: value.to(device) for key, value in batch.items()})
            loss = loss_sum / count
            loss.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters()]).cpu().double()
            results.append((float(loss.detach()), grads))
    finally:
        torch.set_float32_matmul_precision(precision)
    (cpu_loss, cpu_grads), (cuda_loss, cuda_grads) = results
    assert cuda_loss == pytest.approx(cpu_loss, rel=1e-5)
    assert float((cuda_grads - cpu_grads).norm() / cpu_grads.norm()) < 1e-4


@cuda_only
def test_segment_layout_and_block_mask_build_on_cuda() -> None:
    """The per-batch mask work (layout, block mask) stays on the GPU: the trainer builds it from CUDA tensors."""
    segments = torch.from_numpy(mip_segment_table(2, 2048, np.random.default_rng(1))).cuda()
    layout = segment_layout(segments, 2048)
    mask = build_attention_mask(segments, 2048, layout=layout)
    assert layout.segment_ids.is_cuda and mask.block_mask.kv_num_blocks.is_cuda
