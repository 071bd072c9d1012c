"""Global deduplication: exact (xxh3-128 of the normalized text) and near (MinHash LSH), across sources.

- `pipeline.dedup.exact`: digests, first occurrence in the deterministic document order, partitioned.
- `pipeline.dedup.lsh`: bands x rows for a threshold, the S-curve, `explain()` for `dedup --explain`.
- `pipeline.dedup.cluster`: band keys, the shuffle into partitions, star candidate edges, verification,
  partitioned union-find, the survivor rule, and the reference driver `run_near_dedup`.
- `pipeline.dedup.signatures`: MinHash signatures per the config (kernel in `kernels.minhash`).

docs/DEDUP.md describes the semantics, the parameter choice and the memory model.
"""

from pipeline.dedup.cluster import (
    ArraySignatures,
    ConcatenatedSignatures,
    NearDedupResult,
    band_keys,
    candidate_edges,
    choose_survivors,
    components,
    connected_components,
    merge_forests,
    run_near_dedup,
    scatter_band_keys,
    spanning_forest,
    verify_edges,
)
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.exact import ExactDedupResult, ExactDedupStep, exact_duplicates, text_hash, text_keys
from pipeline.dedup.lsh import candidate_probability, explain, optimal_bands_rows, optimal_params

__all__ = [
    "ArraySignatures",
    "ConcatenatedSignatures",
    "DedupConfig",
    "ExactDedupResult",
    "ExactDedupStep",
    "NearDedupResult",
    "band_keys",
    "candidate_edges",
    "candidate_probability",
    "choose_survivors",
    "components",
    "connected_components",
    "exact_duplicates",
    "explain",
    "merge_forests",
    "optimal_bands_rows",
    "optimal_params",
    "run_near_dedup",
    "scatter_band_keys",
    "spanning_forest",
    "text_hash",
    "text_keys",
    "verify_edges",
]
