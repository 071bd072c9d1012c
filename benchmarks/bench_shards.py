"""Token-shard random reads: `shards.TokenShards` vs Megatron-core's `IndexedDataset` on the same files."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import best_time
from shards.token_shards import TokenShards, TokenShardWriter


def run(quick: bool = False) -> list[dict[str, Any]]:
    documents = 2_000 if quick else 20_000
    reads = 20_000 if quick else 200_000
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 4000, size=documents)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "bench-00000")
        with TokenShardWriter(prefix) as writer:
            for i, n in enumerate(lengths):
                writer.add(rng.integers(20000, 150000, size=n, dtype=np.int32), doc_id=str(i), source="b",
                           input_file="x")
        order = rng.integers(0, documents, size=reads)
        ours = TokenShards(prefix)

        def read_ours() -> int:
            total = 0
            for i in order:
                total += int(ours[i][0])
            return total

        for i in range(documents):  # warm the page cache for both readers
            ours[i].sum()
        t_ours = best_time(read_ours)
        row: dict[str, Any] = {"case": f"random document reads ({reads:,} of {documents:,} docs)",
                               "ours reads/s": reads / t_ours}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                from megatron.core.datasets.indexed_dataset import IndexedDataset
            except ImportError:
                IndexedDataset = None
        if IndexedDataset is not None:
            theirs = IndexedDataset(prefix)

            def read_theirs() -> int:
                total = 0
                for i in order:
                    total += int(theirs[int(i)][0])
                return total

            assert read_theirs() == read_ours()
            t_theirs = best_time(read_theirs)
            row["megatron reads/s"] = reads / t_theirs
            row["ratio"] = t_theirs / t_ours
        rows.append(row)
    return rows


if __name__ == "__main__":
    from benchmarks.common import format_table

    print(format_table(run()))
