"""The GLM model and its kernels against the spec: the §4 attention rule, 2D RoPE, GLM-130B's choices.

The references here are written from DESIGN §4 and the RoPE definition, independently of kernels/: the mask by
loops over (query, key) pairs, attention and rotation in float64.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from kernels.glm_attention import build_attention_mask, glm_attention, segment_layout
from kernels.rope import apply_rotary, rope_1d_tables, rope_2d_tables
from pipeline.special_tokens import GMASK, MASK
from trainer.config import ModelConfig, TrainConfig
from trainer.data import SyntheticRows, to_torch_batch
from trainer.model import GLMModel, glm130b_positions
from trainer.parallel import ParallelContext
from trainer.train import train

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ independent references


def rule_mask(segments: np.ndarray, length: int, isolate_segments: bool = True) -> np.ndarray:
    """DESIGN §4, pair by pair: may query i attend to key j?"""
    segment_of = [-1] * length
    sep_of = [0] * length
    for index, (start, sep, end) in enumerate(segments):
        if start < 0:
            continue
        for token in range(start, end):
            segment_of[token], sep_of[token] = index, sep
    mask = np.zeros((length, length), dtype=bool)
    for i in range(length):
        for j in range(length):
            if i == j:
                mask[i, j] = True  # padding sees only itself; every token sees itself
                continue
            if segment_of[i] < 0 or segment_of[j] < 0:
                continue
            if isolate_segments and segment_of[i] != segment_of[j]:
                continue  # segments never see each other
            key_in_part_a = j < sep_of[j]
            query_in_part_b = i >= sep_of[i]
            if key_in_part_a:
                mask[i, j] = True  # every token sees all of Part A
            elif query_in_part_b and j <= i:
                mask[i, j] = True  # Part B is causal; Part A never sees Part B
    return mask


def random_segment_table(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """Rows of segments with padding gaps, Part B possibly empty, table rows in random order, padded with -1."""
    tables = []
    for _ in range(batch):
        rows, cursor = [], 0
        while True:
            cursor += int(rng.integers(0, 4))  # padding between segments
            if cursor >= length - 1:
                break
            end = min(length, cursor + int(rng.integers(2, length // 2)))
            sep = int(rng.integers(cursor + 1, end + 1))  # Part A non-empty, Part B may be empty
            rows.append((cursor, sep, end))
            cursor = end
        rng.shuffle(rows)
        tables.append(rows)
    width = max(len(rows) for rows in tables)
    out = np.full((batch, width, 3), -1, dtype=np.int64)
    for b, rows in enumerate(tables):
        out[b, : len(rows)] = rows
    return out


def reference_attention64(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: np.ndarray
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) masked) v in float64, mask [B, L, L]."""
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.from_numpy(mask)[:, None], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.double()


def rotate64(x: torch.Tensor, axes: list[torch.Tensor], base: float = 10_000.0) -> torch.Tensor:
    """RoPE from its definition in float64: chunk c of the head is rotated by axes[c]; within a chunk of width n,
    the pair (x[i], x[i + n/2]) turns by angle pos * base^(-2i/n)."""
    x = x.double()
    n = x.shape[-1] // len(axes)
    out = torch.empty_like(x)
    for c, positions in enumerate(axes):
        chunk = x[..., c * n : (c + 1) * n]
        first, second = chunk[..., : n // 2], chunk[..., n // 2 :]
        freq = base ** (-2 * torch.arange(n // 2, dtype=torch.float64) / n)
        angle = positions.double()[:, None, :, None] * freq
        out[..., c * n : c * n + n // 2] = first * angle.cos() - second * angle.sin()
        out[..., c * n + n // 2 : (c + 1) * n] = second * angle.cos() + first * angle.sin()
    return out


# ---------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("isolate_segments", [True, False])
def test_kernel_mask_equals_the_rule(isolate_segments: bool) -> None:
    rng = np.random.default_rng(0)
    length = 40
    table = random_segment_table(rng, 4, length)
    mask = build_attention_mask(
        torch.from_numpy(table), length, isolate_segments=isolate_segments, backend="sdpa"
    )
    expected = np.stack([rule_mask(row, length, isolate_segments) for row in table])
    np.testing.assert_array_equal(mask.dense[:, 0].numpy(), expected)


@pytest.mark.parametrize("isolate_segments", [True, False])
def test_kernel_mask_equals_dense_attention_mask_of_the_masking_stage(isolate_segments: bool) -> None:
    """Cross-check with `kernels.attention_mask.dense_attention_mask` (DESIGN §10), where it exists."""
    attention_mask = pytest.importorskip("kernels.attention_mask")
    rng = np.random.default_rng(1)
    length = 48
    table = random_segment_table(rng, 3, length)
    mask = build_attention_mask(
        torch.from_numpy(table), length, isolate_segments=isolate_segments, backend="sdpa"
    ).dense[:, 0]
    for b in range(len(table)):
        row = table[b][table[b][:, 0] >= 0]
        row = row[np.argsort(row[:, 0])]
        expected = attention_mask.dense_attention_mask(row, length, isolate_segments=isolate_segments)
        np.testing.assert_array_equal(mask[b].numpy(), np.asarray(expected))


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
@pytest.mark.parametrize("isolate_segments", [True, False])
def test_attention_forward_and_gradients_match_float64_reference(
    backend: str, isolate_segments: bool
) -> None:
    rng = np.random.default_rng(2)
    length, heads, head_dim = 48, 2, 8
    table = random_segment_table(rng, 3, length)
    expected_mask = np.stack([rule_mask(row, length, isolate_segments) for row in table])
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(3, heads, length, head_dim, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    upstream = torch.randn(3, heads, length, head_dim, dtype=torch.float64)

    reference = reference_attention64(q, k, v, expected_mask)
    ref_grads = torch.autograd.grad((reference * upstream).sum(), (q, k, v))

    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    mask = build_attention_mask(
        torch.from_numpy(table), length, isolate_segments=isolate_segments, backend=backend
    )
    out = glm_attention(q32, k32, v32, mask)
    grads = torch.autograd.grad((out * upstream.float()).sum(), (q32, k32, v32))

    torch.testing.assert_close(out.double(), reference, atol=2e-5, rtol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("isolate_segments", [True, False])
def test_flex_attention_block_mask_forward_matches_reference(isolate_segments: bool) -> None:
    """The CUDA path's mask_mod, run eagerly on CPU (FlexAttention has no CPU backward: forward only)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    rng = np.random.default_rng(3)
    length = 64
    table = random_segment_table(rng, 2, length)
    expected_mask = np.stack([rule_mask(row, length, isolate_segments) for row in table])
    q, k, v = (torch.randn(2, 2, length, 16) for _ in range(3))
    mask = build_attention_mask(
        torch.from_numpy(table), length, isolate_segments=isolate_segments, backend="flex"
    )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": expected here
        out = glm_attention(q, k, v, mask)
    torch.testing.assert_close(
        out.double(), reference_attention64(q, k, v, expected_mask), atol=2e-5, rtol=1e-4
    )


def test_model_attention_layer_matches_float64_reference() -> None:
    """SelfAttention of the model (QKV, 2D RoPE, GLM mask, output projection) against float64 maths."""
    cfg = ModelConfig(vocab_size=1024, hidden_size=32, num_heads=4, num_layers=2)
    model = GLMModel(cfg, ParallelContext(), seed=5)
    attention = model.layers[0].attention
    with torch.no_grad():  # non-zero biases, so the test sees them
        attention.qkv.bias.normal_()
        attention.dense.bias.normal_()
    source = SyntheticRows(4, seq_length=48, vocab_size=1024, seed=3)
    batch = to_torch_batch(source.batch([0, 1, 2]))
    length = 48
    x = torch.randn(3, length, cfg.hidden_size, dtype=torch.float64, requires_grad=True)

    # float64 reference, written out
    w_qkv, b_qkv = attention.qkv.weight.double(), attention.qkv.bias.double()
    w_out, b_out = attention.dense.weight.double(), attention.dense.bias.double()
    qkv = (x @ w_qkv.T + b_qkv).view(3, length, 3, cfg.num_heads, cfg.head_dim).permute(2, 0, 3, 1, 4)
    axes = [batch["position_ids"], batch["block_position_ids"]]
    q, k = rotate64(qkv[0], axes), rotate64(qkv[1], axes)
    mask = np.stack([rule_mask(row, length) for row in batch["segments"].numpy()])
    heads = reference_attention64(q, k, qkv[2], mask)
    reference = heads.transpose(1, 2).reshape(3, length, cfg.hidden_size) @ w_out.T + b_out
    ref_grad_x, ref_grad_w = torch.autograd.grad(reference.sum(), (x, attention.qkv.weight))

    x32 = x.detach().float().requires_grad_()
    layout = segment_layout(batch["segments"], length)
    rotary = model.rotary_tables(batch, layout)
    out = attention(x32, rotary, build_attention_mask(batch["segments"], length, backend="sdpa"))
    grad_x, grad_w = torch.autograd.grad(out.sum(), (x32, attention.qkv.weight))

    torch.testing.assert_close(out.double(), reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad_x.double(), ref_grad_x, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(grad_w.double(), ref_grad_w.double(), atol=1e-3, rtol=1e-4)


# --------------------------------------------------------------------------------------------------- RoPE


def _scores(q: torch.Tensor, k: torch.Tensor, tables_q: object, tables_k: object) -> torch.Tensor:
    return apply_rotary(q, tables_q) @ apply_rotary(k, tables_k).transpose(-1, -2)


def test_rope_2d_matches_its_definition() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 16)
    pos, block = torch.randint(0, 50, (2, 10)), torch.randint(0, 9, (2, 10))
    got = apply_rotary(x, rope_2d_tables(pos, block, 16))
    torch.testing.assert_close(got.double(), rotate64(x, [pos, block]), atol=1e-5, rtol=1e-5)


def test_rope_2d_scores_depend_only_on_position_differences_along_each_axis() -> None:
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16)
    pos, block = torch.randint(0, 100, (1, 12)), torch.randint(0, 10, (1, 12))
    base = _scores(q, k, rope_2d_tables(pos, block, 16), rope_2d_tables(pos, block, 16))
    for shift_pos, shift_block in [(37, 0), (0, 5), (11, 3)]:
        shifted = rope_2d_tables(pos + shift_pos, block + shift_block, 16)
        torch.testing.assert_close(_scores(q, k, shifted, shifted), base, atol=1e-4, rtol=1e-4)
    # ... but not on the positions themselves: shifting only the keys changes the scores.
    moved = _scores(q, k, rope_2d_tables(pos, block, 16), rope_2d_tables(pos + 3, block, 16))
    assert not torch.allclose(moved, base, atol=1e-3)


def test_rope_2d_axes_rotate_separate_halves() -> None:
    torch.manual_seed(2)
    x = torch.randn(1, 1, 6, 16)
    pos, block = torch.arange(6)[None], torch.zeros(6, dtype=torch.long)[None]
    a = apply_rotary(x, rope_2d_tables(pos, block, 16))
    b = apply_rotary(x, rope_2d_tables(pos, block + 4, 16))
    torch.testing.assert_close(a[..., :8], b[..., :8])  # first half: position_ids only
    assert not torch.allclose(a[..., 8:], b[..., 8:])  # second half: block_position_ids
    torch.testing.assert_close(a.norm(dim=-1), x.norm(dim=-1))  # rotations keep the norm
    zero = torch.zeros(1, 6, dtype=torch.long)
    torch.testing.assert_close(
        apply_rotary(x, rope_2d_tables(zero, zero, 16)), x
    )  # position 0 is the identity


def test_rope_1d_is_relative() -> None:
    torch.manual_seed(3)
    q, k = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    pos = torch.randint(0, 60, (1, 9))
    base = _scores(q, k, rope_1d_tables(pos, 8), rope_1d_tables(pos, 8))
    torch.testing.assert_close(
        _scores(q, k, rope_1d_tables(pos + 21, 8), rope_1d_tables(pos + 21, 8)), base, atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        apply_rotary(q, rope_1d_tables(pos, 8)).double(), rotate64(q, [pos]), atol=1e-5, rtol=1e-5
    )


def test_glm130b_1d_positions_count_on_after_gmask_and_stay_on_mask() -> None:
    source = SyntheticRows(8, seq_length=96, seed=4)
    batch = to_torch_batch(source.batch(list(range(8))))
    layout = segment_layout(batch["segments"], 96)
    positions = glm130b_positions(
        batch["tokens"], batch["position_ids"], batch["block_position_ids"], layout, GMASK
    )
    seen = set()
    for b in range(8):
        for start, sep, end in batch["segments"][b].tolist():
            if start < 0:
                continue
            part_a = batch["tokens"][b, start:sep]
            assert torch.equal(positions[b, start:sep], torch.arange(sep - start))
            if GMASK in part_a.tolist():
                seen.add("gmask")
                mask_at = sep - start - 1
                assert torch.equal(positions[b, sep:end], torch.arange(mask_at + 1, mask_at + 1 + end - sep))
            else:
                seen.add("mask")
                assert MASK in part_a.tolist()
                assert torch.equal(positions[b, sep:end], batch["position_ids"][b, sep:end])
    assert seen == {"gmask", "mask"}
    reconstruct = pytest.importorskip(
        "kernels.reconstruct"
    )  # the masking stage's numpy version, where it exists
    numpy_batch = {key: value.numpy() for key, value in batch.items()}
    np.testing.assert_array_equal(reconstruct.glm130b_position_ids(numpy_batch), positions.numpy())


# ------------------------------------------------------------------------------------ GLM-130B's choices


def test_deepnorm_constants_and_init() -> None:
    cfg = ModelConfig(vocab_size=1024, hidden_size=64, num_heads=4, num_layers=6)
    assert cfg.alpha == pytest.approx(math.sqrt(12)) and cfg.beta == pytest.approx(12**-0.5)
    assert (
        cfg.ffn_hidden_size == 192 and ModelConfig(hidden_size=12288, num_heads=96).ffn_hidden_size == 32768
    )
    model = GLMModel(cfg, ParallelContext(), seed=0)
    qkv = model.layers[0].attention.qkv.weight.view(3, 64, 64)
    xavier = math.sqrt(2 / (64 + 64))
    assert qkv[0].std().item() == pytest.approx(xavier, rel=0.05)  # query: plain Xavier
    assert qkv[2].std().item() == pytest.approx(cfg.beta * xavier, rel=0.05)  # value: scaled by beta
    assert model.layers[0].attention.dense.weight.std().item() == pytest.approx(cfg.beta * xavier, rel=0.05)
    assert float(model.layers[0].attention.qkv.bias.detach().abs().sum()) == 0.0


def test_embedding_gradient_shrink_scales_only_the_gradient() -> None:
    batch = to_torch_batch(SyntheticRows(2, seq_length=32, vocab_size=1024).batch([0, 1]))
    results = []
    projection = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(0))
    for shrink in (0.1, 1.0):
        model = GLMModel(
            ModelConfig(vocab_size=1024, hidden_size=32, embedding_grad_shrink=shrink), ParallelContext(), 0
        )
        hidden = model(batch)
        (hidden * projection).sum().backward()
        results.append((hidden.detach(), model.embedding.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])  # same forward values
    full = results[1][1]
    torch.testing.assert_close(results[0][1], 0.1 * full, rtol=1e-4, atol=1e-5 * float(full.abs().max()))


def test_output_layer_is_tied_to_the_embedding() -> None:
    model = GLMModel(ModelConfig(vocab_size=1024, hidden_size=32), ParallelContext(), 0)
    names = [name for name, p in model.named_parameters() if p.dim() == 2 and p.shape[0] >= 1024]
    assert names == ["embedding.weight"]  # no separate output matrix


def test_tiny_model_loss_falls_on_a_fixed_dataset() -> None:
    cfg = TrainConfig(
        model=ModelConfig(vocab_size=1024, hidden_size=64, num_heads=4, num_layers=2),
        steps=30,
        global_batch_size=4,
        micro_batch_size=2,
        lr=3e-3,
        warmup_steps=3,
        num_threads=1,
    )
    history = train(cfg, SyntheticRows(16, seq_length=64, vocab_size=1024), ParallelContext()).history
    losses = [r["loss"] for r in history]
    assert len(losses) == 30
    assert losses[0] == pytest.approx(math.log(1024), abs=0.3)  # starts near uniform over the real vocabulary
    assert np.mean(losses[-5:]) < 0.6 * losses[0]
    assert all(math.isfinite(r["grad_norm"]) and not r["skipped"] for r in history)
