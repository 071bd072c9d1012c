"""The ingest stage end to end on Ray: raw files in three formats -> token shards + manifest.

Checks the acceptance items of the pipeline: decoded shards equal the kept documents, the manifest
accounts for every record, Megatron reads the shards, 1 and 2 workers give identical bytes, a driver
killed mid-run resumes to identical bytes, and planted cross-source duplicates are removed once.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from pipeline import special_tokens
from pipeline.ingest import IngestConfig, run_ingest
from pipeline.tokenizer import GLMTokenizer
from shards.token_shards import TokenShards
from shards.verify import verify_directory

pytestmark = pytest.mark.ray


def shard_digest(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix in {".bin", ".idx", ".parquet"}
    }


@pytest.fixture(scope="module")
def ingested(ray_session, small_raw_corpus, tiny_model, tmp_path_factory):
    raw, summary = small_raw_corpus
    out = tmp_path_factory.mktemp("tokens")
    manifest = run_ingest(IngestConfig(inputs=[str(raw)], out=str(out), tokenizer=str(tiny_model), workers=2),
                          progress=False)
    return out, manifest, summary


def test_manifest_accounts_for_every_record(ingested):
    out, manifest, summary = ingested
    assert set(manifest["sources"]) == {"pile", "wudao", "crawl"}
    for name, entry in manifest["sources"].items():
        assert entry["docs_in"] == entry["docs_out"] + sum(entry["dropped"].values()), name
    pile = manifest["sources"]["pile"]
    assert pile["docs_in"] == summary["documents"]["pile"] + summary["malformed"]["pile"]
    assert pile["dropped"]["invalid_json"] == 1 and pile["dropped"]["empty_text"] == 1
    assert manifest["sources"]["crawl"]["dropped"]["warc_no_text"] == 1
    assert manifest["sources"]["wudao"]["docs_in"] == summary["documents"]["wudao"]
    assert verify_directory(out, progress=False)["ok"]


def test_shards_decode_to_the_kept_documents(ingested, tiny_model):
    out, manifest, _ = ingested
    tokenizer = GLMTokenizer(tiny_model)
    shards = TokenShards(out / "wudao")
    table = shards.provenance
    raw = orjson.loads(Path(manifest["inputs"][-1]["path"]).read_bytes())
    by_index = {i: r for i, r in enumerate(raw)}
    assert len(shards) == manifest["sources"]["wudao"]["docs_out"]
    for i in range(0, len(shards), 7):
        ids = shards[i]
        assert ids[-1] == special_tokens.EOD
        record = by_index[table.column("offset")[i].as_py()]
        text = tokenizer.decode(ids[:-1])
        assert record["content"].splitlines()[-1] in text
        assert text.startswith(record["title"])
        assert table.column("lang")[i].as_py() == "zh"


def test_megatron_reads_every_shard(ingested):
    out, manifest, _ = ingested
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    for source, entry in manifest["sources"].items():
        for prefix in entry["shards"]:
            ours = TokenShards(out / prefix)
            theirs = indexed_dataset.IndexedDataset(str(out / prefix))
            assert len(theirs) == len(ours)
            for i in range(0, len(ours), 5):
                assert (theirs[i] == ours[i]).all(), (source, i)


def test_cross_source_duplicates_are_removed_once(ingested):
    out, manifest, summary = ingested
    listing = pq.read_table(out / "dedup" / "dropped.parquet").to_pylist()
    planted = summary["planted_duplicates"]
    cross = [row for row in listing if row["source"] != row["survivor_source"]]
    # Each planted copy of a Pile/WuDao document is dropped (or its original is), never both.
    assert len(cross) >= planted["exact_from_pile"] + planted["exact_from_wudao"]
    exact_cross = [row for row in cross if row["reason"] == "duplicate_exact"]
    assert exact_cross and all(row["source"] == "crawl" for row in exact_cross)  # curated copies survive
    survivors = {row["survivor_doc_id"] for row in listing}
    dropped = {row["doc_id"] for row in listing}
    assert not survivors & dropped
    assert manifest["dedup"]["cross_source"]


def test_one_and_two_workers_give_identical_shards(ingested, small_raw_corpus, tiny_model, tmp_path):
    out, _, _ = ingested
    raw, _ = small_raw_corpus
    run_ingest(IngestConfig(inputs=[str(raw)], out=str(tmp_path), tokenizer=str(tiny_model), workers=1),
               progress=False)
    assert shard_digest(tmp_path) == shard_digest(out)


def test_killed_driver_resumes_to_identical_shards(ingested, small_raw_corpus, tiny_model, tmp_path):
    out, _, _ = ingested
    raw, _ = small_raw_corpus
    command = [sys.executable, "-m", "cli", "ingest", "--input", str(raw), "--out", str(tmp_path),
               "--tokenizer", str(tiny_model), "--workers", "1"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen(command, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "work").glob("*/done.json")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "manifest.json").exists(), "the run finished before it could be killed"
    finished = len(list((tmp_path / "work").glob("*/done.json")))
    assert finished >= 1
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    assert shard_digest(tmp_path) == shard_digest(out)


def test_strict_fails_on_the_first_malformed_record(small_raw_corpus, tiny_model, tmp_path, ray_session):
    raw, _ = small_raw_corpus
    from cli import main

    code = main(["ingest", "--input", str(raw / "pile"), "--out", str(tmp_path), "--tokenizer",
                 str(tiny_model), "--workers", "1", "--strict"])
    assert code == 1
