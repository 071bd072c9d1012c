"""CLI: `glm-corpus shards info PATH`, `glm-corpus verify PATH` and `glm-corpus export --train DIR --out DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.command import CommandResult
from shards.export import export_training_rows, parse_row_range, render_export
from shards.token_shards import IDX_SUFFIX, TokenShards
from shards.training_shards import TrainingShards
from shards.verify import verify_directory


def register(subparsers: argparse._SubParsersAction) -> None:
    shards = subparsers.add_parser(
        "shards", help="inspect token shards", description="Inspect Megatron-compatible token shards."
    )
    shards.set_defaults(help_parser=shards)
    actions = shards.add_subparsers(dest="shards_command", metavar="ACTION")
    info = actions.add_parser(
        "info",
        help="counts, token statistics and provenance columns of token shards",
        description="Summarise one token shard (by prefix or .idx path) or every shard under a directory.",
    )
    info.add_argument("path", help="shard prefix, .idx file, or directory of shards")
    info.set_defaults(run=run_info)

    verify = subparsers.add_parser(
        "verify",
        help="check shards, checksums and manifests of a run",
        description=(
            "Verify a run directory or one shard: index consistency, sizes, checksums, provenance "
            "sidecars, manifest accounting (docs_in = docs_out + dropped) and training-shard invariants. "
            "Exits nonzero with the first problem found."
        ),
    )
    verify.add_argument("path", help="run directory, shard directory, or shard prefix")
    verify.add_argument("--no-hash", action="store_true", help="skip checksum hashing (faster)")
    verify.set_defaults(run=run_verify)

    export = subparsers.add_parser(
        "export",
        help="write training rows to Parquet for Hugging Face `datasets`, pandas, Spark",
        description=(
            "Write rows of the training shards in --train to Parquet files in --out, one table row per "
            "training row: row, input_ids, labels (targets), loss_mask, position_ids, block_position_ids, "
            "segments ([[start, sep, end], ...]) and provenance (JSON). Files are named "
            "train-NNNNN-of-NNNNN.parquet, written atomically, streamed in row groups; export.json is "
            'written last. Load with datasets.load_dataset("parquet", data_files="OUT/*.parquet").'
        ),
    )
    export.add_argument(
        "--train", required=True, help="training-shard directory (the --out of `glm-corpus mask`)"
    )
    export.add_argument("--out", required=True, help="directory for the Parquet files")
    export.add_argument(
        "--rows", metavar="A:B", help="0-based row range, B exclusive (A:, :B, or N = 0:N); default: all rows"
    )
    export.add_argument(
        "--rows-per-file", type=int, default=16384, metavar="N", help="rows per Parquet file (default 16384)"
    )
    export.add_argument(
        "--row-group-rows",
        type=int,
        default=512,
        metavar="N",
        help="rows per Parquet row group, also the rows held in memory at once (default 512)",
    )
    export.add_argument("--no-provenance", action="store_true", help="leave out the provenance column")
    export.set_defaults(run=run_export)


def run_info(args: argparse.Namespace) -> CommandResult:
    path = Path(args.path)
    if not path.exists() and Path(str(path) + IDX_SUFFIX).exists():
        path = Path(str(path))
    shards = TokenShards(path)
    lengths = shards.lengths
    provenance = shards.provenance
    sources = {}
    if "source" in provenance.column_names:
        for name in provenance.column("source").unique().to_pylist():
            sources[name] = int((provenance.column("source").to_numpy(zero_copy_only=False) == name).sum())
    summary = {
        "shards": len(shards.prefixes),
        "documents": len(shards),
        "tokens": int(lengths.sum()),
        "tokens_per_document": {
            "min": int(lengths.min()) if len(lengths) else 0,
            "mean": float(lengths.mean()) if len(lengths) else 0.0,
            "max": int(lengths.max()) if len(lengths) else 0,
        },
        "documents_per_source": sources,
        "provenance_columns": provenance.column_names,
        "prefixes": shards.prefixes,
    }
    return CommandResult(summary)


def run_verify(args: argparse.Namespace) -> CommandResult:
    report = verify_directory(args.path, check_hash=not args.no_hash, progress=not args.json)
    text = (
        f"OK: {len(report['token_shards'])} token shard(s), {len(report['manifests'])} manifest(s), "
        f"{len(report['training_shards'])} training-shard set(s) verified under {args.path}"
    )
    return CommandResult(report, text=text)


def run_export(args: argparse.Namespace) -> CommandResult:
    rows = parse_row_range(args.rows, len(TrainingShards(args.train)))
    summary = export_training_rows(
        args.train,
        args.out,
        rows=rows,
        rows_per_file=args.rows_per_file,
        row_group_rows=args.row_group_rows,
        provenance=not args.no_provenance,
        progress=not args.json,
    )
    return CommandResult(summary, text=render_export(summary))
