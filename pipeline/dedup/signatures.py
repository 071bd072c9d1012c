"""MinHash signatures of documents as the dedup config asks for them (one object per worker)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kernels.minhash import MinHasher
from pipeline.dedup.config import DedupConfig


class SignatureMaker:
    """Wraps `kernels.minhash.MinHasher` with the config's num_perm, seed, scheme, hash and n-gram size.

    Signatures are uint32 for the affine32 and legacy schemes (legacy values are below 2**32 although
    datasketch stores them as uint64) and uint64 for affine64.
    """

    def __init__(self, config: DedupConfig | None = None) -> None:
        self.config = config or DedupConfig()
        c = self.config
        self.hasher = MinHasher(num_perm=c.num_perm, seed=c.seed, scheme=c.scheme, hash=c.hash, ngram=c.ngram)
        self.dtype = np.dtype(np.uint64 if c.scheme == "affine64" else np.uint32)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), num_perm] signatures of the texts."""
        return self.hasher.signatures(texts).astype(self.dtype, copy=False)
