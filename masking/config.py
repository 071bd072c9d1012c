"""`MaskingConfig`: every knob of the masking stage, one typed dataclass (DESIGN §4).

    cfg = load_config(MaskingConfig, "run.yaml", section="masking", overrides=["seed=7", "mask_ratio=0.2"])

The output depends only on this config and the input shards: two runs with equal configs write
byte-identical training shards whatever `workers` is (it and the other worker settings, `ray_min_tokens` and
`object_store_mb`, change nothing).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from common.errors import ConfigError

MAX_ROW_LENGTH = 65_535
"""Row-relative offsets are stored as uint16 in the training-shard recipe."""
RAY_MIN_TOKENS = 150_000_000
"""Text tokens below which `workers > 1` still masks in the driver. Measured on the 2-core development machine
(bench corpus of benchmarks/bench_scale.py, ~0.32M text tokens per MB of raw text, Ray already started, other
load ~4-5): one process took ~0.4 s + 74 ns/token, 2 Ray workers ~3.7 s + 53 ns/token (each worker process
starts, imports and opens the token store), so Ray wins from ~150M tokens (~470 MB of raw text; at 28M
tokens Ray took 5.1-5.3 s against 2.1-2.9 s). docs/SCALE.md's unloaded fits (0.21 s + 72.8 MB/s in process,
2.09 s + 2 x 45.8 MB/s on 2 workers) put the crossover higher still (~670 MB raw). More workers move it down:
set `ray_min_tokens` lower on a machine with many cores."""


@dataclasses.dataclass
class MaskingConfig:
    """How text and MIP examples become 2048-token GLM rows."""

    seed: int = 1234
    """Masking seed: modes, span lengths and places, [gMASK] suffix lengths, Part-B order."""
    shuffle_seed: int = 0
    """Document order (per-source permutations, MIP example order). Kept apart from `seed` so a re-mask with a
    new seed sees the same document stream: different masks, same text."""
    row_length: int = 2048
    rows: int | None = None
    """Rows to write. None: one pass over `epochs` x all text tokens, the last row padded."""
    epochs: float = 1.0
    cross_document: bool = False
    """GLM-130B's layout: one segment per text row, documents separated by their <eod>."""

    mask_fraction: float = 0.3
    """Share of text tokens in [MASK] segments; the rest are in [gMASK] segments."""
    mask_ratio: float = 0.15
    """Fraction of a [MASK] window the spans cover."""
    span_lambda: float = 3.0
    """Span lengths ~ Poisson(span_lambda) truncated to 1..span_max_length."""
    span_max_length: int = 39
    gmask_suffix_min_fraction: float = 0.25
    """[gMASK] suffix length s ~ uniform on [max(1, ceil(f n)), max(that, n - gmask_min_prefix)]."""
    gmask_min_prefix: int = 2

    mip_share: float | None = None
    """Share of all row tokens in MIP segments. None: the MIP plan's `token_ratio`, else 0.05."""
    mip_repeat: bool = False
    """Start the MIP examples over when they run out (False: later rows are text only, and the stats say so;
    repeating would exceed the MIP caps the audit checks)."""
    mip_min_prompt: int = 1024
    """Truncation of an example longer than a row: its prompt keeps at least min(prompt, this) tokens."""
    source_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    """Relative token share of each text source; empty = natural (each source's own token count)."""

    rows_per_block: int = 128
    """Rows built together (one RNG stream per block, keyed by (seed, block)): the unit of vectorization."""
    rows_per_shard: int = 4096
    """Rows per training shard (a multiple of rows_per_block); the unit of parallel work."""
    workers: int = 1
    ray_min_tokens: int = RAY_MIN_TOKENS
    """With workers > 1, a run with fewer text tokens to mask than this (epochs x the sources' text tokens, or
    rows x row_length with `rows`) builds its shards in this process instead of Ray tasks: Ray's start-up and
    each task worker's imports and store opening cost more than they save. 0 always uses Ray. Changes nothing
    in the output."""
    object_store_mb: int = 256

    def validate(self) -> MaskingConfig:
        """Raise ConfigError naming the first bad value; return self."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"masking config: {message}")

        need(16 <= self.row_length <= MAX_ROW_LENGTH, f"row_length must be in 16..{MAX_ROW_LENGTH}")
        need(self.rows is None or self.rows >= 1, "rows must be >= 1")
        need(self.epochs > 0, "epochs must be > 0")
        need(0.0 <= self.mask_fraction <= 1.0, "mask_fraction must be in [0, 1]")
        need(0.0 < self.mask_ratio < 0.5, "mask_ratio must be in (0, 0.5)")
        need(self.span_lambda > 0, "span_lambda must be > 0")
        need(1 <= self.span_max_length <= 1000, "span_max_length must be in 1..1000")
        need(0.0 <= self.gmask_suffix_min_fraction <= 1.0, "gmask_suffix_min_fraction must be in [0, 1]")
        need(self.gmask_min_prefix >= 0, "gmask_min_prefix must be >= 0")
        need(self.mip_share is None or 0.0 <= self.mip_share < 1.0, "mip_share must be in [0, 1)")
        need(self.mip_min_prompt >= 0, "mip_min_prompt must be >= 0")
        need(
            all(w >= 0 and math.isfinite(w) for w in self.source_weights.values()),
            "source_weights must be finite and >= 0",
        )
        need(self.rows_per_block >= 1, "rows_per_block must be >= 1")
        need(
            self.rows_per_shard >= self.rows_per_block and self.rows_per_shard % self.rows_per_block == 0,
            "rows_per_shard must be a positive multiple of rows_per_block",
        )
        need(self.workers >= 1, "workers must be >= 1")
        need(self.ray_min_tokens >= 0, "ray_min_tokens must be >= 0")
        return self

    def output_defining(self) -> dict[str, Any]:
        """The fields the output depends on (everything but the worker settings), for stats and manifests."""
        data = dataclasses.asdict(self)
        data.pop("workers")
        data.pop("ray_min_tokens")
        data.pop("object_store_mb")
        return data
