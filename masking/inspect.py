"""`glm-corpus inspect DIR ROW`: one training row, readable: per segment Part A, Part B blocks, positions.

Token ids are decoded to text when a tokenizer is at hand (`--tokenizer PATH`, or DIR/../tokenizer/ice_text.model
as the demo lays it out); special tokens print as their names ([MASK], [gMASK], [sop], <eod>, ...); without a
tokenizer, or if decoding fails, ids are printed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.special_tokens import SPECIAL_IDS
from shards.training_shards import TrainingShards

log = logging.getLogger(__name__)

SPECIAL_NAMES = {token_id: name for name, token_id in SPECIAL_IDS.items()}
SPECIAL_NAMES[0] = "<pad>"


def load_tokenizer(directory: Path, path: str | None) -> Any:
    """`pipeline.tokenizer.GLMTokenizer` for `path` or the demo layout's model; None when unavailable."""
    candidate = Path(path) if path else directory.parent / "tokenizer" / "ice_text.model"
    if not candidate.exists():
        return None
    try:
        from pipeline.tokenizer import GLMTokenizer

        return GLMTokenizer(str(candidate))
    except Exception as exc:  # any failure means: show ids
        log.warning("cannot load the tokenizer %s (%s); showing token ids", candidate, exc)
        return None


def render_ids(ids: np.ndarray, tokenizer: Any = None, limit: int | None = None) -> str:
    """Text for `ids`: runs of ordinary ids decoded, special ids by name (ids only, without a tokenizer).

    With `limit`, a longer sequence shows its first and last limit/2 tokens around an elision."""
    ids = [int(i) for i in ids]
    if limit is not None and len(ids) > limit:
        half = limit // 2
        return (
            f"{render_ids(np.array(ids[:half]), tokenizer)} ...({len(ids) - 2 * half} tokens)... "
            f"{render_ids(np.array(ids[-half:]), tokenizer)}"
        )
    if tokenizer is None:
        return " ".join(f"{SPECIAL_NAMES[i]}" if i in SPECIAL_NAMES else str(i) for i in ids)
    parts: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            try:
                parts.append(tokenizer.decode(run))
            except Exception:
                parts.append(" " + " ".join(map(str, run)) + " ")
            run.clear()

    for token in ids:
        if token in SPECIAL_NAMES:
            flush()
            parts.append(SPECIAL_NAMES[token])
        else:
            run.append(token)
    flush()
    return "".join(parts)


def inspect_row(
    directory: str | Path, row: int, tokenizer_path: str | None = None, full: bool = False
) -> tuple[dict[str, Any], str]:
    """(summary, text) describing training row `row` of the shards in `directory` (long parts elided in the
    text unless `full`; the summary always holds every id)."""
    limit = None if full else 60
    directory = Path(directory)
    shards = TrainingShards(directory)
    batch = shards.batch([row])
    tokenizer = load_tokenizer(directory, tokenizer_path)
    tokens = batch["tokens"][0]
    targets = batch["targets"][0]
    positions = batch["position_ids"][0]
    blocks = batch["block_position_ids"][0]
    segments = []
    lines = [f"row {row} of {len(shards)} in {directory} ({shards.row_length} tokens)"]
    for index, ((start, sep, end), provenance) in enumerate(
        zip(batch["segments"][0][batch["segments"][0][:, 0] >= 0].tolist(), batch["provenance"][0])
    ):
        part_b = []
        block_starts = (np.flatnonzero(blocks[sep:end] == 1) + sep).tolist() + [end]
        for cursor, following in zip(block_starts[:-1], block_starts[1:]):
            size = following - cursor
            part_b.append(
                {
                    "start": cursor,
                    "mask_position": int(positions[cursor]),
                    "block_positions": [int(blocks[cursor]), int(blocks[cursor + size - 1])],
                    "tokens": tokens[cursor : cursor + size].tolist(),
                    "targets": targets[cursor : cursor + size].tolist(),
                }
            )
        segment = {
            "index": index,
            "start": start,
            "sep": sep,
            "end": end,
            **provenance,
            "part_a": tokens[start:sep].tolist(),
            "part_b": part_b,
        }
        segments.append(segment)
        lines.append(
            f"\n== segment {index}: {provenance['kind']} [{start}, {sep}) A + [{sep}, {end}) B, "
            f"source {provenance['source']}, docs {', '.join(provenance['doc_ids'][:4])}"
            + (" ..." if len(provenance["doc_ids"]) > 4 else "")
        )
        lines.append(f"Part A ({sep - start} tokens, positions 0..{sep - start - 1}):")
        lines.append("  " + render_ids(tokens[start:sep], tokenizer, limit))
        lines.append(f"Part B ({len(part_b)} block(s)):")
        for block in part_b:
            lines.append(
                f"  @{block['start']} mask position {block['mask_position']}, block positions "
                f"{block['block_positions'][0]}..{block['block_positions'][1]}: "
                f"{render_ids(np.array(block['tokens']), tokenizer, limit)}  ->  "
                f"{render_ids(np.array(block['targets']), tokenizer, limit)}"
            )
    padding = int(shards.row_length - (segments[-1]["end"] if segments else 0))
    if padding:
        lines.append(f"\npadding: {padding} tokens")
    summary = {
        "row": row,
        "rows": len(shards),
        "row_length": shards.row_length,
        "segments": segments,
        "padding": padding,
        "decoded": tokenizer is not None,
    }
    return summary, "\n".join(lines)
