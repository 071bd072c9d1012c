"""Token shards: Megatron byte compatibility, round trips, atomicity, and `verify` catching corruption."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli import main as cli_main
from common.errors import ShardFormatError
from shards import token_shards
from shards.token_shards import (
    INDEX_MAGIC,
    TokenShards,
    TokenShardWriter,
    read_index,
    shard_files,
    verify_token_shard,
    write_index,
)
from shards.verify import verify_directory


def write_shard(prefix, documents, source="pile"):
    with TokenShardWriter(prefix) as writer:
        for i, doc in enumerate(documents):
            writer.add(np.asarray(doc, dtype=np.int32), doc_id=f"{source}:f:{i}", source=source,
                       input_file="f.jsonl", offset=i * 100, lang="en")
    return writer.summary


def random_documents(seed, count=50):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 150_528, size=rng.integers(0, 300), dtype=np.int32) for _ in range(count)]


def test_megatron_indexed_dataset_reads_our_shard_exactly(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    documents = random_documents(0)
    prefix = str(tmp_path / "pile-00000")
    write_shard(prefix, documents)
    dataset = indexed_dataset.IndexedDataset(prefix)
    assert len(dataset) == len(documents)
    for i, doc in enumerate(documents):
        np.testing.assert_array_equal(dataset[i], doc)
        assert dataset[i].dtype == np.int32
    np.testing.assert_array_equal(dataset.sequence_lengths, [len(d) for d in documents])
    np.testing.assert_array_equal(dataset.document_indices, np.arange(len(documents) + 1))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**31 - 1), max_size=40), max_size=20))
def test_round_trip_any_documents(tmp_path_factory, documents):
    prefix = str(tmp_path_factory.mktemp("rt") / "s")
    write_shard(prefix, documents)
    shards = TokenShards(prefix)
    assert len(shards) == len(documents)
    assert [list(map(int, shards[i])) for i in range(len(shards))] == documents
    assert shards.provenance.num_rows == len(documents)
    assert verify_token_shard(prefix)["sequences"] == len(documents)


def test_index_header_fields(tmp_path):
    prefix = str(tmp_path / "s")
    write_shard(prefix, [[1, 2, 3], [4]])
    raw = shard_files(prefix)["idx"].read_bytes()
    assert raw[:9] == INDEX_MAGIC
    assert int.from_bytes(raw[9:17], "little") == 1  # version
    assert raw[17] == 4  # int32 dtype code
    assert int.from_bytes(raw[18:26], "little") == 2
    assert int.from_bytes(raw[26:34], "little") == 3
    index = read_index(shard_files(prefix)["idx"])
    assert list(index.pointers) == [0, 12]


@pytest.mark.parametrize("count", [0, 1, 6, 7, 8, 20])
def test_index_written_in_chunks_has_megatrons_layout(tmp_path, monkeypatch, count):
    """`write_index` streams its arrays a chunk at a time (7 documents here): every chunk boundary must give
    the pointers and document indices of the whole-array definition, byte for byte."""
    monkeypatch.setattr(token_shards, "INDEX_WRITE_CHUNK", 7)
    lengths = np.random.default_rng(count).integers(0, 5000, size=count).astype(np.int32)
    write_index(tmp_path / "x.idx", lengths)
    raw = (tmp_path / "x.idx").read_bytes()
    header = 34
    assert len(raw) == header + 4 * count + 8 * count + 8 * (count + 1)
    pointers = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * 4)[:-1]]) if count else np.zeros(0)
    assert raw[header:] == (lengths.astype("<i4").tobytes() + pointers.astype("<i8").tobytes()
                            + np.arange(count + 1, dtype="<i8").tobytes())
    index = read_index(tmp_path / "x.idx")
    np.testing.assert_array_equal(index.lengths, lengths)
    np.testing.assert_array_equal(index.pointers, pointers)


def test_directory_reader_concatenates_shards_in_path_order(tmp_path):
    write_shard(str(tmp_path / "b" / "x-00001"), [[7, 8]], source="b")
    write_shard(str(tmp_path / "a" / "x-00000"), [[1], [2, 3]], source="a")
    shards = TokenShards(tmp_path)
    assert [list(s) for s in shards] == [[1], [2, 3], [7, 8]]
    assert shards.provenance.column("source").to_pylist() == ["a", "a", "b"]
    assert list(shards.lengths) == [1, 2, 2]


def test_extra_provenance_columns(tmp_path):
    prefix = str(tmp_path / "mip")
    with TokenShardWriter(prefix) as writer:
        writer.add([1, 2, 3], doc_id="d0", source="rte", input_file="f", prompt_len=2, dataset="super_glue/rte")
        writer.add([4, 5], doc_id="d1", source="rte", input_file="f", prompt_len=1, dataset="super_glue/rte")
    table = TokenShards(prefix).provenance
    assert table.column("prompt_len").to_pylist() == [2, 1]
    with pytest.raises(ValueError, match="doc_id"):
        TokenShardWriter(str(tmp_path / "bad")).add([1], source="x", input_file="f")


def test_failed_write_leaves_nothing_visible(tmp_path):
    prefix = tmp_path / "s"
    with pytest.raises(RuntimeError), TokenShardWriter(str(prefix)) as writer:
        writer.add([1, 2], doc_id="d", source="x", input_file="f")
        raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def good_shard(tmp_path):
    prefix = str(tmp_path / "run" / "tokens" / "pile" / "pile-00000")
    write_shard(prefix, random_documents(1, count=20))
    return prefix


def test_verify_accepts_a_good_shard(good_shard, capsys):
    assert cli_main(["verify", good_shard]) == 0
    assert "OK: 1 token shard" in capsys.readouterr().out


def test_verify_rejects_a_flipped_byte(good_shard, capsys):
    path = shard_files(good_shard)["bin"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match="checksum mismatch"):
        verify_token_shard(good_shard)
    assert cli_main(["verify", good_shard]) == 1
    assert "checksum mismatch" in capsys.readouterr().err


def test_verify_rejects_a_truncated_bin(good_shard, capsys):
    path = shard_files(good_shard)["bin"]
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ShardFormatError, match="holds .* bytes but the index describes"):
        verify_token_shard(good_shard)
    run = path.parents[2]  # the run directory: verify finds the shard itself
    assert cli_main(["verify", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"glm-corpus verify: error: {path}: holds {size - 4} bytes but the index describes {size}" in err
    assert "Traceback" not in err


def test_verify_rejects_an_index_whose_counts_disagree(good_shard, capsys):
    path = shard_files(good_shard)["idx"]
    data = bytearray(path.read_bytes())
    count = int.from_bytes(data[18:26], "little")
    data[18:26] = (count + 1).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match="counts disagree"):
        verify_token_shard(good_shard)
    assert cli_main(["verify", good_shard]) == 1
    err = capsys.readouterr().err
    assert f"glm-corpus verify: error: {path}: " in err and "counts disagree" in err
    assert "Traceback" not in err


def test_verify_rejects_a_sidecar_with_missing_rows(good_shard):
    import pyarrow.parquet as pq

    path = shard_files(good_shard)["provenance"]
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path)
    with pytest.raises(ShardFormatError, match="rows for 20 sequences"):
        verify_token_shard(good_shard)


def test_verify_checks_manifest_accounting(tmp_path, good_shard):
    import orjson

    run = tmp_path / "run" / "tokens"
    manifest = {"sources": {"pile": {"docs_in": 25, "docs_out": 20, "dropped": {"empty_text": 5},
                                     "shards": ["pile/pile-00000"]}}}
    (run / "manifest.json").write_bytes(orjson.dumps(manifest))
    assert verify_directory(tmp_path / "run", progress=False)["ok"]
    manifest["sources"]["pile"]["docs_in"] = 26
    (run / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(ShardFormatError, match="docs_in 26 != docs_out 20 \\+ dropped 5"):
        verify_directory(tmp_path / "run", progress=False)
