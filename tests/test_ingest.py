"""The ingest stage end to end on Ray: raw files in three formats -> token shards + manifest.

Checks the acceptance items of the pipeline: decoded shards equal the kept documents, the manifest
accounts for every record, Megatron reads the shards, 1 and 2 workers give identical bytes, a driver
killed mid-run resumes to identical bytes, and planted cross-source duplicates are removed once.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from common.progress import Progress
from pipeline import special_tokens
from pipeline.document import DropLog
from pipeline.ingest import IngestConfig, run_ingest
from pipeline.normalize import NormalizeStep
from pipeline.quality import QualityFilter
from pipeline.readers import make_reader
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


@pytest.fixture(scope="module")
def reference_texts(ingested):
    """Per input document, recomputed here from the raw files with the project's own steps: the text the
    reader yields, and the text after NormalizeStep (None when normalization dropped it); by (file, offset)."""
    _, manifest, _ = ingested
    read, normalized = {}, {}
    for item in manifest["inputs"]:
        reader = make_reader(item["format"], source=item["source"])
        docs = list(reader.read(item["path"], DropLog()))
        for doc in docs:
            read[doc.input_file, doc.offset] = doc.text
        for doc in NormalizeStep().run(docs, DropLog()):
            normalized[doc.input_file, doc.offset] = doc
    return read, normalized


def test_shards_decode_to_the_kept_documents(ingested, reference_texts, tiny_model):
    out, manifest, _ = ingested
    _, normalized = reference_texts
    tokenizer = GLMTokenizer(tiny_model)
    quality = QualityFilter(IngestConfig().quality)
    expected_langs = {"pile": {"en"}, "wudao": {"zh"}, "crawl": {"en", "zh"}}
    for source, entry in manifest["sources"].items():
        shards = TokenShards(out / source)
        table = shards.provenance.to_pylist()
        assert len(shards) == entry["docs_out"] > 0, source
        rewritten = 0
        for i, row in enumerate(table):
            ids = shards[i]
            assert ids[-1] == special_tokens.EOD and special_tokens.EOD not in ids[:-1], row["doc_id"]
            doc = normalized[row["input_file"], row["offset"]]
            assert row["doc_id"] == doc.doc_id and row["source"] == source
            assert row["lang"] in expected_langs[source]
            # Only the C4 line rules (crawl) rewrite text after normalization; elsewhere the shard holds the
            # normalized text exactly.
            text = doc.text
            if source in quality.config.c4_sources:
                text = quality.check(doc.text, row["lang"], source).text
                rewritten += text != doc.text
            assert tokenizer.decode(ids[:-1]) == text, row["doc_id"]
        if source not in quality.config.c4_sources:
            assert rewritten == 0


def test_manifest_stages_chain_per_source(ingested, reference_texts):
    _, manifest, _ = ingested
    read, normalized = reference_texts
    chain = ["read", "normalize", "langid", "quality", "tokenize"]
    for source, entry in manifest["sources"].items():
        stages = entry["stages"]
        assert set(stages) == set(chain), source
        for name in chain:
            stage = stages[name]
            assert stage["docs_in"] == stage["docs_out"] + sum(stage["dropped"].values()), (source, name)
        for before, after in zip(chain, chain[1:]):
            assert stages[before]["docs_out"] == stages[after]["docs_in"], (source, before, after)
            assert stages[before]["bytes_out"] == stages[after]["bytes_in"], (source, before, after)
        assert stages["read"]["docs_in"] == entry["docs_in"]
        assert stages["read"]["bytes_in"] == entry["bytes_in"]
        # Bytes in and out are the UTF-8 size of the texts, recomputed here from the raw files.
        files = set(entry["files"])
        assert stages["read"]["bytes_out"] == sum(
            len(text.encode()) for (path, _), text in read.items() if path in files)
        assert stages["normalize"]["bytes_out"] == sum(
            len(doc.text.encode()) for (path, _), doc in normalized.items() if path in files)
        for name in ("normalize", "langid", "quality"):  # they strip, drop or remove lines: never grow
            assert stages[name]["bytes_out"] <= stages[name]["bytes_in"], (source, name)
        assert stages["langid"]["bytes_out"] < stages["langid"]["bytes_in"] or not stages["langid"]["dropped"]
        tokenize = stages["tokenize"]
        assert tokenize["bytes_out"] == tokenize["bytes_in"] and tokenize["docs_out"] == tokenize["docs_in"]
        # Dedup runs after tokenize: it accounts for the rest, and every drop is some stage's or dedup's.
        assert tokenize["tokens_out"] >= entry["tokens_out"]
        by_stage = Counter()
        for name in chain:
            by_stage.update(stages[name]["dropped"])
        by_dedup = Counter(entry["dropped"]) - by_stage
        assert all(reason.startswith("duplicate_") for reason in by_dedup), by_dedup
        assert tokenize["docs_out"] - sum(by_dedup.values()) == entry["docs_out"]
        assert by_stage + by_dedup == Counter(entry["dropped"])


def test_progress_log_line_shows_docs_and_megabytes_per_second():
    now = [0.0]
    stream = io.StringIO()  # not a TTY: periodic log lines instead of a bar
    bar = Progress("ingest", total=4, unit="file", stream=stream, log_every_s=10.0, clock=lambda: now[0])
    now[0] = 5.0
    bar.update(1, bytes=20e6, docs=1000, tokens=2e6)
    assert stream.getvalue() == ""  # less than log_every_s since the start
    now[0] = 10.0
    bar.update(1, bytes=30e6, docs=1500, tokens=3e6)
    assert stream.getvalue() == "[ingest] 2/4 files, 0.2 file/s, ETA 10s, 250 docs/s, 5.0 MB/s, 5.00M tok\n"
    now[0] = 12.0
    bar.update(1, bytes=10e6, docs=500, tokens=1e6)
    assert stream.getvalue().count("\n") == 1  # the next line is due 10 s after the last one
    now[0] = 30.0
    bar.close()
    assert stream.getvalue().splitlines()[-1] == (
        "[ingest] 3/4 files, 0.1 file/s, ETA 10s, 100 docs/s, 2.0 MB/s, 6.00M tok (done)"
    )


def test_progress_bar_on_a_terminal_shows_docs_per_second():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    now = [0.0]
    stream = Terminal()
    with Progress("ingest", total=2, unit="file", stream=stream, clock=lambda: now[0]) as bar:
        now[0] = 4.0
        bar.update(1, bytes=8e6, docs=2000, tokens=1e6)
    assert "500 docs/s, 2.0 MB/s, 1.00M tok" in stream.getvalue()


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
    # Off a terminal the progress bar is a log line with documents/s and MB/s (the line on close at least).
    assert re.search(r"\[ingest\] \d+/\d+ files, .*\d+ docs/s, [\d.]+ MB/s", result.stderr)
    assert shard_digest(tmp_path) == shard_digest(out)


def test_strict_fails_on_the_first_malformed_record(small_raw_corpus, tiny_model, tmp_path, ray_session):
    raw, _ = small_raw_corpus
    from cli import main

    code = main(["ingest", "--input", str(raw / "pile"), "--out", str(tmp_path), "--tokenizer",
                 str(tiny_model), "--workers", "1", "--strict"])
    assert code == 1
