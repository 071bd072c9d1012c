"""`verify` ties training rows back to their documents: on sample rows, each segment's text (Part A
with its spans put back) must equal the token-shard pieces its provenance names (issue 10)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from common.errors import ShardFormatError
from masking.config import MaskingConfig
from masking.stage import run_masking
from masking.synthetic import write_mip_shards, write_text_shards
from shards.token_shards import TokenShards, _hash_file, read_index, shard_files
from shards.training_shards import TrainingShards, verify_training_shards


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("provenance")
    write_text_shards(root / "tokens", {"pile": (300, 600.0), "wudao": (400, 250.0)}, seed=3)
    write_mip_shards(root / "mip", {"anli": 200}, seed=4)
    run_masking(root / "tokens", root / "train", MaskingConfig(rows=96, rows_per_shard=32, rows_per_block=16),
                mip=root / "mip", progress=False)
    return root


def _copy(run: Path, tmp_path: Path) -> Path:
    """A copy of the run whose training manifest points at the copied token shards."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    manifest_path = copy / "train" / "training_shards.json"
    manifest_path.write_bytes(manifest_path.read_bytes().replace(str(run).encode(), str(copy).encode()))
    return copy


def _rewrite_first_document(prefix: str) -> str:
    """Change one token of document 0 and update the shard's own checksum record, so the token shard
    alone still verifies: only the tie to the training rows can notice."""
    files = shard_files(prefix)
    tokens = np.fromfile(files["bin"], dtype=np.int32)
    tokens[1] += 1
    tokens.tofile(files["bin"])
    record = orjson.loads(files["checksum"].read_bytes())
    record["bin_xxh3_128"] = _hash_file(files["bin"])
    files["checksum"].write_bytes(orjson.dumps(record))
    return record["bin_xxh3_128"]


def test_every_sampled_segment_is_its_documents(run):
    report = verify_training_shards(run / "train", sample_rows=40)
    assert report["provenance"]["checked_segments"] >= 40  # every sampled row has at least one segment


def test_a_token_shard_changed_after_masking_is_named(run, tmp_path):
    copy = _copy(run, tmp_path)
    prefix = str(sorted((copy / "tokens" / "pile").glob("*.idx"))[0])[: -len(".idx")]
    _rewrite_first_document(prefix)
    with pytest.raises(ShardFormatError, match="changed since the training shards were made"):
        verify_training_shards(copy / "train", sample_rows=40)


def test_provenance_that_names_the_wrong_text_fails(run, tmp_path):
    """The fingerprint agrees (as if masking had read the changed shard) but the rows hold the old text."""
    copy = _copy(run, tmp_path)
    manifest_path = copy / "train" / "training_shards.json"
    manifest = orjson.loads(manifest_path.read_bytes())
    # Change a token of the first document piece of the last row's first segment (always sampled).
    shards = TrainingShards(copy / "train")
    entry = shards.batch([len(shards) - 1])["provenance"][0][0]
    doc_id = entry["doc_ids"][0]
    for fingerprint in manifest["inputs"]["fingerprint"]:
        shard = TokenShards(fingerprint["shard"])
        ids = shard.provenance.column("doc_id").to_pylist()
        if doc_id in ids:
            files = shard_files(fingerprint["shard"])
            tokens = np.fromfile(files["bin"], dtype=np.int32)
            start = int(read_index(files["idx"]).pointers[ids.index(doc_id)]) // 4 + entry["doc_offsets"][0]
            tokens[start] += 1
            tokens.tofile(files["bin"])
            record = orjson.loads(files["checksum"].read_bytes())
            record["bin_xxh3_128"] = fingerprint["bin_xxh3_128"] = _hash_file(files["bin"])
            files["checksum"].write_bytes(orjson.dumps(record))
            break
    else:
        pytest.fail(f"{doc_id} is in none of the input shards")
    manifest_path.write_bytes(orjson.dumps(manifest))
    with pytest.raises(ShardFormatError, match="its text is not the document pieces its provenance names"):
        verify_training_shards(copy / "train", sample_rows=8, check_hash=False)


def test_moved_input_shards_skip_the_tie_and_say_so(run, tmp_path):
    copy = tmp_path / "train-only"
    shutil.copytree(run / "train", copy)
    manifest_path = copy / "training_shards.json"
    manifest_path.write_bytes(manifest_path.read_bytes().replace(str(run).encode(), b"/nonexistent"))
    report = verify_training_shards(copy, check_hash=False)
    assert report["provenance"]["checked_segments"] == 0
    assert "input shards not found" in report["provenance"]["skipped"]
