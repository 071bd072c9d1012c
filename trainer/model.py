"""The GLM architecture as GLM-130B describes it (DESIGN §7), one module per idea.

    embedding ──► gradient shrink ──► LayerNorm ──► N x GLMBlock ──► tied output layer (vocab-parallel loss)
    GLMBlock:  x = LN(alpha * x + SelfAttention(x))      # DeepNorm: post-LN with the residual scaled by alpha
               x = LN(alpha * x + GeGLU(x))

Where each GLM-130B choice lives:
- DeepNorm, alpha = (2N)^0.5: `GLMBlock.forward`; init with beta = (2N)^-0.5 on the value, attention-output and
  FFN weights (the paper's "Xavier normal with scaling factor (2N)^-1/2 to ffn, v_proj and out_proj"; DeepNet's
  own decoder rule would be (8N)^-1/4): `SelfAttention.__init__`, `GeGLU.__init__`. Biases start at zero.
- The 2N+1 LayerNorms: GLM-130B normalises the embedding (layer 0's input LayerNorm) and then the output of
  every residual sum; written post-LN style, that is `GLMModel.embedding_norm` plus two LNs per block.
- RoPE, 2D (GLM) or 1D (GLM-130B): `GLMModel.forward` builds the cos/sin tables once per batch
  (`kernels.rope`); `SelfAttention.forward` rotates q and k.
- FP32 softmax: `kernels.glm_attention` (the fused kernels keep softmax statistics in fp32; the naive path upcasts).
- GeGLU FFN, width ~8/3 d: `GeGLU.forward`.
- Embedding gradient shrink, alpha = 0.1: `GLMModel.forward`, `h * a + h.detach() * (1 - a)`.
- Output layer tied to the embedding: `GLMModel.loss` computes logits with the embedding's own weight
  (`trainer.parallel.vocab_parallel_output_loss`).

The loss is computed only at loss positions (Part-B targets): the [tokens, vocab] logits are the largest tensor
of a small model, and only ~20-50% of a row's tokens carry a target, so the output layer runs on those alone.
Dropout (0.1 in GLM-130B) is left out: with it, TP/DP/resume equality checks would need a TP-aware RNG tracker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.glm_attention import (
    GLMAttentionMask,
    SegmentLayout,
    build_attention_mask,
    glm_attention,
    segment_layout,
)
from kernels.rope import RotaryTables, apply_rotary_qk, rope_1d_tables, rope_2d_tables
from trainer.config import ModelConfig
from trainer.parallel import (
    ColumnParallelLinear,
    ParallelContext,
    RowParallelLinear,
    VocabParallelEmbedding,
    vocab_parallel_output_loss,
    xavier_std,
)


class SelfAttention(nn.Module):
    """Multi-head attention with heads split across TP ranks (column-parallel QKV, row-parallel output)."""

    def __init__(self, cfg: ModelConfig, ctx: ParallelContext, generator: torch.Generator) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.local_heads = cfg.num_heads // ctx.tp_size
        self.head_dim = cfg.head_dim
        xavier = xavier_std(d, d)
        # [q; k; v] blocks; DeepNorm scales the value projection (and out_proj) by beta.
        self.qkv = ColumnParallelLinear(
            d, 3 * d, ctx, generator, init_std=(xavier, xavier, cfg.beta * xavier), chunks=3
        )
        self.dense = RowParallelLinear(d, d, ctx, generator, init_std=cfg.beta * xavier)

    def forward(self, x: Tensor, rotary: RotaryTables, mask: GLMAttentionMask) -> Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.local_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, head_dim]
        q, k = apply_rotary_qk(q, k, rotary)  # one compiled fused kernel on CUDA; apply_rotary on CPU
        out = glm_attention(q, k, v, mask)  # GLM mask over packed segments; softmax in fp32
        return self.dense(out.transpose(1, 2).reshape(batch, length, self.local_heads * self.head_dim))


class GeGLU(nn.Module):
    """FFN(x) = W_out (GELU(x W_gate) * x W_value): GLM-130B's GLU with GeLU activation."""

    def __init__(self, cfg: ModelConfig, ctx: ParallelContext, generator: torch.Generator) -> None:
        super().__init__()
        d, ffn = cfg.hidden_size, cfg.ffn_hidden_size
        self.up = ColumnParallelLinear(
            d, 2 * ffn, ctx, generator, init_std=cfg.beta * xavier_std(d, ffn), chunks=2
        )
        self.down = RowParallelLinear(ffn, d, ctx, generator, init_std=cfg.beta * xavier_std(ffn, d))

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.up(x).chunk(2, dim=-1)
        return self.down(F.gelu(gate) * value)


class GLMBlock(nn.Module):
    """One transformer layer, post-LN with DeepNorm's scaled residual."""

    def __init__(self, cfg: ModelConfig, ctx: ParallelContext, generator: torch.Generator) -> None:
        super().__init__()
        self.alpha = cfg.alpha
        self.attention = SelfAttention(cfg, ctx, generator)
        self.attention_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        self.ffn = GeGLU(cfg, ctx, generator)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)

    def forward(self, x: Tensor, rotary: RotaryTables, mask: GLMAttentionMask) -> Tensor:
        x = self.attention_norm(self.alpha * x + self.attention(x, rotary, mask))  # DeepNorm
        x = self.ffn_norm(self.alpha * x + self.ffn(x))  # DeepNorm
        return x


class GLMModel(nn.Module):
    """GLM over a batch of packed rows; `loss` gives the summed token loss and the token count."""

    def __init__(self, cfg: ModelConfig, ctx: ParallelContext, seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.ctx = ctx
        # One CPU generator drives every full-size weight, in construction order, on every rank: each rank then
        # keeps its slice, so the model is the same function whatever the TP size.
        generator = torch.Generator().manual_seed(seed)
        self.embedding = VocabParallelEmbedding(
            cfg.vocab_size,
            cfg.padded_vocab_size(ctx.tp_size),
            cfg.hidden_size,
            ctx,
            generator,
            cfg.embedding_init_std,
        )
        self.embedding_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        self.layers = nn.ModuleList(GLMBlock(cfg, ctx, generator) for _ in range(cfg.num_layers))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Hidden states [B, L, hidden] of a batch with keys tokens, position_ids, block_position_ids, segments."""
        tokens = batch["tokens"]
        length = tokens.shape[1]
        layout = segment_layout(batch["segments"], length)
        mask = build_attention_mask(
            batch["segments"],
            length,
            isolate_segments=self.cfg.isolate_segments,
            backend=self.cfg.attention_backend,
            layout=layout,
        )
        rotary = self.rotary_tables(batch, layout)

        h = self.embedding(tokens)
        shrink = self.cfg.embedding_grad_shrink
        h = h * shrink + h.detach() * (1 - shrink)  # embedding gradient shrink (GLM-130B, alpha = 0.1)
        h = self.embedding_norm(h)
        for layer in self.layers:
            h = layer(h, rotary, mask)
        return h

    def rotary_tables(self, batch: dict[str, Tensor], layout: SegmentLayout) -> RotaryTables:
        if self.cfg.position_encoding == "2d":
            return rope_2d_tables(
                batch["position_ids"], batch["block_position_ids"], self.cfg.head_dim, self.cfg.rope_base
            )
        positions = glm130b_positions(
            batch["tokens"],
            batch["position_ids"],
            batch["block_position_ids"],
            layout,
            self.cfg.gmask_token_id,
        )
        return rope_1d_tables(positions, self.cfg.head_dim, self.cfg.rope_base)

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(sum of token losses over loss_mask, number of loss tokens); logits only at loss positions."""
        hidden = self(batch)
        selected = batch["loss_mask"].bool()
        # Tied output layer (the embedding's weight) + vocab-parallel cross-entropy, chunked over tokens.
        loss_sum = vocab_parallel_output_loss(hidden[selected], batch["targets"][selected], self.embedding)
        return loss_sum, selected.sum()


def glm130b_positions(
    tokens: Tensor,
    position_ids: Tensor,
    block_position_ids: Tensor,
    layout: SegmentLayout,
    gmask_token_id: int,
) -> Tensor:
    """GLM-130B's 1D positions from the 2D ones (DESIGN §4).

    A Part-B token of a [MASK] span keeps its mask's position; one of a [gMASK] (or MIP) segment counts on from
    the mask, i.e. mask position + block position. The mask token sits at segment start + position_ids.
    """
    mask_index = (layout.segment_starts + position_ids).clamp(0, tokens.shape[1] - 1)
    after_gmask = torch.gather(tokens, 1, mask_index) == gmask_token_id
    return position_ids + torch.where(layout.in_part_b & after_gmask, block_position_ids, 0)


def count_parameters(model: GLMModel, tp_size: int) -> dict[str, int]:
    """Parameters of the full (TP=1) model: embedding (real vocabulary rows) and the rest, for the MFU estimate."""
    embedding = model.cfg.vocab_size * model.cfg.hidden_size
    total = 0
    for p in model.parameters():
        if p is not model.embedding.weight:
            total += p.numel() * (tp_size if getattr(p, "tensor_parallel", False) else 1)
    return {"embedding": embedding, "non_embedding": total, "total": total + embedding}
