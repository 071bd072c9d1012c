"""Evaluation sets for the audit's contamination check: files of examples -> named lists of example texts.

What counts is the text a model could have memorized, so a reader keeps every string of an example that is
content (passages, questions, premises, choices, answers) and drops identifiers and labels. Each string is a
separate *text*: n-grams never span two fields (a premise followed by its hypothesis never occurs as one run
in training data).

Formats, detected from the content, never from the extension:

- **JSON Lines** (SuperGLUE `*.jsonl`, LAMBADA `{"text": ...}`, CLUE files that are one object per line even
  when named `.json`): one example per line.
- **JSON** holding a list of examples (CLUE's C3 `[[context...], [{question, choice, answer}], id]`), or an
  object with such a list under `data` / `examples` / `instances`.
- **SQuAD-style JSON** (`{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}`,
  also CMRC 2018 / DRCD): one example per question, holding its paragraph's context, the question and the
  answers' texts.

Inside an example every string is kept, however deeply nested, except under the keys of `IGNORED_KEYS`
(ids, labels, URLs). An example's id is its `id`/`idx`/`qid`/`uid`/`guid` value when it has one, else its
1-based line (JSON Lines) or 0-based position (JSON).

**Names.** An evaluation set is named, first match wins: `NAME=PATH` on the command line; the file's own
name, given as a top-level `"eval_name"` key of a JSON object, or in JSON Lines as a header record whose
only key is `"eval_name"` (`{"eval_name": "lambada"}`, not an example); the file's stem (`val.jsonl` ->
`val`, `dev.json` -> `dev`; a `.jsonl.json`-style double suffix loses only the last part). A directory
stands for every `*.json`/`*.jsonl` file under it, each a set of its own.

Lines that are not valid JSON or not an object/list are counted per reason (`invalid_json`,
`invalid_utf8`, `not_an_example`) with the first offending line, never silently dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from common.errors import ConfigError

EVAL_NAME_KEY = "eval_name"
"""Key that names an evaluation set from inside its file (see the module docstring)."""

ID_KEYS = ("id", "idx", "qid", "uid", "guid")
"""Keys whose value identifies an example, in order of preference."""

IGNORED_KEYS = frozenset(
    {*ID_KEYS, EVAL_NAME_KEY, "label", "labels", "gold_label", "label_desc", "url", "version"}
)
"""Keys whose values are ids, labels or metadata rather than text the model could memorize. (Numbers are never
text; and since n-grams never span two strings, a short string such as a label could not match anyway.)"""

LIST_KEYS = ("data", "examples", "instances")
"""Keys of a JSON object under which a list of examples may sit."""

EVAL_SUFFIXES = (".json", ".jsonl")


@dataclasses.dataclass
class EvalExample:
    """One evaluation example: its id and the texts (fields) whose n-grams are checked."""

    id: str
    texts: list[str]


@dataclasses.dataclass
class EvalSet:
    """A named evaluation set read from one file."""

    name: str
    path: str
    format: str
    """`jsonl`, `json` or `squad`."""
    examples: list[EvalExample]
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    """Lines or entries that were not examples, per reason."""
    first_skipped: str | None = None
    """Where the first skipped line was (`path:line: reason`), for the report."""
    named_by: str = "stem"
    """How the name was chosen: `argument`, `file` or `stem`."""

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "examples": len(self.examples),
            "named_by": self.named_by,
            "skipped": dict(sorted(self.skipped.items())),
            **({"first_skipped": self.first_skipped} if self.first_skipped else {}),
        }


def parse_eval_argument(text: str) -> tuple[str | None, Path]:
    """`NAME=PATH` -> (NAME, PATH); `PATH` -> (None, PATH). An existing path containing `=` stays a path."""
    name, sep, rest = text.partition("=")
    if sep and name and rest and not Path(text).exists() and "/" not in name:
        return name, Path(rest)
    return None, Path(text)


def expand_eval_paths(arguments: Sequence[str]) -> list[tuple[str | None, Path]]:
    """The evaluation files of `--eval` arguments: files as given, directories expanded (sorted)."""
    out: list[tuple[str | None, Path]] = []
    for argument in arguments:
        name, path = parse_eval_argument(argument)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in EVAL_SUFFIXES)
            if not files:
                raise ConfigError(f"--eval {argument}: no *.json or *.jsonl files under {path}")
            if name is not None and len(files) > 1:
                raise ConfigError(
                    f"--eval {argument}: NAME=DIR names one set, but {path} holds {len(files)} files"
                )
            out.extend((name, file) for file in files)
        elif path.is_file():
            out.append((name, path))
        else:
            raise ConfigError(f"--eval {argument}: no such file or directory {path}")
    return out


def read_eval_sets(arguments: Sequence[str]) -> list[EvalSet]:
    """Every evaluation set named by `--eval` arguments; two sets with one name are an error."""
    sets = [read_eval_set(path, name) for name, path in expand_eval_paths(arguments)]
    seen: dict[str, str] = {}
    for eval_set in sets:
        if eval_set.name in seen:
            raise ConfigError(
                f"two evaluation sets are named {eval_set.name!r} ({seen[eval_set.name]} and {eval_set.path}); "
                'name them with --eval NAME=PATH or an "eval_name" in the file'
            )
        seen[eval_set.name] = eval_set.path
    return sets


def read_eval_set(path: str | Path, name: str | None = None) -> EvalSet:
    """Read one evaluation file (JSON Lines, JSON, or SQuAD-style JSON; see the module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"evaluation set {path}: cannot read it ({exc})") from exc
    stripped = data.lstrip()
    document: Any = None
    if stripped[:1] in (b"{", b"["):
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            document = None  # several JSON values: JSON Lines
    if document is not None and not (isinstance(document, dict) and _looks_like_one_record(document, data)):
        eval_set = _from_document(path, document)
    else:
        eval_set = _from_lines(path, data)
    if name is not None:
        eval_set.name, eval_set.named_by = name, "argument"
    if not eval_set.examples:
        raise ConfigError(
            f"evaluation set {path}: no examples found"
            + (f" ({eval_set.first_skipped})" if eval_set.first_skipped else "")
        )
    return eval_set


def _looks_like_one_record(document: dict[str, Any], data: bytes) -> bool:
    """A one-line JSON Lines file parses as one object: treat it as JSON Lines unless it holds a list of examples."""
    return data.strip().count(b"\n") == 0 and not any(isinstance(document.get(k), list) for k in LIST_KEYS)


def _stem(path: Path) -> str:
    return path.stem


def _from_lines(path: Path, data: bytes) -> EvalSet:
    eval_set = EvalSet(name=_stem(path), path=str(path), format="jsonl", examples=[])
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            try:
                line.decode("utf-8")
                reason = "invalid_json"
            except UnicodeDecodeError:
                reason = "invalid_utf8"
            _skip(eval_set, reason, f"{path}:{number}: {reason}: {exc}")
            continue
        if isinstance(record, dict) and set(record) == {EVAL_NAME_KEY}:
            if isinstance(record[EVAL_NAME_KEY], str) and record[EVAL_NAME_KEY]:
                eval_set.name, eval_set.named_by = record[EVAL_NAME_KEY], "file"
            continue
        if not isinstance(record, (dict, list)):
            _skip(
                eval_set, "not_an_example", f"{path}:{number}: not_an_example: a JSON {type(record).__name__}"
            )
            continue
        eval_set.examples.append(EvalExample(_example_id(record, str(number)), list(_texts(record))))
    return eval_set


def _from_document(path: Path, document: Any) -> EvalSet:
    eval_set = EvalSet(name=_stem(path), path=str(path), format="json", examples=[])
    if isinstance(document, dict):
        own_name = document.get(EVAL_NAME_KEY)
        if isinstance(own_name, str) and own_name:
            eval_set.name, eval_set.named_by = own_name, "file"
        records = next((document[k] for k in LIST_KEYS if isinstance(document.get(k), list)), None)
        if records is None:
            records = [document]  # one example
        elif records and all(isinstance(r, dict) and isinstance(r.get("paragraphs"), list) for r in records):
            eval_set.format = "squad"
            eval_set.examples = list(_squad_examples(records))
            return eval_set
    elif isinstance(document, list):
        records = document
    else:
        raise ConfigError(f"evaluation set {path}: a JSON {type(document).__name__} holds no examples")
    for position, record in enumerate(records):
        if not isinstance(record, (dict, list)):
            _skip(eval_set, "not_an_example", f"{path}: entry {position}: not_an_example")
            continue
        eval_set.examples.append(EvalExample(_example_id(record, str(position)), list(_texts(record))))
    return eval_set


def _squad_examples(articles: list[dict[str, Any]]) -> Iterator[EvalExample]:
    """One example per question: its paragraph's context, the question, and the answers' texts."""
    position = 0
    for article in articles:
        for paragraph in article["paragraphs"]:
            if not isinstance(paragraph, dict):
                continue
            context = paragraph.get("context")
            for qa in paragraph.get("qas") or []:
                if not isinstance(qa, dict):
                    continue
                texts = [context] if isinstance(context, str) else []
                texts.extend(_texts({k: v for k, v in qa.items() if k != "answers"}))
                for answer in qa.get("answers") or []:
                    if isinstance(answer, dict) and isinstance(answer.get("text"), str):
                        texts.append(answer["text"])
                yield EvalExample(_example_id(qa, str(position)), texts)
                position += 1


def _skip(eval_set: EvalSet, reason: str, where: str) -> None:
    eval_set.skipped[reason] = eval_set.skipped.get(reason, 0) + 1
    if eval_set.first_skipped is None:
        eval_set.first_skipped = where


def _example_id(record: Any, fallback: str) -> str:
    if isinstance(record, dict):
        for key in ID_KEYS:
            value = record.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)
    return fallback


def _texts(value: Any) -> Iterator[str]:
    """Every content string under `value` (depth first, in file order), skipping IGNORED_KEYS."""
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in IGNORED_KEYS:
                yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
