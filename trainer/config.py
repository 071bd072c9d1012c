"""The reference trainer's configuration: one typed dataclass, loaded like every other stage's.

    cfg = load_config(TrainConfig, "run.yaml", section="train", overrides=["model.num_layers=4"])

Defaults are the tiny model the demo trains on two CPU cores (2 layers, hidden 64, 4 heads, the full 150,528-row
GLM-130B vocabulary) with GLM-130B's optimiser choices (AdamW 0.9/0.95, weight decay 0.1, clip 1.0, warm-up
then a 10x cosine decay). Everything the architecture does differently from a textbook transformer is a field of
`ModelConfig`, so a reader can see the knobs in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Literal

from common.errors import ConfigError
from pipeline.special_tokens import GMASK, VOCAB_SIZE

Precision = Literal["fp32", "bf16", "fp16"]


@dataclasses.dataclass
class ModelConfig:
    """The GLM architecture (DESIGN §7); every GLM-130B choice is a field here."""

    vocab_size: int = VOCAB_SIZE
    """Rows of the embedding before padding. GLM-130B: 150,528 (ids up to 150,087 occur). Tests may use a
    smaller vocabulary with remapped ids; the real trainer keeps the default."""
    pad_vocab_to_multiple: int = 128
    """The embedding is padded to a multiple of this times the TP size (Megatron's rule); padding rows are zero
    and excluded from the softmax, so the padding does not change the model."""
    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 4
    ffn_hidden_size: int | None = None
    """GeGLU width; None = 8/3 of hidden rounded up to a multiple of 64 (GLM-130B: 32,768 for 12,288)."""
    position_encoding: Literal["2d", "1d"] = "2d"
    """'2d': half of each head rotated by position_ids, half by block_position_ids (GLM). '1d': GLM-130B's."""
    rope_base: float = 10_000.0
    layernorm_eps: float = 1e-5
    deepnorm_alpha: float | None = None
    """Residual scale of DeepNorm, x = LN(alpha * x + f(x)); None = (2N)^0.5 as GLM-130B (N layers)."""
    deepnorm_beta: float | None = None
    """Xavier-normal gain of the value, attention-output and FFN weights; None = (2N)^-0.5 as GLM-130B."""
    embedding_init_std: float = 0.02
    embedding_grad_shrink: float = 0.1
    """GLM-130B's embedding gradient shrink: the embedding receives this fraction of its gradient."""
    isolate_segments: bool = True
    """True: packed segments never see each other (DESIGN §4). False: GLM's behaviour, the row is one block
    structure: every token sees all Part-A tokens of the row, Part B is causal over the row's Part-B tokens."""
    attention_backend: Literal["auto", "sdpa", "flex", "naive"] = "auto"
    """'auto' = FlexAttention block mask on CUDA, SDPA with a boolean mask elsewhere; 'naive' = matmul-softmax."""
    gmask_token_id: int = GMASK
    """Only used by the 1D positions: a Part-B token of a [gMASK] segment counts on from the mask position."""

    def __post_init__(self) -> None:
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = -(-8 * self.hidden_size // (3 * 64)) * 64  # ceil(8d/3) to a multiple of 64
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        rotary_multiple = 4 if self.position_encoding == "2d" else 2
        if self.head_dim % rotary_multiple:
            raise ConfigError(
                f"model.head_dim {self.head_dim} must be a multiple of {rotary_multiple} for "
                f"{self.position_encoding} RoPE; change hidden_size or num_heads"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def alpha(self) -> float:
        return self.deepnorm_alpha if self.deepnorm_alpha is not None else (2 * self.num_layers) ** 0.5

    @property
    def beta(self) -> float:
        return self.deepnorm_beta if self.deepnorm_beta is not None else (2 * self.num_layers) ** -0.5

    def padded_vocab_size(self, tp: int) -> int:
        multiple = self.pad_vocab_to_multiple * tp
        return -(-self.vocab_size // multiple) * multiple


@dataclasses.dataclass
class TrainConfig:
    """Everything `glm-corpus train` needs besides the data path; section `train` of a YAML/TOML file."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)

    # parallel layout: world size = tp * dp; dp None = WORLD_SIZE // tp under torchrun, 1 otherwise
    tp: int = 1
    dp: int | None = None

    # batch and data
    steps: int = 40
    global_batch_size: int = 2
    """Rows per optimizer step across all DP ranks (GLM-130B: 4,224)."""
    micro_batch_size: int = 1
    """Rows per forward/backward on one DP rank; gradient accumulation = global / (micro * dp)."""
    seq_length: int | None = None
    """None = the rows' own length (2048 for training shards); a smaller value truncates rows (segments are cut
    at the boundary), for quick experiments."""
    data_seed: int = 1234
    """Seed of the sampler's per-epoch permutation (`trainer.data.rows_for_step`)."""
    prefetch: int = 2
    """Steps the background loader keeps ready."""

    # optimiser (GLM-130B: AdamW 0.9/0.95, wd 0.1, clip 1.0, lr 8e-5 warm-up from 1e-7, 10x cosine decay)
    lr: float = 3e-3
    min_lr: float | None = None
    """None = lr / 10 (GLM-130B's 10x cosine decay)."""
    warmup_init_lr: float = 1e-7
    warmup_steps: int = 4
    decay_steps: int | None = None
    """Cosine decay length after warm-up; None = steps - warmup_steps."""
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0

    # precision
    precision: Precision = "fp32"
    """'fp16' (GLM-130B) uses dynamic loss scaling; 'bf16' and 'fp16' run under autocast over fp32 master weights."""
    initial_loss_scale: float = 2.0**16
    loss_scale_window: int = 1000
    """Grow the fp16 loss scale x2 after this many consecutive steps without overflow."""
    min_loss_scale: float = 1.0

    # bookkeeping
    seed: int = 1234
    """Seed of the parameter initialisation (identical on every rank, whatever the TP size)."""
    save_interval: int = 0
    """Save a checkpoint every N steps (0 = only at the end) when an output directory is given."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0
    """torch intra-op threads per rank on CPU; 0 = CPU cores / local ranks."""
    peak_tflops: float | None = None
    """Peak of one rank's device for the MFU estimate; None = 989 (H100 bf16 dense) on CUDA, and on CPU
    0.1 TFLOP/s per thread (2 FMA units x 8 fp32 lanes x 2 flops x ~3 GHz; a 2048^3 fp32 matmul reaches ~67
    GFLOP/s on one thread of this machine). The assumption is stated in the summary."""

    def __post_init__(self) -> None:
        for name in ("steps", "global_batch_size", "micro_batch_size", "tp", "prefetch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.model.num_heads % self.tp:
            raise ConfigError(f"model.num_heads {self.model.num_heads} is not divisible by tp {self.tp}")
        if self.model.ffn_hidden_size % self.tp:
            raise ConfigError(
                f"model.ffn_hidden_size {self.model.ffn_hidden_size} is not divisible by tp {self.tp}"
            )

    @property
    def final_lr(self) -> float:
        return self.min_lr if self.min_lr is not None else self.lr / 10

    def grad_accumulation(self, dp: int) -> int:
        """Micro-batches per step on each DP rank; the global batch must split evenly."""
        per_step = self.micro_batch_size * dp
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size} x dp {dp}"
            )
        return self.global_batch_size // per_step


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags shared by `glm-corpus train` and `python -m trainer.train`."""
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--train", metavar="DIR", help="training shards written by `glm-corpus mask`")
    data.add_argument(
        "--synthetic", metavar="ROWS", type=int, help="train on ROWS synthetic GLM rows instead"
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML/TOML file; its `train` section is a TrainConfig"
    )
    parser.add_argument("--tp", type=int, help="tensor-parallel size (default 1)")
    parser.add_argument("--dp", type=int, help="data-parallel size (default: world size / tp)")
    parser.add_argument("--steps", type=int, help="optimizer steps to run in total (default from the config)")
    parser.add_argument("--out", metavar="DIR", help="checkpoint directory")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a config key, e.g. model.num_layers=4",
    )
    if not any("--json" in action.option_strings for action in parser._actions):
        parser.add_argument("--json", action="store_true", help="one JSON line per step, then the summary")
