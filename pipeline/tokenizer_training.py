"""Train a SentencePiece model in GLM-130B's icetk layout (`glm-corpus tokenizer train`).

The model is what `pipeline.tokenizer.GLMTokenizer` expects of an `ice_text.model`:

- pieces 0, 1, 2 are `<unk>`, `<s>`, `</s>` (so `</s>` is 20002) and piece 3 is `<n>`, a user-defined
  symbol, as in icetk's model; tabs and space runs are ids outside the model (`<t>`, `<blank_k>`), so
  they need no pieces;
- identity normalization, no whitespace collapsing and byte fallback, so every text round-trips
  (GLM-130B's own model normalizes with NFKC and has no byte fallback);
- the training sentences are the text exactly as the tokenizer will send it to SentencePiece (tabs and
  space runs replaced by the `<n>` separator), one per line, NFC-normalized like the pipeline's documents;
- deterministic: one training thread by default (the bytes of a model depend on the thread count) and
  no file names in the model, so the same text and arguments give the same bytes.

A tiny vocabulary cannot hold every character of a Chinese corpus (SentencePiece needs every character
that makes up 98% or more of the text as its own piece): when the characters outnumber half of the
vocabulary's free slots, the rarest are left out of training (the sentences are split at them), and the
tokenizer encodes them with byte fallback.
"""

from __future__ import annotations

import collections
import hashlib
import io
import re
import time
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from common.atomic import atomic_write_bytes
from common.errors import ConfigError, TokenizerError
from pipeline.special_tokens import IMAGE_TOKENS, MASK, NEWLINE_PIECE, VOCAB_SIZE

MODEL_TYPES = ("unigram", "bpe")
META_PIECES = 4 + 256
"""`<unk>`, `<s>`, `</s>`, `<n>` and the 256 byte-fallback pieces `<0x00>`..`<0xFF>`."""
MIN_VOCAB_SIZE = 300
MAX_VOCAB_SIZE = MASK - IMAGE_TOKENS
MAX_SENTENCE_CHARS = 1000
"""Longer lines are cut (at a space when there is one): SentencePiece skips sentences over 4192 bytes."""
_NEVER_RARE = frozenset(" <n>")
"""Characters of the separator and the space: splitting at them would break the training sentences."""
_TRAINING_LAYOUT = re.compile(r"\t| {2,}|<n>")


def train_tokenizer(
    inputs: Sequence[str | Path],
    out: str | Path,
    vocab_size: int = 32_000,
    model_type: str = "unigram",
    *,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 0,
    num_threads: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Train an icetk-layout SentencePiece model on UTF-8 text files and write it atomically to `out`.

    `vocab_size` is a soft limit (a small corpus may yield fewer pieces; the summary says how many).
    `input_sentence_size` > 0 trains on that many sentences drawn with `seed` (0: all of them).
    Returns a summary: model path, piece count, seconds, input bytes and the model's sha256.
    """
    started = time.perf_counter()
    paths = [Path(p) for p in inputs]
    _check_arguments(paths, vocab_size, model_type, character_coverage, num_threads)
    counts, input_bytes, sentences = _count_characters(paths)
    if sentences == 0:
        raise TokenizerError(f"no training text in {', '.join(map(str, paths))}: the files are empty")
    rare = _rare_characters(counts, vocab_size)
    rare_split = re.compile("[" + re.escape("".join(sorted(rare))) + "]") if rare else None

    def training_sentences() -> Iterator[str]:
        for sentence in _sentences(paths):
            if rare_split is None:
                yield sentence
            else:
                yield from (part for part in rare_split.split(sentence) if part)

    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_sentences(),
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=input_sentence_size > 0,
            user_defined_symbols=[NEWLINE_PIECE],
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise TokenizerError(f"SentencePiece training failed: {exc}") from exc
    data = model.getvalue()
    pieces = _verify(data)
    atomic_write_bytes(out, data)
    return {
        "model": str(out),
        "model_type": model_type,
        "vocab_size": vocab_size,
        "pieces": pieces,
        "glm_vocab_size": VOCAB_SIZE,
        "input_files": [str(p) for p in paths],
        "input_bytes": input_bytes,
        "sentences": sentences,
        "characters": len(counts),
        "rare_characters": len(rare),
        "character_coverage": character_coverage,
        "num_threads": num_threads,
        "seconds": round(time.perf_counter() - started, 3),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _check_arguments(paths: list[Path], vocab_size: int, model_type: str, character_coverage: float,
                     num_threads: int) -> None:
    if not paths:
        raise ConfigError("tokenizer training needs at least one --input file")
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"tokenizer training input {path} is not a file")
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ConfigError(f"--vocab-size must be in {MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE} (the model holds "
                          f"{META_PIECES} fixed pieces, and the icetk layout has room for {MAX_VOCAB_SIZE}), "
                          f"not {vocab_size}")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model type must be one of {', '.join(MODEL_TYPES)}, not {model_type!r}")
    if not 0.98 <= character_coverage <= 1.0:
        raise ConfigError(f"character coverage must be in 0.98..1 (SentencePiece's range), not {character_coverage}")
    if num_threads < 1:
        raise ConfigError(f"num_threads must be >= 1, not {num_threads}")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(byte length, NFC text) of each line of a UTF-8 file; invalid UTF-8 is an error with its offset."""
    offset = 0
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TokenizerError(f"{path} at byte {offset + exc.start}: invalid UTF-8 in tokenizer training "
                                     "text (convert the file to UTF-8)") from exc
            offset += len(raw)
            yield len(raw), unicodedata.normalize("NFC", line.rstrip("\n"))


def _sentences(paths: list[Path]) -> Iterator[str]:
    """Training sentences: lines cut to MAX_SENTENCE_CHARS, with tabs and space runs as separators."""
    from pipeline.tokenizer import space_run_layout

    def layout(match: re.Match[str]) -> str:
        found = match.group()
        if found == "\t":
            return NEWLINE_PIECE
        if found == NEWLINE_PIECE:
            return "<" + NEWLINE_PIECE + "n>"
        return space_run_layout(len(found))[0]

    for path in paths:
        for _, line in _lines(path):
            while line:
                cut = len(line)
                if cut > MAX_SENTENCE_CHARS:
                    cut = line.rfind(" ", MAX_SENTENCE_CHARS // 2, MAX_SENTENCE_CHARS)
                    cut = cut if cut > 0 else MAX_SENTENCE_CHARS
                chunk, line = line[:cut], line[cut:]
                sentence = _TRAINING_LAYOUT.sub(layout, chunk)
                if sentence.strip():
                    yield sentence


def _count_characters(paths: list[Path]) -> tuple[collections.Counter[str], int, int]:
    """Character counts of the training sentences, input bytes, and the number of sentences."""
    counts: collections.Counter[str] = collections.Counter()
    sentences = 0
    for sentence in _sentences(paths):
        counts.update(sentence)
        sentences += 1
    input_bytes = sum(path.stat().st_size for path in paths)
    return counts, input_bytes, sentences


def _rare_characters(counts: collections.Counter[str], vocab_size: int) -> set[str]:
    """Characters to leave to byte fallback so that at most half of the free pieces are single characters."""
    budget = max(8, (vocab_size - META_PIECES) // 2 - 2)
    if len(counts) <= budget:
        return set()
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = {char for char, _ in ranked[:budget]} | _NEVER_RARE
    return {char for char in counts if char not in kept}


def _verify(model: bytes) -> int:
    """Load the new model as the tokenizer will and check its layout and a round trip; its piece count."""
    from pipeline.tokenizer import GLMTokenizer

    tokenizer = GLMTokenizer.from_serialized(model, name="the trained model")
    probe = " Tabs\tand   spaces,\n中文 mixed text 😀 <n>\n"
    if tokenizer.newline_id != IMAGE_TOKENS + 3 or tokenizer.decode(tokenizer.encode(probe)) != probe:
        raise TokenizerError("the trained model does not have the icetk layout or does not round-trip "
                             "(a bug in glm-corpus: please report it)")
    return tokenizer.text_vocab_size
