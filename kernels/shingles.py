"""Shingling for near-duplicate detection: word 5-grams for space-delimited text, character 5-grams for CJK.

The rule (one rule for every script, so mixed documents need no language decision):

1. Canonical text: `" ".join(text.split())`, i.e. every run of Unicode whitespace (`str.isspace`) becomes
   one ASCII space and leading/trailing whitespace is removed.
2. Units: every CJK character (Han ideographs incl. extensions and compatibility ideographs, kana,
   bopomofo, CJK radicals/strokes/symbols/punctuation, fullwidth forms; see `CJK_RANGES`) is a unit of
   its own; every maximal run of other non-space characters is a unit (a "word").
3. Shingles: for a document of k >= n units, the k - n + 1 shingles are the spans of the canonical text
   from the start of unit i to the end of unit i + n - 1, encoded as UTF-8. So an English shingle is five
   words joined by single spaces, a Chinese shingle is five consecutive characters (punctuation included),
   and a mixed span such as "用 Python 3 写的" keeps exactly the canonical spacing between its units.
4. A document with fewer than n units (including none) has exactly one shingle: its whole canonical text.

`shingles(text)` is the plain reference implementation (a regex over the canonical text). The
vectorized `shingle_spans(texts)` gives byte ranges into one UTF-8 buffer for a whole batch of documents
and must produce exactly the same byte strings (tested); the MinHash kernel hashes those ranges without
creating a Python object per shingle.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

NGRAM = 5
"""Units per shingle (DESIGN §5: word 5-grams, character 5-grams)."""

CJK_RANGES: tuple[tuple[int, int], ...] = (
    (0x2E80, 0x2FDF),  # CJK radicals supplement, Kangxi radicals
    (0x2FF0, 0x312F),  # ideographic description, CJK symbols and punctuation, kana, bopomofo
    (0x3190, 0x9FFF),  # kanbun .. CJK strokes, katakana ext., enclosed CJK, compatibility, ext. A, unified
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFFEF),  # halfwidth and fullwidth forms (fullwidth digits, letters, punctuation)
    (0x20000, 0x3FFFF),  # supplementary and tertiary ideographic planes (ext. B and later)
)
"""Code point ranges (inclusive) whose characters are units on their own. Hangul is space-delimited and
therefore not listed (its compatibility jamo block U+3130-U+318F is deliberately left out)."""

_CJK_CLASS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in CJK_RANGES)
_UNIT_RE = re.compile(f"[{_CJK_CLASS}]|[^ {_CJK_CLASS}]+")
_ENCODING_ERRORS = "surrogatepass"  # a lone surrogate must not crash dedup; it hashes as its 3 bytes


def canonical_text(text: str) -> str:
    """Whitespace runs collapsed to one space, ends stripped: the text that shingles are cut from."""
    return " ".join(text.split())


def is_cjk(char: str) -> bool:
    """True when `char` is a CJK unit by `CJK_RANGES`."""
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in CJK_RANGES)


def shingles(text: str, n: int = NGRAM) -> list[bytes]:
    """The shingles of one document as UTF-8 byte strings, in text order (duplicates kept).

    This is the reference definition (see the module docstring); feed its output to
    `datasketch.MinHash.update` to reproduce the kernel's signatures.
    """
    canon = canonical_text(text)
    spans = [match.span() for match in _UNIT_RE.finditer(canon)]
    if len(spans) < n:
        return [canon.encode("utf-8", _ENCODING_ERRORS)]
    return [
        canon[spans[i][0] : spans[i + n - 1][1]].encode("utf-8", _ENCODING_ERRORS)
        for i in range(len(spans) - n + 1)
    ]


@dataclasses.dataclass
class ShingleSpans:
    """The shingles of a batch as byte ranges of one buffer.

    `buffer` holds the canonical texts of the batch in UTF-8, separated by one space. Shingle j is
    `buffer[starts[j]:ends[j]]`; the shingles of document d are j in `doc_offsets[d]:doc_offsets[d+1]`
    (every document has at least one).
    """

    buffer: bytes
    starts: np.ndarray  # int64 [n_shingles]
    ends: np.ndarray  # int64 [n_shingles]
    doc_offsets: np.ndarray  # int64 [n_docs + 1]

    @property
    def n_docs(self) -> int:
        return len(self.doc_offsets) - 1

    def __len__(self) -> int:
        return len(self.starts)

    def to_lists(self) -> list[list[bytes]]:
        """The shingles as Python byte strings per document (for tests and for datasketch)."""
        buf = self.buffer
        starts, ends = self.starts.tolist(), self.ends.tolist()
        offsets = self.doc_offsets.tolist()
        return [
            [buf[s:e] for s, e in zip(starts[offsets[d] : offsets[d + 1]], ends[offsets[d] : offsets[d + 1]])]
            for d in range(self.n_docs)
        ]


def _utf8_lead_code_points(u: np.ndarray, leads: np.ndarray, length: int) -> np.ndarray:
    """Code points of the `length`-byte UTF-8 characters starting at byte positions `leads`."""
    if length == 3:
        cp = (u[leads].astype(np.uint32) & 0x0F) << 12
    else:
        cp = (u[leads].astype(np.uint32) & 0x07) << 18
    for k in range(1, length):
        cp |= (u[leads + k].astype(np.uint32) & 0x3F) << (6 * (length - 1 - k))
    return cp


def _cjk_table() -> np.ndarray:
    """is-CJK for every 16-code-point block of the BMP (every range in CJK_RANGES is block aligned)."""
    table = np.zeros(0x1000, dtype=bool)
    for lo, hi in CJK_RANGES:
        assert lo % 16 == 0 and (hi + 1) % 16 == 0, "CJK_RANGES must be aligned to 16 code points"
        if lo < 0x10000:
            table[lo >> 4 : (min(hi, 0xFFFF) >> 4) + 1] = True
    return table


_CJK_BMP_BLOCKS = _cjk_table()
_CJK_ASTRAL = [(lo, hi) for lo, hi in CJK_RANGES if hi >= 0x10000]


def _in_cjk_ranges(cp: np.ndarray) -> np.ndarray:
    """is-CJK of code points: one table lookup for the BMP, comparisons above it."""
    mask = _CJK_BMP_BLOCKS[np.minimum(cp >> 4, 0xFFF)] & (cp < 0x10000)
    for lo, hi in _CJK_ASTRAL:
        mask |= (cp >= lo) & (cp <= hi)
    return mask


def _three_byte_lead_classes() -> tuple[list[tuple[int, int]], list[int]]:
    """For the 3-byte lead bytes E0-EF: runs of leads whose 4096 code points are all CJK, and the
    leads whose block is only partly CJK (those characters are decoded)."""
    whole, partial = [], []
    for lead in range(0xE0, 0xF0):
        lo, hi = (lead & 0x0F) << 12, ((lead & 0x0F) << 12) + 0xFFF
        inside = sum(max(0, min(hi, b) - max(lo, a) + 1) for a, b in CJK_RANGES)
        if inside == 0x1000:
            if whole and whole[-1][1] == lead - 1:
                whole[-1] = (whole[-1][0], lead)
            else:
                whole.append((lead, lead))
        elif inside:
            partial.append(lead)
    return whole, partial


_WHOLE_CJK_LEADS, _PARTIAL_CJK_LEADS = _three_byte_lead_classes()


def _shift_or(target: np.ndarray, source: np.ndarray, by: int) -> None:
    """target[i] |= source[i - by] (contiguous, so numpy vectorizes it)."""
    target[by:] |= source[:-by]


def unit_spans(buffer: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Byte (start, end) of every unit of a canonical UTF-8 buffer (spaces are 0x20 only), in order.

    Works on the bytes directly: a byte belongs to a CJK unit when it is part of a 3- or 4-byte
    character in `CJK_RANGES`; every other non-space byte is part of a word. Word units are maximal runs
    of word bytes. Text with few bytes >= 0xE0 (Latin with some curly quotes) decodes just those
    characters; in CJK text most characters are recognised by their lead byte alone (E4-E9 start only
    CJK code points) with contiguous vector operations, and only the leads of partly-CJK blocks (E2, E3,
    EF) and 4-byte characters are decoded.
    """
    u = np.frombuffer(buffer, dtype=np.uint8)
    n = len(u)
    word = u != 0x20
    lead3 = np.zeros(0, dtype=np.int64)  # positions of 3-byte CJK characters (sparse text)
    leads4 = np.zeros(0, dtype=np.int64)  # positions of 4-byte CJK characters
    lead3_mask = None  # first bytes of 3-byte CJK characters (dense text)
    high = int(np.count_nonzero(u >= 0xE0)) if n else 0
    if high and high * 8 < n:  # a few quotes or dashes in Latin text: decode just those characters
        positions = np.flatnonzero(u >= 0xE0)
        three, four = positions[u[positions] < 0xF0], positions[u[positions] >= 0xF0]
        lead3 = three[_in_cjk_ranges(_utf8_lead_code_points(u, three, 3))]
        leads4 = four[_in_cjk_ranges(_utf8_lead_code_points(u, four, 4))]
        for k in range(3):
            word[lead3 + k] = False
    elif high:  # CJK text: classify by lead byte with contiguous vector operations
        lead3_mask = np.zeros(n, dtype=bool)
        for lo, hi in _WHOLE_CJK_LEADS:
            lead3_mask |= (u - np.uint8(lo)) <= hi - lo
        maybe = np.zeros(n, dtype=bool)
        for lead in _PARTIAL_CJK_LEADS:
            maybe |= u == lead
        candidates = np.flatnonzero(maybe)
        lead3_mask[candidates[_in_cjk_ranges(_utf8_lead_code_points(u, candidates, 3))]] = True
        four = np.flatnonzero(u >= 0xF0)
        leads4 = four[_in_cjk_ranges(_utf8_lead_code_points(u, four, 4))]
        cjk = lead3_mask.copy()
        _shift_or(cjk, lead3_mask, 1)
        _shift_or(cjk, lead3_mask, 2)
        word &= ~cjk
    for k in range(4):
        word[leads4 + k] = False
    first = word.copy()  # first byte of a word: previous byte is not a word byte
    first[1:] &= ~word[:-1]
    last = word.copy()  # last byte of a word: next byte is not a word byte
    last[:-1] &= ~word[1:]
    # a CJK character is a unit of its own
    if lead3_mask is not None:
        first |= lead3_mask
        _shift_or(last, lead3_mask, 2)
    first[lead3] = True
    last[lead3 + 2] = True
    first[leads4] = True
    last[leads4 + 3] = True
    starts = np.flatnonzero(first)
    ends = np.flatnonzero(last)
    ends += 1
    return starts, ends


_WHITESPACE = tuple(c for c in range(0x110000) if chr(c).isspace())
_MULTIBYTE_WHITESPACE = np.array([c for c in _WHITESPACE if c >= 0x80], dtype=np.uint32)


def canonical_buffer(texts: Sequence[str]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The canonical texts of a batch in one UTF-8 buffer, with each document's byte range.

    Equivalent to joining `canonical_text(t)` of every text with spaces, but done on the bytes with
    numpy: the raw texts are joined with newlines (and framed by them), every whitespace character
    (`str.isspace`, ASCII or multi-byte) is marked, and each whitespace run is replaced by one space.
    Returns (buffer, doc_starts, doc_ends); a document whose canonical text is empty gets an empty range.
    """
    n_docs = len(texts)
    encoded = [t.encode("utf-8", _ENCODING_ERRORS) for t in texts]
    raw = b"\n" + b"\n".join(encoded) + b"\n"
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n_docs)
    raw_starts = np.empty(n_docs, dtype=np.int64)
    if n_docs:
        raw_starts[0] = 1
        np.cumsum(lengths[:-1] + 1, out=raw_starts[1:])
        raw_starts[1:] += 1
    raw_ends = raw_starts + lengths  # the newline after each document
    u = np.frombuffer(raw, dtype=np.uint8)
    # ASCII whitespace: 0x09-0x0D, 0x1C-0x1F, 0x20 (comparisons vectorize; a table lookup does not)
    space = u == 0x20
    space |= (u - np.uint8(0x09)) <= 4
    space |= (u - np.uint8(0x1C)) <= 3
    # multi-byte whitespace only has lead bytes C2 (U+0085, U+00A0), E1 (U+1680), E2 (U+20xx), E3 (U+3000)
    lead = (u - np.uint8(0xE1)) <= 2
    lead |= u == 0xC2
    multi = np.flatnonzero(lead)
    if len(multi):
        two = multi[u[multi] == 0xC2]
        three = multi[u[multi] != 0xC2]
        cp2 = ((u[two].astype(np.uint32) & 0x1F) << 6) | (u[two + 1].astype(np.uint32) & 0x3F)
        cp3 = _utf8_lead_code_points(u, three, 3)
        for leads, cps, length in ((two, cp2, 2), (three, cp3, 3)):
            leads = leads[np.isin(cps, _MULTIBYTE_WHITESPACE)]
            for k in range(length):
                space[leads + k] = True
    # keep every non-space byte and the first byte of every whitespace run (which becomes " "); only
    # the other bytes of whitespace runs are dropped, and there are few of them
    dropped = np.flatnonzero(space[1:] & space[:-1]) + 1
    canonical = np.where(space, np.uint8(0x20), u)
    if len(dropped):
        keep = np.ones(len(u), dtype=bool)
        keep[dropped] = False
        canonical = canonical[keep]
    # rank(i) = kept bytes up to raw position i; the run before each document is kept once, so a
    # document starts after rank(start - 1) and ends at rank(end - 1), minus its own trailing space
    before = raw_starts - 1
    last = raw_ends - 1
    doc_starts = before + 1 - np.searchsorted(dropped, before, side="right")
    doc_ends = last + 1 - np.searchsorted(dropped, last, side="right") - space[last]
    doc_ends = np.maximum(doc_ends, doc_starts)
    return canonical.tobytes(), doc_starts, doc_ends


def shingle_spans(texts: Sequence[str], n: int = NGRAM) -> ShingleSpans:
    """Vectorized shingling of a batch: byte ranges into one UTF-8 buffer, identical to `shingles`."""
    n_docs = len(texts)
    buffer, doc_starts, doc_ends = canonical_buffer(texts)
    unit_starts, unit_ends = unit_spans(buffer)
    first_unit = np.searchsorted(unit_starts, doc_starts)
    units = np.searchsorted(unit_starts, doc_ends) - first_unit
    long_doc = units >= n
    per_doc = np.where(long_doc, units - n + 1, 1)
    doc_offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(per_doc, out=doc_offsets[1:])
    total = int(doc_offsets[-1])

    # a unit starts a shingle unless it is among the last n-1 units of its document (or the document
    # is short): mark those unit ranges with +1/-1 and integrate
    marks = np.zeros(len(unit_starts) + 1, dtype=np.int8)
    bad_from = np.where(long_doc, first_unit + units - n + 1, first_unit)
    np.add.at(marks, bad_from, 1)
    np.add.at(marks, first_unit + units, -1)
    valid = np.flatnonzero(np.cumsum(marks[:-1], dtype=np.int8) == 0)
    long_starts = unit_starts[valid]
    long_ends = unit_ends[valid + (n - 1)]
    if long_doc.all():
        return ShingleSpans(buffer, long_starts, long_ends, doc_offsets)
    starts = np.empty(total, dtype=np.int64)
    ends = np.empty(total, dtype=np.int64)
    short_slot = np.zeros(total, dtype=bool)
    short_slot[doc_offsets[:-1][~long_doc]] = True
    starts[short_slot] = doc_starts[~long_doc]
    ends[short_slot] = doc_ends[~long_doc]
    starts[~short_slot] = long_starts
    ends[~short_slot] = long_ends
    return ShingleSpans(buffer, starts, ends, doc_offsets)
