"""Interop with users' tools (issue 11): the torch IterableDataset and the Parquet / Hugging Face export.

The dataset must yield every row exactly once per epoch across DataLoader workers and distributed ranks, in
an order fixed by (seed, epoch) and independent of the worker count, with tensors equal to
`TrainingShards.batch`. The export must hold every column of `TrainingShards.batch` for every row, in files
that appear only complete, and load with `datasets.load_dataset("parquet", ...)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

import shards.export as export_module
from cli import main
from common.errors import ConfigError
from kernels import dense_attention_mask
from masking.config import MaskingConfig
from masking.stage import run_masking
from masking.synthetic import write_mip_shards, write_text_shards
from shards.export import EXPORT_MANIFEST, export_training_rows, parse_row_range
from shards.torch_dataset import TrainingRowDataset, epoch_order
from shards.training_shards import TrainingShards
from trainer.data import epoch_permutation, rows_for_step

ARRAYS = ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids")
EXPORTED = {
    "input_ids": "tokens",
    "labels": "targets",
    "loss_mask": "loss_mask",
    "position_ids": "position_ids",
    "block_position_ids": "block_position_ids",
}


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """94 rows in 3 shards of 32 (the last one short, its final row padded), text and MIP segments."""
    root = tmp_path_factory.mktemp("interop")
    write_text_shards(
        root / "tokens", {"pile": (150, 600.0), "wudao": (300, 250.0)}, seed=3, docs_per_shard=100
    )
    write_mip_shards(root / "mip", {"anli": 60}, seed=4)
    config = MaskingConfig(rows_per_shard=32, rows_per_block=16, seed=5)
    run_masking(root / "tokens", root / "train", config, mip=root / "mip", progress=False)
    return root / "train"


@pytest.fixture(scope="module")
def shards(train: Path) -> TrainingShards:
    return TrainingShards(train)


def _collect(dataset: TrainingRowDataset, num_workers: int) -> list[dict]:
    """Everything a DataLoader yields (the dataset batches itself, or yields rows)."""
    return list(DataLoader(dataset, batch_size=None, num_workers=num_workers))


def _rows(items: list[dict]) -> np.ndarray:
    return np.concatenate([np.atleast_1d(item["row"].numpy()) for item in items])


def _assert_equal_to_loader(items: list[dict], shards: TrainingShards, batched: bool) -> None:
    """Every yielded tensor equals `TrainingShards.batch` for the same rows (segments up to -1 padding)."""
    for item in items:
        rows = np.atleast_1d(item["row"].numpy())
        expected = shards.batch(rows, provenance=False)
        for key in ARRAYS:
            got = item[key] if batched else item[key][None]
            assert got.dtype == torch.from_numpy(expected[key]).dtype, key
            np.testing.assert_array_equal(got.numpy(), expected[key], err_msg=key)
        segments = (item["segments"] if batched else item["segments"][None]).numpy()
        width = expected["segments"].shape[1]
        np.testing.assert_array_equal(segments[:, :width], expected["segments"])
        assert (segments[:, width:] == -1).all()


# ------------------------------------------------------------------------------------------- the dataset


def test_epoch_order_is_the_reference_trainers_permutation() -> None:
    for epoch in (0, 1, 5):
        np.testing.assert_array_equal(epoch_order(94, 7, epoch), epoch_permutation(94, 7, epoch))
    np.testing.assert_array_equal(epoch_order(5, 7, 0, shuffle=False), np.arange(5))


@pytest.mark.parametrize("batch_size", [None, 8], ids=["rows", "batches"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_process_yields_every_row_once_equal_to_the_loader(
    train: Path, shards: TrainingShards, num_workers: int, batch_size: int | None
) -> None:
    dataset = TrainingRowDataset(train, batch_size=batch_size, seed=1, read_rows=20)
    items = _collect(dataset, num_workers)
    rows = _rows(items)
    assert sorted(rows.tolist()) == list(range(len(shards)))
    assert len(items) == len(dataset) == (len(shards) if batch_size is None else -(-len(shards) // 8))
    np.testing.assert_array_equal(rows, epoch_order(len(shards), 1, 0))  # the stream is the epoch's order
    _assert_equal_to_loader(items, shards, batched=batch_size is not None)


def test_order_depends_on_seed_and_epoch_not_on_workers(train: Path) -> None:
    def stream(seed: int, epoch: int, num_workers: int) -> list[int]:
        dataset = TrainingRowDataset(train, batch_size=5, seed=seed, read_rows=10)
        dataset.set_epoch(epoch)
        return _rows(_collect(dataset, num_workers)).tolist()

    first = stream(seed=3, epoch=0, num_workers=0)
    assert stream(seed=3, epoch=0, num_workers=2) == first
    assert stream(seed=3, epoch=0, num_workers=0) == first
    reshuffled = stream(seed=3, epoch=1, num_workers=2)
    assert reshuffled != first and sorted(reshuffled) == sorted(first)
    assert stream(seed=4, epoch=0, num_workers=0) != first
    unshuffled = TrainingRowDataset(train, shuffle=False, rank=0, world_size=1)
    assert _rows(_collect(unshuffled, 0)).tolist() == sorted(first)


@pytest.mark.parametrize("batch_size", [None, 5], ids=["rows", "batches"])
def test_two_ranks_by_two_workers_partition_the_rows(
    train: Path, shards: TrainingShards, batch_size: int | None
) -> None:
    order = epoch_order(len(shards), 9, 2)
    seen = []
    for rank in (0, 1):
        dataset = TrainingRowDataset(
            train, batch_size=batch_size, seed=9, epoch=2, rank=rank, world_size=2, read_rows=12
        )
        items = _collect(dataset, num_workers=2)
        rows = _rows(items)
        np.testing.assert_array_equal(rows, order[rank::2])
        _assert_equal_to_loader(items[:3] + items[-2:], shards, batched=batch_size is not None)
        seen.append(rows)
    union = np.concatenate(seen)
    assert len(union) == len(shards) and sorted(union.tolist()) == list(range(len(shards)))


def test_rank_batches_of_a_step_are_the_trainers_step(train: Path, shards: TrainingShards) -> None:
    """With batch_size = G / ranks, step s over all ranks trains on the reference trainer's step s rows."""
    global_batch, ranks = 8, 2
    per_rank = [
        list(TrainingRowDataset(train, batch_size=global_batch // ranks, seed=11, rank=r, world_size=ranks))
        for r in range(ranks)
    ]
    for step in range(len(shards) // global_batch):
        rows = np.concatenate([per_rank[r][step]["row"].numpy() for r in range(ranks)])
        assert sorted(rows.tolist()) == sorted(rows_for_step(len(shards), step, global_batch, 11).tolist())


def test_even_ranks_and_drop_last(train: Path, shards: TrainingShards) -> None:
    even = [TrainingRowDataset(train, seed=2, rank=r, world_size=3, even_ranks=True) for r in range(3)]
    counts = [len(_rows(_collect(d, 0))) for d in even]
    assert counts == [len(shards) // 3] * 3
    union = np.concatenate([d.rank_rows() for d in even])
    assert len(set(union.tolist())) == len(union) == len(shards) - len(shards) % 3
    dropped = TrainingRowDataset(train, batch_size=8, drop_last=True, rank=0, world_size=1)
    items = list(dropped)
    assert len(items) == len(dropped) == len(shards) // 8 and all(len(i["row"]) == 8 for i in items)


def test_rank_defaults_to_torch_distributed(train: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    dataset = TrainingRowDataset(train, seed=1)
    assert (dataset.rank, dataset.world_size) == (1, 4)
    np.testing.assert_array_equal(dataset.rank_rows(), epoch_order(dataset.rows, 1, 0)[1::4])


def test_attention_mask_and_provenance_options(train: Path, shards: TrainingShards) -> None:
    dataset = TrainingRowDataset(
        train, batch_size=3, attention_mask=True, provenance=True, rank=0, world_size=1
    )
    batch = next(iter(dataset))
    expected = shards.batch(batch["row"].numpy())
    assert batch["attention_mask"].shape == (3, shards.row_length, shards.row_length)
    for i in range(3):
        mask = dense_attention_mask(expected["segments"][i], shards.row_length)
        np.testing.assert_array_equal(batch["attention_mask"][i].numpy(), mask)
        assert orjson.loads(batch["provenance"][i]) == expected["provenance"][i]
    assert "attention_mask" not in next(iter(TrainingRowDataset(train, rank=0, world_size=1)))


def test_bad_arguments_raise_config_errors(train: Path) -> None:
    with pytest.raises(ConfigError, match="rank 2"):
        TrainingRowDataset(train, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="both"):
        TrainingRowDataset(train, rank=0)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainingRowDataset(train, batch_size=0)
    with pytest.raises(ConfigError, match="max_segments"):
        list(TrainingRowDataset(train, max_segments=1, rank=0, world_size=1))


# -------------------------------------------------------------------------------------------- the export


def _read_export(out: Path) -> tuple[list[Path], dict[str, list]]:
    files = sorted(out.glob("train-*-of-*.parquet"))
    columns: dict[str, list] = {}
    for file in files:
        for name, values in pq.read_table(file).to_pydict().items():
            columns.setdefault(name, []).extend(values)
    return files, columns


def test_export_round_trip_holds_every_column_of_every_row(
    train: Path, shards: TrainingShards, tmp_path: Path
) -> None:
    summary = export_training_rows(train, tmp_path, rows_per_file=40, row_group_rows=16, progress=False)
    files, columns = _read_export(tmp_path)
    assert [f.name for f in files] == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in files] == [3, 3, 1]
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [40, 40, 14]
    assert not list(tmp_path.glob(".*.tmp"))
    expected = shards.batch(np.arange(len(shards)))
    assert columns["row"] == list(range(len(shards)))
    schema = pq.read_schema(files[0])
    for name, key in EXPORTED.items():
        assert str(schema.field(name).type) == (
            "list<element: float>" if key == "loss_mask" else "list<element: int32>"
        ), name
        np.testing.assert_array_equal(
            np.array(columns[name], dtype=expected[key].dtype), expected[key], err_msg=name
        )
    for i, segments in enumerate(columns["segments"]):
        table = expected["segments"][i]
        assert segments == table[table[:, 0] >= 0].tolist()
    assert [orjson.loads(p) for p in columns["provenance"]] == expected["provenance"]
    manifest = orjson.loads((tmp_path / EXPORT_MANIFEST).read_bytes())
    assert [f["name"] for f in manifest["files"]] == [f.name for f in files]
    assert manifest["rows"] == summary["rows"] == len(shards) and manifest["row_groups"] == 7


def test_export_cli_row_range_json_and_stale_files(
    train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export_training_rows(train, tmp_path, rows_per_file=20, progress=False)  # 5 files
    code = main(
        [
            "export",
            "--train",
            str(train),
            "--out",
            str(tmp_path),
            "--rows",
            "10:30",
            "--rows-per-file",
            "15",
            "--no-provenance",
            "--json",
        ]
    )
    assert code == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert (summary["first_row"], summary["end_row"], summary["rows"]) == (10, 30, 20)
    assert len(summary["removed_stale"]) == 5 and "provenance" not in summary["columns"]
    files, columns = _read_export(tmp_path)
    assert [f.name for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert columns["row"] == list(range(10, 30)) and "provenance" not in columns
    assert main(["export", "--train", str(train), "--out", str(tmp_path), "--rows", "90:200"]) == 1
    assert "not a nonempty range" in capsys.readouterr().err


def test_export_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--rows-per-file" in text and "load_dataset" in text


def test_parse_row_range() -> None:
    assert parse_row_range(None, 94) == (0, 94)
    assert parse_row_range("10:20", 94) == (10, 20)
    assert parse_row_range("10:", 94) == (10, 94)
    assert parse_row_range(":5", 94) == (0, 5)
    assert parse_row_range("7", 94) == (0, 7)
    for bad in ("a:b", "5:5", "0:95", "-1:3"):
        with pytest.raises(ConfigError):
            parse_row_range(bad, 94)


def test_a_failed_export_leaves_no_partial_file(
    train: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = export_module.rows_table

    def failing(*args: object, **kwargs: object):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(export_module, "rows_table", failing)
    with pytest.raises(OSError, match="disk full"):
        export_training_rows(train, tmp_path, rows_per_file=40, row_group_rows=16, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_hugging_face_datasets_loads_the_export(
    train: Path, shards: TrainingShards, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "export"
    export_training_rows(train, out, rows_per_file=50, progress=False)
    loaded = datasets.load_dataset(
        "parquet", data_files=str(out / "*.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert loaded.num_rows == len(shards)
    assert loaded.column_names == [
        "row",
        "input_ids",
        "labels",
        "loss_mask",
        "position_ids",
        "block_position_ids",
        "segments",
        "provenance",
    ]
    expected = shards.batch([0, len(shards) - 1])
    for i, row in enumerate([0, len(shards) - 1]):
        record = loaded[row]
        assert record["row"] == row
        for name, key in EXPORTED.items():
            np.testing.assert_array_equal(np.array(record[name]), expected[key][i], err_msg=name)
        assert orjson.loads(record["provenance"]) == expected["provenance"][i]
