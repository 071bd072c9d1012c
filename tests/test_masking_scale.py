"""The masking stage at scale (issue 12): when Ray is used, and what the driver holds per document.

- `ray_min_tokens`: with workers > 1, a run with fewer text tokens than the threshold builds its shards in the
  driver; at or above it, Ray tasks do. Either way the bytes are the same (the 1/2/3-worker identity on real
  Ray tasks is tests/test_masking.py's).
- The per-document state is int32 where values fit (document lengths, token offsets, permutations), the
  document ids are one numpy byte buffer + offsets (no Python object per document), and the text stream's
  running token counts cover a window, not every document. None of it changes a byte: the window size and the
  column reader are checked against the plain versions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest

import masking.stage as stage
from cli import build_parser
from common.errors import ConfigError
from masking.config import RAY_MIN_TOKENS, MaskingConfig
from masking.mixing import TextStream, permutation, resolve_weights
from masking.stage import load_masking_config, run_masking
from masking.store import TokenStore, _StringColumn
from masking.synthetic import write_mip_shards, write_text_shards
from shards.token_shards import TokenShards, TokenShardWriter

ROW = 2048


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("masking-scale")
    write_text_shards(root / "tokens", {"pile": (400, 500.0), "wudao": (700, 200.0)}, seed=4, docs_per_shard=150)
    write_mip_shards(root / "mip", {"anli": 80, "deepstruct_ner": 60}, seed=5, long_examples=1)
    return root


class _SpyPool(stage._InProcess):
    """Stands in for the Ray pool (no Ray started): records that the Ray path was taken."""

    made: list[tuple[int, int]] = []

    def __init__(self, workers: int, object_store_mb: int) -> None:
        super().__init__()
        _SpyPool.made.append((workers, object_store_mb))


def _files(directory: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        if path.name == "stats.json":
            stats = orjson.loads(data)
            for key in ("seconds", "tokens_per_second", "out", "workers"):
                stats.pop(key)
            data = orjson.dumps(stats, option=orjson.OPT_SORT_KEYS)
        out[path.name] = data
    return out


def test_ray_min_tokens_picks_the_engine_and_changes_no_byte(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "_RayPool", _SpyPool)
    rows = 40
    planned = rows * ROW
    cases = {
        "one worker": (1, 0, False),
        "just below": (2, planned + 1, True),
        "at the threshold": (2, planned, False),
        "always Ray": (3, 0, False),
    }
    outputs = {}
    for name, (workers, threshold, in_process) in cases.items():
        _SpyPool.made.clear()
        out = tmp_path / name.replace(" ", "-")
        config = MaskingConfig(
            seed=3, rows=rows, rows_per_shard=16, rows_per_block=8, workers=workers, ray_min_tokens=threshold
        )
        run_masking(inputs / "tokens", out, config, mip=inputs / "mip", progress=False)
        expect_ray = workers > 1 and not in_process
        assert _SpyPool.made == ([(workers, config.object_store_mb)] if expect_ray else []), name
        outputs[name] = _files(out)
    reference = outputs["one worker"]
    assert len([n for n in reference if n.endswith(".tokens")]) == 3
    for name, files in outputs.items():
        assert files == reference, name
    manifest = orjson.loads(reference["training_shards.json"])
    assert "ray_min_tokens" not in manifest["config"] and "workers" not in manifest["config"]


def test_one_pass_counts_every_text_token_against_the_threshold(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "_RayPool", _SpyPool)
    text = sum(int(TokenShards(p).lengths.sum()) for p in (inputs / "tokens").iterdir())
    for threshold, ray in ((text + 1, False), (text, True)):
        _SpyPool.made.clear()
        config = MaskingConfig(rows_per_shard=64, rows_per_block=32, workers=2, ray_min_tokens=threshold)
        run_masking(inputs / "tokens", tmp_path / str(threshold), config, progress=False)
        assert bool(_SpyPool.made) is ray


def test_threshold_config_and_flag():
    assert MaskingConfig().ray_min_tokens == RAY_MIN_TOKENS > 10 * ROW * 4096
    with pytest.raises(ConfigError, match="ray_min_tokens"):
        MaskingConfig(ray_min_tokens=-1).validate()
    args = build_parser().parse_args(["mask", "--tokens", "t", "--out", "o", "--ray-min-tokens", "0"])
    assert args.ray_min_tokens == 0
    assert load_masking_config(None, [], {"ray_min_tokens": args.ray_min_tokens}).ray_min_tokens == 0
    default = build_parser().parse_args(["mask", "--tokens", "t", "--out", "o"])
    assert load_masking_config(None, [], {"ray_min_tokens": default.ray_min_tokens}).ray_min_tokens == RAY_MIN_TOKENS


# ------------------------------------------------------------------------------- per-document memory


def test_int32_permutation_is_generator_permutation():
    for n in (0, 1, 2, 17, 1000, 70_001, 300_007):  # the last one in its own mapping (common.memory.table_array)
        for key in ((0, 0, 0), (9, 2, 5), (0, 1 << 20, 3)):
            generator = np.random.Generator(np.random.Philox(np.random.SeedSequence(list(key))))
            order = permutation(n, *key)
            assert order.dtype == np.int32
            np.testing.assert_array_equal(order, generator.permutation(n))


def _drain(stream: TextStream) -> list[tuple[int, int, int, int]]:
    out = []
    while (item := stream.next()) is not None:
        out.append(item)
    return out


@pytest.mark.parametrize(
    "weights, budget_factor",
    [({}, 1.0), ({}, 0.37), ({"a": 5, "b": 1, "c": 1}, 3.2), ({"a": 1, "b": 0, "c": 2}, 2.0)],
)
def test_text_stream_window_changes_nothing(weights, budget_factor):
    generator = np.random.default_rng(7)
    lengths = [
        generator.integers(1, 900, size=3000).astype(np.int32),
        generator.integers(1, 300, size=2000).astype(np.int32),
        np.full(40, 1000, dtype=np.int32),  # equal lengths: ties between sources' tags
    ]
    tokens = [int(x.sum()) for x in lengths]
    shares = resolve_weights(["a", "b", "c"], tokens, weights)
    budget = budget_factor * sum(tokens)
    streams = [TextStream(lengths, shares, 3, budget, batch_tokens=1 << 15, window=w) for w in (1, 5, 64, 1 << 16)]
    # The plain per-epoch arrays: every document's tokens-before, searched whole (the former implementation).
    reference = _drain(streams[-1])
    assert sum(item[2] for item in reference) == int(budget)
    for stream in streams[:-1]:
        assert _drain(stream) == reference
        assert stream.epochs_started == streams[-1].epochs_started
    for state in streams[1]._state.values():
        assert state.order.dtype == np.int32 and len(state.before) <= 2 * len(state.order)


def _store_inputs(root: Path) -> list[str]:
    """Two sources; the second has a shard whose sidecar lacks the extra column `note`, and a null `note`."""
    paths = []
    rng = np.random.default_rng(2)
    for name, shards in (("one", [(5, True), (0, True), (7, True)]), ("two", [(4, True), (6, False), (3, True)])):
        for number, (docs, with_note) in enumerate(shards):
            with TokenShardWriter(root / name / f"{name}-{number:05d}") as writer:
                for i in range(docs):
                    extra = {"note": None if (name, number, i) == ("two", 2, 1) else f"n{i}-é"} if with_note else {}
                    writer.add(
                        rng.integers(100, 200, size=int(rng.integers(2, 9)), dtype=np.int32),
                        doc_id=f"{name}:{number}:{i}:" + "文" * i,
                        source=name,
                        input_file="x",
                        **extra,
                    )
        paths.append(str(root / name))
    return paths


def test_store_reads_one_column_per_shard_and_takes_like_arrow(tmp_path):
    paths = _store_inputs(tmp_path)
    store = TokenStore(paths)
    whole = [TokenShards(p).provenance for p in paths]
    for s, table in enumerate(whole):
        ids = store.sources[s].column("doc_id")
        assert isinstance(ids, _StringColumn)
        assert ids.offsets.dtype == np.int64 and ids.offsets.nbytes == 8 * (table.num_rows + 1)
        assert int(ids.offsets[-1]) == sum(len(d.encode()) for d in table.column("doc_id").to_pylist())
        assert store.column(s, "doc_id").to_pylist() == table.column("doc_id").to_pylist()
        assert store.sources[s].lengths.dtype == np.int32 and store.sources[s].doc_token.dtype == np.int32
        np.testing.assert_array_equal(store.sources[s].lengths, TokenShards(paths[s]).lengths)
    source = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    doc = np.array([12, 3, 0, 5, 11, 0, 9, 7])
    expected = [whole[s].column("doc_id")[d].as_py() for s, d in zip(source, doc)]
    taken = store.take(source, doc, "doc_id")
    assert taken.type == pa.string() and taken.to_pylist() == expected
    assert store.take(source[:0], doc[:0], "doc_id").to_pylist() == []
    # `note`: the empty shard of source 0 and a shard of source 1 lack it, and source 1 has a null: Arrow
    # arrays with nulls filled in, as reading the whole sidecars gives.
    for s in (0, 1):
        assert not isinstance(store.sources[s].column("note"), _StringColumn)
        assert store.column(s, "note").to_pylist() == whole[s].column("note").to_pylist()
    assert store.take(source, doc, "note").to_pylist() == [whole[s].column("note")[d].as_py() for s, d in zip(source, doc)]


def test_string_column_grows_past_a_short_estimate():
    column = _StringColumn(total=5, capacity=3)
    column.append(pa.array(["abc", "", "défg"]))
    column.append(pa.array(["x", "yyyyyyyy"], type=pa.large_string()).slice(0, 2))
    assert column.take(np.array([4, 0, 1, 2, 3, 2])).to_pylist() == ["yyyyyyyy", "abc", "", "défg", "x", "défg"]


def test_a_string_column_with_nulls_falls_back_to_arrow(tmp_path):
    for number, notes in enumerate((["a", "b"], ["c", None, "d"])):
        with TokenShardWriter(tmp_path / "src" / f"src-{number:05d}") as writer:
            for i, note in enumerate(notes):
                writer.add(np.arange(3, dtype=np.int32) + 100, doc_id=f"{number}:{i}", source="s", input_file="x",
                           note=note if note is not None else "z")
    # The writer infers `note` from the first document; rewrite one value as null via a sidecar edit.
    import pyarrow.parquet as pq

    sidecar = tmp_path / "src" / "src-00001.provenance.parquet"
    table = pq.read_table(sidecar)
    notes = pa.array(["c", None, "d"], pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("note"), "note", notes), sidecar)
    store = TokenStore([str(tmp_path / "src")])
    assert not isinstance(store.sources[0].column("note"), _StringColumn)
    assert store.column(0, "note").to_pylist() == ["a", "b", "c", None, "d"]
    assert store.take(np.zeros(3, np.int64), np.array([3, 0, 4]), "note").to_pylist() == [None, "a", "d"]


def _ingest_style_shards(root, odd_one=None):
    """Two shards whose doc ids are `source:input_file:offset`, as the ingest writes them (two input files),
    except document `odd_one` (shard, index), whose id is something else."""
    for number in range(2):
        with TokenShardWriter(root / "src" / f"src-{number:05d}") as writer:
            for i in range(5):
                input_file = f"/data/路径/file-{(number + i) % 2}.jsonl"
                offset = 1000 * number + 37 * i - (1 if i == 4 else 0)
                doc_id = "custom-id" if (number, i) == odd_one else f"pile:{input_file}:{offset}"
                writer.add(np.arange(i + 1, dtype=np.int32), doc_id=doc_id, source="pile",
                           input_file=input_file, offset=offset)
    return str(root / "src")


def test_ingest_style_doc_ids_are_held_as_prefix_number_and_offset(tmp_path):
    from masking.store import _PrefixedColumn

    path = _ingest_style_shards(tmp_path)
    store = TokenStore([path])
    ids = store.sources[0].column("doc_id")
    assert isinstance(ids, _PrefixedColumn)
    assert len(ids.prefixes) == 2 and ids.prefix.dtype == np.int32 and ids.offset.dtype == np.int64
    expected = TokenShards(path).provenance.column("doc_id").to_pylist()
    assert store.column(0, "doc_id").to_pylist() == expected
    docs = np.array([9, 0, 4, 4, 7])
    taken = store.take(np.zeros(5, np.int64), docs, "doc_id")
    assert taken.type == pa.string() and taken.to_pylist() == [expected[d] for d in docs]


def test_one_doc_id_off_the_pattern_keeps_the_ids_as_strings(tmp_path):
    path = _ingest_style_shards(tmp_path, odd_one=(1, 3))
    store = TokenStore([path])
    assert isinstance(store.sources[0].column("doc_id"), _StringColumn)
    assert store.column(0, "doc_id").to_pylist() == TokenShards(path).provenance.column("doc_id").to_pylist()
