"""Make the figures of docs/CONCEPTS.md from a synthetic row built by the project's own code.

    .venv/bin/python docs/img/make_figures.py        # writes docs/img/glm_row.png and docs/img/glm_row_mask.png

Synthetic token shards (`masking.synthetic`) go through the real masking stage (`masking.stage.run_masking`)
with 40-token rows, so that every token of a row fits in a picture; the row shown is the first with at most
four segments and no padding that holds a MIP segment, a [gMASK] segment of at least 5 tokens and a [MASK]
segment with two or more spans covering at most 35% of its window (the default 15% rule on a tiny window can
cover much more). Its arrays come from `TrainingShards.batch` (the
loader the trainer uses), its segment summary from `masking.inspect.inspect_row`, and the attention picture
is `masking.inspect.mask_figure`, what `glm-corpus inspect --mask-png` draws. Same code, same bytes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from anywhere: the repository root holds the packages

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from masking.config import MaskingConfig  # noqa: E402
from masking.inspect import PART_A_FILL, SEPARATOR_COLOR, inspect_row, mask_figure, save_figure  # noqa: E402
from masking.stage import run_masking  # noqa: E402
from masking.synthetic import write_mip_shards, write_text_shards  # noqa: E402
from pipeline.special_tokens import EOD, GMASK, MASK  # noqa: E402
from shards.training_shards import TrainingShards  # noqa: E402

ROW_LENGTH = 40
SPAN_FILLS = ("#e08a2c", "#4b9a5b", "#c4463a", "#8064a2", "#d17aa8", "#3aa6b3", "#b3a33b")
"""One colour per Part-B span (its [MASK]/[gMASK] in Part A has the same colour)."""
KIND_NAMES = {"mask": "[MASK]", "gmask": "[gMASK]", "mip": "MIP"}
CELL = 0.34  # inches per token
LEFT = 1.75  # inches of row labels


def build_row(workdir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Mask synthetic shards into 40-token rows; (inspect summary, batch arrays) of the row to draw."""
    write_text_shards(workdir / "tokens", {"pile": (60, 16.0)}, seed=17)
    write_mip_shards(workdir / "mip", {"anli": 40}, seed=27, mean_prompt=6, mean_target=3)
    config = MaskingConfig(
        row_length=ROW_LENGTH, rows_per_shard=16, rows_per_block=16, seed=17, mip_share=0.2
    )
    run_masking(workdir / "tokens", workdir / "train", config, mip=workdir / "mip", progress=False)
    shards = TrainingShards(workdir / "train")
    for row in range(len(shards)):
        summary, _ = inspect_row(workdir / "train", row)
        if _illustrative(summary):
            batch = shards.batch([row], provenance=False)
            return summary, {key: np.asarray(value[0]) for key, value in batch.items()}
    raise SystemExit("no illustrative row (see the module docstring): change the seeds")


def _illustrative(summary: dict[str, Any]) -> bool:
    segments = summary["segments"]
    kinds = [s["kind"] for s in segments]
    if not {"mask", "gmask", "mip"} <= set(kinds) or len(segments) > 4 or summary["padding"]:
        return False
    if min(s["end"] - s["start"] for s in segments if s["kind"] == "gmask") < 5:
        return False
    for segment in segments:
        masked = sum(len(block["tokens"]) - 1 for block in segment["part_b"])
        window = segment["sep"] - segment["start"] - len(segment["part_b"]) + masked
        if segment["kind"] == "mask" and len(segment["part_b"]) >= 2 and masked <= 0.35 * window:
            return True
    return False


def token_labels(segment: dict[str, Any]) -> tuple[list[str], list[str], list[int]]:
    """Labels of the segment's tokens and targets, and each position's span number (-1 in Part A text).

    Text tokens are x1..xn in the order of the original window (a span's tokens keep their place in it),
    so Part B shows which piece of text each block restores; MIP tokens are prompt p1.. and target t1..."""
    mip = segment["kind"] == "mip"
    blocks = {block["mask_position"]: block for block in segment["part_b"]}
    order = {position: rank for rank, position in enumerate(sorted(blocks))}
    counter = 0
    part_a: list[str] = []
    spans: dict[int, list[str]] = {}
    for index, token in enumerate(segment["part_a"]):
        if token in (MASK, GMASK):
            part_a.append("[M]" if token == MASK else "[gM]")
            content = blocks[index]["tokens"][1:]
            if mip:
                spans[index] = [f"t{k + 1}" for k in range(len(content))]
            else:
                spans[index] = ["eod" if t == EOD else f"x{counter + k + 1}" for k, t in enumerate(content)]
                counter += len(content)
        else:
            counter += 1
            part_a.append("eod" if token == EOD else f"{'p' if mip else 'x'}{counter}")
    tokens, targets = list(part_a), list(part_a)
    colour = [order[i] if label.startswith("[") else -1 for i, label in enumerate(part_a)]
    for block in segment["part_b"]:
        labels = spans[block["mask_position"]]
        tokens += ["[s]", *labels]
        targets += [*labels, "[e]"]
        colour += [order[block["mask_position"]]] * (len(labels) + 1)
    return tokens, targets, colour


def row_figure(summary: dict[str, Any], arrays: dict[str, np.ndarray]) -> Figure:
    """A packed row: one column per token; its segments with Part A and Part B, tokens and targets, the
    2D positions and the loss mask, spans coloured like their mask tokens."""
    length = summary["row_length"]
    width, height = LEFT + CELL * length + 0.2, 3.2
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((LEFT / width, 0.02, CELL * length / width, 0.86))
    axes.set_xlim(0, length)
    axes.set_ylim(6.3, -1.7)
    axes.axis("off")
    rows = ("tokens", "targets", "position_ids", "block_position_ids", "loss_mask")
    for y, name in enumerate(rows):
        axes.text(-0.3, y + 0.5, name, ha="right", va="center", fontsize=9, family="monospace")
    spans_before = 0
    for segment in summary["segments"]:
        start, sep, end = segment["start"], segment["sep"], segment["end"]
        tokens, targets, colour = token_labels(segment)
        for offset, (token, target, span) in enumerate(zip(tokens, targets, colour)):
            x = start + offset
            in_b = x >= sep
            fill = PART_A_FILL if span < 0 else SPAN_FILLS[(spans_before + span) % len(SPAN_FILLS)]
            strong = span >= 0 and not in_b  # the mask token itself
            for y, label in ((0, token), (1, target)):
                cell, ink = fill, "white" if strong else "black"
                if y == 1 and not in_b:  # Part A targets are the tokens themselves, never trained on
                    cell, ink = "#f3f3f3", "#999999"
                axes.add_patch(_cell(x, y, cell, 1.0 if strong or not in_b or y == 1 else 0.75))
                axes.text(
                    x + 0.5,
                    y + 0.5,
                    label,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=ink,
                    fontweight="bold" if (strong and y == 0) or label in ("[s]", "[e]") else "normal",
                )
            for y, key in ((2, "position_ids"), (3, "block_position_ids"), (4, "loss_mask")):
                value = arrays[key][x]
                axes.add_patch(_cell(x, y, "#ffffff", 1.0))
                axes.text(x + 0.5, y + 0.5, f"{value:g}", ha="center", va="center", fontsize=7.5)
        spans_before += len(segment["part_b"])
        # Segment bracket and its Part A / Part B labels above the tokens.
        axes.plot([start + 0.08, end - 0.08], [-1.05, -1.05], color="#222222", linewidth=1.2)
        axes.text(
            (start + end) / 2,
            -1.2,
            f"{segment['index']}: {KIND_NAMES[segment['kind']]}",
            ha="center",
            va="bottom",
            fontsize=8.5,
            fontweight="bold",
        )
        for a, b, label in ((start, sep, "Part A"), (sep, end, "Part B")):
            axes.text((a + b) / 2, -0.25, label, ha="center", va="center", fontsize=8, style="italic")
        axes.plot([sep, sep], [-0.55, 5.05], color=SEPARATOR_COLOR, linewidth=1.2, linestyle=(0, (4, 2)))
        axes.plot([end, end], [-1.3, 5.05], color="#222222", linewidth=1.8)
    axes.plot([0, 0], [-1.3, 5.05], color="#222222", linewidth=1.8)
    axes.text(
        0,
        5.75,
        "x_i: the i-th token of a text window (a span's tokens keep their numbers), p_i / t_i: MIP prompt / "
        "target;  [M] [MASK], [gM] [gMASK], [s] [sop], [e] [eop], eod <eod>;  grey: Part A targets (no loss)",
        ha="left",
        va="center",
        fontsize=7.5,
        color="#444444",
    )
    figure.suptitle(
        f"One packed training row ({length} tokens here; 2048 in a run): segments, Part A / Part B, "
        "2D positions",
        x=0.5,
        y=0.98,
        fontsize=10,
        fontweight="bold",
    )
    return figure


def _cell(x: int, y: int, colour: str, alpha: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), 1, 1, facecolor=colour, alpha=alpha, edgecolor="#ffffff", linewidth=1.0)


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        summary, arrays = build_row(Path(workdir))
    row = row_figure(summary, arrays)
    save_figure(row, HERE / "glm_row.png", "png")
    title = (
        f"Attention mask of that row ({len(summary['segments'])} segments, {summary['row_length']} tokens)"
    )
    figure, axes = mask_figure(summary, title=title)
    save_figure(figure, HERE / "glm_row_mask.png", "png", axes)
    for name in ("glm_row.png", "glm_row_mask.png"):
        print(f"{HERE / name}: {(HERE / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
