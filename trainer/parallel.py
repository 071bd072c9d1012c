"""Megatron-style tensor parallelism (TP) and data parallelism (DP) over torch.distributed.

Layout. torchrun starts WORLD_SIZE = tp * dp processes; global rank r has tp_rank = r % tp and
dp_rank = r // tp, so the TP ranks of one model replica are neighbours (one node on a cluster, where the
bandwidth is). Process groups: one TP group per replica, one DP group per TP rank. Backend: NCCL on CUDA,
gloo on CPU.

Layers (each holds only its rank's slice; the full weight is drawn from the seeded generator on every rank
and sliced, so a TP=2 model starts as exactly the TP=1 model cut in two):

- `ColumnParallelLinear`: the output features are split; input is replicated. Identity forward / all-reduce
  backward on the input (`copy_to_tensor_parallel`). Used for QKV (heads split) and the GeGLU input.
- `RowParallelLinear`: the input features are split (the column-parallel output feeds it directly); the partial
  products are summed with an all-reduce forward / identity backward (`reduce_from_tensor_parallel`); the bias
  is added once, after the sum. Used for the attention output and the GeGLU output.
- `VocabParallelEmbedding`: each rank holds a contiguous range of vocabulary rows; ids outside the range give
  zero rows and the all-reduce assembles the lookup.
- `parallel_logits` + `vocab_parallel_cross_entropy`: the tied output layer produces only the rank's vocabulary
  slice of the logits; the loss needs three all-reduces of [tokens]-sized vectors (max, sum of exp, target
  logit) and never gathers the [tokens, vocab] logits. `vocab_parallel_output_loss` is the same computation a
  chunk of tokens at a time (what the model uses: the full logits of a 150k vocabulary do not fit in memory).

Gradients: replicated parameters (LayerNorms, row-parallel biases) receive identical gradients on every TP
rank (their inputs and output gradients are replicated), so they need no TP reduction; the global gradient
norm counts them once (`clip_grad_norm`). DP gradients are summed over the DP group in one flat all-reduce
(the loss is already normalised by the global number of loss tokens, see trainer.train).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import ConfigError

TENSOR_PARALLEL_ATTR = "tensor_parallel"
"""Set to True on parameters that are sharded across TP ranks (each rank holds a different slice)."""


# --------------------------------------------------------------------------------------------- process groups


@dataclasses.dataclass(frozen=True)
class ParallelContext:
    """Where this process sits in the tp x dp grid, and the groups to talk to its neighbours."""

    tp_size: int = 1
    tp_rank: int = 0
    dp_size: int = 1
    dp_rank: int = 0
    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    tp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Global rank 0: the rank that logs and writes shared files."""
        return self.rank == 0


def init_parallel(tp: int = 1, dp: int | None = None, device: str = "auto") -> ParallelContext:
    """Join torchrun's process group (env RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT) and build TP/DP groups.

    Without torchrun's variables (or with WORLD_SIZE=1) this is a single process: no process group at all.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if world_size % tp:
        raise ConfigError(f"world size {world_size} is not a multiple of tp {tp}")
    if dp is not None and dp * tp != world_size:
        raise ConfigError(f"tp {tp} x dp {dp} = {tp * dp} processes, but torchrun started {world_size}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if world_size == 1:
        return ParallelContext(device=torch_device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=10),
            device_id=torch_device if use_cuda else None,
        )
    dp_size = world_size // tp
    tp_group = dp_group = None
    # Every rank must create every group, in the same order.
    for replica in range(dp_size):
        group = dist.new_group(list(range(replica * tp, (replica + 1) * tp)))
        if rank // tp == replica:
            tp_group = group
    for shard in range(tp):
        group = dist.new_group(list(range(shard, world_size, tp)))
        if rank % tp == shard:
            dp_group = group
    return ParallelContext(
        tp_size=tp,
        tp_rank=rank % tp,
        dp_size=dp_size,
        dp_rank=rank // tp,
        rank=rank,
        world_size=world_size,
        local_world_size=local_world_size,
        tp_group=tp_group if tp > 1 else None,
        dp_group=dp_group if dp_size > 1 else None,
        device=torch_device,
    )


def destroy_parallel() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(
    tensor: Tensor, group: dist.ProcessGroup | None, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
) -> Tensor:
    """In-place all-reduce over `group`; a no-op when the group is None (size 1)."""
    if group is not None:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


# ------------------------------------------------------------------------------- autograd for the collectives


class _CopyToTensorParallel(torch.autograd.Function):
    """Megatron's `f`: identity forward; backward sums the input gradient over TP ranks."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, group: dist.ProcessGroup | None
    ) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return all_reduce(grad.contiguous().clone(), ctx.group), None


class _ReduceFromTensorParallel(torch.autograd.Function):
    """Megatron's `g`: forward sums partial results over TP ranks; identity backward."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, group: dist.ProcessGroup | None
    ) -> Tensor:
        return all_reduce(x.contiguous().clone(), group)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def copy_to_tensor_parallel(x: Tensor, ctx: ParallelContext) -> Tensor:
    return _CopyToTensorParallel.apply(x, ctx.tp_group) if ctx.tp_group is not None else x


def reduce_from_tensor_parallel(x: Tensor, ctx: ParallelContext) -> Tensor:
    return _ReduceFromTensorParallel.apply(x, ctx.tp_group) if ctx.tp_group is not None else x


# --------------------------------------------------------------------------------------------------- layers


def xavier_std(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    """Standard deviation of Xavier (Glorot) normal initialisation."""
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def _draw(shape: Sequence[int], std: float, generator: torch.Generator) -> Tensor:
    """A full-size normal(0, std) tensor from the shared generator (on CPU: identical on every rank)."""
    return torch.randn(*shape, generator=generator) * std


def _mark_sharded(parameter: nn.Parameter) -> nn.Parameter:
    setattr(parameter, TENSOR_PARALLEL_ATTR, True)
    return parameter


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W's output rows split across TP ranks; the output stays split.

    `chunks` > 1 treats the output as that many equal blocks (e.g. [q; k; v] or [gate; value]) and gives each
    rank its slice of every block, so the local output is again `chunks` blocks of the rank's columns.
    `init_std` is one std per chunk (or one for all).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ctx: ParallelContext,
        generator: torch.Generator,
        init_std: float | Sequence[float],
        chunks: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if out_features % (chunks * ctx.tp_size):
            raise ConfigError(
                f"{out_features} output features do not split into {chunks} chunks x tp {ctx.tp_size}"
            )
        stds = [init_std] * chunks if isinstance(init_std, (int, float)) else list(init_std)
        chunk_size = out_features // chunks
        local_chunk = chunk_size // ctx.tp_size
        rows = slice(ctx.tp_rank * local_chunk, (ctx.tp_rank + 1) * local_chunk)
        full = [_draw((chunk_size, in_features), std, generator) for std in stds]
        self.weight = _mark_sharded(nn.Parameter(torch.cat([w[rows] for w in full])))
        self.bias = _mark_sharded(nn.Parameter(torch.zeros(local_chunk * chunks))) if bias else None
        self.ctx = ctx

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(copy_to_tensor_parallel(x, self.ctx), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W's input columns split across TP ranks; partial sums all-reduced, bias added once."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ctx: ParallelContext,
        generator: torch.Generator,
        init_std: float,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_features % ctx.tp_size:
            raise ConfigError(f"{in_features} input features do not split across tp {ctx.tp_size}")
        local = in_features // ctx.tp_size
        full = _draw((out_features, in_features), init_std, generator)
        self.weight = _mark_sharded(
            nn.Parameter(full[:, ctx.tp_rank * local : (ctx.tp_rank + 1) * local].clone())
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None  # replicated
        self.ctx = ctx

    def forward(self, x: Tensor) -> Tensor:
        y = reduce_from_tensor_parallel(F.linear(x, self.weight), self.ctx)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Embedding whose vocabulary rows are split in contiguous ranges across TP ranks.

    The table has `padded_size` rows (a multiple of 128 x TP, Megatron's rule); the rows past `vocab_size` are
    padding: initialised to zero without touching the generator, and excluded from the softmax of the output
    layer, so the model is the same function whatever the padding (and therefore whatever the TP size).
    """

    def __init__(
        self,
        vocab_size: int,
        padded_size: int,
        hidden_size: int,
        ctx: ParallelContext,
        generator: torch.Generator,
        init_std: float,
    ) -> None:
        super().__init__()
        if padded_size % ctx.tp_size or padded_size < vocab_size:
            raise ConfigError(f"padded vocabulary {padded_size} does not split across tp {ctx.tp_size}")
        local = padded_size // ctx.tp_size
        self.vocab_start = ctx.tp_rank * local
        self.vocab_end = self.vocab_start + local
        self.real_local_rows = max(0, min(vocab_size, self.vocab_end) - self.vocab_start)
        """Rows of this rank's slice that are real words (the rest is padding)."""
        full = torch.cat(
            [
                _draw((vocab_size, hidden_size), init_std, generator),
                torch.zeros(padded_size - vocab_size, hidden_size),
            ]
        )
        self.weight = _mark_sharded(nn.Parameter(full[self.vocab_start : self.vocab_end].clone()))
        self.ctx = ctx

    def forward(self, ids: Tensor) -> Tensor:
        if self.ctx.tp_size == 1:
            return F.embedding(ids, self.weight)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local_ids = (ids - self.vocab_start).masked_fill(outside, 0)
        rows = F.embedding(local_ids, self.weight).masked_fill(outside[..., None], 0.0)
        return reduce_from_tensor_parallel(rows, self.ctx)


def parallel_logits(hidden: Tensor, embedding: VocabParallelEmbedding) -> Tensor:
    """The tied output layer: this rank's vocabulary slice of the logits, [..., vocab / tp]."""
    return F.linear(copy_to_tensor_parallel(hidden, embedding.ctx), embedding.weight)


def _softmax_statistics(
    logits: Tensor, targets: Tensor, vocab_start: int, real_rows: int, group: dist.ProcessGroup | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loss per token and this rank's softmax slice from local logits [N, V/tp] (float32, overwritten).

    Three all-reduces of [N] vectors assemble the full-vocabulary statistics: the max (for stability), the sum
    of exponentials, and the target's logit (owned by exactly one rank). Padding columns (at and after
    `real_rows`) get -inf: they are not words and take no probability.
    """
    if real_rows < logits.shape[-1]:
        logits[:, real_rows:] = float("-inf")
    logits_max = all_reduce(logits.max(dim=-1).values, group, dist.ReduceOp.MAX)
    logits.sub_(logits_max[:, None])
    local_targets = targets - vocab_start
    outside = (local_targets < 0) | (local_targets >= logits.shape[-1])
    local_targets = local_targets.masked_fill(outside, 0)
    rows = torch.arange(logits.shape[0], device=logits.device)
    target_logits = all_reduce(logits[rows, local_targets].masked_fill(outside, 0.0), group)
    softmax = logits.exp_()
    sum_exp = all_reduce(softmax.sum(dim=-1), group)
    softmax.div_(sum_exp[:, None])
    return sum_exp.log() - target_logits, softmax, local_targets, outside


def _subtract_one_hot(softmax: Tensor, local_targets: Tensor, outside: Tensor) -> Tensor:
    """d loss / d logits = softmax - one_hot(target), the one-hot only on the rank that owns the target."""
    rows = torch.arange(softmax.shape[0], device=softmax.device)
    softmax[rows, local_targets] -= (~outside).to(softmax.dtype)
    return softmax


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy over logits split along the vocabulary; float32 throughout."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        local_logits: Tensor,
        targets: Tensor,
        vocab_start: int,
        real_rows: int,
        group: dist.ProcessGroup | None,
    ) -> Tensor:
        logits = local_logits.float().clone()  # overwritten in place below
        loss, softmax, local_targets, outside = _softmax_statistics(
            logits, targets, vocab_start, real_rows, group
        )
        ctx.save_for_backward(softmax, local_targets, outside)
        ctx.input_dtype = local_logits.dtype
        return loss

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        softmax, local_targets, outside = ctx.saved_tensors
        grad = _subtract_one_hot(softmax, local_targets, outside)  # the saved buffer is not needed again
        grad.mul_(grad_loss[:, None])
        return grad.to(ctx.input_dtype), None, None, None, None


def vocab_parallel_cross_entropy(
    local_logits: Tensor, targets: Tensor, embedding: VocabParallelEmbedding
) -> Tensor:
    """Per-token loss [N] from this rank's logits [N, vocab/tp] without gathering the full logits."""
    return _VocabParallelCrossEntropy.apply(
        local_logits, targets, embedding.vocab_start, embedding.real_local_rows, embedding.ctx.tp_group
    )


class _ChunkedOutputLoss(torch.autograd.Function):
    """Sum of token losses of the tied output layer, computed a chunk of tokens at a time.

    Logits of a 150,528-word vocabulary are the largest tensor of a small model ([tokens, V/tp] float32: 2.4 GB
    for 4,096 loss tokens). Here at most `chunk_tokens` rows of them exist at once, and the gradients with respect
    to the hidden states and the weight are computed while the chunk is alive; the loss is a sum, so backward only
    scales them by the incoming scalar gradient. Same maths as `parallel_logits` + `vocab_parallel_cross_entropy`.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        vocab_start: int,
        real_rows: int,
        group: dist.ProcessGroup | None,
        chunk_tokens: int,
    ) -> Tensor:
        needs_grad = hidden.requires_grad or weight.requires_grad
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = (
            torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if needs_grad else None
        )
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad else None
        )
        for begin in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(begin, begin + chunk_tokens)
            chunk = hidden[rows]
            logits = F.linear(chunk, weight).float()  # under autocast the matmul runs in 16 bits
            loss, softmax, local_targets, outside = _softmax_statistics(
                logits, targets[rows], vocab_start, real_rows, group
            )
            total += loss.sum()
            if needs_grad:
                grad_logits = _subtract_one_hot(softmax, local_targets, outside)
                grad_hidden[rows] = grad_logits @ weight.to(grad_logits.dtype)
                grad_weight.addmm_(grad_logits.t(), chunk.to(grad_logits.dtype))
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_total: Tensor) -> tuple[Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors  # used once: scaled in place
        return (
            grad_hidden.mul_(grad_total).to(ctx.dtypes[0]),
            grad_weight.mul_(grad_total).to(ctx.dtypes[1]),
            None,
            None,
            None,
            None,
            None,
        )


def vocab_parallel_output_loss(
    hidden: Tensor, targets: Tensor, embedding: VocabParallelEmbedding, chunk_elements: int = 1 << 24
) -> Tensor:
    """Summed cross-entropy of the tied output layer for hidden states [N, d] and targets [N].

    Chunks hold at most `chunk_elements` logits (64 MB in float32) per rank.
    """
    chunk_tokens = max(1, chunk_elements // embedding.weight.shape[0])
    return _ChunkedOutputLoss.apply(
        copy_to_tensor_parallel(hidden, embedding.ctx),
        embedding.weight,
        targets,
        embedding.vocab_start,
        embedding.real_local_rows,
        embedding.ctx.tp_group,
        chunk_tokens,
    )


# --------------------------------------------------------------------------------------------------- gradients


def is_sharded(parameter: Tensor) -> bool:
    return bool(getattr(parameter, TENSOR_PARALLEL_ATTR, False))


def all_reduce_gradients(parameters: Iterable[nn.Parameter], ctx: ParallelContext) -> None:
    """Sum gradients over the DP group in one flat buffer (one collective instead of one per tensor)."""
    if ctx.dp_group is None:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce(flat, ctx.dp_group)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def global_grad_norm(parameters: Iterable[nn.Parameter], ctx: ParallelContext) -> Tensor:
    """L2 norm of the whole model's gradient: sharded parameters summed over TP, replicated ones counted once.

    DP replicas hold identical (already all-reduced) gradients, so no DP reduction is needed. The result is
    identical on every rank, so every rank takes the same skip/clip decision.
    """
    sharded = torch.zeros((), dtype=torch.float32, device=ctx.device)
    replicated = torch.zeros((), dtype=torch.float32, device=ctx.device)
    for p in parameters:
        if p.grad is None:
            continue
        squares = p.grad.detach().float().pow(2).sum()
        if is_sharded(p):
            sharded += squares
        else:
            replicated += squares
    all_reduce(sharded, ctx.tp_group)
    return (sharded + replicated).sqrt()


def clip_gradients(parameters: Sequence[nn.Parameter], max_norm: float, norm: Tensor) -> None:
    """Scale gradients so that their global norm is at most max_norm (no-op if the norm is not finite)."""
    if max_norm <= 0 or not torch.isfinite(norm):
        return
    coefficient = max_norm / (float(norm) + 1e-6)
    if coefficient < 1.0:
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(coefficient)
