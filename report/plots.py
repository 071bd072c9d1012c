"""The report's charts: small matplotlib figures rendered to base64 PNG data URIs.

Each function takes plain numbers (lists, dicts) and returns a `data:image/png;base64,...` string that the
HTML embeds directly, so the report is one file with no external assets. Figures are built with the
object-oriented API (`matplotlib.figure.Figure` on an Agg canvas), never `pyplot`: no global figure state,
no GUI backend, nothing to close, safe inside a long-running process such as `glm-corpus run`.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PALETTE = ("#3b6ea8", "#e08a2c", "#4b9a5b", "#c4463a", "#8064a2", "#8c6d46", "#d17aa8", "#6f7f8f", "#b3a33b",
           "#3aa6b3")
"""Colour per series, in order (colour-blind-friendly enough for up to ~6 series)."""
EXPECTED_COLOR = "#222222"
DPI = 110
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "legend.fontsize": 8,
}


F = TypeVar("F", bound=Callable[..., Any])


def _styled(function: F) -> F:
    """Run a chart function under the report's rc style (matplotlib reads rcParams when it draws, too)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _figure(width: float = 6.4, height: float = 3.2) -> Figure:
    """A figure on its own Agg canvas: the Agg backend without touching pyplot's global backend."""
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def to_data_uri(figure: Figure) -> str:
    """Render `figure` as PNG and return it as a data URI for an `<img src=...>`."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _axes(figure: Figure) -> Any:
    return figure.add_subplot(1, 1, 1)


def _legend_outside(axes: Any) -> None:
    """The legend to the right of the plot, where it never hides a bar (the saved image grows to fit it)."""
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _short_number(value: float, _position: Any = None) -> str:
    """Axis tick labels: 1,500 -> 1.5k, 2,000,000 -> 2M (plain below 10,000)."""
    magnitude = abs(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= scale and (magnitude >= 1e4 or scale > 1e3):
            return f"{value / scale:.3g}{suffix}"
    return f"{value:g}"


def _count_axis(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(_short_number))


@_styled
def grouped_bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    ylabel: str,
    log: bool = False,
) -> str:
    """Vertical bars: one group per category, one bar per series (e.g. documents per stage, per source)."""
    figure = _figure(max(5.0, 1.2 + 0.9 * len(categories)), 3.3)
    axes = _axes(figure)
    names = list(series)
    width = 0.8 / max(len(names), 1)
    for index, name in enumerate(names):
        positions = [c + (index - (len(names) - 1) / 2) * width for c in range(len(categories))]
        axes.bar(positions, list(series[name]), width=width * 0.95, label=name,
                 color=PALETTE[index % len(PALETTE)])
    axes.set_xticks(range(len(categories)), list(categories), rotation=20 if len(categories) > 5 else 0,
                    ha="right" if len(categories) > 5 else "center")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if log:
        axes.set_yscale("log")
    else:
        _count_axis(axes.yaxis)
    axes.grid(axis="x", visible=False)
    if len(names) > 1:
        _legend_outside(axes)
    return to_data_uri(figure)


@_styled
def stacked_hbars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    log: bool = False,
) -> str:
    """Horizontal bars, one per category, stacked by series (e.g. drop reasons split by source)."""
    figure = _figure(6.4, max(1.6, 0.9 + 0.32 * len(categories)))
    axes = _axes(figure)
    left = [0.0] * len(categories)
    rows = list(range(len(categories)))
    for index, (name, values) in enumerate(series.items()):
        values = [float(v) for v in values]
        axes.barh(rows, values, left=left, label=name, color=PALETTE[index % len(PALETTE)], height=0.7)
        left = [a + b for a, b in zip(left, values)]
    axes.set_yticks(rows, list(categories))
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    if log:
        axes.set_xscale("log")
    else:
        _count_axis(axes.xaxis)
    axes.grid(axis="y", visible=False)
    if len(series) > 1:
        _legend_outside(axes)
    return to_data_uri(figure)


@_styled
def histogram_vs_expected(
    labels: Sequence[str | int],
    observed: Sequence[float],
    expected: Sequence[float] | None,
    *,
    title: str,
    xlabel: str,
    ylabel: str = "count",
    observed_label: str = "observed",
    expected_label: str = "expected",
) -> str:
    """Bars of observed counts with the expected counts of a law drawn over them as a line with markers."""
    figure = _figure(6.4, 3.2)
    axes = _axes(figure)
    positions = list(range(len(labels)))
    axes.bar(positions, [float(v) for v in observed], width=0.8, color=PALETTE[0], label=observed_label)
    if expected is not None:
        axes.plot(positions, [float(v) for v in expected], color=EXPECTED_COLOR, marker="o", markersize=3,
                  linewidth=1.2, label=expected_label)
        _legend_outside(axes)
    _count_axis(axes.yaxis)
    step = max(1, math.ceil(len(labels) / 20))
    axes.set_xticks(positions[::step], [str(label) for label in labels][::step])
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(axis="x", visible=False)
    return to_data_uri(figure)


@_styled
def count_histogram(sizes: Mapping[int, int], *, title: str, xlabel: str, ylabel: str) -> str:
    """Bars of how many items have each integer size (e.g. dedup clusters by number of documents)."""
    keys = sorted(sizes)
    return histogram_vs_expected(keys, [sizes[k] for k in keys], None, title=title, xlabel=xlabel, ylabel=ylabel)


@_styled
def s_curve(
    threshold: float,
    bands: int,
    rows: int,
    probability: Sequence[float],
    similarity: Sequence[float],
    observed_similarities: Sequence[float] = (),
) -> str:
    """P(candidate | Jaccard s) of the LSH banding, the threshold, and the similarities of the pairs found."""
    figure = _figure(6.4, 3.2)
    axes = _axes(figure)
    axes.plot(list(similarity), list(probability), color=PALETTE[0], linewidth=1.8,
              label=f"1 - (1 - s^{rows})^{bands}")
    axes.axvline(threshold, color=PALETTE[3], linestyle="--", linewidth=1.0, label=f"threshold {threshold:g}")
    if observed_similarities:
        axes.plot(list(observed_similarities), [-0.03] * len(observed_similarities), "|", color=PALETTE[1],
                  markersize=9, label="dropped near duplicates (estimated Jaccard)")
    axes.set_xlim(0, 1)
    axes.set_ylim(-0.07, 1.03)
    axes.set_xlabel("Jaccard similarity s of two documents' shingle sets")
    axes.set_ylabel("P(candidate pair)")
    axes.set_title(f"LSH S-curve: {bands} bands x {rows} rows")
    _legend_outside(axes)
    return to_data_uri(figure)


@_styled
def line_chart(
    x: Sequence[float],
    lines: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xticklabels: Sequence[str] | None = None,
    markers_on_all: bool = False,
) -> str:
    """One or more lines over a shared x axis (the training loss and its running mean; retention per step).

    With `xticklabels`, x are positions 0..n-1 of named categories. Markers (at most 40 points) go on the
    first line, the measured one, unless `markers_on_all` (several measured series)."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(6.4, 3.2)
    axes = _axes(figure)
    for index, (name, values) in enumerate(lines.items()):
        marker = "o" if len(x) <= 40 and (index == 0 or markers_on_all) else None
        axes.plot(list(x), [float(v) for v in values], label=name, color=PALETTE[index % len(PALETTE)],
                  linewidth=1.6 if index == 0 else 1.2, marker=marker, markersize=3)
    if xticklabels is None and all(float(v).is_integer() for v in x):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if xticklabels is not None:
        axes.set_xticks(list(x), list(xticklabels), rotation=20 if len(x) > 5 else 0,
                        ha="right" if len(x) > 5 else "center")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if len(lines) > 1:
        _legend_outside(axes)
    return to_data_uri(figure)
