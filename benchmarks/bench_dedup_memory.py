"""Peak memory per document of near-dedup clustering: ours (partitioned) vs datasketch `MinHashLSH`.

Each case runs in a fresh subprocess. Its peak resident memory (VmHWM, reset through /proc/self/clear_refs
just before the measured step) minus its resident memory at that moment, divided by the number of
documents, is the figure reported. The signatures come from a synthetic `SignatureSource` that computes
any row from its doc index (planted near-duplicate families, 128 rows), so the input itself costs nothing
and only what the clustering allocates is counted. datasketch is measured on fewer documents (its index
is a dict of Python objects) and its figure covers the index only: each MinHash is dropped after insert.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import numpy as np

from kernels.minhash import fmix64

NUM_PERM = 128


class SyntheticSignatures:
    """Signatures of n docs computed on demand from the doc index (a `SignatureSource`).

    About 25% of docs are near copies of an earlier doc (within the previous 1000), with 0-30% of their
    rows changed, so clusters of every size and similarity occur, as in web data.
    """

    def __init__(self, n_docs: int, num_perm: int = NUM_PERM, seed: int = 0) -> None:
        self.n_docs = n_docs
        self.num_perm = num_perm
        self.seed = np.uint64(seed)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.take(np.arange(start, stop, dtype=np.uint64))

    def take(self, doc_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(doc_ids, dtype=np.uint64)
        out = np.empty((len(ids), self.num_perm), dtype=np.uint32)
        for start in range(0, len(ids), 2048):  # small pieces: the generator's temporaries are not measured
            out[start : start + 2048] = self._generate(ids[start : start + 2048])
        return out

    def _generate(self, ids: np.ndarray) -> np.ndarray:
        mix = fmix64(ids ^ self.seed)
        is_copy = (mix % np.uint64(100)) < np.uint64(25)
        back = np.minimum(ids, mix % np.uint64(1000) + np.uint64(1))
        family = np.where(is_copy & (back > 0), ids - back, ids)
        rate = (mix >> np.uint64(40)) % np.uint64(31)  # percent of rows changed in a copy
        k = np.arange(self.num_perm, dtype=np.uint64)
        base = fmix64(family[:, None] * np.uint64(0x9E3779B97F4A7C15) + k * np.uint64(0xC2B2AE3D27D4EB4F))
        noise = fmix64(ids[:, None] * np.uint64(0xD6E8FEB86659FD93) + k + np.uint64(1))
        changed = is_copy[:, None] & ((noise % np.uint64(100)) < rate[:, None])
        return np.where(changed, noise, base).astype(np.uint32)


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> int:
    """Reset VmHWM to the current RSS (Linux >= 4.0); return the RSS the peak is measured from."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    return _status()["VmRSS"]


def measure_ours(n_docs: int, partitions: int, spill: bool) -> dict[str, Any]:
    import tempfile

    from pipeline.dedup.cluster import run_near_dedup

    source = SyntheticSignatures(n_docs)
    run_near_dedup(SyntheticSignatures(5000), 0.8, partitions=partitions)  # warm imports and caches
    with tempfile.TemporaryDirectory() as tmp:
        base = _reset_peak()
        started = time.perf_counter()
        result = run_near_dedup(source, 0.8, partitions=partitions, spill_dir=tmp if spill else None)
        seconds = time.perf_counter() - started
        peak = _status()["VmHWM"] - base
    return {
        "docs": n_docs,
        "peak_bytes": peak,
        "seconds": seconds,
        "dropped": int(len(result.dropped_doc)),
        "clustered": int(len(result.clustered_doc)),
    }


def measure_datasketch(n_docs: int) -> dict[str, Any]:
    from datasketch import MinHash, MinHashLSH

    from kernels.minhash import permutations

    source = SyntheticSignatures(n_docs)
    perms = np.stack(permutations(NUM_PERM, 1, "affine32"))
    signatures = source.rows(0, n_docs)
    index = MinHashLSH(threshold=0.8, num_perm=NUM_PERM)
    base = _reset_peak()
    started = time.perf_counter()
    for i in range(n_docs):
        index.insert(i, MinHash(seed=1, hashvalues=signatures[i], permutations=perms, scheme="affine32"))
    seconds = time.perf_counter() - started
    peak = _status()["VmHWM"] - base
    return {"docs": n_docs, "peak_bytes": peak, "seconds": seconds}


def _in_subprocess(call: str) -> dict[str, Any]:
    code = f"import json, benchmarks.bench_dedup_memory as b; print(json.dumps(b.{call}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict[str, Any]]:
    n_ours = 200_000 if quick else 2_000_000
    n_ds = 20_000 if quick else 100_000
    rows = []
    for partitions, spill in [(1, False), (4, False), (1, True), (4, True), (16, True)]:
        m = _in_subprocess(f"measure_ours({n_ours}, {partitions}, {spill})")
        rows.append(
            {
                "case": f"glm-corpus run_near_dedup, P={partitions}, shuffle {'on disk' if spill else 'in memory'}",
                "docs": m["docs"],
                "peak MB": m["peak_bytes"] / 1e6,
                "bytes/doc": m["peak_bytes"] / m["docs"],
                "seconds": m["seconds"],
                "dropped": m["dropped"],
            }
        )
    ds = _in_subprocess(f"measure_datasketch({n_ds})")
    rows.append(
        {
            "case": "datasketch MinHashLSH (in-memory dict), index only",
            "docs": ds["docs"],
            "peak MB": ds["peak_bytes"] / 1e6,
            "bytes/doc": ds["peak_bytes"] / ds["docs"],
            "seconds": ds["seconds"],
        }
    )
    for row in rows[:-1]:
        row["x less than datasketch"] = rows[-1]["bytes/doc"] / row["bytes/doc"]
    return rows


if __name__ == "__main__":
    from benchmarks.common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
