"""The GLM model and its kernels against the spec: the §4 attention rule, 2D RoPE, GLM-130B's choices.

The references here are written from DESIGN §4 and the RoPE definition, independently of kernels/: the mask by
loops over (query, key) pairs, attention and rotation in float64.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

import trainer.model
from kernels.glm_attention import build_attention_mask, glm_attention, naive_attention, segment_layout
from kernels.rope import apply_rotary, rope_1d_tables, rope_2d_tables
from pipeline.special_tokens import GMASK, MASK
from trainer.config import ModelConfig, TrainConfig
from trainer.data import SyntheticRows, to_torch_batch
from trainer.model import GLMModel, glm130b_positions
from trainer.parallel import ParallelContext
from trainer.train import model_flops, peak_flops, step_printer, train

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


# ------------------------------------------------------------------------------- on the masking stage's rows


class CompactIds:
    """Training shards with their ids renumbered 0..K-1 (K = the ids the rows use), so the tied output layer has K
    rows instead of GLM's 150,528: the same sequences in seconds instead of a minute of CPU."""

    def __init__(self, shards: object) -> None:
        self.shards = shards
        every = shards.batch(np.arange(len(shards)), provenance=False)
        used = np.unique(np.concatenate([every["tokens"].ravel(), every["targets"].ravel()]))
        self.vocab_size = len(used)
        self.table = np.zeros(int(used[-1]) + 1, dtype=np.int64)
        self.table[used] = np.arange(len(used))

    def __len__(self) -> int:
        return len(self.shards)

    def batch(self, rows: object, provenance: bool = False) -> dict:
        out = dict(self.shards.batch(rows, provenance=False))
        out["tokens"], out["targets"] = self.table[out["tokens"]], self.table[out["targets"]]
        return out


MASKED_STEPS = 40


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory, tiny_model) -> dict:
    """A tiny GLM trained on real masking output: English and Chinese text from the tiny tokenizer's corpus,
    tokenized, written as token shards, masked by `masking.stage.run_masking` into 128-token rows; its step
    records as returned and as `--json` printed them."""
    from masking.config import MaskingConfig
    from masking.stage import run_masking
    from pipeline.special_tokens import EOD
    from pipeline.tokenizer import GLMTokenizer
    from shards.token_shards import TokenShardWriter
    from shards.training_shards import TrainingShards
    from tests.tokenizer_fixtures import chinese_text, english_text

    root = Path(tmp_path_factory.mktemp("masked"))
    tokenizer = GLMTokenizer(tiny_model)
    documents = {"en": english_text(60_000).split("\n\n"), "zh": chinese_text(20_000).split("\n")}
    for source, texts in documents.items():
        with TokenShardWriter(root / "tokens" / source / f"{source}-00000") as writer:
            for number, text in enumerate(t for t in texts if t.strip()):
                ids = np.append(np.asarray(tokenizer.encode(text), dtype=np.int32), np.int32(EOD))
                writer.add(ids, doc_id=f"{source}:{number}", source=source, input_file="-", offset=number)
    config = MaskingConfig(row_length=128, rows_per_block=16, rows_per_shard=64)
    run_masking(root / "tokens", root / "train", config, progress=False)
    shards = TrainingShards(root / "train")
    source = CompactIds(shards)
    cfg = TrainConfig(
        model=ModelConfig(vocab_size=source.vocab_size, hidden_size=64, num_heads=4, num_layers=2),
        steps=MASKED_STEPS,
        global_batch_size=8,
        micro_batch_size=8,
        lr=1e-2,
        warmup_steps=3,
        num_threads=1,
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = train(cfg, source, ParallelContext(), on_step=step_printer(as_json=True))
    lines = [orjson.loads(line) for line in printed.getvalue().splitlines()]
    return {"cfg": cfg, "shards": shards, "source": source, "result": result, "json": lines}


def test_tiny_model_loss_falls_on_the_masking_stage_rows(masked_run) -> None:
    """The rows are a first pass over real blank-infilling samples (fewer rows sampled than the run has, so
    every row is new): the loss falls from uniform over the vocabulary by far more than its step-to-step noise."""
    shards, source = masked_run["shards"], masked_run["source"]
    assert len(shards) > MASKED_STEPS * masked_run["cfg"].global_batch_size  # no row is seen twice
    kinds = {entry["kind"] for row in shards.batch(np.arange(16))["provenance"] for entry in row}
    assert kinds == {"mask", "gmask"}
    losses = np.array([r["loss"] for r in masked_run["result"].history])
    assert len(losses) == MASKED_STEPS and np.isfinite(losses).all()
    assert losses[0] == pytest.approx(math.log(source.vocab_size), abs=0.3)
    k = 5
    drop = losses[:k].mean() - losses[-k:].mean()
    noise = np.diff(losses[MASKED_STEPS // 2 :]).std()  # step-to-step scatter once the fast fall is over
    assert drop > 1.0 and drop > 5 * noise, (drop, noise, losses.round(3).tolist())


def test_step_records_log_loss_throughput_mfu_and_data_wait(masked_run) -> None:
    """Every step's record (returned and printed by `--json`) has finite, positive loss, tokens/s, MFU and data
    wait; the wait is part of the step time, and tokens/s and MFU are what the step's work and time give."""
    cfg, result = masked_run["cfg"], masked_run["result"]
    history = result.history
    assert masked_run["json"] == history  # the --json lines are the records, one per step
    peak, _ = peak_flops(cfg, ParallelContext())
    length = 128
    for record in history:
        values = [record[key] for key in ("loss", "tokens_per_s", "mfu", "data_wait_s", "step_time_s")]
        assert all(math.isfinite(v) and v > 0 for v in values), record
        assert record["data_wait_s"] < record["step_time_s"]
        assert record["tokens_per_s"] == pytest.approx(cfg.global_batch_size * length / record["step_time_s"])
        flops = model_flops(cfg, result.summary["parameters"], cfg.global_batch_size * length,
                            record["loss_tokens"], length)  # fmt: skip
        assert record["mfu"] == pytest.approx(flops / record["step_time_s"] / peak)
        assert 0 < record["mfu"] < 1
        assert 0 < record["loss_tokens"] < cfg.global_batch_size * length
    waits = np.array([r["data_wait_s"] / r["step_time_s"] for r in history[1:]])
    assert np.median(waits) < 0.25  # prefetched: the model rarely waits for its rows
    summary = result.summary
    assert summary["steps_run"] == MASKED_STEPS and 0 < summary["data_wait_fraction"] < 1
    assert summary["tokens_per_s"] > 0 and 0 < summary["mfu"] < 1


# ------------------------------------------------------------------------------------ FP32 softmax


def _softmax_in_16_bits(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dense: torch.Tensor
) -> torch.Tensor:
    """Attention whose softmax stays in the input dtype: exp rounded to 16 bits and the normaliser summed key by
    key in 16 bits, as a kernel keeping its softmax statistics in the input dtype would."""
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    scores = scores.masked_fill(~dense, float("-inf"))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    keys = weights.movedim(-1, 0).contiguous()
    total = torch.zeros_like(keys[0])
    for key in keys:
        total += key
    return (weights / total[..., None]) @ v


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_attention_softmax_is_fp32_in_a_16_bit_model(monkeypatch, dtype: torch.dtype, backend: str) -> None:
    """Under 16-bit autocast the model's attention gets 16-bit q, k, v and returns a 16-bit output within one unit
    of that dtype's epsilon (relative to the output's scale) of float64 maths on the same q, k, v, while a softmax
    kept in 16 bits misses by many units: over a 2048-token row its normaliser stops growing."""
    cfg = ModelConfig(vocab_size=1024, hidden_size=64, num_heads=4, num_layers=1, attention_backend=backend)
    model = GLMModel(cfg, ParallelContext(), seed=0)
    batch = to_torch_batch(SyntheticRows(1, seq_length=2048, vocab_size=1024, seed=0).batch([0]))
    seen = []

    def recording(q, k, v, mask):
        out = glm_attention(q, k, v, mask)
        seen.append((q, k, v, mask, out))
        return out

    monkeypatch.setattr(trainer.model, "glm_attention", recording)
    softmax_inputs = []
    softmax = torch.softmax

    def recording_softmax(scores, *args, **kwargs):
        softmax_inputs.append(scores.dtype)
        return softmax(scores, *args, **kwargs)

    monkeypatch.setattr(torch, "softmax", recording_softmax)  # the naive path's own softmax call
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            model(batch)
    except RuntimeError as exc:  # a CPU build without this autocast dtype
        pytest.skip(f"{dtype} autocast on CPU: {exc}")
    q, k, v, mask, out = seen[0]
    assert q.dtype == k.dtype == v.dtype == out.dtype == dtype and mask.backend == backend
    monkeypatch.setattr(torch, "softmax", softmax)
    # On CPU torch's softmax of a 16-bit tensor already accumulates in fp32, so the naive path's explicit upcast
    # is checked where it happens; SDPA's fused kernel is judged by its numbers alone.
    assert softmax_inputs == ([torch.float32] if backend == "naive" else [])
    queries = torch.arange(0, 2048, 8)  # a sample of queries keeps the 16-bit loop short; every key is kept
    dense = mask.dense[:, :, queries]
    assert int(dense.sum(-1).max()) > 1024  # queries that see more keys than 16 bits can count
    reference = naive_attention(q[:, :, queries].double(), k.double(), v.double(), dense)
    scale = reference.abs().max()
    error = float((out[:, :, queries].double() - reference).abs().max() / scale)
    in_16_bits = _softmax_in_16_bits(q[:, :, queries], k, v, dense)
    error_16 = float((in_16_bits.double() - reference).abs().max() / scale)
    eps = torch.finfo(dtype).eps
    assert error < eps < error_16 / 4, (error, eps, error_16)
