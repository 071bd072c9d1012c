"""Read MIP instruction records: P3-layout folders and DeepStruct source/target data.

Layouts understood (docs/MIP.md, "Inputs"):

- **P3**: one folder per dataset/subset/template, named `<dataset>_<subset>_<template>` (P3 joins the
  three with `_`), holding one file per split: `<split>.jsonl`, `<split>.parquet` (also
  `<split>/<shard>.parquet` and `<split>-00000-of-00001.parquet`) or P3's original
  `<split>.tfrecord-00000-of-00001`. Records carry `inputs_pretokenized` (the prompt),
  `targets_pretokenized` (the answer) and optionally `answer_choices`. The folder name is split into
  (dataset, template) by the registry's longest-prefix match. P3's `*_score_eval` folders hold every
  candidate answer of an example, right or wrong, for rank scoring: their records are counted and
  dropped (`score_eval_candidate`), never trained on.
- **DeepStruct**: JSON lines with `source`/`target` (and a `task`, `dataset` or `class` naming the
  dataset), or DeepStruct's own `<dataset>/<split>.source` + `<split>.target` line-aligned pairs.
  The dataset is the first of (`dataset`, `task`, `class` minus its `Dataset` suffix, the folder or file
  name) that the registry knows; that name is also the record's template (`conll04`, `conll04_re`).

Every record becomes a `MipExample` or one drop under a named reason with file and offset
(`jsonl`: byte offset of the line; `parquet`: row number; `tfrecord`: byte offset of the record;
`.source`/`.target`: line number). Text is passed through unchanged.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import orjson

from common.errors import GLMCorpusError
from mip.registry import DatasetInfo, Registry
from pipeline.document import DropLog

SPLIT_NAMES = frozenset({"train", "validation", "test", "dev", "val", "valid"})
SCORE_EVAL_SUFFIX = "_score_eval"
DEFAULT_TEMPLATE = "default"
P3_FIELDS = ("inputs_pretokenized", "targets_pretokenized")
DEEPSTRUCT_FIELDS = ("source", "target")

Kind = Literal["p3", "deepstruct"]
Format = Literal["jsonl", "parquet", "tfrecord", "source_target"]


@dataclasses.dataclass(slots=True)
class MipExample:
    """One instruction example: `prompt` is Part A's text, `target` the answer the model learns.

    `template` is never empty: the rest of a P3 folder name after the dataset (`default` when nothing
    follows), or the DeepStruct name that resolved the record (`conll04_re`, `tacred`).
    """

    dataset: str
    template: str
    split: str
    prompt: str
    target: str
    input_file: str
    offset: int
    answer_choices: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One data file found under the inputs, with what its path says about its contents.

    For P3 files `dataset`/`template` come from the folder name (`dataset` None: no registered
    dataset matched, `folder` says what did not match); DeepStruct files name datasets per record, and
    `dataset` is only the file-level fallback.
    """

    path: str
    kind: Kind
    format: Format
    split: str
    folder: str
    dataset: str | None
    template: str
    score_eval: bool = False


class DatasetDrops:
    """Drops and records seen, per dataset, so the manifest accounts for every record of every source.

    Under `strict` the first bad record raises `BadRecordError` (policy drops do not).
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.logs: dict[str, DropLog] = {}
        self.seen: Counter[str] = Counter()

    def log(self, dataset: str) -> DropLog:
        log = self.logs.get(dataset)
        if log is None:
            log = self.logs[dataset] = DropLog(self.strict)
        return log

    def drop(
        self,
        dataset: str,
        reason: str,
        path: str,
        offset: int | None,
        detail: str = "",
        *,
        bad_input: bool = True,
        count: int = 1,
    ) -> None:
        self.seen[dataset] += count
        self.log(dataset).drop(reason, path, offset, detail, bad_input=bad_input, count=count)

    def reject(
        self, dataset: str, reason: str, path: str, offset: int | None, detail: str = "", *, count: int = 1
    ) -> None:
        """A policy drop of examples already counted as seen (over the cap, too long): never strict."""
        self.log(dataset).drop(reason, path, offset, detail, bad_input=False, count=count)

    def counts(self, dataset: str) -> dict[str, int]:
        log = self.logs.get(dataset)
        return dict(sorted(log.counts.items())) if log else {}

    def merged(self) -> DropLog:
        total = DropLog(self.strict)
        for dataset in sorted(self.logs):
            total.merge(self.logs[dataset])
        return total


class _BadRecord(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


# Discovery ------------------------------------------------------------------------------------------


def _split_of_name(name: str) -> str:
    """`train.jsonl`, `train.tfrecord-00000-of-00001`, `validation-00000-of-00001.parquet` -> the split."""
    return re.split(r"[.\-]", name, maxsplit=1)[0]


def _format_of(path: Path) -> Format | None:
    name = path.name
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if ".tfrecord" in name:
        return "tfrecord"
    if name.endswith(".source"):
        return "source_target"
    return None


def _sniff_kind(path: Path, fmt: Format) -> Kind | None:
    """Which record schema the file holds, from its first record's field names."""
    names: Iterable[str] = ()
    try:
        if fmt == "jsonl":
            with open(path, "rb") as handle:
                for line in handle:
                    if line.strip():
                        try:
                            first = orjson.loads(line)
                        except orjson.JSONDecodeError:
                            return None
                        names = first.keys() if isinstance(first, dict) else ()
                        break
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
    except OSError:
        return None
    names = set(names)
    if names & set(P3_FIELDS):
        return "p3"
    if names & set(DEEPSTRUCT_FIELDS):
        return "deepstruct"
    return None


def _deepstruct_split(stem: str) -> str:
    for token in re.split(r"[^0-9A-Za-z]+", stem):
        if token.lower() in SPLIT_NAMES:
            return token.lower()
    return ""


def classify(path: Path, registry: Registry) -> InputFile | None:
    """Describe one file, or None if it is not a MIP data file (README, INDEX.json, `.target`, ...)."""
    fmt = _format_of(path)
    if fmt is None:
        return None
    if fmt == "source_target":
        folder = path.parent.name
        fallback = folder if registry.match(folder) else path.stem
        return InputFile(str(path), "deepstruct", fmt, _deepstruct_split(path.stem), folder, fallback, "")
    split = _split_of_name(path.name)
    folder_path = path.parent
    if split not in SPLIT_NAMES and folder_path.name in SPLIT_NAMES:  # <task>/<split>/<shard>.parquet
        split, folder_path = folder_path.name, folder_path.parent
    kind: Kind | None = "p3" if fmt == "tfrecord" else _sniff_kind(path, fmt)
    if kind is None:
        kind = "p3" if split in SPLIT_NAMES else "deepstruct"
    if kind == "deepstruct":
        fallback = path.stem if registry.match(path.stem) else path.parent.name
        return InputFile(
            str(path), "deepstruct", fmt, _deepstruct_split(path.stem), path.parent.name, fallback, ""
        )
    folder = folder_path.name
    score_eval = folder.endswith(SCORE_EVAL_SUFFIX)
    match = registry.match(folder)
    if match is not None:
        dataset: str | None = match.dataset.name
        template = match.rest or DEFAULT_TEMPLATE
    elif registry.allow_any_unknown:
        dataset, template = folder, DEFAULT_TEMPLATE
    else:
        dataset, template = None, ""
    return InputFile(str(path), "p3", fmt, split, folder, dataset, template, score_eval)


def discover_inputs(
    inputs: Iterable[str | Path], registry: Registry, splits: Iterable[str] | None = None
) -> tuple[list[InputFile], dict[str, dict[str, Any]]]:
    """Every MIP data file under `inputs`, sorted by path, and what was left aside (count, first paths).

    Sorting makes the run independent of the order inputs were given in. `splits` keeps only files
    of those splits (`None`: all).
    """
    wanted = set(splits) if splits is not None else None
    found: dict[str, InputFile] = {}
    left_aside: dict[str, set[str]] = {"not_mip_data": set(), "other_split": set()}
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            raise GLMCorpusError(f"MIP input {root} does not exist")
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in candidates:
            info = classify(path, registry)
            if info is None:
                if not (path.suffix == ".target" and path.with_suffix(".source").exists()):
                    left_aside["not_mip_data"].add(str(path))
                continue
            if wanted is not None and info.split not in wanted:
                left_aside["other_split"].add(str(path))
                continue
            found[info.path] = info
    aside = {
        reason: {"count": len(paths), "first": sorted(paths)[:10]} for reason, paths in left_aside.items()
    }
    return [found[path] for path in sorted(found)], aside


# Record sources -------------------------------------------------------------------------------------


def _jsonl_records(path: str) -> Iterator[tuple[int, Any]]:
    """(byte offset, parsed value or _BadRecord) per non-blank line."""
    offset = 0
    with open(path, "rb") as handle:
        for line in handle:
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                yield start, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    yield start, _BadRecord("invalid_utf8", str(exc))
                    continue
                yield start, _BadRecord("invalid_json", str(exc))


def _parquet_records(path: str) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    row = 0
    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                yield row, record
                row += 1
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        yield row, _BadRecord("unreadable_file", f"{type(exc).__name__}: {exc} (after {row} rows)")


def _source_target_records(path: str) -> Iterator[tuple[int, Any]]:
    """Line-aligned `X.source` / `X.target` pairs as {"source", "target"} records (offset = line number)."""
    target_path = Path(path).with_suffix(".target")
    if not target_path.exists():
        yield 0, _BadRecord("unpaired_file", f"no {target_path.name} beside {Path(path).name}")
        return
    with open(path, "rb") as sources, open(target_path, "rb") as targets:
        line = 0
        while True:
            source, target = sources.readline(), targets.readline()
            if not source and not target:
                return
            if not source or not target:
                yield (
                    line,
                    _BadRecord("unpaired_line", f"{'source' if not source else 'target'} file ended first"),
                )
                return
            try:
                yield (
                    line,
                    {
                        "source": source.decode("utf-8").rstrip("\r\n"),
                        "target": target.decode("utf-8").rstrip("\r\n"),
                    },
                )
            except UnicodeDecodeError as exc:
                yield line, _BadRecord("invalid_utf8", str(exc))
            line += 1


# TFRecord (P3's original layout), read without TensorFlow ------------------------------------------

_CRC32C_TABLE: list[int] = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0x82F63B78 if _crc & 1 else _crc >> 1
    _CRC32C_TABLE.append(_crc)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord framing uses."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecord_frames(path: str) -> Iterator[tuple[int, bytes | _BadRecord]]:
    """TFRecord framing: u64 length, u32 masked CRC of the length, data, u32 masked CRC of the data."""
    with open(path, "rb") as handle:
        offset = 0
        while True:
            header = handle.read(12)
            if not header:
                return
            if len(header) < 12:
                yield offset, _BadRecord("truncated_record", f"{len(header)}-byte record header")
                return
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                yield (
                    offset,
                    _BadRecord(
                        "corrupt_record", "length checksum mismatch; the rest of the file is unreadable"
                    ),
                )
                return
            data = handle.read(length)
            footer = handle.read(4)
            if len(data) < length or len(footer) < 4:
                yield offset, _BadRecord("truncated_record", f"record of {length} bytes cut short")
                return
            if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                yield offset, _BadRecord("corrupt_record", "data checksum mismatch")
            else:
                yield offset, data
            offset += 16 + length


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; length-delimited values are bytes."""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("field runs past the end of the message")
        yield number, wire, value


def parse_tf_example(data: bytes) -> dict[str, list[bytes] | None]:
    """The features of a serialized `tf.train.Example`: bytes features as lists, other kinds as None.

    Example{features=1: Features{feature=1: map<string, Feature>}}, Feature{bytes_list=1, float_list=2,
    int64_list=3}, BytesList{value=1 repeated bytes}. Only text (bytes) features matter for MIP.
    """
    features: dict[str, list[bytes] | None] = {}
    for number, wire, value in _fields(data):
        if number != 1 or wire != 2:
            continue
        for entry_number, entry_wire, entry in _fields(value):
            if entry_number != 1 or entry_wire != 2:
                continue
            key, feature = b"", b""
            for field_number, field_wire, field in _fields(entry):
                if field_wire == 2 and field_number == 1:
                    key = field
                elif field_wire == 2 and field_number == 2:
                    feature = field
            values: list[bytes] | None = None
            for kind, kind_wire, payload in _fields(feature):
                if kind == 1 and kind_wire == 2:
                    values = [v for n, w, v in _fields(payload) if n == 1 and w == 2]
            features[key.decode("utf-8", "replace")] = values
    return features


def _tfrecord_records(path: str) -> Iterator[tuple[int, Any]]:
    for offset, data in _tfrecord_frames(path):
        if isinstance(data, _BadRecord):
            yield offset, data
            continue
        try:
            features = parse_tf_example(data)
        except ValueError as exc:
            yield offset, _BadRecord("bad_example_proto", str(exc))
            continue
        record: dict[str, Any] = {}
        try:
            for name, values in features.items():
                if values is None:
                    record[name] = None  # a numeric feature (token ids, weights): not used
                    continue
                texts = [value.decode("utf-8") for value in values]
                record[name] = texts if name == "answer_choices" or len(texts) != 1 else texts[0]
        except UnicodeDecodeError as exc:
            yield offset, _BadRecord("invalid_utf8", str(exc))
            continue
        yield offset, record


_RECORD_READERS = {
    "jsonl": _jsonl_records,
    "parquet": _parquet_records,
    "tfrecord": _tfrecord_records,
    "source_target": _source_target_records,
}


def _jsonl_records_at(path: str, offsets: Collection[int]) -> Iterator[tuple[int, Any]]:
    """The jsonl records starting at `offsets`, by seeking: re-reading a few selected lines is cheap."""
    with open(path, "rb") as handle:
        for offset in sorted(offsets):
            handle.seek(offset)
            line = handle.readline()
            try:
                yield offset, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield offset, _BadRecord("invalid_json", str(exc))


def iter_records(input_file: InputFile, offsets: Collection[int] | None = None) -> Iterator[tuple[int, Any]]:
    """(offset, record dict | _BadRecord) for every record of the file, or only those at `offsets`."""
    if offsets is None:
        return _RECORD_READERS[input_file.format](input_file.path)
    if input_file.format == "jsonl":
        return _jsonl_records_at(input_file.path, offsets)
    wanted = offsets if isinstance(offsets, (set, frozenset)) else set(offsets)
    return (
        (offset, record)
        for offset, record in _RECORD_READERS[input_file.format](input_file.path)
        if offset in wanted
    )


# Records -> examples --------------------------------------------------------------------------------


def _text(record: dict[str, Any], name: str) -> str:
    if name not in record or record[name] is None:
        raise _BadRecord("missing_field", f"no {name!r}")
    value = record[name]
    if not isinstance(value, str):
        raise _BadRecord("non_string_field", f"{name!r} is {type(value).__name__}, not a string")
    return value


def _prompt_target(record: Any, prompt_field: str, target_field: str) -> tuple[str, str]:
    if not isinstance(record, dict):
        raise _BadRecord("not_an_object", f"record is {type(record).__name__}, not a JSON object")
    prompt, target = _text(record, prompt_field), _text(record, target_field)
    if not prompt.strip():
        raise _BadRecord("empty_prompt", f"{prompt_field!r} is empty")
    if not target.strip():
        raise _BadRecord("empty_target", f"{target_field!r} is empty")
    return prompt, target


def _answer_choices(record: dict[str, Any]) -> tuple[str, ...] | None:
    choices = record.get("answer_choices")
    if choices is None:
        return None
    if not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices):
        raise _BadRecord("bad_answer_choices", "answer_choices is not a list of strings")
    return tuple(choices)


def _unknown_detail(name: str) -> str:
    return (
        f"{name!r} matches no registered MIP dataset; register it in mip/registry.json or allow it "
        f"with `--allow-unknown {name}`"
    )


def _deepstruct_names(record: dict[str, Any], fallback: str | None) -> list[str]:
    names = [record.get("dataset"), record.get("task")]
    klass = record.get("class")
    if isinstance(klass, str):
        names.append(klass[: -len("Dataset")] if klass.endswith("Dataset") else klass)
    names.append(fallback)
    return [name for name in names if isinstance(name, str) and name]


def _resolve_deepstruct(names: list[str], registry: Registry) -> tuple[DatasetInfo | None, str]:
    """The first name the registry knows -> (dataset, that name as template); else (None, first name)."""
    for name in names:
        match = registry.match(name)
        if match is not None:
            return match.dataset, name
    first = names[0] if names else "unnamed"
    if registry.allow_any_unknown:
        return registry.adhoc(first), first
    return None, first


def read_examples(
    input_file: InputFile,
    registry: Registry,
    drops: DatasetDrops,
    only: str | None = None,
    offsets: Collection[int] | None = None,
) -> Iterator[MipExample]:
    """The valid examples of one file; everything else is counted in `drops` under its dataset.

    `only` restricts the output (not the accounting) to one dataset, `offsets` the records read (the
    selected ones, on a second pass); pass a scratch `DatasetDrops` when re-reading a file whose
    records were already counted.
    """
    path = input_file.path
    if input_file.kind == "p3":
        yield from _read_p3(input_file, drops, only, offsets)
        return
    fallback = input_file.dataset
    fallback_info, fallback_name = _resolve_deepstruct([fallback] if fallback else [], registry)
    fallback_key = fallback_info.name if fallback_info else fallback_name
    for offset, record in iter_records(input_file, offsets):
        if isinstance(record, _BadRecord):
            drops.drop(fallback_key, record.reason, path, offset, record.detail)
            continue
        if not isinstance(record, dict):
            drops.drop(fallback_key, "not_an_object", path, offset, f"record is {type(record).__name__}")
            continue
        info, template = _resolve_deepstruct(_deepstruct_names(record, fallback), registry)
        key = info.name if info else template
        if info is None:
            drops.drop(key, "unknown_dataset", path, offset, _unknown_detail(template))
            continue
        try:
            prompt, target = _prompt_target(record, *DEEPSTRUCT_FIELDS)
        except _BadRecord as bad:
            drops.drop(key, bad.reason, path, offset, bad.detail)
            continue
        drops.seen[key] += 1
        if only is None or key == only:
            yield MipExample(key, template, input_file.split, prompt, target, path, offset)


def _read_p3(
    input_file: InputFile, drops: DatasetDrops, only: str | None, offsets: Collection[int] | None
) -> Iterator[MipExample]:
    path = input_file.path
    dataset = input_file.dataset
    if dataset is None:
        count = sum(1 for _ in iter_records(input_file))
        drops.drop(
            input_file.folder, "unknown_dataset", path, 0, _unknown_detail(input_file.folder), count=count
        )
        return
    if input_file.score_eval:
        count = sum(1 for _ in iter_records(input_file))
        drops.drop(
            dataset,
            "score_eval_candidate",
            path,
            0,
            "P3 *_score_eval folders hold every candidate answer (also wrong ones); not trained on",
            bad_input=False,
            count=count,
        )
        return
    for offset, record in iter_records(input_file, offsets):
        try:
            if isinstance(record, _BadRecord):
                raise record
            prompt, target = _prompt_target(record, *P3_FIELDS)
            choices = _answer_choices(record)
        except _BadRecord as bad:
            drops.drop(dataset, bad.reason, path, offset, bad.detail)
            continue
        drops.seen[dataset] += 1
        if only is None or dataset == only:
            yield MipExample(
                dataset, input_file.template, input_file.split, prompt, target, path, offset, choices
            )


def read_all(
    inputs: Iterable[str | Path],
    registry: Registry,
    strict: bool = False,
    splits: Iterable[str] | None = None,
) -> tuple[list[MipExample], DatasetDrops]:
    """Every valid example under `inputs` in (file path, offset) order, and the drops. For small inputs."""
    files, _ = discover_inputs(inputs, registry, splits)
    drops = DatasetDrops(strict)
    examples = [example for input_file in files for example in read_examples(input_file, registry, drops)]
    return examples, drops
