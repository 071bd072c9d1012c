"""CLI: `glm-corpus mask` (token shards -> training shards) and `glm-corpus inspect DIR ROW`."""

from __future__ import annotations

import argparse
import sys

from common.command import CommandResult
from masking.inspect import COLOR_CHOICES, color_enabled, inspect_row, write_mask_picture
from masking.stage import load_masking_config, run_masking
from masking.stats import render


def register(subparsers: argparse._SubParsersAction) -> None:
    mask = subparsers.add_parser(
        "mask",
        help="build 2048-token GLM training rows ([MASK]/[gMASK]/MIP segments) from token shards",
        description=(
            "Cut the documents of the token shards (and MIP examples) into rows of exactly row_length tokens "
            "of GLM blank-infilling segments: 30% of text tokens in [MASK] segments (spans ~ Poisson(3), "
            "15% of each window), 70% in [gMASK] segments, MIP segments at their share. Writes training "
            "shards, training_shards.json and stats.json to --out. Same inputs and seed give identical bytes "
            "for any --workers."
        ),
    )
    mask.add_argument(
        "--tokens", required=True, help="token shards: DIR/<source>/ per source (or one source)"
    )
    mask.add_argument("--mip", help="MIP output of `glm-corpus mip` (its shards/ and mip-plan.json)")
    mask.add_argument("--out", required=True, help="directory for the training shards")
    mask.add_argument("--seed", type=int, help="masking seed (default 1234)")
    mask.add_argument("--rows", type=int, help="rows to write (default: one pass over the text)")
    mask.add_argument("--config", help="YAML/TOML file; its `masking` section is a MaskingConfig")
    mask.add_argument("--workers", type=int, help="Ray workers (1 = in-process; default 1)")
    mask.add_argument(
        "--ray-min-tokens",
        type=int,
        metavar="N",
        help="with --workers > 1, runs of fewer text tokens than this still build in this process "
        "(default: MaskingConfig.ray_min_tokens; 0 = always Ray)",
    )
    mask.add_argument(
        "--cross-document",
        action="store_true",
        default=None,
        help="GLM-130B layout: one segment per text row, documents separated by <eod>",
    )
    mask.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a MaskingConfig field, e.g. --set mask_ratio=0.2 (repeatable)",
    )
    mask.add_argument("--force", action="store_true", help="rebuild even if --out is up to date")
    mask.set_defaults(run=run_mask)

    inspect = subparsers.add_parser(
        "inspect",
        help="print one training row readably (segments, Part A, Part B, positions)",
        description="Show row ROW of the training shards in DIR: each segment's Part A and Part-B blocks with "
        "their 2D positions, decoded to text when a tokenizer is found. In colour, Part A is blue, each Part-B "
        "span has its own colour and its [MASK]/[gMASK] the same colour in reverse video, [sop]/[eop] are "
        "bold grey, positions underlined. --mask-png/--mask-svg draw the row's attention mask.",
    )
    inspect.add_argument("dir", help="training-shard directory (the --out of `glm-corpus mask`)")
    inspect.add_argument("row", type=int, help="row index")
    inspect.add_argument("--tokenizer", help="ice_text.model to decode with (default DIR/../tokenizer/)")
    inspect.add_argument(
        "--full", action="store_true", help="print every token (long parts are elided otherwise)"
    )
    inspect.add_argument(
        "--color",
        choices=COLOR_CHOICES,
        default="auto",
        help="colour the text with ANSI escapes (auto: only on a terminal and unless NO_COLOR is set)",
    )
    inspect.add_argument(
        "--mask-png",
        metavar="FILE",
        help="write the row's attention mask as a PNG picture (needs matplotlib: the `report` extra)",
    )
    inspect.add_argument("--mask-svg", metavar="FILE", help="the same picture as SVG")
    inspect.set_defaults(run=run_inspect)


def run_mask(args: argparse.Namespace) -> CommandResult:
    values = {
        "seed": args.seed,
        "rows": args.rows,
        "workers": args.workers,
        "ray_min_tokens": args.ray_min_tokens,
        "cross_document": args.cross_document,
    }
    config = load_masking_config(args.config, args.overrides, values)
    report = run_masking(
        args.tokens, args.out, config, mip=args.mip, progress=not args.json, force=args.force
    )
    text = render(report)
    if report.get("skipped"):
        text = f"up to date, nothing rebuilt (--force rebuilds)\n{text}"
    return CommandResult(report, text=text)


def run_inspect(args: argparse.Namespace) -> CommandResult:
    color = not args.json and color_enabled(args.color, sys.stdout)
    summary, text = inspect_row(args.dir, args.row, args.tokenizer, full=args.full, color=color)
    pictures = [
        write_mask_picture(summary, path, fmt)
        for path, fmt in ((args.mask_png, "png"), (args.mask_svg, "svg"))
        if path
    ]
    if pictures:
        summary["mask_pictures"] = pictures
        text += "\n\n" + "\n".join(
            f"attention mask: {p['path']} ({p['format']}, {p['width']}x{p['height']} px)" for p in pictures
        )
    return CommandResult(summary, text=text)
