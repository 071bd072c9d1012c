"""The ingest stage's last phase: each source's kept documents, in input order, into its final token shards.

The driver plans the shards file by file, holding one file's lengths at a time: a shard takes the next
kept document while it has room for it under `shard_max_tokens` (and always at least one document), so
shard boundaries depend on the documents alone. Each planned shard is then written by one task (a Ray
task with several workers, else a call in this process), which copies its documents' tokens as a few
contiguous slices of the work shards and their provenance as Arrow columns: no per-document Python loop,
and memory bounded by one work shard, whatever the corpus size.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.memory import release_memory
from pipeline.dedup.global_dedup import REASONS, read_decisions
from shards.token_shards import TokenShardWriter, read_index

FINAL_COLUMNS = ("doc_id", "source", "input_file", "offset", "lang", "quality", "meta")
FINAL_EXTRA_SCHEMA = [pa.field("meta", pa.string())]


@dataclasses.dataclass(frozen=True)
class Segment:
    """Kept documents `start`..`stop`-1 (counting kept documents only) of the work shard in `work_dir`."""

    work_dir: str
    start: int
    stop: int


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One final shard to write: its prefix under the output directory and its segments, in order."""

    prefix: str
    segments: tuple[Segment, ...]


def kept_rows(work_dir: str | Path, dedup: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices of the kept documents, reason code per document, cluster id per document) of one work shard."""
    if dedup:
        reason, cluster = read_decisions(work_dir)
    else:
        reason = np.zeros(read_index(Path(work_dir) / "docs.idx").sequence_count, dtype=np.uint8)
        cluster = np.full(len(reason), -1, dtype=np.int64)
    return np.flatnonzero(reason == 0), reason, cluster


def plan_source(
    source: str, work_dirs: Iterable[str], max_tokens: int, dedup: bool
) -> Iterator[tuple[str, ShardJob | None, dict[str, int]]]:
    """Walk one source's work shards in order; yield (work_dir, a shard completed by it or None, the
    file's dedup drops by reason). The last shard is yielded with the last file."""
    shard_no, segments, fill, docs = 0, [], 0, 0

    def finish() -> ShardJob:
        nonlocal shard_no, segments, fill, docs
        job = ShardJob(f"{source}/{source}-{shard_no:05d}", tuple(segments))
        shard_no, segments, fill, docs = shard_no + 1, [], 0, 0
        return job

    work_dirs = list(work_dirs)
    for position, work_dir in enumerate(work_dirs):
        rows, reason, _ = kept_rows(work_dir, dedup)
        drops = {REASONS[code]: int(count) for code, count in enumerate(np.bincount(reason, minlength=len(REASONS)))
                 if code and count}
        lengths = read_index(Path(work_dir) / "docs.idx").lengths[rows].astype(np.int64)
        total = np.cumsum(lengths)
        jobs = []
        pos = 0
        while pos < len(rows):
            base = int(total[pos - 1]) if pos else 0
            fits = int(np.searchsorted(total, max_tokens - fill + base, side="right")) - pos
            if fits <= 0 and docs:
                jobs.append(finish())
                continue
            take = max(fits, 1)
            segments.append(Segment(str(work_dir), pos, pos + take))
            fill += int(total[pos + take - 1]) - base
            docs += take
            pos += take
            if pos < len(rows):
                jobs.append(finish())
        if position == len(work_dirs) - 1 and docs:
            jobs.append(finish())
        for job in jobs[:-1]:
            yield work_dir, job, {}
        yield work_dir, (jobs[-1] if jobs else None), drops


def write_shard(out: str, dedup: bool, job: ShardJob) -> dict[str, Any]:
    """Task: write one final shard from its segments; return its document, token and language counts."""
    writer = TokenShardWriter(Path(out) / job.prefix, extra_schema=FINAL_EXTRA_SCHEMA)
    langs: Counter[str] = Counter()
    try:
        for segment in job.segments:
            work = Path(segment.work_dir)
            rows, _, cluster = kept_rows(work, dedup)
            rows = rows[segment.start : segment.stop]
            index = read_index(work / "docs.idx")
            lengths = index.lengths[rows]
            starts = index.pointers[rows] // 4
            tokens = np.memmap(work / "docs.bin", dtype="<i4", mode="r") if index.sequence_count else None
            # Kept documents come in runs of consecutive rows: copy each run as one slice.
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1
            run_first = np.concatenate([[0], breaks]).astype(np.int64)
            run_last = np.concatenate([breaks, [len(rows)]]).astype(np.int64) - 1
            pieces = [tokens[int(starts[a]) : int(starts[b] + lengths[b])] for a, b in zip(run_first, run_last)] \
                if len(rows) else []
            ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
            table = pq.read_table(work / "docs.provenance.parquet", columns=list(FINAL_COLUMNS)).take(rows)
            table = table.append_column("cluster_id", pa.array(cluster[rows], pa.int64()))
            writer.add_batch(ids, lengths, table)
            for item in table.column("lang").value_counts().to_pylist():
                langs[item["values"]] += item["counts"]
            del tokens, pieces, ids, table
            release_memory()  # one work shard's arrays and Arrow buffers: freed, not yet handed back
    except BaseException:
        writer.abort()
        raise
    summary = writer.close()
    return {"prefix": job.prefix, "docs": summary["sequences"], "tokens": summary["tokens"],
            "langs": {str(k): int(v) for k, v in langs.items()}}
