"""Quality filters: Gopher (Rae et al. 2021) and C4 (Raffel et al. 2020) heuristics, adapted for Chinese.

Units. Space-delimited text is measured in words (runs of non-space characters, as `str.split()`);
CJK text (Han characters and kana are at least `cjk_fraction` of the non-space characters) in tokens
where every CJK character is one token and every run of other non-space characters is one
(`2020年3月` -> `2020`, `年`, `3`, `月`): character-based lengths, no word segmentation. Repetition
n-grams are over the same tokens; CJK n-grams are `cjk_ngram_scale` times longer, since a Chinese
word averages about 1.5-2 characters.

Each rule has a named drop reason (policy: `bad_input=False`) and thresholds in `QualityConfig`;
they are listed with their defaults in docs/INGEST.md and by `describe_rules()`. The first failing
rule in the order of `describe_rules()` names the drop. Kept documents get `doc.quality` in [0, 1]:
the mean of four margins (little n-gram repetition, many alphabetic tokens, few symbols, few
boilerplate lines removed), the first tie-breaker when dedup picks the survivor of a cluster.

C4 line rules (sources in `c4_sources`, crawl only by default: the Pile and WuDao are already
extracted text, and removing every line that mentions "javascript" from a Wikipedia article is wrong):
lines containing "javascript" are removed, as are short lines (<= `boilerplate_line_max_chars`)
containing a boilerplate phrase (cookie/privacy/terms notices, Chinese site footers: 版权所有, ICP备);
a page containing "lorem ipsum" is dropped. Removed lines are counted (`stats.extra["lines_removed"]`).

Speed: the filters run on every document, so a batch of documents is evaluated at once: the texts
are joined and viewed as a numpy array of code points; character classes come from one lookup table,
tokens, their lengths, letters and 64-bit hashes from cumulative sums and `reduceat`, and the n-gram
statistics of all documents from one sort per n (the key packs the n-gram hash with its position).
Only line-level rules and English stop words are per-document Python, on C-speed string methods.
Hashes are plain integer arithmetic, so results do not depend on the process (no `hash()` seed).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from typing import Any

import numpy as np

from pipeline.document import Document
from pipeline.steps import Step

_STARTS_WITH_BULLET = operator.methodcaller("startswith", tuple("•●○■□▪▫◦‣➢►▶-*·–—"))
_ENDS_WITH_ELLIPSIS = operator.methodcaller("endswith", ("...", "…", "。。。"))
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


@dataclasses.dataclass
class QualityConfig:
    # Length: words (space-delimited text) or CJK tokens (see module docstring).
    min_words: int = 50
    max_words: int = 100_000
    min_cjk_tokens: int = 50
    max_cjk_tokens: int = 200_000
    # A text is CJK when Han/kana characters are at least this fraction of its non-space characters.
    cjk_fraction: float = 0.3
    # Mean word length bounds, in characters (space-delimited text only).
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    # ('#' + ellipses) per word/token.
    max_symbol_ratio: float = 0.1
    # Fraction of non-empty lines starting with a bullet / ending with an ellipsis.
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    # Fraction of words (CJK tokens) that contain at least one letter (CJK characters are letters).
    min_alpha_words: float = 0.8
    min_alpha_cjk_tokens: float = 0.6
    # English (doc.lang "en", or unlabeled space-delimited text): at least this many stop-word occurrences.
    min_stop_words: int = 2
    stop_words: list[str] = dataclasses.field(
        default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"]
    )
    # Chinese (doc.lang zh/ja or unlabeled CJK text): at least this many common function characters.
    min_cjk_stop_chars: int = 2
    cjk_stop_chars: str = "的了是在和有也不这与为就都而及对"
    # Gopher repetition: duplicate lines / paragraphs (fraction of them, fraction of their characters).
    max_dup_line_fraction: float = 0.30
    max_dup_line_char_fraction: float = 0.20
    max_dup_paragraph_fraction: float = 0.30
    max_dup_paragraph_char_fraction: float = 0.20
    # Gopher repetition: characters in the most frequent n-gram, n = top_ngram_sizes[i].
    top_ngram_sizes: list[int] = dataclasses.field(default_factory=lambda: [2, 3, 4])
    max_top_ngram_char_fraction: list[float] = dataclasses.field(default_factory=lambda: [0.20, 0.18, 0.16])
    # Gopher repetition: characters covered by repeated occurrences of n-grams, n = dup_ngram_sizes[i].
    dup_ngram_sizes: list[int] = dataclasses.field(default_factory=lambda: [5, 6, 7, 8, 9, 10])
    max_dup_ngram_char_fraction: list[float] = dataclasses.field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]
    )
    # n-gram sizes are multiplied by this for CJK text (character tokens).
    cjk_ngram_scale: int = 2
    # C4 rules apply to these sources.
    c4_sources: list[str] = dataclasses.field(default_factory=lambda: ["crawl"])
    boilerplate_phrases: list[str] = dataclasses.field(
        default_factory=lambda: [
            "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
            "use cookies", "all rights reserved", "版权所有", "icp备", "icp证", "公网安备",
        ]
    )  # fmt: skip
    boilerplate_line_max_chars: int = 200


@dataclasses.dataclass
class Verdict:
    """The outcome for one document: `reason` None means kept, with `text` (lines may be removed)."""

    reason: str | None
    detail: str
    text: str
    score: float
    lines_removed: int = 0


# ------------------------------------------------------------------------------------------------
# Character classes and token hashing on code-point arrays

_TABLE_SIZE = 0x30000  # letters/spaces looked up by Python below this (BMP, CJK planes); none above
_ALPHA, _SPACE, _CJK = np.uint8(1), np.uint8(2), np.uint8(4)
_CHAR_MIX = np.uint64(0x9E3779B97F4A7C15)
_TOKEN_BASE = np.uint64(0xC2B2AE3D27D4EB4F)
_NGRAM_BASE = np.uint64(0x165667B19E3779F9)
_DOC_SALT = np.uint64(0xD6E8FEB86659FD93)
_POSITION_BITS = 22  # n-gram keys pack (hash >> 22 << 22) | position: batches hold < 4M tokens
_MAX_BATCH_TOKENS = 1 << _POSITION_BITS
_MAX_TOKEN_RANK = 65535
_CHARS_LIMIT = 1 << 24  # n-gram lengths are capped here when packed beside their count
_tables: dict[str, np.ndarray] = {}


def _char_flags() -> np.ndarray:
    """uint8 flags for every code point: letter (str.isalpha), whitespace (str.isspace), CJK."""
    flags = _tables.get("flags")
    if flags is None:
        size = 0x110000
        chars = [chr(c) for c in range(_TABLE_SIZE)]
        alpha = np.zeros(size, dtype=bool)
        alpha[:_TABLE_SIZE] = np.fromiter(map(str.isalpha, chars), dtype=bool, count=_TABLE_SIZE)
        space = np.zeros(size, dtype=bool)
        space[:_TABLE_SIZE] = np.fromiter(map(str.isspace, chars), dtype=bool, count=_TABLE_SIZE)
        codes = np.arange(size)
        cjk = (
            ((codes >= 0x3040) & (codes <= 0x30FF))  # kana
            | ((codes >= 0x3400) & (codes <= 0x4DBF))  # CJK extension A
            | ((codes >= 0x4E00) & (codes <= 0x9FFF))  # CJK unified ideographs
            | ((codes >= 0xF900) & (codes <= 0xFAFF))  # compatibility ideographs
            | ((codes >= 0x20000) & (codes < 0x32000))  # extensions B-H
        )
        alpha |= cjk
        flags = (alpha * _ALPHA | space * _SPACE | cjk * _CJK).astype(np.uint8)
        _tables["flags"] = flags
    return flags


def _powers(length: int) -> np.ndarray:
    """_TOKEN_BASE ** k (mod 2**64) for k < length."""
    powers = _tables.get("powers")
    if powers is None or len(powers) < length:
        size = max(length, 4096)
        powers = np.full(size, _TOKEN_BASE, dtype=np.uint64)
        powers[0] = 1
        powers = np.cumprod(powers, dtype=np.uint64)
        _tables["powers"] = powers
    return powers


@dataclasses.dataclass
class _Tokens:
    """The tokens of a batch of texts, as flat arrays (token i belongs to doc[i])."""

    doc: np.ndarray  # int64 document index
    length: np.ndarray  # int64 characters
    hash: np.ndarray  # uint64
    has_alpha: np.ndarray  # bool
    per_doc: np.ndarray  # int64 tokens per document
    chars_per_doc: np.ndarray  # int64 token characters per document
    alpha_per_doc: np.ndarray  # int64 tokens with a letter per document
    cjk_per_doc: np.ndarray  # int64 CJK characters per document
    nonspace_per_doc: np.ndarray  # int64 non-space characters per document
    stop_per_doc: np.ndarray  # int64 CJK stop characters per document


def _tokenize(texts: list[str], cjk_fraction: float, cjk_stop: np.ndarray) -> tuple[_Tokens, np.ndarray]:
    """Tokenize a batch: (tokens, which documents are CJK).

    A document is CJK when its Han/kana characters are at least `cjk_fraction` of its non-space
    characters; its tokens are then single CJK characters and runs of other non-space characters.
    Other documents are split into words on whitespace (the characters `str.isspace` accepts).
    """
    n_docs = len(texts)
    joined = "\n".join(texts)  # the newline separates documents as whitespace
    codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    doc_start = np.zeros(n_docs + 1, dtype=np.int64)  # character offsets of the documents (and the end)
    np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=n_docs) + 1, out=doc_start[1:])
    doc_start[-1] = len(codes)

    def per_doc(mask: np.ndarray) -> np.ndarray:
        """How many characters of each document are set in `mask`."""
        running = np.zeros(len(mask) + 1, dtype=np.int64)
        np.cumsum(mask, out=running[1:])
        return running[doc_start[1:]] - running[doc_start[:-1]]

    flags = _char_flags()[codes]
    space = (flags & _SPACE) != 0
    cjk = (flags & _CJK) != 0
    nonspace = ~space
    cjk_per_doc = per_doc(cjk)
    nonspace_per_doc = per_doc(nonspace)
    cjk_docs = (cjk_per_doc > 0) & (cjk_per_doc >= cjk_fraction * nonspace_per_doc)
    if len(cjk_stop) and cjk_docs.any():
        stop_per_doc = per_doc(np.isin(codes, cjk_stop))
    else:
        stop_per_doc = np.zeros(n_docs, np.int64)
    zeros = np.zeros(n_docs, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    no_tokens = _Tokens(empty, empty, empty.astype(np.uint64), empty.astype(bool), zeros, zeros, zeros,
                        cjk_per_doc, nonspace_per_doc, stop_per_doc)  # fmt: skip
    if len(codes) == 0:
        return no_tokens, cjk_docs

    starts = nonspace.copy()
    starts[1:] &= space[:-1]  # a token starts after whitespace (the first character: always)
    if cjk_docs.any():
        in_cjk_doc = np.repeat(cjk_docs, np.diff(doc_start))
        cjk_boundary = cjk.copy()
        cjk_boundary[1:] |= cjk[:-1]  # a CJK character, or the character after one
        starts |= nonspace & in_cjk_doc & cjk_boundary
    kept = np.flatnonzero(nonspace)  # characters of tokens, in order
    start_flags = starts[kept]
    token_start = np.flatnonzero(start_flags)  # index into `kept` of each token's first character
    if len(token_start) == 0:
        return no_tokens, cjk_docs
    # Token hash = sum of mix(code) * BASE**rank, rank = position of the character in its token.
    rank = np.arange(len(kept), dtype=np.int64)
    rank -= np.repeat(token_start, np.diff(np.append(token_start, len(kept))))
    np.minimum(rank, _MAX_TOKEN_RANK, out=rank)  # characters past 64K in one token share a power
    mixed = codes[kept].astype(np.uint64)
    mixed += np.uint64(1)
    mixed *= _CHAR_MIX
    mixed *= _powers(int(rank.max()) + 1)[rank]
    token_hash = np.add.reduceat(mixed, token_start)
    token_length = np.diff(np.append(token_start, len(kept)))
    token_alpha = np.maximum.reduceat(flags[kept] & _ALPHA, token_start) != 0
    token_char = kept[token_start]
    token_doc = np.searchsorted(doc_start, token_char, side="right") - 1
    tokens = _Tokens(
        doc=token_doc,
        length=token_length,
        hash=token_hash,
        has_alpha=token_alpha,
        per_doc=np.bincount(token_doc, minlength=n_docs),
        chars_per_doc=np.bincount(token_doc, weights=token_length, minlength=n_docs).astype(np.int64),
        alpha_per_doc=np.bincount(token_doc[token_alpha], minlength=n_docs),
        cjk_per_doc=cjk_per_doc,
        nonspace_per_doc=nonspace_per_doc,
        stop_per_doc=stop_per_doc,
    )
    return tokens, cjk_docs


def ngram_char_fractions(
    hashes: np.ndarray,
    lengths: np.ndarray,
    docs: np.ndarray,
    n_docs: int,
    top_sizes: list[int],
    dup_sizes: list[int],
    dup_stop_below: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Gopher's n-gram repetition statistics for many documents at once.

    Returns `top[d, i]`: characters in the most frequent `top_sizes[i]`-gram of document d (count x
    length; ties: the longest; counted only if it occurs twice or more) over its token characters; and `dup[d, j]`:
    characters of tokens covered by a repeated (not first) occurrence of some `dup_sizes[j]`-gram.
    Tokens must be grouped by document in order. The dup fraction can only shrink as n grows, so
    documents at or below `dup_stop_below` are not evaluated for larger n (their value is carried).
    """
    top = np.zeros((n_docs, len(top_sizes)))
    dup = np.zeros((n_docs, len(dup_sizes)))
    total = len(hashes)
    if total == 0:
        return top, dup
    chars = np.bincount(docs, weights=lengths, minlength=n_docs)
    chars[chars == 0] = 1
    prefix = np.concatenate(([0], np.cumsum(lengths)))
    salt = (docs.astype(np.uint64) + np.uint64(1)) * _DOC_SALT
    mask = np.uint64((1 << _POSITION_BITS) - 1)
    active = np.ones(n_docs, dtype=bool)
    grams = hashes.copy()
    last_dup = -1
    for n in range(1, max(top_sizes + dup_sizes, default=0) + 1):
        if n > 1:
            grams = grams[:-1] * _NGRAM_BASE + hashes[n - 1 :]
        count = total - n + 1
        if count <= 0:
            break
        in_top = n in top_sizes
        in_dup = n in dup_sizes
        if not (in_top or in_dup):
            continue
        valid = docs[:count] == docs[n - 1 :]  # the n-gram lies inside one document
        if in_dup and not in_top:
            valid &= active[docs[:count]]
        positions = np.flatnonzero(valid)
        if len(positions) == 0:
            continue
        keys = ((grams[positions] ^ salt[positions]) & ~mask) | positions.astype(np.uint64)
        keys.sort()
        key_hash = keys & ~mask
        key_position = (keys & mask).astype(np.int64)
        same = key_hash[1:] == key_hash[:-1]
        if in_top:
            group_start = np.flatnonzero(np.concatenate(([True], ~same)))
            group_count = np.diff(np.append(group_start, len(keys)))
            repeated = group_count >= 2
            first = key_position[group_start[repeated]]
            gram_chars = np.minimum(prefix[first + n] - prefix[first], _CHARS_LIMIT - 1)
            # The most frequent n-gram of each document (ties: the longest), packed as count:chars.
            best = np.zeros(n_docs, dtype=np.int64)
            np.maximum.at(best, docs[first], group_count[repeated] * _CHARS_LIMIT + gram_chars)
            top[:, top_sizes.index(n)] = np.minimum(
                (best // _CHARS_LIMIT) * (best % _CHARS_LIMIT) / chars, 1.0
            )
        if in_dup:
            column = dup_sizes.index(n)
            repeats = key_position[1:][same]  # sorted by position within equal hashes: first one excluded
            if in_top:
                repeats = repeats[active[docs[repeats]]]
            delta = np.bincount(repeats, minlength=total + 1) - np.bincount(repeats + n, minlength=total + 1)
            covered = np.cumsum(delta[:total]) > 0
            fraction = np.bincount(docs[covered], weights=lengths[covered], minlength=n_docs) / chars
            if last_dup >= 0:
                fraction = np.where(active, fraction, dup[:, last_dup])
            dup[:, column] = fraction
            last_dup = column
            active &= fraction > dup_stop_below
    return top, dup


# ------------------------------------------------------------------------------------------------


class QualityFilter:
    """Evaluate the rules of a `QualityConfig` on texts, a batch at a time."""

    def __init__(self, config: QualityConfig | None = None) -> None:
        self.config = config = config or QualityConfig()
        if len(config.top_ngram_sizes) != len(config.max_top_ngram_char_fraction):
            raise ValueError("top_ngram_sizes and max_top_ngram_char_fraction must have the same length")
        if len(config.dup_ngram_sizes) != len(config.max_dup_ngram_char_fraction):
            raise ValueError("dup_ngram_sizes and max_dup_ngram_char_fraction must have the same length")
        self._stop_words = frozenset(config.stop_words)
        self._cjk_stop = np.array(sorted({ord(ch) for ch in config.cjk_stop_chars}), dtype=np.uint32)
        self._c4_sources = frozenset(config.c4_sources)
        self._phrases = tuple(p.lower() for p in config.boilerplate_phrases)

    def c4_lines(self, text: str) -> tuple[str | None, str, int]:
        """(drop reason or None, the text with boilerplate lines removed, number of lines removed)."""
        lowered = text.lower()
        if "lorem ipsum" in lowered:
            return "lorem_ipsum", text, 0
        if "javascript" not in lowered and not any(p in lowered for p in self._phrases):
            return None, text, 0
        max_chars = self.config.boilerplate_line_max_chars
        kept, removed = [], 0
        for line in text.split("\n"):
            low = line.lower()
            if "javascript" in low or (len(line) <= max_chars and any(p in low for p in self._phrases)):
                removed += 1
            else:
                kept.append(line)
        return None, "\n".join(kept), removed

    def check(self, text: str, lang: str = "", source: str = "") -> Verdict:
        """The verdict for one text (a batch of one)."""
        return self.check_batch([text], [lang], [source])[0]

    def check_batch(self, texts: list[str], langs: list[str], sources: list[str]) -> list[Verdict]:
        config = self.config
        n_docs = len(texts)
        if n_docs == 0:
            return []
        verdicts: list[Verdict | None] = [None] * n_docs
        removed = [0] * n_docs
        line_totals = [text.count("\n") + 1 for text in texts]
        texts = list(texts)
        for i, source in enumerate(sources):
            if source in self._c4_sources:
                reason, texts[i], removed[i] = self.c4_lines(texts[i])
                if reason:
                    verdicts[i] = Verdict(reason, "page contains 'lorem ipsum'", texts[i], 0.0)

        tokens, is_cjk = _tokenize(texts, config.cjk_fraction, self._cjk_stop)

        survivors = []
        for i, text in enumerate(texts):
            if verdicts[i] is None:
                verdicts[i] = self._document_rules(text, langs[i], bool(is_cjk[i]), tokens, i, removed[i])
                if verdicts[i] is None:
                    survivors.append(i)

        # n-gram repetition, one vectorized pass per script (CJK n-grams are longer).
        for cjk_group in (False, True):
            group = [i for i in survivors if bool(is_cjk[i]) == cjk_group]
            if group:
                self._ngram_rules(group, cjk_group, tokens, texts, removed, line_totals, verdicts)
        done = [v for v in verdicts if v is not None]
        assert len(done) == n_docs, "every document gets a verdict"
        return done

    def _document_rules(
        self, text: str, lang: str, cjk: bool, tokens: _Tokens, i: int, removed: int
    ) -> Verdict | None:
        """Length, word length, symbols, bullets, ellipses, letters, stop words, repeated lines."""
        config = self.config
        n_units = int(tokens.per_doc[i])
        unit = "CJK tokens" if cjk else "words"

        def fail(reason: str, detail: str) -> Verdict:
            return Verdict(reason, detail, text, 0.0, removed)

        low, high = (
            (config.min_cjk_tokens, config.max_cjk_tokens) if cjk else (config.min_words, config.max_words)
        )
        if n_units < low:
            return fail("too_short", f"{n_units} {unit} < {low}")
        if n_units > high:
            return fail("too_long", f"{n_units} {unit} > {high}")
        if not cjk:
            mean_length = tokens.chars_per_doc[i] / n_units
            if not config.min_mean_word_length <= mean_length <= config.max_mean_word_length:
                return fail("mean_word_length", f"{mean_length:.1f} characters")
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n_units > config.max_symbol_ratio:
            return fail("symbol_ratio", f"{symbols / n_units:.3f} > {config.max_symbol_ratio}")
        lines = [line for line in map(str.strip, text.split("\n")) if line]
        n_lines = max(len(lines), 1)
        bullets = sum(map(_STARTS_WITH_BULLET, lines)) / n_lines
        if bullets > config.max_bullet_lines:
            return fail("bullet_lines", f"{bullets:.2f} > {config.max_bullet_lines}")
        ellipses = sum(map(_ENDS_WITH_ELLIPSIS, lines)) / n_lines
        if ellipses > config.max_ellipsis_lines:
            return fail("ellipsis_lines", f"{ellipses:.2f} > {config.max_ellipsis_lines}")
        alpha = tokens.alpha_per_doc[i] / n_units
        min_alpha = config.min_alpha_cjk_tokens if cjk else config.min_alpha_words
        if alpha < min_alpha:
            return fail("alpha_ratio", f"{alpha:.2f} < {min_alpha}")
        if cjk:
            if lang in ("", "zh", "ja") and int(tokens.stop_per_doc[i]) < config.min_cjk_stop_chars:
                return fail("stop_words", f"{int(tokens.stop_per_doc[i])} Chinese function characters")
        elif lang in ("", "en") and config.min_stop_words > 0:
            contains = self._stop_words.__contains__
            found = sum(map(contains, text[:2000].lower().split()[:-1]))  # usually enough; [:-1]: a cut word
            if found < config.min_stop_words and len(text) > 2000:
                found = sum(map(contains, text.lower().split()))
            if found < config.min_stop_words:
                return fail("stop_words", f"{found} English stop words < {config.min_stop_words}")
        reason, detail = _repeated(
            lines, config.max_dup_line_fraction, config.max_dup_line_char_fraction, "line"
        )
        if reason is None and _PARAGRAPH_BREAK.search(text):
            paragraphs = [p for p in (raw.strip() for raw in _PARAGRAPH_BREAK.split(text)) if p]
            reason, detail = _repeated(
                paragraphs,
                config.max_dup_paragraph_fraction,
                config.max_dup_paragraph_char_fraction,
                "paragraph",
            )
        if reason is not None:
            return fail(reason, detail)
        return None

    def _ngram_rules(
        self,
        group: list[int],
        cjk: bool,
        tokens: _Tokens,
        texts: list[str],
        removed: list[int],
        line_totals: list[int],
        verdicts: list[Verdict | None],
    ) -> None:
        config = self.config
        scale = config.cjk_ngram_scale if cjk else 1
        top_sizes = [n * scale for n in config.top_ngram_sizes]
        dup_sizes = [n * scale for n in config.dup_ngram_sizes]
        dup_limits = config.max_dup_ngram_char_fraction
        # Sub-batches keep token positions within the key's position bits.
        for chunk in _chunks_by_tokens(group, tokens.per_doc, _MAX_BATCH_TOKENS - 1):
            selected = np.isin(tokens.doc, chunk)
            local = np.searchsorted(np.asarray(chunk), tokens.doc[selected])
            top, dup = ngram_char_fractions(
                tokens.hash[selected], tokens.length[selected], local, len(chunk),
                top_sizes, dup_sizes, min(dup_limits, default=1.0),
            )  # fmt: skip
            for row, i in enumerate(chunk):
                verdicts[i] = self._ngram_verdict(
                    texts[i],
                    top[row],
                    dup[row],
                    top_sizes,
                    dup_sizes,
                    tokens,
                    i,
                    removed[i],
                    line_totals[i],
                    cjk,
                )

    def _ngram_verdict(
        self,
        text: str,
        top: np.ndarray,
        dup: np.ndarray,
        top_sizes: list[int],
        dup_sizes: list[int],
        tokens: _Tokens,
        i: int,
        removed: int,
        line_total: int,
        cjk: bool,
    ) -> Verdict:
        config = self.config
        for n, fraction, limit in zip(top_sizes, top, config.max_top_ngram_char_fraction):
            if fraction > limit:
                return Verdict("top_ngram", f"{n}-gram covers {fraction:.2f} > {limit}", text, 0.0, removed)
        for n, fraction, limit in zip(dup_sizes, dup, config.max_dup_ngram_char_fraction):
            if fraction > limit:
                return Verdict(
                    "dup_ngram", f"repeated {n}-grams cover {fraction:.2f} > {limit}", text, 0.0, removed
                )
        n_units = int(tokens.per_doc[i])
        min_alpha = config.min_alpha_cjk_tokens if cjk else config.min_alpha_words
        alpha = tokens.alpha_per_doc[i] / n_units
        symbols = (text.count("#") + text.count("...") + text.count("…")) / n_units
        first_dup_limit = config.max_dup_ngram_char_fraction[0] if len(dup) else 1.0
        margins = (
            1.0 - min(float(dup[0]) / first_dup_limit, 1.0) if len(dup) and first_dup_limit > 0 else 1.0,
            (alpha - min_alpha) / (1.0 - min_alpha) if min_alpha < 1.0 else 1.0,
            1.0 - min(symbols / config.max_symbol_ratio, 1.0) if config.max_symbol_ratio > 0 else 1.0,
            1.0 - removed / line_total,
        )
        score = round(min(max(math.fsum(margins) / len(margins), 0.0), 1.0), 4)
        return Verdict(None, "", text, score, removed)


def _chunks_by_tokens(group: list[int], per_doc: np.ndarray, limit: int) -> list[list[int]]:
    chunks: list[list[int]] = [[]]
    size = 0
    for i in group:
        count = int(per_doc[i])
        if chunks[-1] and size + count > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += count
    return chunks


def _repeated(
    items: list[str], max_fraction: float, max_char_fraction: float, kind: str
) -> tuple[str | None, str]:
    """Gopher: the fraction of items (and of their characters) that repeat an earlier item."""
    if len(items) < 2:
        return None, ""
    unique = set(items)
    dup_items = len(items) - len(unique)
    if dup_items == 0:
        return None, ""
    total_chars = sum(map(len, items))
    dup_chars = total_chars - sum(map(len, unique))  # the characters of every occurrence but the first
    if dup_items / len(items) > max_fraction:
        return f"dup_{kind}s", f"{dup_items}/{len(items)} {kind}s repeat an earlier one"
    if total_chars and dup_chars / total_chars > max_char_fraction:
        return f"dup_{kind}_chars", f"{dup_chars / total_chars:.2f} of characters in repeated {kind}s"
    return None, ""


class QualityStep(Step):
    """Apply `QualityFilter` to every document: drop failures by rule, score and keep the rest."""

    name = "quality"
    batch_size = 128

    def __init__(self, config: QualityConfig | None = None) -> None:
        super().__init__()
        self.filter = QualityFilter(config)

    def process_batch(self, batch: list[Document]) -> list[Document]:
        verdicts = self.filter.check_batch(
            [doc.text for doc in batch], [doc.lang for doc in batch], [doc.source for doc in batch]
        )
        kept = []
        for doc, verdict in zip(batch, verdicts):
            if verdict.lines_removed:
                self.stats.extra["lines_removed"] += verdict.lines_removed
                self.stats.extra["docs_with_lines_removed"] += 1
            if verdict.reason is not None:
                self.drop(doc, verdict.reason, verdict.detail)
                continue
            doc.text = verdict.text
            doc.quality = verdict.score
            kept.append(doc)
        return kept


def describe_rules(config: QualityConfig | None = None) -> list[dict[str, Any]]:
    """The rules in evaluation order, with their reason names and thresholds (for reports and docs)."""
    c = config or QualityConfig()
    return [
        {"reason": "lorem_ipsum", "rule": "page contains 'lorem ipsum' (C4; c4_sources only)"},
        {"reason": "too_short", "rule": f"< {c.min_words} words / < {c.min_cjk_tokens} CJK tokens"},
        {"reason": "too_long", "rule": f"> {c.max_words} words / > {c.max_cjk_tokens} CJK tokens"},
        {
            "reason": "mean_word_length",
            "rule": f"mean word length outside [{c.min_mean_word_length}, {c.max_mean_word_length}] (not CJK)",
        },
        {"reason": "symbol_ratio", "rule": f"('#' + ellipses) per word > {c.max_symbol_ratio}"},
        {"reason": "bullet_lines", "rule": f"> {c.max_bullet_lines} of lines start with a bullet"},
        {"reason": "ellipsis_lines", "rule": f"> {c.max_ellipsis_lines} of lines end with an ellipsis"},
        {
            "reason": "alpha_ratio",
            "rule": f"< {c.min_alpha_words} of words / < {c.min_alpha_cjk_tokens} of CJK tokens have a letter",
        },
        {
            "reason": "stop_words",
            "rule": f"< {c.min_stop_words} English stop words / < {c.min_cjk_stop_chars} Chinese function characters",
        },
        {"reason": "dup_lines", "rule": f"> {c.max_dup_line_fraction} of lines repeat an earlier line"},
        {
            "reason": "dup_line_chars",
            "rule": f"> {c.max_dup_line_char_fraction} of characters in repeated lines",
        },
        {"reason": "dup_paragraphs", "rule": f"> {c.max_dup_paragraph_fraction} of paragraphs repeat"},
        {
            "reason": "dup_paragraph_chars",
            "rule": f"> {c.max_dup_paragraph_char_fraction} of characters in repeated paragraphs",
        },
        {
            "reason": "top_ngram",
            "rule": f"most frequent n-gram (n={c.top_ngram_sizes}; x{c.cjk_ngram_scale} for CJK) covers > {c.max_top_ngram_char_fraction}",
        },
        {
            "reason": "dup_ngram",
            "rule": f"repeated n-grams (n={c.dup_ngram_sizes}; x{c.cjk_ngram_scale} for CJK) cover > {c.max_dup_ngram_char_fraction}",
        },
    ]
