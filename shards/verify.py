"""`glm-corpus verify`: prove that a run directory (or one shard) is internally consistent.

It checks every token shard (index, sizes, checksums, sidecar), every `manifest.json`
(`docs_in = docs_out + sum(dropped)` per source, and `docs_out` equals the documents in that source's
shards), and every training-shard directory (the masking stage's own verifier). The first problem
raises `ShardFormatError`; a clean run returns a summary of what was checked.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import orjson

from common.errors import ShardFormatError
from common.progress import Progress
from shards.token_shards import CHECKSUM_SUFFIX, IDX_SUFFIX, read_index, verify_token_shard


def verify_manifest(path: str | Path) -> dict[str, Any]:
    """Check that a pipeline manifest accounts for every input document."""
    path = Path(path)
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ShardFormatError(str(path), f"not valid JSON: {exc}") from exc
    sources = manifest.get("sources")
    if not isinstance(sources, dict):
        raise ShardFormatError(str(path), "manifest has no 'sources' mapping")
    checked = {}
    for name, entry in sources.items():
        docs_in, docs_out = entry.get("docs_in"), entry.get("docs_out")
        dropped = entry.get("dropped", {})
        if not isinstance(docs_in, int) or not isinstance(docs_out, int):
            raise ShardFormatError(str(path), f"source {name!r} lacks integer docs_in/docs_out")
        total_dropped = sum(dropped.values())
        if docs_in != docs_out + total_dropped:
            raise ShardFormatError(
                str(path),
                f"source {name!r}: docs_in {docs_in} != docs_out {docs_out} + dropped {total_dropped}",
                "documents were lost without a reason",
            )
        shard_prefixes = entry.get("shards")
        if shard_prefixes is not None:
            in_shards = 0
            for prefix in shard_prefixes:
                in_shards += read_index(path.parent / (prefix + IDX_SUFFIX)).sequence_count
            if in_shards != docs_out:
                raise ShardFormatError(
                    str(path), f"source {name!r}: docs_out {docs_out} but its shards hold {in_shards} documents"
                )
        checked[name] = {"docs_in": docs_in, "docs_out": docs_out, "dropped": total_dropped}
    return {"manifest": str(path), "sources": checked}


def _training_verifier() -> Any:
    try:
        module = importlib.import_module("shards.training_shards")
    except ModuleNotFoundError:
        return None
    return getattr(module, "verify_training_shards", None), getattr(module, "is_training_shard_dir", None)


def verify_directory(path: str | Path, check_hash: bool = True, progress: bool = True) -> dict[str, Any]:
    """Verify everything under `path` (a directory, or a token-shard prefix)."""
    path = Path(path)
    if not path.exists() and Path(str(path) + IDX_SUFFIX).exists():
        return {"token_shards": [verify_token_shard(path, check_hash)], "manifests": [], "training_shards": []}
    if path.is_file() and path.suffix == IDX_SUFFIX:
        return {"token_shards": [verify_token_shard(str(path)[: -len(IDX_SUFFIX)], check_hash)],
                "manifests": [], "training_shards": []}
    if not path.is_dir():
        raise ShardFormatError(str(path), "no such directory or shard prefix")

    prefixes = sorted({str(p)[: -len(IDX_SUFFIX)] for p in path.rglob("*" + IDX_SUFFIX)} |
                      {str(p)[: -len(CHECKSUM_SUFFIX)] for p in path.rglob("*" + CHECKSUM_SUFFIX)
                       if Path(str(p)[: -len(CHECKSUM_SUFFIX)] + ".bin").exists()})
    report: dict[str, Any] = {"path": str(path), "token_shards": [], "manifests": [], "training_shards": []}
    with Progress("verify", total=len(prefixes), unit="shard", enabled=progress) as bar:
        for prefix in prefixes:
            report["token_shards"].append(verify_token_shard(prefix, check_hash))
            bar.update(1)
    for manifest in sorted(path.rglob("manifest.json")):
        report["manifests"].append(verify_manifest(manifest))
    verifier = _training_verifier()
    if verifier is not None and all(verifier):
        verify_training, is_training_dir = verifier
        candidates = [path, *sorted(p for p in path.rglob("*") if p.is_dir())]
        for directory in candidates:
            if is_training_dir(directory):
                report["training_shards"].append(verify_training(directory))
    if not (report["token_shards"] or report["manifests"] or report["training_shards"]):
        raise ShardFormatError(str(path), "nothing to verify: no shards or manifests found")
    report["ok"] = True
    return report
