"""n-gram overlap between training rows and evaluation sets, vectorized over hashed n-grams.

**What is compared.** Text, not token ids. Both sides become a stream of *units*: every maximal run of
letters, digits and combining marks (a word of a space-delimited script) is one unit; every character of a
script written without spaces (CJK ideographs, kana, bopomofo, Thai, Lao, Khmer, Myanmar) is one unit on its
own; everything else (spaces, punctuation, symbols) only separates units. Characters are folded first (each
code point to its NFKC form when that is one character, then lower case; the evaluation text is also put in
NFC, as the pipeline does with training text), so `Ｈｅｌｌｏ, World!` and `hello world` give the same units.
An n-gram is n consecutive units (default 13, as GPT-3 and GLM-130B's contamination checks): 13 words of
English, 13 characters of Chinese, and mixed text simply mixes units (`用Python分析数据` is the 6 units
用 / python / 分 / 析 / 数 / 据). An n-gram never spans two texts: two fields of an
evaluation example, or two segments of a training row, or two documents separated by `<eod>`.

Why text and not token ids: SentencePiece segments a string differently depending on what surrounds it (the
first word of an example gets a `▁` prefix it may not have inside a document; a Chinese phrase is cut
differently next to other characters), and evaluation files are not normalized like the pipeline's text, so
token-id n-grams would miss planted examples. The training side is still never decoded by SentencePiece: every
id of the run's tokenizer is mapped once to the UTF-8 bytes of its piece (`▁` -> space, byte pieces -> their
byte, `<n>`/tab/blanks -> whitespace, every other special id -> a text boundary), so a batch of rows turns into
text by one vectorized gather (`VocabText`), which is what SentencePiece's decoder computes, ~20x faster than
calling it per row.

**What the rows hold.** A training row shows Part A with `[MASK]`/`[gMASK]` in place of its spans and the
spans after `[sop]` in Part B, in shuffled order. `restore_segments` puts every span back at its mask token,
so each segment is its original text again (a [gMASK] segment: prefix + suffix; MIP: prompt + target) and
masking cannot hide an overlap.

**Hashing.** A unit's hash is a polynomial over its code points mod 2^64 (by `np.add.reduceat`), mixed by
splitmix64's finalizer; an n-gram's hash is a polynomial over its units' hashes, mixed again. The evaluation
n-grams are a sorted, deduplicated uint64 array; training n-grams are probed in batches through a bitmap
prefilter (16 bits per indexed n-gram, ~6% false candidates) and then `np.searchsorted`. A 64-bit collision
makes a false match with probability about (indexed n-grams) / 2^64 per training n-gram: ~5e-12 for 10^8
indexed n-grams. Memory: 8 bytes (sorted hash) + 2 (bitmap) + 1 (hit flag) per indexed n-gram, plus 8 bytes
per (example, n-gram) pair to attribute hits to examples (`NgramIndex.memory`).

An evaluation example is *contaminated* when any of its n-grams occurs in the scanned training rows. An example
with fewer than n units in every text has no n-gram and cannot be flagged; the report counts them
(`too_short`).

**On Ray** (`scan_rows_on_ray`, the audit's `workers > 1`): the rows are cut into contiguous ranges, the index and
the vocabulary go into the object store once, and each range is a Ray task that scans with its own hit flags
(`NgramIndex.fresh`) and returns the indexed n-grams it saw, its first matches per evaluation set and its
counts. The driver merges the ranges in row order (`NgramIndex.absorb`), so the report is the single-process
scan's exactly: hits are a union, and the first k matches of the whole scan are the first k of the
concatenated per-range lists (a range keeps its own first k).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from common.memory import release_memory
from kernels.ranges import concatenated_ranges as _ranges
from mip.eval_sets import EvalSet
from pipeline.special_tokens import (
    BLANK_FIRST,
    IMAGE_TOKENS,
    LAST_SPECIAL,
    MAX_BLANK,
    MIN_BLANK,
    TAB,
    VOCAB_SIZE,
)

DEFAULT_NGRAM = 13
BOUNDARY = "\x00"
"""Separates texts in a joined string: units on either side never form one n-gram."""

_TABLE_SIZE = 0x32000
"""Code points with a folding/class entry (up to CJK extension H); anything above is a separator."""
_SEPARATOR, _WORD, _CHAR = 0, 1, 2
_CHAR_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31A0, 0x31BF),  # Bopomofo extended
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x31FFF),  # CJK extensions B..H
)
"""Scripts written without spaces between words: each character is a unit."""

_UNIT_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime (odd)
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio (odd)


@functools.lru_cache(maxsize=1)
def unit_tables() -> tuple[np.ndarray, np.ndarray]:
    """(fold, klass): per code point below _TABLE_SIZE, its folded code point and its unit class.

    fold[c] = NFKC(c).lower() when that is one character, else c. klass: 0 separator, 1 word character
    (Unicode categories L*, N*, M*), 2 a character that is a unit of its own (scripts without spaces).
    """
    fold = np.arange(_TABLE_SIZE, dtype=np.uint32)
    klass = np.zeros(_TABLE_SIZE, dtype=np.uint8)
    for code in range(1, _TABLE_SIZE):
        folded = unicodedata.normalize("NFKC", chr(code)).lower()
        if len(folded) == 1:
            fold[code] = ord(folded)
        if unicodedata.category(chr(int(fold[code])))[0] in "LNM":
            klass[code] = _WORD
    for first, last in _CHAR_RANGES:
        in_range = (fold >= first) & (fold <= last)
        klass[in_range & (klass == _WORD)] = _CHAR
    fold.flags.writeable = False
    klass.flags.writeable = False
    return fold, klass


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place on a uint64 array (returned for chaining)."""
    values ^= values >> np.uint64(30)
    values *= np.uint64(0xBF58476D1CE4E5B9)
    values ^= values >> np.uint64(27)
    values *= np.uint64(0x94D049BB133111EB)
    values ^= values >> np.uint64(31)
    return values


@functools.lru_cache(maxsize=8)
def _powers(count: int) -> np.ndarray:
    """_UNIT_MULTIPLIER ** k mod 2^64 for k < count."""
    powers = np.full(count, _UNIT_MULTIPLIER, dtype=np.uint64)
    powers[0] = 1
    np.multiply.accumulate(powers, out=powers)
    return powers


def codepoint_units(codepoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Units of a code-point array (uint32): (unit hashes uint64, text index of each unit int64).

    Code point 0 (BOUNDARY) ends a text: the text index of a unit is the number of boundaries before it.
    """
    fold, klass = unit_tables()
    cp = np.asarray(codepoints, dtype=np.uint32)
    inside = cp < _TABLE_SIZE
    if inside.all():  # the usual case: no code point above CJK extension H
        folded, kind = fold[cp], klass[cp]
    else:
        index = np.where(inside, cp, 0)
        folded = np.where(inside, fold[index], cp)
        kind = np.where(inside, klass[index], _SEPARATOR)
    is_word = kind == _WORD
    in_unit = is_word | (kind == _CHAR)
    starts = in_unit.copy()
    starts[1:] &= ~(is_word[1:] & is_word[:-1])  # a word character continues the previous word
    unit_start = np.flatnonzero(starts)
    if len(unit_start) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    members = np.flatnonzero(in_unit)
    first_member = np.flatnonzero(starts[members])  # where each unit begins within `members`
    lengths = np.diff(np.append(first_member, len(members)))
    offset = np.arange(len(members)) - np.repeat(first_member, lengths)
    contributions = folded[members].astype(np.uint64) * _powers(_power_bucket(int(lengths.max())))[offset]
    hashes = np.add.reduceat(contributions, first_member)
    hashes += lengths.astype(np.uint64)
    mix64(hashes)
    text = np.cumsum(cp == 0)[unit_start].astype(np.int64)
    return hashes, text


def _power_bucket(longest: int) -> int:
    """Round the powers table up to a power of two, so the cache sees few distinct sizes."""
    return 1 << max(6, (longest - 1).bit_length())


def text_units(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Units of several texts: (unit hashes, index of the text each unit comes from). Texts are NFC-normalized."""
    joined = BOUNDARY.join(unicodedata.normalize("NFC", t.replace(BOUNDARY, " ")) for t in texts)
    codepoints = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    return codepoint_units(codepoints)


def ngram_hashes(units: np.ndarray, unit_text: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every n consecutive units of one text: (hashes uint64, text index), in stream order."""
    count = len(units) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    acc = units[:count].copy()
    for k in range(1, n):
        acc *= _NGRAM_MULTIPLIER
        acc += units[k : k + count]
    valid = unit_text[:count] == unit_text[n - 1 :]
    return mix64(acc[valid]), unit_text[:count][valid]


# -------------------------------------------------------------------------------------- reference (tests)


def reference_units(text: str) -> list[str]:
    """The units of one text by a plain per-character loop over the same tables (the spec of `text_units`)."""
    fold, klass = unit_tables()
    units: list[str] = []
    word: list[str] = []
    for char in unicodedata.normalize("NFC", text):
        code = ord(char)
        folded = chr(int(fold[code])) if code < _TABLE_SIZE else char
        kind = int(klass[code]) if code < _TABLE_SIZE else _SEPARATOR
        if kind == _WORD:
            word.append(folded)
            continue
        if word:
            units.append("".join(word))
            word = []
        if kind == _CHAR:
            units.append(folded)
    if word:
        units.append("".join(word))
    return units


def reference_unit_hash(unit: str) -> int:
    """The hash `codepoint_units` gives `unit`, computed with Python integers."""
    mask = (1 << 64) - 1
    value = sum(ord(c) * pow(int(_UNIT_MULTIPLIER), k, 1 << 64) for k, c in enumerate(unit)) + len(unit)
    return int(mix64(np.array([value & mask], dtype=np.uint64))[0])


# ------------------------------------------------------------------------------------- training rows


class VocabText:
    """Token ids of the run's tokenizer -> the text they spell, by one vectorized byte gather per batch.

    Each id maps to its piece's UTF-8 bytes, as SentencePiece's decoder does (`▁` -> space, `<0xNN>` byte
    pieces -> the byte), the newline piece to `\\n`, tab and blanks to whitespace; control and unknown pieces
    to a space; every other special id (`<eod>`, `[MASK]`, ...) and image ids to BOUNDARY.
    """

    def __init__(self, tokenizer: Any) -> None:
        sp = tokenizer.sentencepiece
        pieces: list[bytes] = [BOUNDARY.encode()] * VOCAB_SIZE
        newline = getattr(tokenizer, "newline_id", None)
        for sp_id in range(tokenizer.text_vocab_size):
            piece = sp.id_to_piece(sp_id)
            if sp.is_byte(sp_id):
                value = bytes([int(piece[3:5], 16)])
                data = b" " if value == b"\x00" else value
            elif sp.is_control(sp_id) or sp.is_unknown(sp_id):
                data = b" "
            else:
                data = piece.replace("\u2581", " ").replace(BOUNDARY, " ").encode("utf-8")
            pieces[IMAGE_TOKENS + sp_id] = data
        if newline is not None:
            pieces[newline] = b"\n"
        pieces[TAB] = b"\t"
        for k in range(MIN_BLANK, MAX_BLANK + 1):
            pieces[BLANK_FIRST + k - MIN_BLANK] = b" " * k
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=VOCAB_SIZE)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.lengths = lengths
        self.data = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        self.is_boundary = np.array([p == BOUNDARY.encode() for p in pieces], dtype=bool)
        assert BLANK_FIRST + MAX_BLANK - MIN_BLANK == LAST_SPECIAL

    def text(self, ids: np.ndarray) -> str:
        """The text of `ids` (invalid UTF-8 from a byte sequence cut by a boundary becomes U+FFFD)."""
        ids = np.asarray(ids, dtype=np.int64)
        lengths = self.lengths[ids]
        total = int(lengths.sum())
        if total == 0:
            return ""
        ends = np.cumsum(lengths)
        source = np.repeat(self.offsets[ids] - (ends - lengths), lengths) + np.arange(total)
        return self.data[source].tobytes().decode("utf-8", errors="replace")

    def codepoints(self, ids: np.ndarray) -> np.ndarray:
        return np.frombuffer(self.text(ids).encode("utf-32-le"), dtype=np.uint32)




@dataclasses.dataclass
class RestoredSegments:
    """The original token order of a batch's segments: `ids` holds, per segment, a boundary id and then the
    segment's text with every span back at its mask token; `segment_of_id` says whose each id is."""

    ids: np.ndarray
    segment_of_id: np.ndarray


def restore_segments(recipes: Any, boundary_id: int) -> RestoredSegments:
    """Undo the masking of every segment of a batch (`kernels.reconstruct.RowRecipes`), vectorized.

    Every flat position of Part A gets a weight: 1 for a text token, the span's length for a mask token
    (which the span replaces), plus 1 at a segment's first position for the boundary put before it; Part B
    gets 0. The exclusive running sum of the weights is where each Part-A token (or span) lands.
    """
    tokens = np.ascontiguousarray(recipes.tokens).reshape(-1)
    row_length = recipes.tokens.shape[1]
    row_base = np.asarray(recipes.segment_row, dtype=np.int64) * row_length
    start = row_base + np.asarray(recipes.segment_start, dtype=np.int64)
    sep = row_base + np.asarray(recipes.segment_sep, dtype=np.int64)
    span_count = np.asarray(recipes.segment_span_count, dtype=np.int64)
    span_length = np.asarray(recipes.span_length, dtype=np.int64)
    span_segment = np.repeat(np.arange(len(span_count)), span_count)
    sizes = span_length + 1
    block_end = np.cumsum(sizes)
    first_span = np.cumsum(span_count) - span_count
    offset_in_b = (block_end - sizes) - (block_end - sizes)[first_span][span_segment] if len(sizes) else sizes
    block_start = sep[span_segment] + offset_in_b  # the [sop] of each block
    mask_flat = row_base[span_segment] + np.asarray(recipes.span_mask_position, dtype=np.int64)

    part_a = _ranges(start, sep - start)
    weight = np.zeros(len(tokens), dtype=np.int64)
    weight[part_a] = 1
    weight[mask_flat] = span_length
    is_start = np.zeros(len(tokens), dtype=np.int64)
    is_start[start] = 1
    weight += is_start
    landing = np.cumsum(weight) - weight  # exclusive
    total = int(weight.sum())
    ids = np.empty(total, dtype=np.int64)
    ids[landing[start]] = boundary_id
    is_mask = np.zeros(len(tokens), dtype=bool)
    is_mask[mask_flat] = True
    text = part_a[~is_mask[part_a]]
    ids[landing[text] + is_start[text]] = tokens[text]
    ids[_ranges(landing[mask_flat] + is_start[mask_flat], span_length)] = tokens[
        _ranges(block_start + 1, span_length)
    ]
    segment_begin = landing[start]
    segment_of_id = np.repeat(np.arange(len(start)), np.diff(np.append(segment_begin, total)))
    return RestoredSegments(ids=ids, segment_of_id=segment_of_id)


# ------------------------------------------------------------------------------------------- the index


@dataclasses.dataclass
class _SetInfo:
    name: str
    first_example: int
    examples: int
    too_short: int = 0


class NgramIndex:
    """The n-grams of evaluation sets, probed by training n-grams; remembers which were seen.

    index = NgramIndex.build(eval_sets, n=13)
    index.probe(training_hashes)       # marks hits; returns a bool mask over the probe
    index.report()                     # per set: examples, contaminated, fraction, first ids
    """

    def __init__(
        self,
        n: int,
        sets: list[_SetInfo],
        example_ids: list[str],
        unique: np.ndarray,
        pair_unique: np.ndarray,
        pair_example: np.ndarray,
    ) -> None:
        self.n = n
        self.sets = sets
        self.example_ids = example_ids
        self.unique = unique
        self.pair_unique = pair_unique
        self.pair_example = pair_example
        self.example_set = np.repeat(np.arange(len(sets)), [s.examples for s in sets])
        self.hit = np.zeros(len(unique), dtype=bool)
        self.bits = max(16, min(36, (16 * max(len(unique), 1) - 1).bit_length()))
        self._shift = np.uint64(64 - self.bits)
        self.bitmap = np.zeros(1 << (self.bits - 3), dtype=np.uint8)
        if len(unique):
            bucket = unique >> self._shift
            np.bitwise_or.at(
                self.bitmap,
                (bucket >> np.uint64(3)).astype(np.int64),
                (np.uint8(1) << (bucket & np.uint64(7)).astype(np.uint8)),
            )
        self.probed = 0
        self.matched = 0
        self.matches: dict[int, list[dict[str, Any]]] = {}

    @classmethod
    def build(
        cls, eval_sets: Sequence[EvalSet], n: int = DEFAULT_NGRAM, chunk_examples: int = 4096
    ) -> NgramIndex:
        """Index every example of every set (n-grams within each text of an example, deduplicated per example)."""
        if n < 1:
            raise ValueError("n-gram size must be >= 1")
        sets: list[_SetInfo] = []
        example_ids: list[str] = []
        hash_parts: list[np.ndarray] = []
        example_parts: list[np.ndarray] = []
        for eval_set in eval_sets:
            info = _SetInfo(eval_set.name, len(example_ids), len(eval_set.examples))
            for lo in range(0, len(eval_set.examples), chunk_examples):
                chunk = eval_set.examples[lo : lo + chunk_examples]
                texts = [t for ex in chunk for t in ex.texts]
                text_example = np.repeat(np.arange(len(chunk)), [len(ex.texts) for ex in chunk])
                units, unit_text = text_units(texts)
                hashes, ngram_text = ngram_hashes(units, unit_text, n)
                example = text_example[ngram_text] + info.first_example + lo
                has_ngram = np.zeros(len(chunk), dtype=bool)
                has_ngram[text_example[ngram_text]] = True
                info.too_short += int((~has_ngram).sum())
                hash_parts.append(hashes)
                example_parts.append(example.astype(np.int32))
            example_ids.extend(ex.id for ex in eval_set.examples)
            sets.append(info)
        hashes = np.concatenate(hash_parts) if hash_parts else np.zeros(0, np.uint64)
        examples = np.concatenate(example_parts) if example_parts else np.zeros(0, np.int32)
        unique, inverse = np.unique(hashes, return_inverse=True)
        pairs = np.unique(inverse.astype(np.int64) * max(len(example_ids), 1) + examples)  # (n-gram, example)
        pair_unique, pair_example = np.divmod(pairs, max(len(example_ids), 1))
        return cls(
            n,
            sets,
            example_ids,
            unique,
            pair_unique.astype(np.int32 if len(unique) < 2**31 else np.int64),
            pair_example.astype(np.int32),
        )

    @property
    def memory(self) -> dict[str, Any]:
        """Bytes held by the index, in all and per indexed (distinct) n-gram."""
        parts = {
            "sorted_hashes": self.unique.nbytes,
            "prefilter_bitmap": self.bitmap.nbytes,
            "hit_flags": self.hit.nbytes,
            "example_pairs": self.pair_unique.nbytes + self.pair_example.nbytes,
        }
        total = sum(parts.values())
        scan = parts["sorted_hashes"] + parts["prefilter_bitmap"] + parts["hit_flags"]
        return {
            "ngrams": int(len(self.unique)),
            "pairs": int(len(self.pair_unique)),
            "bytes": total,
            "bytes_per_ngram": total / max(len(self.unique), 1),
            "probe_bytes_per_ngram": scan / max(len(self.unique), 1),
            "parts": parts,
        }

    def probe(self, hashes: np.ndarray) -> np.ndarray:
        """Mark the indexed n-grams among `hashes`; return a bool mask of the hashes that are indexed."""
        self.probed += len(hashes)
        found = np.zeros(len(hashes), dtype=bool)
        if len(hashes) == 0 or len(self.unique) == 0:
            return found
        bucket = hashes >> self._shift
        maybe = (
            self.bitmap[(bucket >> np.uint64(3)).astype(np.intp)] >> (bucket & np.uint64(7)).astype(np.uint8)
        ) & 1
        candidates = np.flatnonzero(maybe)
        if len(candidates) == 0:
            return found
        keys = hashes[candidates]
        position = np.searchsorted(self.unique, keys)
        position[position == len(self.unique)] = 0
        equal = self.unique[position] == keys
        if equal.any():
            self.hit[position[equal]] = True
            found[candidates[equal]] = True
            self.matched += int(equal.sum())
        return found

    def sets_holding(self, hashes: np.ndarray) -> list[int]:
        """The evaluation sets (indices) whose examples hold any of these indexed hashes."""
        position = np.searchsorted(self.unique, np.asarray(hashes, dtype=np.uint64))
        first = np.searchsorted(self.pair_unique, position, side="left")
        last = np.searchsorted(self.pair_unique, position, side="right")
        pairs = _ranges(first, last - first)
        return np.unique(self.example_set[self.pair_example[pairs]]).tolist()

    def note_match(self, set_index: int, where: dict[str, Any], limit: int) -> None:
        found = self.matches.setdefault(set_index, [])
        if len(found) < limit and where not in found:
            found.append(where)

    def fresh(self) -> NgramIndex:
        """A scanner sharing this index's n-gram arrays (read-only) with its own hit flags, counters and matches:
        what a Ray task scans with, since arrays from the object store cannot be written."""
        clone = copy.copy(self)
        clone.hit = np.zeros(len(self.unique), dtype=bool)
        clone.probed = clone.matched = 0
        clone.matches = {}
        return clone

    def absorb(self, part: RangeScan, limit: int) -> None:
        """Merge the scan of a range of rows; called in row order, it gives what one sequential scan gives."""
        self.hit[part.hit_positions] = True
        self.probed += part.probed
        self.matched += part.matched
        for set_index in sorted(part.matches):
            for where in part.matches[set_index]:
                self.note_match(set_index, where, limit)

    def contaminated_examples(self) -> np.ndarray:
        """Bool per example: does any of its n-grams occur in what was probed?"""
        flagged = np.zeros(len(self.example_ids), dtype=bool)
        seen_pairs = self.hit[self.pair_unique]
        flagged[self.pair_example[seen_pairs]] = True
        return flagged

    def report(self, first_ids: int = 5) -> dict[str, dict[str, Any]]:
        """Per evaluation set: examples, contaminated, fraction, too_short, the first contaminated ids."""
        flagged = self.contaminated_examples()
        out: dict[str, dict[str, Any]] = {}
        for number, info in enumerate(self.sets):
            mine = flagged[info.first_example : info.first_example + info.examples]
            count = int(mine.sum())
            out[info.name] = {
                "examples": info.examples,
                "contaminated": count,
                "fraction": count / max(info.examples, 1),
                "too_short": info.too_short,
                "first_contaminated_ids": [
                    self.example_ids[info.first_example + int(i)] for i in np.flatnonzero(mine)[:first_ids]
                ],
                "training_matches": self.matches.get(number, []),
            }
        return out


# --------------------------------------------------------------------------------------------- the scan


@dataclasses.dataclass
class ScanStats:
    """What a scan read and how fast."""

    rows: int = 0
    segments: int = 0
    tokens: int = 0
    ngrams: int = 0
    matched_ngrams: int = 0
    seconds: float = 0.0

    def add(self, other: ScanStats) -> None:
        """Count another scan's work in (seconds are the caller's: ranges on Ray overlap in time)."""
        for field in ("rows", "segments", "tokens", "ngrams", "matched_ngrams"):
            setattr(self, field, getattr(self, field) + getattr(other, field))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tokens_per_second"] = self.tokens / max(self.seconds, 1e-9)
        return data


def batch_ngrams(recipes: Any, vocab: VocabText, n: int, boundary_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram hashes of a batch of rows (restored text) and the batch segment each comes from."""
    restored = restore_segments(recipes, boundary_id)
    codepoints = vocab.codepoints(restored.ids)
    units, unit_text = codepoint_units(codepoints)
    hashes, ngram_text = ngram_hashes(units, unit_text, n)
    # Text t (t >= 1) follows the t-th boundary id of the stream; segment 0 starts with one, so text 0 is empty.
    boundary_segment = restored.segment_of_id[vocab.is_boundary[restored.ids]]
    return hashes, boundary_segment[ngram_text - 1]


def iter_row_batches(rows: np.ndarray, batch_rows: int) -> Iterator[np.ndarray]:
    for lo in range(0, len(rows), batch_rows):
        yield rows[lo : lo + batch_rows]


def scan_rows(
    shards: Any,
    rows: np.ndarray,
    index: NgramIndex,
    vocab: VocabText,
    *,
    batch_rows: int = 64,
    describe_segment: Any = None,
    match_limit: int = 5,
    progress: Any = None,
) -> ScanStats:
    """Probe the n-grams of `rows` of `shards` (a `TrainingShards`) against `index`.

    `describe_segment(shard_number, segment_index_in_shard, row)` returns a dict naming a matching training
    segment (its source and document); the first `match_limit` per evaluation set are kept in the index.
    """
    from pipeline.special_tokens import EOD

    stats = ScanStats()
    started = time.perf_counter()
    rows = np.asarray(rows, dtype=np.int64)
    shard = -1
    for chunk in iter_row_batches(rows, batch_rows):
        recipes, owner_shard, owner_index = shards.recipes(chunk)
        if len(owner_shard) and owner_shard[-1] != shard:  # into another shard: hand back what the last left
            shard = int(owner_shard[-1])
            release_memory()
        hashes, segment = batch_ngrams(recipes, vocab, index.n, EOD)
        found = index.probe(hashes)
        stats.rows += len(chunk)
        stats.segments += len(owner_index)
        stats.tokens += int(recipes.tokens.size)
        stats.ngrams += len(hashes)
        if found.any():
            stats.matched_ngrams += int(found.sum())
            if describe_segment is not None:
                _note_matches(
                    index,
                    hashes[found],
                    segment[found],
                    recipes,
                    chunk,
                    owner_shard,
                    owner_index,
                    describe_segment,
                    match_limit,
                )
        if progress is not None:
            progress.update(len(chunk), tokens=int(recipes.tokens.size))
    stats.seconds = time.perf_counter() - started
    return stats


def _note_matches(
    index: NgramIndex,
    hashes: np.ndarray,
    segments: np.ndarray,
    recipes: Any,
    chunk: np.ndarray,
    owner_shard: np.ndarray,
    owner_index: np.ndarray,
    describe: Any,
    limit: int,
) -> None:
    """Keep the first `limit` matching training segments of each evaluation set (stops once every set has them)."""
    full = [len(index.matches.get(number, [])) >= limit for number in range(len(index.sets))]
    for segment in np.unique(segments).tolist():
        if all(full):
            return
        sets = index.sets_holding(np.unique(hashes[segments == segment]))
        if all(full[s] for s in sets):
            continue
        row = int(chunk[int(recipes.segment_row[segment])])
        where = {"row": row, **describe(int(owner_shard[segment]), int(owner_index[segment]), row)}
        for set_index in sets:
            index.note_match(set_index, where, limit)
            full[set_index] = len(index.matches[set_index]) >= limit


# ------------------------------------------------------------------------------------------ the scan on Ray


@dataclasses.dataclass
class RangeScan:
    """What the scan of one contiguous range of rows found (the result of a Ray task)."""

    hit_positions: np.ndarray
    """Indices into `NgramIndex.unique` of the indexed n-grams the range holds."""
    matches: dict[int, list[dict[str, Any]]]
    """The range's first matching training segments per evaluation set (at most the match limit each)."""
    stats: ScanStats
    probed: int
    matched: int


def row_ranges(count: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) bounds cutting `count` rows into at most `parts` contiguous, non-empty, near-equal ranges."""
    parts = max(1, min(parts, count))
    bounds = np.linspace(0, count, parts + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def scan_range(
    train: str,
    rows: np.ndarray,
    index: NgramIndex,
    vocab: VocabText,
    batch_rows: int,
    describe_factory: Any,
    match_limit: int,
) -> RangeScan:
    """Scan `rows` of the training shards at `train` with a fresh scanner over `index` (one Ray task)."""
    from shards.training_shards import TrainingShards

    shards = TrainingShards(train)
    local = index.fresh()
    stats = scan_rows(
        shards,
        rows,
        local,
        vocab,
        batch_rows=batch_rows,
        describe_segment=describe_factory(shards) if describe_factory is not None else None,
        match_limit=match_limit,
    )
    return RangeScan(np.flatnonzero(local.hit), local.matches, stats, local.probed, local.matched)


def scan_rows_on_ray(
    train: str,
    rows: np.ndarray,
    index: NgramIndex,
    vocab: VocabText,
    *,
    workers: int,
    ranges: int | None = None,
    batch_rows: int = 64,
    describe_factory: Any = None,
    match_limit: int = 5,
    progress: Any = None,
    address: str | None = None,
) -> tuple[ScanStats, int]:
    """`scan_rows` as Ray tasks over contiguous ranges of `rows` (default 2 per worker); marks hits in `index`.

    `describe_factory(shards)` makes each task's `describe_segment` (it must pickle: a module-level class or
    function). Returns the merged stats (seconds = wall time of the whole scan) and the number of ranges.
    """
    from pipeline.ray_runtime import ensure_ray

    started = time.perf_counter()
    rows = np.asarray(rows, dtype=np.int64)
    bounds = row_ranges(len(rows), ranges if ranges is not None else 2 * workers)
    store_mb = 256 + 2 * (index.memory["bytes"] + vocab.data.nbytes) // 2**20
    ray = ensure_ray(workers, address, object_store_mb=int(store_mb))
    index_ref, vocab_ref = ray.put(index), ray.put(vocab)  # once; every task reads the same copy
    task = ray.remote(num_cpus=1)(scan_range)
    number_of = {
        task.remote(
            str(train), rows[lo:hi], index_ref, vocab_ref, batch_rows, describe_factory, match_limit
        ): number
        for number, (lo, hi) in enumerate(bounds)
    }
    parts: list[RangeScan | None] = [None] * len(bounds)
    waiting = list(number_of)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        for ref in done:
            part = ray.get(ref)
            parts[number_of[ref]] = part
            if progress is not None:
                progress.update(part.stats.rows, tokens=part.stats.tokens)
    stats = ScanStats()
    for part in parts:  # row order, whatever order the tasks finished in
        assert part is not None
        index.absorb(part, match_limit)
        stats.add(part.stats)
    stats.seconds = time.perf_counter() - started
    return stats, len(bounds)
