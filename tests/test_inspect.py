"""`glm-corpus inspect`: colour in the terminal and the attention-mask picture.

Colour is only ANSI escapes wrapped around pieces of the plain text (so the plain text is what you get with
the escapes removed), on by default only on a terminal, off under NO_COLOR; each Part-B span has the colour
of its mask token in Part A. The picture is a PNG (or SVG) whose pixels show `kernels.dense_attention_mask`
of the row: checked cell by cell on a grid, away from the drawn boundary lines.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import orjson
import pytest

from common.errors import GLMCorpusError
from kernels import dense_attention_mask
from masking.config import MaskingConfig
from masking.inspect import (
    ALLOWED_COLOR,
    MASKED_COLOR,
    PART_A,
    SOP_EOP,
    color_enabled,
    inspect_row,
    strip_ansi,
    write_mask_picture,
)
from masking.stage import run_masking
from masking.synthetic import write_mip_shards, write_text_shards

ROOT = Path(__file__).parents[1]
ESCAPE = "\x1b["


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    write_text_shards(root / "tokens", {"pile": (150, 500.0), "wudao": (150, 200.0)}, seed=5)
    write_mip_shards(root / "mip", {"anli": 60}, seed=6)
    config = MaskingConfig(rows_per_shard=32, rows_per_block=16, seed=2)
    run_masking(root / "tokens", root / "train", config, mip=root / "mip", progress=False)
    return root / "train"


def _row_with(train: Path, kind: str, segments: int = 1) -> int:
    """The first row whose first segment is of `kind` and that has at least `segments` segments."""
    for row in range(40):
        summary, _ = inspect_row(train, row)
        if summary["segments"][0]["kind"] == kind and len(summary["segments"]) >= segments:
            return row
    raise AssertionError(f"no row with a leading {kind} segment")


def _cli(*arguments: str, env: dict[str, str] | None = None, tty: bool = False) -> tuple[int, str]:
    """Run `glm-corpus` in a subprocess, its stdout a pipe or a pseudo-terminal; (exit code, stdout)."""
    command = [sys.executable, "-m", "cli", *arguments]
    environment = {**os.environ, **(env or {})}
    if not tty:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment)
        assert done.returncode == 0, done.stderr
        return done.returncode, done.stdout
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdout=follower, stderr=subprocess.PIPE, cwd=ROOT, env=environment)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait()
    os.close(leader)
    assert process.returncode == 0, process.stderr.read()
    return process.returncode, b"".join(chunks).decode()


# ------------------------------------------------------------------------------------------------ colour


def test_plain_text_has_no_escapes_and_keeps_its_layout(train):
    row = _row_with(train, "mask")
    summary, text = inspect_row(train, row, full=True)
    assert ESCAPE not in text
    lines = text.splitlines()
    assert lines[0] == f"row {row} of {summary['rows']} in {train} (2048 tokens)"
    first = summary["segments"][0]
    assert lines[2].startswith(
        f"== segment 0: mask [0, {first['sep']}) A + [{first['sep']}, {first['end']}) B, "
    )
    assert lines[3] == f"Part A ({first['sep']} tokens, positions 0..{first['sep'] - 1}):"
    assert lines[5] == f"Part B ({len(first['part_b'])} block(s)):"
    assert re.fullmatch(
        r"  @\d+ mask position \d+, block positions 1\.\.\d+: \[sop\] .*  ->  .* \[eop\]", lines[6]
    )


def test_colour_only_adds_escapes(train):
    for row in range(0, 12, 3):
        for full in (False, True):
            plain_summary, plain = inspect_row(train, row, full=full)
            summary, coloured = inspect_row(train, row, full=full, color=True)
            assert ESCAPE in coloured
            assert strip_ansi(coloured) == plain
            assert summary == plain_summary


def test_each_span_has_the_colour_of_its_mask_token(train):
    row = _row_with(train, "mask")
    summary, text = inspect_row(train, row, full=True, color=True)
    segment = summary["segments"][0]
    lines = text.splitlines()
    part_a, blocks = lines[4], lines[6 : 6 + len(segment["part_b"])]
    # Part A: ordinary tokens blue; each [MASK] bold reverse video in a span colour, in Part-A order.
    assert f"{ESCAPE}{PART_A}m" in part_a
    mask_colours = re.findall(r"\x1b\[1;7;(\d+)m\[MASK\]\x1b\[0m", part_a)
    assert len(mask_colours) == len(segment["part_b"]) > 1
    by_position = dict(zip(sorted(b["mask_position"] for b in segment["part_b"]), mask_colours))
    for block, line in zip(segment["part_b"], blocks):
        colour = by_position[block["mask_position"]]
        # The block's mask position (underlined) and its span tokens and targets, in its mask's colour.
        assert f"mask position {ESCAPE}4;{colour}m{block['mask_position']}{ESCAPE}0m" in line
        span = " ".join(map(str, block["tokens"][1:]))
        assert line.count(f"{ESCAPE}{colour}m{span}{ESCAPE}0m") == 2, line
        assert f"{ESCAPE}{SOP_EOP}m[sop]{ESCAPE}0m" in line and f"{ESCAPE}{SOP_EOP}m[eop]{ESCAPE}0m" in line
    # Neighbouring spans differ (the palette has ten colours).
    assert len(set(mask_colours[:10])) == min(10, len(mask_colours))


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("choice", "tty", "environ", "expected"),
    [
        ("auto", True, {}, True),
        ("auto", False, {}, False),
        ("auto", True, {"NO_COLOR": "1"}, False),
        ("auto", True, {"NO_COLOR": ""}, True),  # no-color.org: set and non-empty
        ("auto", True, {"TERM": "dumb"}, False),
        ("always", False, {"NO_COLOR": "1"}, True),  # an explicit flag wins over NO_COLOR
        ("never", True, {}, False),
    ],
)
def test_when_colour_is_on(choice, tty, environ, expected):
    assert color_enabled(choice, _Stream(tty), environ) is expected


def test_cli_colour_flags_and_no_color(train):
    environment = {"NO_COLOR": "", "TERM": "xterm"}
    _, piped = _cli("inspect", str(train), "3", env=environment)
    _, never = _cli("inspect", str(train), "3", "--color", "never", env=environment)
    _, always = _cli("inspect", str(train), "3", "--color", "always", env={"NO_COLOR": "1"})
    assert ESCAPE not in piped and piped == never
    assert piped == inspect_row(train, 3)[1] + "\n"
    assert ESCAPE in always and strip_ansi(always) == piped
    _, on_terminal = _cli("inspect", str(train), "3", env=environment, tty=True)
    _, no_color = _cli("inspect", str(train), "3", env={"NO_COLOR": "1", "TERM": "xterm"}, tty=True)
    assert ESCAPE in on_terminal and ESCAPE not in no_color
    assert strip_ansi(on_terminal) == no_color  # both through the terminal's \r\n


# ----------------------------------------------------------------------------------------- mask picture


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])


def test_mask_png_shows_the_attention_rule(train, tmp_path, capsys):
    from PIL import Image

    from cli import main

    row = _row_with(train, "gmask", segments=3)
    png, svg = tmp_path / "mask.png", tmp_path / "mask.svg"
    arguments = ["inspect", str(train), str(row), "--mask-png", str(png), "--mask-svg", str(svg)]
    assert main([*arguments, "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    info = summary["mask_pictures"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "mask.svg"]  # no temporary left over
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (info["width"], info["height"]) == (704, 770)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert ElementTree.parse(svg).getroot().tag.endswith("svg")

    segments = summary["segments"]
    table = np.array([[s["start"], s["sep"], s["end"]] for s in segments])
    mask = dense_attention_mask(table, 2048)
    left, top, right, bottom = info["axes_box"]

    def pixel(query: int, key: int) -> np.ndarray:
        x = left + (key + 0.5) / 2048 * (right - left)
        y = top + (query + 0.5) / 2048 * (bottom - top)
        return pixels[int(y), int(x)]

    def shows(query: int, key: int, colour: str) -> bool:
        return bool(np.abs(pixel(query, key) - _rgb(colour)).max() <= 8)

    first, second = segments[0], segments[1]
    middle_a = (first["start"] + first["sep"]) // 2
    middle_b = (first["sep"] + first["end"]) // 2
    assert shows(middle_a, middle_a, ALLOWED_COLOR), "Part A sees Part A"
    assert shows(middle_b, middle_a, ALLOWED_COLOR), "Part B sees Part A"
    assert shows(middle_a, middle_b, MASKED_COLOR), "Part A never sees Part B"
    second_a = (second["start"] + second["sep"]) // 2
    assert shows(second_a, middle_a, MASKED_COLOR), "segment 2 never sees segment 1"
    assert shows(middle_a, second_a, MASKED_COLOR), "segment 1 never sees segment 2"

    # Every grid cell away from the drawn lines and from a change of the mask has the mask's colour.
    margin = 12  # tokens: ~3 pixels at 2048 tokens over ~550 pixels
    lines = np.unique(table)
    checked = 0
    for query in range(margin, 2048 - margin, 37):
        for key in range(margin, 2048 - margin, 37):
            if np.abs(lines - query).min() <= margin or np.abs(lines - key).min() <= margin:
                continue
            window = mask[query - margin : query + margin + 1, key - margin : key + margin + 1]
            if window.min() != window.max():
                continue
            assert shows(query, key, ALLOWED_COLOR if mask[query, key] else MASKED_COLOR), (query, key)
            checked += 1
    assert checked > 500

    # The same row gives the same bytes (no dates or random ids in the files).
    again = tmp_path / "again"
    again.mkdir()
    write_mask_picture(summary, again / "mask.png")
    write_mask_picture(summary, again / "mask.svg", "svg")
    assert (again / "mask.png").read_bytes() == png.read_bytes()
    assert (again / "mask.svg").read_bytes() == svg.read_bytes()


def test_mask_picture_without_matplotlib_says_what_to_install(train, tmp_path, monkeypatch, capsys):
    from cli import main

    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    summary, _ = inspect_row(train, 0)
    with pytest.raises(GLMCorpusError, match=r"pip install 'glm-corpus\[report\]'"):
        write_mask_picture(summary, tmp_path / "mask.png")
    assert main(["inspect", str(train), "0", "--mask-png", str(tmp_path / "mask.png")]) == 1
    assert "needs matplotlib" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
