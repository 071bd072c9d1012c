"""The dedup stage's configuration (the `dedup` section of a run config)."""

from __future__ import annotations

import dataclasses

from common.errors import ConfigError
from kernels.minhash import HASHES, SCHEMES


@dataclasses.dataclass
class DedupConfig:
    """Exact and near-duplicate removal; see docs/DEDUP.md for what each knob does."""

    enabled: bool = True
    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    """Jaccard similarity of word/character 5-gram sets at and above which documents are near duplicates."""
    num_perm: int = 128
    seed: int = 1
    scheme: str = "affine32"
    """datasketch permutation scheme: affine32 (datasketch 2.0's default), affine64 or legacy."""
    hash: str = "fast"
    """Shingle hash: fast (vectorized, glm-corpus's own), xxhash, or sha1 (datasketch's default)."""
    ngram: int = 5
    bands: int = 0
    """Bands x rows of the LSH; 0 and 0 choose them for the threshold (pipeline.dedup.lsh)."""
    rows: int = 0
    false_positive_weight: float = 0.5
    false_negative_weight: float = 0.5
    verify: bool = True
    """Keep a candidate pair only if its estimated Jaccard (equal signature rows / num_perm) >= threshold."""
    partitions: int = 8
    """Least number of shuffle partitions (of the digests, and of the band keys); more are used when a
    partition would exceed `partition_mb`, so memory per reduce task stays bounded as the corpus grows."""
    partition_mb: int = 64
    """Shuffle MB per reduce task (32 B per document for exact dedup, 12 B per document and band for
    near dedup) above which the number of partitions grows with the corpus."""
    chunk_docs: int = 32768
    """Documents per scatter chunk of `run_near_dedup` (the in-process reference driver); the ingest's
    global pass maps one work shard per task instead."""
    source_priority: list[str] = dataclasses.field(default_factory=lambda: ["wudao", "pile", "crawl"])
    """Order in which sources are numbered for dedup: an exact duplicate keeps the copy of the first
    source listed (curated corpora before crawled copies), and near-duplicate ties go the same way.
    Sources not listed come after, by name."""
    distributed_min_docs: int = 500_000
    """Below this many documents the global pass and the final-shard writes run their tasks in the driver
    process (one at a time, memory bounded per task): Ray tasks would cost more than they save."""

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"dedup.scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if self.hash not in HASHES:
            raise ConfigError(f"dedup.hash must be one of {', '.join(HASHES)}, got {self.hash!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"dedup.threshold must be strictly between 0 and 1, got {self.threshold}")
        if self.num_perm < 1 or self.partitions < 1 or self.partition_mb < 1 or self.chunk_docs < 1 or self.ngram < 1:
            raise ConfigError("dedup.num_perm, partitions, partition_mb, chunk_docs and ngram must be positive")
        if bool(self.bands) != bool(self.rows) or self.bands * self.rows > self.num_perm:
            raise ConfigError(
                f"dedup.bands x rows = {self.bands} x {self.rows}: set both (product <= num_perm) or neither"
            )
