"""Training-shard format: hand-built rows round-trip through the writer, the recipe and the loader.

The expected arrays are written out by hand from DESIGN §4 for two tiny rows; random layouts then check the
vectorized reconstruction against the reference loop, and the verifier against damaged files.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from common.errors import ShardFormatError
from kernels import (
    RowRecipes,
    dense_attention_mask,
    glm130b_position_ids,
    reconstruct_batch,
    reconstruct_reference,
)
from masking.segments import build_segment_reference
from pipeline.special_tokens import EOP, GMASK, MASK, PAD, SOP
from shards import TrainingShards
from shards.training_shards import (
    KIND_GMASK,
    KIND_MASK,
    KIND_MIP,
    KIND_NAMES,
    PROVENANCE_SCHEMA,
    RECIPE_MAGIC,
    TrainingShardWriter,
    is_training_shard_dir,
    read_recipe,
    recipe_size,
    verify_training_shards,
    write_manifest,
)

L = 16
a, b, c, d, e, f, g, h, i, j, p, q, r = range(30001, 30014)

# Row 0: a [gMASK] segment (window a b c d e, suffix d e) then a [MASK] segment (window f g h i j, spans g and
# i, Part B lists i first). Row 1: one MIP segment (prompt p q, target r), then 11 padding tokens.
ROW0 = [a, b, c, GMASK, SOP, d, e, f, MASK, h, MASK, j, SOP, i, SOP, g]
ROW1 = [p, q, GMASK, SOP, r] + [PAD] * 11
EXPECTED = {
    "tokens": [ROW0, ROW1],
    "targets": [
        [a, b, c, GMASK, d, e, EOP, f, MASK, h, MASK, j, i, EOP, g, EOP],
        [p, q, GMASK, r, EOP] + [PAD] * 11,
    ],
    "loss_mask": [[0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1] + [0] * 11],
    "position_ids": [[0, 1, 2, 3, 3, 3, 3, 0, 1, 2, 3, 4, 3, 3, 1, 1], [0, 1, 2, 2, 2] + [0] * 11],
    "block_position_ids": [[0, 0, 0, 0, 1, 2, 3, 0, 0, 0, 0, 0, 1, 2, 1, 2], [0, 0, 0, 1, 2] + [0] * 11],
    "segments": [[[0, 4, 7], [7, 12, 16]], [[0, 3, 5], [-1, -1, -1]]],
}


def _provenance(rows: list[int], kinds: list[int], first_row: int = 0) -> pa.Table:
    index, last = [], None
    for row in rows:
        index.append(0 if row != last else index[-1] + 1)
        last = row
    return pa.Table.from_pylist(
        [
            {
                "row": first_row + row,
                "segment": k,
                "kind": KIND_NAMES[kind],
                "source": "src" if kind != KIND_MIP else "anli",
                "doc_ids": [f"doc-{first_row + row}-{k}"],
                "doc_offsets": [0],
                "doc_tokens": [1],
                "template": "",
            }
            for row, k, kind in zip(rows, index, kinds)
        ],
        schema=PROVENANCE_SCHEMA,
    )


def write_hand_rows(directory: Path, shards: int = 1) -> None:
    """The two rows above, repeated into `shards` shards of two rows each."""
    entries = []
    for number in range(shards):
        writer = TrainingShardWriter(directory, number, L, first_row=2 * number)
        writer.add(
            np.array([ROW0, ROW1], dtype=np.int32),
            row_segment_count=np.array([2, 1]),
            segments={
                "segment_start": np.array([0, 7, 0]),
                "segment_sep": np.array([4, 12, 3]),
                "segment_end": np.array([7, 16, 5]),
                "segment_kind": np.array([KIND_GMASK, KIND_MASK, KIND_MIP]),
                "segment_span_count": np.array([1, 2, 1]),
            },
            spans={"span_mask_position": np.array([3, 10, 8, 2]), "span_length": np.array([2, 1, 1, 1])},
            provenance=_provenance([0, 0, 1], [KIND_GMASK, KIND_MASK, KIND_MIP], 2 * number),
            pad_tokens=11 if number == shards - 1 else 0,
        )
        entries.append(writer.close())
    write_manifest(directory, row_length=L, shards=entries)


@pytest.fixture()
def hand_rows(tmp_path: Path) -> Path:
    write_hand_rows(tmp_path, shards=1)
    return tmp_path


def test_hand_rows_rebuild_exactly(hand_rows):
    shards = TrainingShards(hand_rows)
    assert len(shards) == 2 and is_training_shard_dir(hand_rows)
    batch = shards.batch([0, 1])
    for key, expected in EXPECTED.items():
        assert np.array_equal(batch[key], np.array(expected)), key
    assert batch["provenance"][1] == [
        {"kind": "mip", "source": "anli", "doc_ids": ["doc-1-0"], "doc_offsets": [0], "doc_tokens": [1]}
    ]
    reference = shards.reference_batch([0, 1])
    for key in EXPECTED:
        assert np.array_equal(reference[key], batch[key]), key


def test_rows_from_several_shards_keep_the_callers_order(tmp_path):
    write_hand_rows(tmp_path, shards=3)
    shards = TrainingShards(tmp_path)
    order = [5, 0, 3, 3, 2, 1]
    batch = shards.batch(order)
    for position, row in enumerate(order):
        single = shards.batch([row])
        for key in EXPECTED:
            assert np.array_equal(batch[key][position][: single[key].shape[1]], single[key][0]), (key, row)
        assert batch["provenance"][position] == single["provenance"][0]
        assert batch["provenance"][position][0]["doc_ids"] == [f"doc-{row}-0"]
    with pytest.raises(IndexError):
        shards.batch([6])
    assert shards.provenance(order) == batch["provenance"]
    table = shards.provenance_table()
    assert table.num_rows == 9 and table.column("row").to_pylist() == [0, 0, 1, 2, 2, 3, 4, 4, 5]


def test_recipe_layout_is_the_documented_one(hand_rows):
    path = hand_rows / "train-00000.recipe"
    data = path.read_bytes()
    magic, version, row_length, rows, segments, spans, first_row, pad = struct.unpack_from("<8sQQQQQQQ", data)
    assert (magic, version, row_length, rows, segments, spans, first_row, pad) == (
        RECIPE_MAGIC,
        1,
        L,
        2,
        3,
        4,
        0,
        11,
    )
    assert len(data) == recipe_size(2, 3, 4) == 64 + 8 * 3 + 8 * 4 + 3 * 2 * 3 + 2 * 2 * 4 + 3
    recipe = read_recipe(path)
    assert recipe.row_segment_pointer.tolist() == [0, 2, 3]
    assert recipe.segment_span_pointer.tolist() == [0, 1, 3, 4]
    assert (hand_rows / "train-00000.tokens").stat().st_size == 2 * L * 4
    path.write_bytes(data[:-1])
    with pytest.raises(ShardFormatError, match="truncated"):
        read_recipe(path)
    path.write_bytes(b"NOTARECP" + data[8:])
    with pytest.raises(ShardFormatError, match="bad magic"):
        read_recipe(path)


def test_attention_mask_of_the_hand_row():
    mask = dense_attention_mask(np.array(EXPECTED["segments"][0]), L)
    part_a, part_b = [0, 1, 2, 3], [4, 5, 6]
    for query in part_a + part_b:  # segment 0
        assert mask[query, part_a].all(), "every token sees all of Part A"
        assert not mask[query, 7:].any(), "segments never see each other"
    for query in part_a:
        assert not mask[query, part_b].any(), "Part A never sees Part B"
    assert mask[5, 4] and mask[5, 5] and not mask[5, 6], "Part B is causal"
    assert mask[14, 12] and mask[14, 13], "a later span sees earlier spans of its segment (GLM)"
    padded = dense_attention_mask(np.array(EXPECTED["segments"][1]), L)
    assert padded[10].sum() == 1 and padded[10, 10], "padding sees only itself"
    assert not padded[:5, 5:].any()
    glm = dense_attention_mask(np.array(EXPECTED["segments"][0]), L, isolate_segments=False)
    assert glm[9, 0] and glm[0, 9], "GLM packing: Part A of every segment is visible"
    assert not glm[0, 4] and glm[13, 5] and not glm[5, 13]


def test_glm130b_one_d_positions(hand_rows):
    batch = TrainingShards(hand_rows).batch([0, 1])
    assert glm130b_position_ids(batch).tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 3, 3, 1, 1],  # [gMASK] counts on, [MASK] keeps its position
        [0, 1, 2, 3, 4] + [0] * 11,
    ]


def _random_recipes(generator: np.random.Generator, rows: int, length: int) -> RowRecipes:
    """Valid random rows built with the per-segment reference builder (kinds, spans, orders, padding)."""
    tokens = np.zeros((rows, length), dtype=np.int32)
    table: dict[str, list[int]] = {
        k: [] for k in ("row", "start", "sep", "end", "kind", "count", "mask", "len")
    }
    for row in range(rows):
        cursor, limit = 0, length - (int(generator.integers(0, 12)) if row == rows - 1 else 0)
        while limit - cursor >= 3:
            kind = int(generator.integers(0, 3))
            n = int(generator.integers(1, min(limit - cursor - 1, 60)))
            window = generator.integers(20_100, 30_000, size=n)
            if kind == KIND_MASK and n >= 3:
                m = int(generator.integers(1, (n + 1) // 2 + 1))
                while n + 2 * m > limit - cursor and m > 1:
                    m -= 1
                starts = np.sort(generator.choice(np.arange(0, n, 2), size=m, replace=False)).tolist()
                lengths = [1] * m
                if n + 2 * m > limit - cursor:
                    break
            else:
                kind = KIND_GMASK if kind == KIND_MASK else kind
                if n + 2 > limit - cursor:
                    break
                suffix = int(generator.integers(1, n + 1))
                starts, lengths = [n - suffix], [suffix]
            order = generator.permutation(len(starts)).tolist()
            sample = build_segment_reference(window, kind, starts, lengths, order)
            size = len(sample["tokens"])
            tokens[row, cursor : cursor + size] = sample["tokens"]
            for key, value in (
                ("row", row),
                ("start", cursor),
                ("sep", cursor + sample["sep"]),
                ("end", cursor + size),
                ("kind", kind),
                ("count", len(order)),
            ):
                table[key].append(value)
            table["mask"].extend(cursor + x for x in sample["span_mask_position"])
            table["len"].extend(sample["span_length"])
            cursor += size
        # Whatever is left after the last segment is padding.
    arrays = {k: np.array(v, dtype=np.int64) for k, v in table.items()}
    return RowRecipes(
        tokens=tokens,
        segment_row=arrays["row"],
        segment_start=arrays["start"],
        segment_sep=arrays["sep"],
        segment_end=arrays["end"],
        segment_kind=arrays["kind"],
        segment_span_count=arrays["count"],
        span_mask_position=arrays["mask"],
        span_length=arrays["len"],
    )


def test_vectorized_reconstruction_equals_the_reference_on_random_layouts():
    generator = np.random.default_rng(7)
    for _ in range(20):
        recipes = _random_recipes(
            generator, rows=int(generator.integers(1, 6)), length=int(generator.integers(16, 200))
        )
        fast, slow = reconstruct_batch(recipes), reconstruct_reference(recipes)
        for key in ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids", "segments"):
            assert np.array_equal(fast[key], slow[key]), key


def test_verify_accepts_good_shards_and_names_the_broken_file(hand_rows):
    report = verify_training_shards(hand_rows)
    assert report["ok"] and report["rows"] == 2 and report["spans"] == 4 and report["pad_tokens"] == 11
    (hand_rows / "train-00000.provenance.parquet").unlink()
    with pytest.raises(ShardFormatError, match="train-00000.provenance.parquet"):
        verify_training_shards(hand_rows)


def test_verify_rejects_padding_before_the_last_row(tmp_path):
    write_hand_rows(tmp_path, shards=2)  # shard 0's second row is padded but is not the dataset's last row
    with pytest.raises(ShardFormatError, match="padded but is not the dataset's final row"):
        verify_training_shards(tmp_path, check_hash=False)
