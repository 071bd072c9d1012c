"""`MaskingConfig`: every knob of the masking stage, one typed dataclass (DESIGN §4).

    cfg = load_config(MaskingConfig, "run.yaml", section="masking", overrides=["seed=7", "mask_ratio=0.2"])

The output depends only on this config and the input shards: two runs with equal configs write
byte-identical training shards whatever `workers` is (it is the one field that changes nothing).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from common.errors import ConfigError

MAX_ROW_LENGTH = 65_535
"""Row-relative offsets are stored as uint16 in the training-shard recipe."""


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
        return self

    def output_defining(self) -> dict[str, Any]:
        """The fields the output depends on (everything but the worker settings), for stats and manifests."""
        data = dataclasses.asdict(self)
        data.pop("workers")
        data.pop("object_store_mb")
        return data
