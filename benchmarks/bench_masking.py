"""Masking and loading throughput, against plain implementations of the same rules in the same run.

- masking: rows planned (masking/packing.py) and built (masking/segments.py, vectorized per 128-row block),
  in memory, one core; the baseline builds the same planned segments one sample at a time with plain numpy
  (window slices, sorted places, Part A by a boolean mask, Part B by concatenation), as a straightforward
  implementation would. Both include the planning pass.
- stage: `run_masking` end to end on one worker: planning, building, writing shards with checksums and
  provenance, the manifest and the stats.
- loader: `TrainingShards.batch` (vectorized reconstruction of all five arrays + segment table, with and
  without provenance) on random 64-row batches, against `reconstruct_reference`, the per-segment loop.
- size: bytes per token of the training shards (tokens, recipe, provenance sidecar).

Input: synthetic token shards (masking/synthetic.py), a Pile-like source (documents ~1000 tokens) and a
WuDao-like one (~400), 20M tokens (2M with --quick).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import best_time  # noqa: F401 (the shared helper; `_timed` adds CPU time)
from masking.config import MaskingConfig
from masking.gmask import suffix_bounds
from masking.mixing import TextStream, resolve_weights
from masking.packing import Planner
from masking.segments import Sources, block_generator, build_block
from masking.stage import discover_text_sources, run_masking
from masking.store import TokenStore
from masking.synthetic import write_text_shards
from pipeline.special_tokens import GMASK, MASK, SOP
from shards.training_shards import KIND_MASK, KIND_MIP, TrainingShards


def _timed(fn: Any, repeat: int = 3) -> tuple[float, float]:
    """Best wall time and best CPU time of `repeat` calls. On a shared 2-core machine the CPU time of this
    single-threaded work is the steadier per-core figure; both are reported."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu


def _plan(store: TokenStore, config: MaskingConfig) -> list:
    lengths = [store.lengths(i) for i in range(len(store.paths))]
    tokens = [int(x.sum()) for x in lengths]
    weights = resolve_weights([str(i) for i in range(len(tokens))], tokens, {})
    planner = Planner(
        config, TextStream(lengths, weights, config.shuffle_seed, float(sum(tokens))), None, 0.0
    )
    chunks = []
    while (chunk := planner.plan(config.rows_per_shard)) is not None:
        chunks.append(chunk)
    return chunks


def mask_vectorized(store: TokenStore, config: MaskingConfig) -> int:
    """Plan and build every row (blocks of rows_per_block); returns the tokens built."""
    sources = Sources(store, [str(i) for i in range(len(store.paths))])
    built = 0
    for chunk in _plan(store, config):
        for lo in range(0, chunk.n_rows, config.rows_per_block):
            hi = min(lo + config.rows_per_block, chunk.n_rows)
            rows = build_block(
                chunk.rows(lo, hi),
                sources,
                config,
                block_generator(config.seed, (chunk.first_row + lo) // config.rows_per_block),
            )
            built += rows.tokens.size
    return built


def mask_per_sample(store: TokenStore, config: MaskingConfig) -> int:
    """The same planned rows built one segment at a time with plain numpy (the baseline)."""
    generator = np.random.default_rng(config.seed)
    length = config.row_length
    built = 0
    for chunk in _plan(store, config):
        out = np.zeros((chunk.n_rows, length), dtype=np.int32)
        pointer = chunk.segment_piece_pointer
        for s in range(len(chunk.segment_kind)):
            pieces = range(int(pointer[s]), int(pointer[s + 1]))
            windows = []
            for p in pieces:
                doc = store.sources[int(chunk.piece_source[p])].shards[int(chunk.piece_doc[p])]
                windows.append(doc[chunk.piece_offset[p] : chunk.piece_offset[p] + chunk.piece_length[p]])
            window = np.concatenate(windows)
            kind = int(chunk.segment_kind[s])
            if kind == KIND_MASK:
                starts, lengths, base = [], [], 0
                for p, piece in zip(pieces, windows):
                    span = chunk.span_length[
                        chunk.piece_span_pointer[p] : chunk.piece_span_pointer[p + 1]
                    ].astype(np.int64)
                    span = span[generator.permutation(len(span))]
                    usable = len(piece) - int(chunk.piece_eod[p])
                    free = usable - int(span.sum()) - (len(span) - 1)
                    places = np.sort(generator.integers(0, free + 1, size=len(span)))
                    starts.extend((base + places + np.concatenate([[0], np.cumsum(span + 1)[:-1]])).tolist())
                    lengths.extend(span.tolist())
                    base += len(piece)
                mask_token = MASK
            else:
                n = len(window)
                if kind == KIND_MIP:
                    suffix = n - int(chunk.piece_prompt[pointer[s]])
                else:
                    lo, hi = suffix_bounds(
                        np.array([n]), config.gmask_suffix_min_fraction, config.gmask_min_prefix
                    )
                    suffix = int(generator.integers(lo[0], hi[0] + 1))
                starts, lengths, mask_token = [n - suffix], [suffix], GMASK
            keep = np.ones(len(window), dtype=bool)
            for start, span in zip(starts, lengths):
                keep[start + 1 : start + span] = False
            part_a = window.copy()
            part_a[starts] = mask_token
            part_a = part_a[keep]
            part_b = np.concatenate(
                [
                    np.concatenate([[SOP], window[starts[j] : starts[j] + lengths[j]]])
                    for j in generator.permutation(len(starts))
                ]
            )
            row, start = int(chunk.segment_row[s]), int(chunk.segment_start[s])
            out[row, start : start + len(part_a)] = part_a
            out[row, start + len(part_a) : start + len(part_a) + len(part_b)] = part_b
        built += out.size
    return built


def _row(
    case: str, tokens: int, ours: tuple[float, float], baseline: str, theirs: tuple[float, float]
) -> dict[str, Any]:
    return {
        "case": case,
        "ours tokens/s": tokens / ours[0],
        "ours tokens/CPU-s": tokens / ours[1],
        "baseline": baseline,
        "baseline tokens/s": tokens / theirs[0],
        "baseline tokens/CPU-s": tokens / theirs[1],
        "ratio (CPU)": theirs[1] / ours[1],
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    documents = {"pile": (2_000 if quick else 14_000, 1000.0), "wudao": (1_500 if quick else 15_000, 400.0)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokens = sum(write_text_shards(root / "tokens", documents, seed=0).values())
        _, paths = discover_text_sources(root / "tokens")
        store = TokenStore(paths)
        for source in store.sources:  # warm the page cache
            for array in source.arrays:
                array.sum()
        for cross in (False, True):
            config = MaskingConfig(cross_document=cross)
            built = mask_vectorized(store, config)
            ours = _timed(lambda config=config: mask_vectorized(store, config))
            theirs = _timed(lambda config=config: mask_per_sample(store, config), repeat=1)
            layout = "cross-document (GLM-130B)" if cross else "default (one segment per document piece)"
            rows.append(_row(f"masking, {layout}: plan + build", built, ours, "per-sample numpy", theirs))

        out = root / "train"

        def stage() -> None:
            run_masking(root / "tokens", out, MaskingConfig(), progress=False, force=True)

        elapsed = _timed(stage, repeat=2)
        shards = TrainingShards(out)
        row_tokens = len(shards) * shards.row_length
        rows.append(
            _row(
                f"stage end to end, 1 worker ({tokens / 1e6:.1f}M text tokens -> shards on disk)",
                row_tokens,
                elapsed,
                "target 20M tokens/s",
                (row_tokens / 20e6, row_tokens / 20e6),
            )
        )

        generator = np.random.default_rng(1)
        batches = [generator.integers(0, len(shards), size=64) for _ in range(10 if quick else 40)]
        shards.batch(batches[0])

        def load(provenance: bool) -> None:
            for rows_ in batches:
                shards.batch(rows_, provenance=provenance)

        reference_batches = batches[:2]

        def load_reference() -> None:
            for rows_ in reference_batches:
                shards.reference_batch(rows_)

        per_batch = 64 * shards.row_length
        reference = _timed(load_reference, repeat=1)
        reference = (
            reference[0] * len(batches) / len(reference_batches),
            reference[1] * len(batches) / len(reference_batches),
        )
        for provenance in (False, True):
            ours = _timed(lambda p=provenance: load(p))
            rows.append(
                _row(
                    "loader: rebuild 64-row batches" + (" + provenance" if provenance else ""),
                    per_batch * len(batches),
                    ours,
                    "per-segment loop (reference)",
                    reference,
                )
            )
        manifest_bytes = shards.manifest["bytes"]
        rows.append(
            {
                "case": "training-shard size (tokens + recipe + provenance), bytes/token",
                "ours tokens/s": None,
                "baseline": "budget 4.5 bytes/token",
                "ratio (CPU)": None,
                "bytes/token": manifest_bytes / row_tokens,
            }
        )
    return rows


if __name__ == "__main__":
    import sys

    from benchmarks.common import format_table

    started = time.perf_counter()
    print(format_table(run(quick="--quick" in sys.argv)))
    print(f"({time.perf_counter() - started:.0f} s)")
