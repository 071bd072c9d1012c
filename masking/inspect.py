"""`glm-corpus inspect DIR ROW`: one training row, readable: per segment Part A, Part B blocks, positions.

Token ids are decoded to text when a tokenizer is at hand (`--tokenizer PATH`, or DIR/../tokenizer/ice_text.model
as the demo lays it out); special tokens print as their names ([MASK], [gMASK], [sop], <eod>, ...); without a
tokenizer, or if decoding fails, ids are printed.

In colour (ANSI escapes; `--color auto` colours only a terminal and honours NO_COLOR) Part A text is blue,
each Part-B span has its own colour and its [MASK]/[gMASK] in Part A the same colour in reverse video,
[sop]/[eop] are bold grey and positions underlined. Colour only wraps pieces of the plain text in escapes,
so the coloured text with its escapes removed is the plain text, byte for byte.

`--mask-png` / `--mask-svg` draw the row's attention mask (`kernels.dense_attention_mask` on its segment
table) with matplotlib, the `report` extra, imported only then.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from common.atomic import atomic_path
from common.errors import GLMCorpusError
from pipeline.special_tokens import EOP, GMASK, MASK, SOP, SPECIAL_IDS
from shards.training_shards import TrainingShards

log = logging.getLogger(__name__)

SPECIAL_NAMES = {token_id: name for name, token_id in SPECIAL_IDS.items()}
SPECIAL_NAMES[0] = "<pad>"

# ------------------------------------------------------------------------------------------------- colour

PART_A = "34"
"""Part A's ordinary tokens: blue (no span colour is blue, so Part A never looks like a span)."""
SPAN_COLORS = ("31", "32", "33", "35", "36", "91", "92", "93", "95", "96")
"""One colour per Part-B span, in the order of their mask tokens in the row (cycled)."""
MASK_TOKEN = "1;7;{}"
"""A [MASK]/[gMASK] in Part A: bold, reverse video, in its span's colour."""
SOP_EOP = "1;90"
OTHER_SPECIAL = "2"
"""<eod>, <pad>, <blank_k>, ...: dim."""
POSITION = "4"
"""Position numbers: underlined (a block's mask position also takes its span's colour)."""
HEADER = "1"
ELISION = "2"

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
COLOR_CHOICES = ("auto", "always", "never")


def strip_ansi(text: str) -> str:
    """`text` without its ANSI colour escapes."""
    return ANSI_ESCAPE.sub("", text)


def color_enabled(
    choice: str = "auto", stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Whether to colour: always/never as asked; auto only for a terminal, unless NO_COLOR is set and
    non-empty (no-color.org) or TERM=dumb. An explicit `always` overrides NO_COLOR, as that convention asks."""
    if choice not in COLOR_CHOICES:
        raise ValueError(f"--color must be one of {', '.join(COLOR_CHOICES)}, not {choice!r}")
    if choice != "auto":
        return choice == "always"
    environ = os.environ if environ is None else environ
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclasses.dataclass(frozen=True)
class Painter:
    """Wraps text in an SGR escape when enabled; returns it unchanged otherwise (the plain output)."""

    enabled: bool = False

    def __call__(self, text: str, code: str) -> str:
        if not self.enabled or not code or not text:
            return text
        return f"\x1b[{code}m{text}\x1b[0m"


# ---------------------------------------------------------------------------------------------- rendering


@dataclasses.dataclass(frozen=True)
class Piece:
    """A run of the rendered text: ordinary tokens ("text"), one special token ("special", its id in `token`),
    the spaces between ids ("gap") or an elision. `index` is the offset of its first token in the ids."""

    text: str
    kind: str
    token: int | None = None
    index: int = -1


def render_pieces(
    ids: Sequence[int] | np.ndarray, tokenizer: Any = None, limit: int | None = None, offset: int = 0
) -> list[Piece]:
    """`ids` as pieces whose texts concatenate to `render_ids(ids, tokenizer, limit)`."""
    ids = [int(i) for i in ids]
    if limit is not None and len(ids) > limit:
        half = limit // 2
        return [
            *render_pieces(ids[:half], tokenizer, None, offset),
            Piece(f" ...({len(ids) - 2 * half} tokens)... ", "elision"),
            *render_pieces(ids[-half:], tokenizer, None, offset + len(ids) - half),
        ]
    pieces: list[Piece] = []
    if tokenizer is None:
        for position, token in enumerate(ids):
            if position:
                pieces.append(Piece(" ", "gap"))
            if token in SPECIAL_NAMES:
                pieces.append(Piece(SPECIAL_NAMES[token], "special", token, offset + position))
            else:
                pieces.append(Piece(str(token), "text", None, offset + position))
        return pieces
    run: list[int] = []
    run_start = 0

    def flush() -> None:
        if run:
            try:
                text = tokenizer.decode(run)
            except Exception:
                text = " " + " ".join(map(str, run)) + " "
            pieces.append(Piece(text, "text", None, offset + run_start))
            run.clear()

    for position, token in enumerate(ids):
        if token in SPECIAL_NAMES:
            flush()
            pieces.append(Piece(SPECIAL_NAMES[token], "special", token, offset + position))
        else:
            if not run:
                run_start = position
            run.append(token)
    flush()
    return pieces


def render_ids(ids: Sequence[int] | np.ndarray, tokenizer: Any = None, limit: int | None = None) -> str:
    """Text for `ids`: runs of ordinary ids decoded, special ids by name (ids only, without a tokenizer).

    With `limit`, a longer sequence shows its first and last limit/2 tokens around an elision."""
    return "".join(piece.text for piece in render_pieces(ids, tokenizer, limit))


def paint_pieces(
    pieces: Sequence[Piece], paint: Painter, text_code: str, mask_codes: Mapping[int, str] | None = None
) -> str:
    """The pieces' text, each in its role's colour: ordinary text in `text_code`, a [MASK]/[gMASK] at index i
    in `mask_codes[i]` (its span's), [sop]/[eop] and other specials in their own styles."""
    codes = []
    for piece in pieces:
        if piece.kind == "text":
            codes.append(text_code)
        elif piece.kind == "special" and piece.token in (MASK, GMASK) and mask_codes:
            codes.append(mask_codes.get(piece.index, ""))
        elif piece.kind == "special":
            codes.append(SOP_EOP if piece.token in (SOP, EOP) else OTHER_SPECIAL)
        else:
            codes.append(ELISION if piece.kind == "elision" else "")
    # A gap between two pieces of one colour joins them, so a run of ids is one escape, not one per id.
    for i, piece in enumerate(pieces):
        if piece.kind == "gap" and 0 < i < len(pieces) - 1 and codes[i - 1] == codes[i + 1]:
            codes[i] = codes[i - 1]
    out = []
    for code, run in itertools.groupby(zip(codes, pieces), key=lambda pair: pair[0]):
        out.append(paint("".join(piece.text for _, piece in run), code))
    return "".join(out)


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


def inspect_row(
    directory: str | Path,
    row: int,
    tokenizer_path: str | None = None,
    full: bool = False,
    color: bool = False,
) -> tuple[dict[str, Any], str]:
    """(summary, text) describing training row `row` of the shards in `directory` (long parts elided in the
    text unless `full`; the summary always holds every id). `color` adds ANSI escapes and nothing else."""
    limit = None if full else 60
    paint = Painter(color)
    directory = Path(directory)
    shards = TrainingShards(directory)
    batch = shards.batch([row])
    tokenizer = load_tokenizer(directory, tokenizer_path)
    tokens = batch["tokens"][0]
    targets = batch["targets"][0]
    positions = batch["position_ids"][0]
    blocks = batch["block_position_ids"][0]
    segments = []
    spans_so_far = 0  # span colours run on through the row, so neighbouring segments differ
    lines = [paint(f"row {row} of {len(shards)} in {directory} ({shards.row_length} tokens)", HEADER)]
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
        span_codes = {}
        for mask_position in sorted(block["mask_position"] for block in part_b):
            span_codes[mask_position] = SPAN_COLORS[spans_so_far % len(SPAN_COLORS)]
            spans_so_far += 1
        mask_codes = {i: MASK_TOKEN.format(code) for i, code in span_codes.items()}
        lines.append(
            "\n"
            + paint(f"== segment {index}: {provenance['kind']}", HEADER)
            + f" [{start}, {sep}) A + [{sep}, {end}) B, "
            f"source {provenance['source']}, docs {', '.join(provenance['doc_ids'][:4])}"
            + (" ..." if len(provenance["doc_ids"]) > 4 else "")
        )
        lines.append(f"Part A ({sep - start} tokens, positions {paint(f'0..{sep - start - 1}', POSITION)}):")
        lines.append(
            "  " + paint_pieces(render_pieces(tokens[start:sep], tokenizer, limit), paint, PART_A, mask_codes)
        )
        lines.append(f"Part B ({len(part_b)} block(s)):")
        for block in part_b:
            span = span_codes[block["mask_position"]]
            first, last = block["block_positions"]
            lines.append(
                f"  @{block['start']} mask position "
                f"{paint(str(block['mask_position']), f'{POSITION};{span}')}, block positions "
                f"{paint(f'{first}..{last}', POSITION)}: "
                f"{paint_pieces(render_pieces(block['tokens'], tokenizer, limit), paint, span)}  ->  "
                f"{paint_pieces(render_pieces(block['targets'], tokenizer, limit), paint, span)}"
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


# ------------------------------------------------------------------------------------- attention picture

MASK_PICTURE_FORMATS = ("png", "svg")
MASK_DPI = 110
ALLOWED_COLOR = "#3b6ea8"
"""Mask cell where the query (row) may attend to the key (column)."""
MASKED_COLOR = "#f3f3f3"
PART_A_FILL = "#9ec3e6"
PART_B_FILL = "#f2b36b"
PADDING_FILL = "#d0d0d0"
MASK_TOKEN_MARK = "#b8322a"
BOUNDARY_COLOR = "#222222"
SEPARATOR_COLOR = "#d9531e"


def _matplotlib() -> Any:
    """matplotlib, or a GLMCorpusError saying how to install it (it is the `report` extra)."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as exc:
        raise GLMCorpusError(
            "drawing the attention mask needs matplotlib: pip install 'glm-corpus[report]' "
            f"(or pip install matplotlib) ({exc})"
        ) from exc
    return matplotlib


def mask_figure(summary: Mapping[str, Any], title: str | None = None) -> tuple[Any, Any]:
    """(figure, mask axes): the attention mask of the row `inspect_row` summarised, from
    `kernels.dense_attention_mask` on its segment table, with a strip above it showing each segment's
    Part A / Part B and mask tokens, segment boundaries (solid) and Part A | Part B separators (dashed)."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    from kernels import dense_attention_mask

    length = int(summary["row_length"])
    segments = summary["segments"]
    table = np.array([[s["start"], s["sep"], s["end"]] for s in segments], dtype=np.int64).reshape(-1, 3)
    mask = dense_attention_mask(table, length)

    width, height = 6.4, 7.0  # inches; the mask is a 5-inch square
    figure = Figure(figsize=(width, height), dpi=MASK_DPI)
    FigureCanvasAgg(figure)
    # Fixed axes positions (no tight bbox), so a pixel of the saved PNG maps to one (query, key) cell.
    side, bottom = 5.0 / width, 1.15 / height
    square = 5.0 / height
    axes = figure.add_axes((0.14, bottom, side, square))
    strip = figure.add_axes((0.14, bottom + square + 0.008, side, 0.22 / height), sharex=axes)
    axes.imshow(
        mask,
        cmap=ListedColormap([MASKED_COLOR, ALLOWED_COLOR]),
        vmin=0,
        vmax=1,
        interpolation="nearest",
        aspect="auto",
    )
    # Each segment's square is outlined; its Part A | Part B separator is dashed inside that square only.
    for segment in segments:
        start, sep, end = segment["start"] - 0.5, segment["sep"] - 0.5, segment["end"] - 0.5
        axes.add_patch(
            Rectangle(
                (start, start), end - start, end - start, fill=False, edgecolor=BOUNDARY_COLOR, linewidth=0.9
            )
        )
        if segment["start"] < segment["sep"] < segment["end"]:
            dashed = {"color": SEPARATOR_COLOR, "linewidth": 0.9, "linestyle": (0, (4, 2))}
            axes.plot([sep, sep], [start, end], **dashed)
            axes.plot([start, end], [sep, sep], **dashed)
    edges = sorted({s["start"] for s in segments} | {s["end"] for s in segments} - {0, length})
    axes.set_xlabel("key position in the row (attended to)")
    axes.set_ylabel("query position in the row (attending)")

    for segment in segments:
        start, sep, end = segment["start"], segment["sep"], segment["end"]
        strip.add_patch(Rectangle((start - 0.5, 0), sep - start, 1, facecolor=PART_A_FILL, linewidth=0))
        strip.add_patch(Rectangle((sep - 0.5, 0), end - sep, 1, facecolor=PART_B_FILL, linewidth=0))
        for offset in np.flatnonzero(np.isin(segment["part_a"], (MASK, GMASK))).tolist():
            strip.add_patch(
                Rectangle((start + offset - 0.5, 0), 1, 1, facecolor=MASK_TOKEN_MARK, linewidth=0)
            )
        if end - start >= length * 0.08:
            strip.text((start + end) / 2, 0.5, segment["kind"], ha="center", va="center", fontsize=7)
    last = segments[-1]["end"] if segments else 0
    if last < length:
        strip.add_patch(Rectangle((last - 0.5, 0), length - last, 1, facecolor=PADDING_FILL, linewidth=0))
    for edge in edges:
        strip.axvline(edge - 0.5, color=BOUNDARY_COLOR, linewidth=0.9)
    strip.set_ylim(0, 1)
    strip.set_yticks([])
    strip.tick_params(axis="x", labelbottom=False, bottom=False)
    axes.set_xlim(-0.5, length - 0.5)
    axes.set_ylim(length - 0.5, -0.5)

    figure.suptitle(
        title or f"row {summary['row']}: attention mask ({len(segments)} segments, {length} tokens)",
        y=0.975,
        fontsize=10,
        fontweight="bold",
    )
    handles = [
        Patch(facecolor=ALLOWED_COLOR, label="may attend"),
        Patch(facecolor=MASKED_COLOR, edgecolor="#999999", linewidth=0.5, label="masked"),
        Line2D([], [], color=BOUNDARY_COLOR, linewidth=0.9, label="segment boundary"),
        Line2D([], [], color=SEPARATOR_COLOR, linewidth=0.9, linestyle=(0, (4, 2)), label="Part A | Part B"),
        Patch(facecolor=PART_A_FILL, label="Part A (strip)"),
        Patch(facecolor=PART_B_FILL, label="Part B (strip)"),
        Patch(facecolor=MASK_TOKEN_MARK, label="[MASK] / [gMASK]"),
    ]
    if last < length:
        handles.append(Patch(facecolor=PADDING_FILL, label="padding"))
    figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=7.5, frameon=False)
    return figure, axes


def save_figure(figure: Any, path: str | Path, fmt: str, axes: Any = None) -> dict[str, Any]:
    """Write `figure` to `path` atomically as PNG or SVG (reproducible bytes: no dates, fixed SVG ids).

    Returns the path, format, size in pixels and, with `axes`, its box in PNG pixels (left, top, right,
    bottom; origin top left) so that a caller can map a pixel to the data it shows."""
    if fmt not in MASK_PICTURE_FORMATS:
        raise ValueError(f"picture format must be one of {', '.join(MASK_PICTURE_FORMATS)}, not {fmt!r}")
    matplotlib = _matplotlib()
    metadata = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    with matplotlib.rc_context({"svg.hashsalt": "glm-corpus", "svg.fonttype": "path"}):
        figure.canvas.draw()
        width, height = (int(v) for v in figure.bbox.size)  # as Agg sizes its canvas
        info: dict[str, Any] = {"path": str(path), "format": fmt, "width": width, "height": height}
        if axes is not None:
            box = axes.get_window_extent()
            info["axes_box"] = [float(box.x0), float(height - box.y1), float(box.x1), float(height - box.y0)]
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=fmt, dpi=figure.dpi, metadata=metadata)
    return info


def write_mask_picture(summary: Mapping[str, Any], path: str | Path, fmt: str = "png") -> dict[str, Any]:
    """Draw the row's attention mask (see `mask_figure`) to `path`; returns what `save_figure` reports."""
    figure, axes = mask_figure(summary)
    return save_figure(figure, path, fmt, axes)
