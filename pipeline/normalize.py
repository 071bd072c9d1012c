"""Text normalization: one Unicode policy for every source, applied before language ID, filters and dedup.

Policy (and why):
- Unicode NFC by default. NFC only composes (e + U+0301 -> é); it never changes what a character
  means. NFKC (optional) also folds compatibility characters, and that rewrites text that matters for
  Chinese: full-width punctuation and digits (，。！１２３ -> ,.!123), the ideographic space, circled
  numbers, ligatures and superscripts; the tokenizer sees those as distinct on purpose.
- Line ends: \\r\\n and lone \\r -> \\n; U+2028/U+2029 (line/paragraph separators), \\v and \\f -> \\n.
- Removed: C0 control characters except \\t and \\n, DEL, C1 controls (U+0080-U+009F), and the
  invisible characters that only pollute text and split otherwise equal documents: zero-width space
  U+200B, word joiner U+2060, BOM / zero-width no-break space U+FEFF, soft hyphen U+00AD, and
  U+FFFE/U+FFFF noncharacters. Kept: ZWJ/ZWNJ (U+200D/U+200C: emoji sequences, Persian and Indic
  scripts) and bidi marks (needed to display mixed-direction text).
- Kept as is: tabs, runs of spaces and leading indentation (the GLM tokenizer has <t> and <blank_k>
  tokens for them: code and tables keep their layout).
- Trailing spaces and tabs of every line are stripped: invisible, meaningless, and they make copies
  of one text differ for exact dedup.
- Runs of blank lines are capped at `max_blank_lines` (default 2): extraction artifacts can produce
  dozens; two keep every paragraph and section break.
- The document is stripped of leading and trailing whitespace.

`normalize` is idempotent (tested) and fast: each rewrite is guarded by a C-speed check, so text that
needs nothing (most of it) costs a few scans.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable
from typing import Literal

from pipeline.document import Document
from pipeline.steps import Step


@dataclasses.dataclass
class NormalizeConfig:
    form: Literal["NFC", "NFKC", "none"] = "NFC"
    strip_trailing_spaces: bool = True
    # Longest run of empty lines kept (-1: no cap).
    max_blank_lines: int = 2


_REMOVED = (
    [chr(c) for c in range(0x00, 0x20) if chr(c) not in "\t\n\r\v\f"]
    + ["\x7f"]
    + [chr(c) for c in range(0x80, 0xA0)]
    + ["\u200b", "\u2060", "\ufeff", "\u00ad", "\ufffe", "\uffff"]
)
_NEWLINES = ["\r\n", "\r", "\u2028", "\u2029", "\v", "\f"]
_NEEDS_FIX = re.compile("[" + re.escape("".join(_REMOVED) + "\r\u2028\u2029\v\f") + "]")
_REMOVE = re.compile("[" + re.escape("".join(_REMOVED)) + "]")  # re.sub: ~10x faster than str.translate
_TRAILING_SPACES = re.compile(r"[ \t]+$", re.M)


def _blank_run(max_blank_lines: int) -> re.Pattern[str]:
    return re.compile("\n" * (max_blank_lines + 2) + "+")


def make_normalizer(config: NormalizeConfig | None = None) -> Callable[[str], str]:
    """A `normalize(text) -> text` function for a config (patterns compiled once)."""
    config = config or NormalizeConfig()
    form = None if config.form == "none" else config.form
    blank_run = _blank_run(config.max_blank_lines) if config.max_blank_lines >= 0 else None
    blank_replacement = "\n" * (config.max_blank_lines + 1)
    strip_trailing = config.strip_trailing_spaces

    def normalize_text(text: str) -> str:
        if _NEEDS_FIX.search(text) is not None:
            if "\r" in text:
                text = text.replace("\r\n", "\n")
            for newline in _NEWLINES[1:]:
                if newline in text:
                    text = text.replace(newline, "\n")
            text = _REMOVE.sub("", text)
        if form is not None and not text.isascii() and not unicodedata.is_normalized(form, text):
            text = unicodedata.normalize(form, text)
            # NFKC can produce characters the rules above act on (e.g. U+2028 stays, but compatibility
            # forms may decompose to spaces); NFC never does. One more pass keeps normalize idempotent.
            if form == "NFKC" and _NEEDS_FIX.search(text) is not None:
                return normalize_text(text)
        if strip_trailing and (" \n" in text or "\t\n" in text or text.endswith((" ", "\t"))):
            text = _TRAILING_SPACES.sub("", text)
        if blank_run is not None and blank_replacement + "\n" in text:
            text = blank_run.sub(blank_replacement, text)
        return text.strip()

    return normalize_text


normalize: Callable[[str], str] = make_normalizer()
"""Normalize with the default policy (NFC, trailing spaces stripped, at most 2 blank lines in a row)."""


class NormalizeStep(Step):
    """Normalize every document's text; a text that normalizes to nothing is dropped as `empty_text`."""

    name = "normalize"

    def __init__(self, config: NormalizeConfig | None = None) -> None:
        super().__init__()
        self.config = config or NormalizeConfig()
        self._normalize = make_normalizer(self.config)

    def process(self, doc: Document) -> Document | None:
        text = self._normalize(doc.text)
        if not text:
            self.drop(doc, "empty_text", "nothing left after normalization", bad_input=True)
            return None
        doc.text = text
        return doc
