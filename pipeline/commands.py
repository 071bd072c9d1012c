"""CLI: `demo`, `ingest`, `dedup`, `tokenizer` (the pipeline's stages and the one-command demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.command import CommandResult


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run every stage on the built-in bilingual corpus",
        description=(
            "Build the default raw corpus (Python docs in English, People's Daily and reviews in Chinese, "
            "from installed packages: no download), train the default tokenizer, and run every stage into "
            "OUT: raw/, tokenizer/, tokens/, mip/, train/, audit.json, report.html, checkpoints/."
        ),
    )
    demo.add_argument("--out", required=True, help="output directory of the demo run")
    demo.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    demo.add_argument("--scale", type=float, default=1.0, help="fraction of the default corpus to use")
    demo.add_argument("--ray-address", help="existing Ray cluster to use instead of an embedded one")
    demo.add_argument("--train-steps", type=int, default=20, help="reference-trainer steps at the end (default 20)")
    demo.set_defaults(run=_run_demo)

    ingest = subparsers.add_parser(
        "ingest",
        help="raw corpora -> language ID -> quality -> dedup -> token shards",
        description=(
            "Read Pile (.jsonl/.jsonl.zst), WuDao (.json arrays), crawl (.warc.gz, .wet.gz, .jsonl) files, "
            "normalize, identify languages, filter, deduplicate, tokenize and write Megatron-compatible "
            "token shards per source with a manifest accounting for every input record. A rerun resumes."
        ),
    )
    ingest.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="files, directories or URIs (s3://bucket/prefix, file://...)")
    ingest.add_argument("--out", required=True, help="output directory or URI (token shards + manifest.json)")
    ingest.add_argument("--stage", metavar="DIR",
                        help="local staging directory for a remote --out (default: under the system temp dir)")
    ingest.add_argument("--tokenizer", help="ice_text.model (default: ~/.icetk_models/ice_text.model)")
    ingest.add_argument("--workers", type=int, help="Ray workers (default 2)")
    ingest.add_argument("--ray-address", help="existing Ray cluster address (default: embedded Ray)")
    ingest.add_argument("--format", choices=["pile", "wudao", "warc", "wet", "jsonl"], help="override detection")
    ingest.add_argument("--no-dedup", action="store_true", help="skip exact and near deduplication")
    ingest.add_argument("--strict", action="store_true", help="fail on the first malformed record")
    ingest.add_argument("--config", help="YAML/TOML run config (section 'ingest')")
    ingest.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ingest.set_defaults(run=_run_ingest)

    dedup = subparsers.add_parser(
        "dedup",
        help="explain or tune the near-duplicate parameters",
        description=(
            "Deduplication runs inside `ingest` (on by default). `dedup --explain` prints the LSH bands x rows "
            "chosen for a threshold and the S-curve: the probability that a pair of documents with Jaccard "
            "similarity s becomes a candidate."
        ),
    )
    dedup.add_argument("--explain", action="store_true", help="print the parameters and the S-curve")
    dedup.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold (default 0.8)")
    dedup.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default 128)")
    dedup.set_defaults(run=_run_dedup)

    tokenizer = subparsers.add_parser(
        "tokenizer", help="train or inspect the icetk-layout tokenizer",
        description="Train an icetk-layout SentencePiece model, or encode text with one.",
    )
    tokenizer.set_defaults(help_parser=tokenizer)
    actions = tokenizer.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train an icetk-layout SentencePiece model from text files",
        description=(
            "Train a SentencePiece model in GLM-130B's icetk layout (ids = piece id + 20000, <n> for "
            "newlines, special ids of DESIGN §2). It is the embedded default when no real ice_text.model is given."
        ),
    )
    train.add_argument("--input", nargs="+", required=True, metavar="FILE", help="plain-text training files")
    train.add_argument("--out", required=True, metavar="MODEL", help="where to write the .model file")
    train.add_argument("--vocab-size", type=int, default=32000, help="SentencePiece vocabulary size")
    train.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    train.set_defaults(run=_run_tokenizer_train)
    encode = actions.add_parser("encode", help="print the ids of a text", description="Encode text with a model.")
    encode.add_argument("text", help="text to encode")
    encode.add_argument("--tokenizer", help="ice_text.model path")
    encode.set_defaults(run=_run_tokenizer_encode)


def _run_tokenizer_train(args: argparse.Namespace) -> CommandResult:
    from pipeline.tokenizer import train_tokenizer

    summary = train_tokenizer([Path(p) for p in args.input], Path(args.out), vocab_size=args.vocab_size,
                              model_type=args.model_type)
    return CommandResult(summary)


def _run_tokenizer_encode(args: argparse.Namespace) -> CommandResult:
    from pipeline.tokenizer import GLMTokenizer

    tokenizer = GLMTokenizer(args.tokenizer)
    ids = tokenizer.encode(args.text)
    pieces = [tokenizer.id_to_piece(i) for i in ids]
    return CommandResult({"ids": ids, "pieces": pieces}, text=" ".join(f"{i}:{p}" for i, p in zip(ids, pieces)))


def _run_ingest(args: argparse.Namespace) -> CommandResult:
    from common.config import load_config
    from pipeline.ingest import IngestConfig, run_ingest

    values = {
        "inputs": args.input,
        "out": args.out,
        "tokenizer": args.tokenizer,
        "workers": args.workers,
        "ray_address": args.ray_address,
        "format": args.format,
        "strict": args.strict or None,
    }
    config = load_config(IngestConfig, args.config, section="ingest", values=values, overrides=args.set)
    if args.no_dedup:
        config.dedup.enabled = False
    manifest = run_ingest(config, progress=not args.json, stage=args.stage)
    return CommandResult(manifest, text=_ingest_text(manifest))


def _ingest_text(manifest: dict) -> str:
    lines = [f"token shards and manifest in {manifest['out']}"]
    for name, entry in manifest["sources"].items():
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(entry["dropped"].items())) or "none"
        lines.append(
            f"  {name:8s} docs_in={entry['docs_in']} docs_out={entry['docs_out']} "
            f"tokens={entry['tokens_out']} dropped: {dropped}"
        )
    return "\n".join(lines)


def _run_dedup(args: argparse.Namespace) -> CommandResult:
    from pipeline.dedup.lsh import explain, optimal_bands_rows

    bands, rows = optimal_bands_rows(args.threshold, args.num_perm)
    text = explain(args.threshold, args.num_perm)
    return CommandResult({"threshold": args.threshold, "num_perm": args.num_perm, "bands": bands, "rows": rows},
                         text=text)


def _run_demo(args: argparse.Namespace) -> CommandResult:
    from pipeline.demo import run_demo

    summary = run_demo(Path(args.out), workers=args.workers, scale=args.scale, ray_address=args.ray_address,
                       train_steps=args.train_steps)
    return CommandResult(summary, text=summary.pop("text"))
