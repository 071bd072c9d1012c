"""GLM-130B's text tokenizer: icetk's id layout over a SentencePiece `ice_text.model` (DESIGN §2).

Ids are icetk's: a text id is the model's SentencePiece id + 20,000 (the image tokens come first), and
GLM-130B's special tokens sit at fixed ids from 150,000 (`pipeline.special_tokens`). Whitespace that
SentencePiece would lose never reaches it:

- a newline is the model's `<n>` piece (icetk's `encode(text, ignore_linebreak=False)` writes `<n>` for
  `\\n` and lets SentencePiece match it as a user-defined symbol);
- a tab is `<t>` (150008) and a run of k >= 2 spaces is `<blank_k>` (150009 + k - 2); runs longer than
  80 become several blanks (greedy 80s; a leftover single space stays in the text);
- a literal `<n>` in the text is escaped so that it round-trips (icetk would read it as a newline).

How: every layout token is replaced by the separator `<n>`, the whole batch goes through SentencePiece in
one call (so the text between separators is segmented exactly as icetk segments the text between
newlines), and the separators' ids are then overwritten in numpy by the layout ids recorded in text
order. Texts without tabs, space runs or literal `<n>` (most prose) skip the regular expression.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Sequence
from itertools import accumulate, chain, repeat
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from common.errors import TokenizerError
from pipeline.special_tokens import (
    BLANK_FIRST,
    DBLOCK,
    ENC,
    EOD,
    EOP,
    EOS,
    GMASK,
    IMAGE_TOKENS,
    LAST_SPECIAL,
    MASK,
    MAX_BLANK,
    MIN_BLANK,
    NEWLINE_PIECE,
    PAD,
    SMASK,
    SOP,
    SPECIAL_IDS,
    TAB,
    VOCAB_SIZE,
    blank_id,
)
from pipeline.tokenizer_training import train_tokenizer

__all__ = ["GLMTokenizer", "MAX_TEXT_PIECES", "default_model_path", "resolve_model_path", "train_tokenizer"]

MAX_TEXT_PIECES = MASK - IMAGE_TOKENS
"""A model may have at most 130,000 pieces: its ids must stay below the special ids at 150,000."""

ICETK_CACHE = Path(".icetk_models") / "ice_text.model"
"""icetk's cache, relative to the home directory."""

_SEPARATOR = NEWLINE_PIECE
_LAYOUT = re.compile(r"(\t|  +|<n>)")
"""Tabs, space runs and literal `<n>` (newlines are handled apart); the group keeps matches in `split`."""
_SPACE_RUNS = re.compile(r"(  +)")
"""The same for a text with no tab and no literal `<n>` (most texts with layout): about 2x faster."""
_ESCAPED_LITERAL = "<" + _SEPARATOR + "n>"
"""A literal `<n>` is sent as `<`, a separator that is dropped afterwards, and `n>`."""
_DROP = -1
"""Layout id of a separator that only splits a literal `<n>`: removed from the output."""
_TEXT_OFFSET = np.int32(IMAGE_TOKENS)
_REPLACEMENT = operator.itemgetter(0)
_LAYOUT_IDS = operator.itemgetter(1)

_NAMED_SPECIALS = {MASK: "[MASK]", GMASK: "[gMASK]", SMASK: "[sMASK]", EOD: "<eod>", SOP: "[sop]",
                   EOP: "[eop]", ENC: "ENC", DBLOCK: "dBLOCK"}


def space_run_layout(k: int) -> tuple[str, tuple[int, ...]]:
    """How a run of k >= 2 spaces is sent: (text for SentencePiece, layout ids of its separators).

    Greedy blanks of 80; a remainder of 2..79 is one more blank, a remainder of 1 stays a plain space
    after the separators (SentencePiece encodes it with the next word, as it would a single space).
    """
    full, rest = divmod(k, MAX_BLANK)
    ids = (blank_id(MAX_BLANK),) * full + ((blank_id(rest),) if rest >= MIN_BLANK else ())
    return _SEPARATOR * len(ids) + (" " if rest == 1 else ""), ids


class _LayoutTable(dict):
    """match string -> (replacement, layout ids); space runs are filled in on first sight."""

    def __init__(self) -> None:
        super().__init__({"\t": (_SEPARATOR, (TAB,)), _SEPARATOR: (_ESCAPED_LITERAL, (_DROP,))})

    def __missing__(self, match: str) -> tuple[str, tuple[int, ...]]:
        value = space_run_layout(len(match))
        if len(self) < 4096:  # space runs of distinct lengths are few; never let a hostile input grow this
            self[match] = value
        return value


def default_model_path() -> Path:
    """icetk's cache, `~/.icetk_models/ice_text.model` (resolved at call time, so HOME is honoured)."""
    return Path.home() / ICETK_CACHE


def resolve_model_path(path: str | Path | None = None) -> Path:
    """The model file to load: `path` (a file, or a directory holding `ice_text.model`), else icetk's cache.

    Raises TokenizerError saying how to get a model when there is none.
    """
    how = (
        "Train one with `glm-corpus tokenizer train --input FILE... --out MODEL` and pass "
        "`--tokenizer MODEL`, or put GLM-130B's ice_text.model (icetk's) at ~/.icetk_models/ice_text.model."
    )
    if path is not None:
        candidate = Path(path).expanduser()
        if candidate.is_dir():
            candidate = candidate / "ice_text.model"
        if not candidate.is_file():
            raise TokenizerError(f"no tokenizer model at {candidate}. {how}")
        return candidate
    cached = default_model_path()
    if cached.is_file():
        return cached
    raise TokenizerError(f"no tokenizer model: no path given (--tokenizer PATH) and icetk's cache {cached} "
                         f"does not exist. {how}")


class GLMTokenizer:
    """Encode and decode text in GLM-130B's icetk id layout with a SentencePiece `ice_text.model`.

    `path` is a model file or a directory holding `ice_text.model`; without it, icetk's cache
    `~/.icetk_models/ice_text.model` is used. `num_threads` is SentencePiece's per-batch thread count:
    1 by default, since the pipeline already runs one tokenizer per core. Instances pickle (the model
    travels as its bytes), so they can be shipped to Ray workers.
    """

    def __init__(self, path: str | Path | None = None, *, num_threads: int = 1) -> None:
        model_path = resolve_model_path(path)
        self.path: Path | None = model_path
        self._load(model_path.read_bytes(), str(model_path), num_threads)

    @classmethod
    def from_serialized(cls, model_proto: bytes, *, num_threads: int = 1, name: str = "<bytes>") -> GLMTokenizer:
        """A tokenizer over a model held in memory (SentencePiece's serialized ModelProto)."""
        tokenizer = cls.__new__(cls)
        tokenizer.path = None
        tokenizer._load(model_proto, name, num_threads)
        return tokenizer

    def _load(self, model_proto: bytes, name: str, num_threads: int) -> None:
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_proto)
        except (OSError, RuntimeError, ValueError) as exc:
            raise TokenizerError(f"{name}: not a SentencePiece model ({exc})") from exc
        self._sp = processor
        self._name = name
        self._num_threads = int(num_threads)
        self._check_layout()
        pieces = self.text_vocab_size
        self._newline_sp = processor.piece_to_id(NEWLINE_PIECE)
        self.newline_id = self._newline_sp + IMAGE_TOKENS
        self._layout = _LayoutTable()
        # Pieces SentencePiece's own decoder renders (normal, byte, user-defined): runs of them are decoded
        # in one call; the rest (the newline, control and unknown pieces) are rendered one by one.
        plain = np.ones(pieces, dtype=bool)
        self._names: dict[int, str] = {}
        for sp_id in range(pieces):
            if processor.is_control(sp_id) or processor.is_unknown(sp_id):
                plain[sp_id] = False
                self._names[sp_id + IMAGE_TOKENS] = processor.id_to_piece(sp_id)
        plain[self._newline_sp] = False
        self._plain = plain
        self._names[self.newline_id] = "\n"
        self._names.update(_NAMED_SPECIALS)
        self._names[TAB] = "\t"
        for k in range(MIN_BLANK, MAX_BLANK + 1):
            self._names[blank_id(k)] = " " * k
        self._names[PAD] = "<pad>"
        self._separator_surface = processor.decode([self._newline_sp])
        self.lossless = all(self.decode(self.encode(probe)) == probe for probe in _LOSSLESS_PROBES)

    def _check_layout(self) -> None:
        sp = self._sp
        pieces = sp.get_piece_size()
        if pieces > MAX_TEXT_PIECES:
            raise TokenizerError(
                f"{self._name}: {pieces} pieces do not fit the icetk layout: text ids 20000 + piece id must "
                f"stay below the special ids at {MASK}, so at most {MAX_TEXT_PIECES} pieces")
        expected = {0: "<unk>", 1: "<s>", 2: "</s>"}
        found = {i: sp.id_to_piece(i) if i < pieces else None for i in expected}
        if found != expected or not sp.is_unknown(0):
            raise TokenizerError(
                f"{self._name}: not an icetk-layout model: pieces 0, 1, 2 must be <unk>, <s>, </s> (so that "
                f"</s> is {EOS}), found {list(found.values())}. Train one with `glm-corpus tokenizer train`.")
        newline = sp.piece_to_id(NEWLINE_PIECE)
        if sp.is_unknown(newline) or sp.id_to_piece(newline) != NEWLINE_PIECE:
            raise TokenizerError(f"{self._name}: the model has no {NEWLINE_PIECE} piece, so newlines cannot be "
                                 "encoded the icetk way. Train one with `glm-corpus tokenizer train`.")
        if newline not in sp.encode(f"a{NEWLINE_PIECE}b"):
            raise TokenizerError(f"{self._name}: the {NEWLINE_PIECE} piece is not matched in text (it must be a "
                                 "user-defined symbol, as in icetk's ice_text.model)")

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        """Rows of GLM-130B's embedding (150,528): every id this tokenizer produces is below it."""
        return VOCAB_SIZE

    @property
    def text_vocab_size(self) -> int:
        """Pieces of the SentencePiece model; text ids are 20000 .. 20000 + text_vocab_size - 1."""
        return self._sp.get_piece_size()

    @property
    def eod_id(self) -> int:
        """`<eod>`, the end-of-document id the pipeline appends to every document."""
        return EOD

    @property
    def eos_id(self) -> int:
        """`</s>`: SentencePiece id 2 + 20000."""
        return EOS

    @property
    def pad_id(self) -> int:
        """0, GLM-130B's padding id (icetk's image token 0)."""
        return PAD

    @property
    def special_ids(self) -> dict[str, int]:
        """Name -> id of every special token of DESIGN §2, plus the model's `<n>`, `<unk>` and `<s>`."""
        ids = dict(SPECIAL_IDS)
        ids[NEWLINE_PIECE] = self.newline_id
        ids["<unk>"] = IMAGE_TOKENS + 0
        ids["<s>"] = IMAGE_TOKENS + 1
        return ids

    @property
    def sentencepiece(self) -> spm.SentencePieceProcessor:
        """The underlying SentencePiece processor (ids without the 20000 offset)."""
        return self._sp

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """The ids of one text (see the module docstring for how whitespace is laid out)."""
        return self._encode_arrays([text], single=True)[0].tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The ids of each text as an int32 array; one SentencePiece call for the whole batch."""
        if isinstance(texts, str):
            raise TokenizerError("encode_batch takes a list of str, not one str: use encode(text)")
        return self._encode_arrays(texts if isinstance(texts, list) else list(texts), single=False)

    def _encode_arrays(self, texts: list[Any], single: bool) -> list[np.ndarray]:
        prepared: list[str] = []
        with_layout: list[tuple[int, np.ndarray]] = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TokenizerError(_type_message(text, None if single else index))
            # Single-character searches first: they are several times faster than two-character ones.
            if "\t" in text or (" " in text and "  " in text) or ("<" in text and _SEPARATOR in text):
                prepared_text, layout_ids = self._lay_out(text)
                prepared.append(prepared_text)
                with_layout.append((index, layout_ids))
            else:
                prepared.append(text.replace("\n", _SEPARATOR))
        try:
            encoded = self._sp.encode(prepared, return_type="numpy", num_threads=self._num_threads)
        except (TypeError, RuntimeError, UnicodeError) as exc:
            raise _encode_failure(texts, single, exc) from exc
        # One shift for the whole batch, then a view per text: cheaper than one numpy call per text.
        flat = np.concatenate(encoded) if encoded else np.zeros(0, dtype=np.int32)
        flat += _TEXT_OFFSET
        ends = list(accumulate(map(len, encoded)))
        arrays = [flat[start:end] for start, end in zip([0, *ends[:-1]], ends)]
        for index, layout_ids in with_layout:
            arrays[index] = self._place_layout(arrays[index], layout_ids, prepared[index])
        return arrays

    def _lay_out(self, text: str) -> tuple[str, np.ndarray]:
        """The text for SentencePiece (layout tokens as separators) and the separators' ids in text order.

        There is no Python-level loop per match: split, table look-ups, counting and joining all run in
        C. Newlines are not matched by the expression (that would halve its speed): each one becomes a
        separator by `str.replace`, and the newlines of each stretch between matches are counted.
        """
        pattern = _LAYOUT if "\t" in text or _SEPARATOR in text else _SPACE_RUNS
        parts = pattern.split(text)
        entries = list(map(self._layout.__getitem__, parts[1::2]))
        newlines = list(map(str.count, parts[0::2], repeat("\n")))
        parts[1::2] = map(_REPLACEMENT, entries)
        prepared = "".join(parts).replace("\n", _SEPARATOR)
        if any(newlines):
            ordered: list[tuple[int, ...]] = [()] * len(parts)
            ordered[0::2] = map(operator.mul, repeat((self.newline_id,)), newlines)
            ordered[1::2] = map(_LAYOUT_IDS, entries)
        else:
            ordered = list(map(_LAYOUT_IDS, entries))
        return prepared, np.fromiter(chain.from_iterable(ordered), dtype=np.int32)

    def _place_layout(self, ids: np.ndarray, layout_ids: np.ndarray, prepared: str) -> np.ndarray:
        """Overwrite the separators' ids, in text order, by the layout ids; drop the escape separators."""
        positions = np.flatnonzero(ids == self.newline_id)
        if len(positions) != len(layout_ids):
            # The model's normalizer made extra `<n>` out of other characters (e.g. NFKC on fullwidth
            # `＜ｎ＞`): encode the pieces between our separators one by one instead.
            return self._encode_between_separators(prepared, layout_ids.tolist())
        ids[positions] = layout_ids
        if (layout_ids == _DROP).any():
            ids = ids[ids != _DROP]
        return ids

    def _encode_between_separators(self, prepared: str, layout_ids: list[int]) -> np.ndarray:
        chunks = prepared.split(_SEPARATOR)
        # A chunk after a separator is encoded behind one, so SentencePiece adds no dummy prefix to it.
        inputs = [chunks[0]] + [_SEPARATOR + chunk for chunk in chunks[1:]]
        encoded = self._sp.encode(inputs, num_threads=self._num_threads)
        out = list(encoded[0])
        for layout_id, chunk_ids in zip(layout_ids, encoded[1:]):
            if layout_id != _DROP:
                out.append(layout_id - IMAGE_TOKENS)
            out.extend(chunk_ids[chunk_ids.index(self._newline_sp) + 1:])
        return np.asarray(out, dtype=np.int32) + IMAGE_TOKENS

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text of `ids`: layout tokens become whitespace, other special ids their names.

        Text pieces are decoded by SentencePiece (bytes joined into characters); a run of them that
        follows another token is decoded behind a separator, so its leading space is kept, exactly as
        in one SentencePiece call over the whole text. Control and unknown pieces render as their names
        (`<unk>`, `<s>`, `</s>`), image ids as `<image_k>` (icetk's names).
        """
        array = self._check_ids(ids)
        if array.size == 0:
            return ""
        text_id = (array >= IMAGE_TOKENS) & (array < IMAGE_TOKENS + self.text_vocab_size)
        plain = np.zeros(array.shape, dtype=bool)
        plain[text_id] = self._plain[array[text_id] - IMAGE_TOKENS]
        bounds = np.flatnonzero(np.diff(plain.view(np.int8))) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), int(array.size)]
        pieces: list[str | None] = []
        runs: list[list[int]] = []
        run_slots: list[tuple[int, bool]] = []
        for start, end in zip(starts, ends):
            if plain[start]:
                run = (array[start:end] - IMAGE_TOKENS).tolist()
                behind = start > 0
                runs.append([self._newline_sp, *run] if behind else run)
                run_slots.append((len(pieces), behind))
                pieces.append(None)
            else:
                pieces.extend(self._render(token) for token in array[start:end].tolist())
        if runs:
            skip = len(self._separator_surface)
            for (slot, behind), decoded in zip(run_slots, self._sp.decode(runs)):
                pieces[slot] = decoded[skip:] if behind else decoded
        return "".join(pieces)  # type: ignore[arg-type]

    def _check_ids(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        if isinstance(ids, (str, bytes)):
            raise TokenizerError(f"decode takes a sequence of int ids, not {type(ids).__name__}")
        array = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
        if array.size == 0:
            return array.astype(np.int64).reshape(0)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise TokenizerError(f"decode takes a flat sequence of int ids, got an array of {array.dtype} "
                                 f"with shape {array.shape}")
        array = array.astype(np.int64)
        invalid = ((array < 0) | (array >= VOCAB_SIZE) | (array > LAST_SPECIAL)
                   | ((array >= IMAGE_TOKENS + self.text_vocab_size) & (array < MASK)))
        if invalid.any():
            position = int(np.argmax(invalid))
            raise TokenizerError(f"id {int(array[position])} at position {position} is not a token: "
                                 f"{self._id_problem(int(array[position]))}")
        return array

    def _id_problem(self, token: int) -> str:
        if token < 0 or token >= VOCAB_SIZE:
            return f"ids are 0..{VOCAB_SIZE - 1}"
        if token > LAST_SPECIAL:
            return f"ids {LAST_SPECIAL + 1}..{VOCAB_SIZE - 1} are unused padding rows of the embedding"
        return (f"this model has {self.text_vocab_size} pieces, so its text ids are "
                f"{IMAGE_TOKENS}..{IMAGE_TOKENS + self.text_vocab_size - 1}")

    def _render(self, token: int) -> str:
        name = self._names.get(token)
        if name is not None:
            return name
        return f"<image_{token}>"  # 1..19999: the only ids left that _check_ids lets through

    def id_to_piece(self, token: int) -> str:
        """The name of one id: its SentencePiece piece, or the special token's name (`<t>`, `<blank_3>`)."""
        self._check_ids([int(token)])
        token = int(token)
        if IMAGE_TOKENS <= token < IMAGE_TOKENS + self.text_vocab_size:
            return self._sp.id_to_piece(token - IMAGE_TOKENS)
        if token == TAB:
            return "<t>"
        if BLANK_FIRST <= token <= LAST_SPECIAL:
            return f"<blank_{token - BLANK_FIRST + MIN_BLANK}>"
        return self._render(token)

    def __repr__(self) -> str:
        return f"GLMTokenizer({self._name!r}, pieces={self.text_vocab_size}, lossless={self.lossless})"


_LOSSLESS_PROBES = (
    " leading and trailing ",
    "tab\tand  runs   of spaces\n\nnewlines",
    "e\u0301 \uff21 \u3000 \u00a0 \u2028",  # combining accent, fullwidth A, ideographic space, nbsp, line sep
    "\U0001f600 \U0010fffd \x01",
    "a<n>b",
)
"""Texts that survive only identity normalization, kept whitespace and byte fallback: a model that
round-trips them all is lossless (our trained models); GLM-130B's NFKC model is not."""


def _type_message(value: Any, index: int | None) -> str:
    what = "text" if index is None else f"texts[{index}]"
    hint = " (decode bytes to str first, e.g. data.decode('utf-8'))" if isinstance(value, (bytes, bytearray)) else ""
    return f"{what} must be str, got {type(value).__name__}{hint}"


def _encode_failure(texts: list[str], single: bool, exc: Exception) -> TokenizerError:
    """Find the text SentencePiece could not take (a lone surrogate is not UTF-8) and say where."""
    for index, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as bad:
            what = "text" if single else f"texts[{index}]"
            return TokenizerError(
                f"{what} is not valid Unicode: lone surrogate U+{ord(text[bad.start]):04X} at character "
                f"{bad.start} cannot be encoded as UTF-8 (input decoded with errors='surrogateescape'? "
                "drop or repair it before tokenizing)")
    return TokenizerError(f"SentencePiece failed to encode the batch: {exc}")
