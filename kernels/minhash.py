"""Vectorized MinHash signatures, numerically identical to `datasketch.MinHash` (datasketch >= 2.0).

For a document whose shingles are `S` (UTF-8 byte strings, see `kernels.shingles`), row k of our
signature equals `datasketch.MinHash(num_perm, seed=seed, hashfunc=H, scheme=scheme)` updated with `S`,
for every permutation scheme datasketch 2.0 has:

- `"affine32"` (datasketch 2.0's default): `h = fmix32(H(x))` (the MurmurHash3 32-bit finalizer), then
  `min over x of (a_k * h + b_k) mod 2**32`, `a_k` odd; signatures are uint32.
- `"affine64"`: the same over 64 bits with a 64-bit `H`; signatures are uint64.
- `"legacy"` (datasketch < 2.0): `min over x of ((a_k * H(x) + b_k) mod 2**64) mod (2**61 - 1) & (2**32 - 1)`.
  The product `a_k * H(x)` (a_k < 2**61, H(x) < 2**32) does not fit 64 bits; datasketch computes it in
  numpy uint64 and lets it wrap, and so do we. Signatures are uint64 with values below 2**32.

`a_k, b_k` are drawn from `numpy.random.RandomState(seed)` in datasketch's order (`permutations`).

The hash `H` is chosen by name (`hashfunc(name, width)` gives the scalar function to hand to datasketch):

- `"sha1"`: datasketch's default `sha1_hash32` / `sha1_hash64` (first 4 / 8 bytes of SHA-1, little
  endian). Slow: one hashlib call per shingle, ~0.4 us here.
- `"xxhash"`: `xxhash.xxh32_intdigest` / `xxh64_intdigest` (seed 0): one call per shingle, ~0.05 us.
- `"fast"` (the default): glm-corpus's own hash, computed for a whole batch in numpy without a Python
  object per shingle. It is a polynomial over the bytes modulo 2**64 followed by the 64-bit MurmurHash3
  finalizer (`fast_hash64`); the 32-bit variant keeps the high half. To reproduce these signatures
  with datasketch pass `hashfunc=fast_hash32` (or `fast_hash64` with scheme "affine64").

The kernel shingles a batch of documents into byte ranges of one buffer, hashes all shingles at once,
then applies the permutations block by block in a [num_perm, block] matrix that stays in cache and takes
the per-document minimum with `np.minimum.reduceat` along the contiguous axis.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from kernels.shingles import NGRAM, ShingleSpans, shingle_spans

SCHEMES = ("affine32", "affine64", "legacy")
HASHES = ("fast", "xxhash", "sha1")
MERSENNE_PRIME = (1 << 61) - 1
MAX_HASH32 = (1 << 32) - 1
MASK64 = (1 << 64) - 1

_U64_PRIME = np.uint64(MERSENNE_PRIME)
_U64_MAX_HASH32 = np.uint64(MAX_HASH32)

# MurmurHash3 finalizers (public constants of the algorithm).
_FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)
_FMIX64 = (33, 0xFF51AFD7ED558CCD, 33, 0xC4CEB9FE1A85EC53, 33)

# The "fast" hash: h = sum_j byte_j * BASE**j mod 2**64, then fmix64(h ^ (len * LENGTH_MULTIPLIER)).
FAST_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
FAST_BASE_INVERSE = pow(FAST_BASE, -1, 1 << 64)
FAST_LENGTH_MULTIPLIER = 0xD6E8FEB86659FD93

_POWER_BITS = 20  # power tables of 2**20 entries (8 MiB each), built on first use
_SUB_BATCH_CHARS = 1 << 18  # characters of text per shingling sub-batch (buffer <= 1 MiB + separators)


def fmix32(values: np.ndarray) -> np.ndarray:
    """The MurmurHash3 32-bit finalizer, element-wise on a uint32 array (wrapping arithmetic)."""
    s1, m1, s2, m2, s3 = _FMIX32
    h = values ^ (values >> np.uint32(s1))
    h *= np.uint32(m1)
    h ^= h >> np.uint32(s2)
    h *= np.uint32(m2)
    h ^= h >> np.uint32(s3)
    return h


def fmix64(values: np.ndarray) -> np.ndarray:
    """The MurmurHash3 64-bit finalizer, element-wise on a uint64 array (wrapping arithmetic)."""
    s1, m1, s2, m2, s3 = _FMIX64
    h = values ^ (values >> np.uint64(s1))
    h *= np.uint64(m1)
    h ^= h >> np.uint64(s2)
    h *= np.uint64(m2)
    h ^= h >> np.uint64(s3)
    return h


def _fmix64_int(h: int) -> int:
    s1, m1, s2, m2, s3 = _FMIX64
    h ^= h >> s1
    h = (h * m1) & MASK64
    h ^= h >> s2
    h = (h * m2) & MASK64
    return h ^ (h >> s3)


# ---------------------------------------------------------------------------------------------------
# Scalar hash functions (what datasketch is given as `hashfunc` to reproduce our signatures)


def sha1_hash32(data: bytes) -> int:
    """First 4 bytes of SHA-1 as a little-endian integer: datasketch's default 32-bit hash."""
    return int.from_bytes(hashlib.sha1(data).digest()[:4], "little")


def sha1_hash64(data: bytes) -> int:
    """First 8 bytes of SHA-1 as a little-endian integer: datasketch's default 64-bit hash."""
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "little")


def fast_hash64(data: bytes) -> int:
    """glm-corpus's batch-friendly 64-bit hash of a byte string (scalar reference of the numpy kernel)."""
    h = 0
    power = 1
    for byte in data:
        h = (h + byte * power) & MASK64
        power = (power * FAST_BASE) & MASK64
    return _fmix64_int(h ^ ((len(data) * FAST_LENGTH_MULTIPLIER) & MASK64))


def fast_hash32(data: bytes) -> int:
    """The high 32 bits of `fast_hash64`: the "fast" hash for the 32-bit schemes."""
    return fast_hash64(data) >> 32


def _xxh32(data: bytes) -> int:
    import xxhash

    return xxhash.xxh32_intdigest(data)


def hashfunc(name: str, width: int = 32) -> Callable[[bytes], int]:
    """The scalar hash called `name` with `width` output bits; give it to datasketch as `hashfunc`."""
    _check_choice("hash", name, HASHES)
    if width not in (32, 64):
        raise ValueError(f"hash width must be 32 or 64, got {width}")
    if name == "sha1":
        return sha1_hash32 if width == 32 else sha1_hash64
    if name == "fast":
        return fast_hash32 if width == 32 else fast_hash64
    import xxhash

    return xxhash.xxh32_intdigest if width == 32 else xxhash.xxh64_intdigest


def scheme_width(scheme: str) -> int:
    """Bits of the input hash a permutation scheme takes (legacy and affine32: 32; affine64: 64)."""
    _check_choice("scheme", scheme, SCHEMES)
    return 64 if scheme == "affine64" else 32


def signature_dtype(scheme: str) -> np.dtype:
    """datasketch's dtype of `hashvalues` for a scheme: uint32 for affine32, uint64 otherwise."""
    _check_choice("scheme", scheme, SCHEMES)
    return np.dtype(np.uint32 if scheme == "affine32" else np.uint64)


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown MinHash {what} {value!r}; choose one of {', '.join(allowed)}")


# ---------------------------------------------------------------------------------------------------
# Permutations


def permutations(num_perm: int, seed: int, scheme: str = "affine32") -> tuple[np.ndarray, np.ndarray]:
    """The permutation parameters (a, b) datasketch draws for (num_perm, seed, scheme).

    legacy: num_perm pairs (a in [1, 2**61-1), b in [0, 2**61-1)) drawn pair by pair as uint64.
    affine32/64: a = 2 * randint(0, 2**(w-1)) + 1 (odd), then b = randint(0, 2**w), each drawn as one
    vector of num_perm values of the scheme's dtype.
    """
    if num_perm < 1:
        raise ValueError(f"num_perm must be positive, got {num_perm}")
    _check_choice("scheme", scheme, SCHEMES)
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        a = np.empty(num_perm, dtype=np.uint64)
        b = np.empty(num_perm, dtype=np.uint64)
        for k in range(num_perm):
            a[k] = gen.randint(1, _U64_PRIME, dtype=np.uint64)
            b[k] = gen.randint(0, _U64_PRIME, dtype=np.uint64)
        return a, b
    width = scheme_width(scheme)
    dtype = np.uint32 if width == 32 else np.uint64
    a = gen.randint(0, 1 << (width - 1), num_perm, dtype=dtype) * dtype(2) + dtype(1)
    b = gen.randint(0, 1 << width, num_perm, dtype=dtype)
    return a, b


# ---------------------------------------------------------------------------------------------------
# Batch hashing of shingle spans


class _PowerTables:
    """BASE**j and BASE_INVERSE**j modulo 2**64 for j < 2**20, plus the steps BASE**(k * 2**20)."""

    def __init__(self) -> None:
        self._tables: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}

    def _get(self, base: int) -> tuple[np.ndarray, list[np.ndarray]]:
        if base not in self._tables:
            table = np.full(1 << _POWER_BITS, base, dtype=np.uint64)
            table[0] = 1
            np.cumprod(table, out=table)  # uint64 products wrap: powers modulo 2**64
            step = pow(base, 1 << _POWER_BITS, 1 << 64)
            self._tables[base] = (table, [np.array([1], dtype=np.uint64), np.uint64(step)])
        return self._tables[base]

    def powers(self, base: int, positions: np.ndarray | None = None, count: int = 0) -> np.ndarray:
        """base**p mod 2**64 for each p in `positions` (or for p in range(count))."""
        table, (high, step) = self._get(base)
        size = 1 << _POWER_BITS
        top = int(positions.max()) if positions is not None and len(positions) else count - 1
        if top < size:
            return table[:count] if positions is None else table[positions]
        need = (top >> _POWER_BITS) + 1
        if len(high) < need:  # extend BASE**(k * 2**20) for k < need
            high = np.array([pow(base, k << _POWER_BITS, 1 << 64) for k in range(need)], dtype=np.uint64)
            self._tables[base] = (table, [high, step])
        if positions is None:
            positions = np.arange(count, dtype=np.int64)
        return table[positions & (size - 1)] * high[positions >> _POWER_BITS]


_POWERS = _PowerTables()


def fast_hash_spans(buffer: bytes, starts: np.ndarray, ends: np.ndarray, width: int = 32) -> np.ndarray:
    """`fast_hash32/64(buffer[s:e])` for every span, in O(len(buffer) + spans) numpy work.

    With prefix sums F[i] = sum_{j<i} byte_j * BASE**j (mod 2**64), the polynomial of buffer[s:e] is
    (F[e] - F[s]) * BASE**-s: every span costs a few gathers, whatever its length.
    """
    data = np.frombuffer(buffer, dtype=np.uint8)
    prefix = np.zeros(len(data) + 1, dtype=np.uint64)
    np.cumsum(data * _POWERS.powers(FAST_BASE, count=len(data)), out=prefix[1:])
    h = prefix[ends] - prefix[starts]
    h *= _POWERS.powers(FAST_BASE_INVERSE, positions=starts)
    h ^= (ends - starts).astype(np.uint64) * np.uint64(FAST_LENGTH_MULTIPLIER)
    h = fmix64(h)
    if width == 64:
        return h
    return (h >> np.uint64(32)).astype(np.uint32)


def _span_bytes(spans: ShingleSpans) -> Iterable[bytes]:
    return map(spans.buffer.__getitem__, map(slice, spans.starts.tolist(), spans.ends.tolist()))


def hash_spans(spans: ShingleSpans, name: str = "fast", width: int = 32) -> np.ndarray:
    """The hash `name` of every shingle of a batch, as uint32 (width 32) or uint64 (width 64)."""
    _check_choice("hash", name, HASHES)
    dtype = np.uint32 if width == 32 else np.uint64
    if name == "fast":
        return fast_hash_spans(spans.buffer, spans.starts, spans.ends, width)
    if name == "sha1":
        digests = b"".join([hashlib.sha1(chunk).digest() for chunk in _span_bytes(spans)])
        matrix = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 20)
        head = np.ascontiguousarray(matrix[:, : width // 8])
        return head.view("<u4" if width == 32 else "<u8").ravel().astype(dtype)
    return np.fromiter(map(hashfunc("xxhash", width), _span_bytes(spans)), dtype=dtype, count=len(spans))


def hash_shingles(
    shingle_lists: Iterable[Sequence[bytes]], func: Callable[[bytes], int], width: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Hash arbitrary shingle lists with a scalar `func`; returns (hashes, doc_offsets)."""
    values: list[int] = []
    offsets = [0]
    for shingle_list in shingle_lists:
        values.extend(map(func, shingle_list))
        offsets.append(len(values))
    dtype = np.uint32 if width == 32 else np.uint64
    try:
        hashes = np.array(values, dtype=dtype)
    except OverflowError as exc:
        raise ValueError(f"hash function returned a value that does not fit {width} bits: {exc}") from exc
    return hashes, np.asarray(offsets, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# Permutation and per-document minimum


def apply_permutations(
    hashes: np.ndarray,
    doc_offsets: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    scheme: str = "affine32",
    out: np.ndarray | None = None,
    block: int = 8192,
) -> np.ndarray:
    """Signatures [n_docs, num_perm] of documents whose shingle hashes are hashes[doc_offsets[d]:doc_offsets[d+1]].

    `out`, if given, is min-combined in place (so a document can be fed in several calls); a document
    without shingles keeps datasketch's empty value (all 2**32 - 1, or 2**64 - 1 for affine64).
    The work happens in [num_perm, block] slices so that multiply, add and minimum stay in cache.
    """
    _check_choice("scheme", scheme, SCHEMES)
    n_docs = len(doc_offsets) - 1
    num_perm = len(a)
    dtype = signature_dtype(scheme)
    if out is None:
        empty = MASK64 if scheme == "affine64" else MAX_HASH32
        out = np.full((n_docs, num_perm), empty, dtype=dtype)
    if scheme == "affine32":
        h = fmix32(np.asarray(hashes, dtype=np.uint32))
    elif scheme == "affine64":
        h = fmix64(np.asarray(hashes, dtype=np.uint64))
    else:
        h = np.asarray(hashes, dtype=np.uint64)
    a_col = np.asarray(a, dtype=dtype).reshape(-1, 1)
    b_col = np.asarray(b, dtype=dtype).reshape(-1, 1)
    offsets = np.asarray(doc_offsets, dtype=np.int64)
    work = np.empty((num_perm, block), dtype=dtype)
    carry = np.empty((num_perm, block), dtype=dtype) if scheme == "legacy" else None
    total = len(h)
    for start in range(0, total, block):
        stop = min(start + block, total)
        width = stop - start
        v = work[:, :width]
        np.multiply(a_col, h[start:stop], out=v)
        np.add(v, b_col, out=v)
        if carry is not None:
            _mod_mersenne_low32(v, carry[:, :width])
        first = int(np.searchsorted(offsets, start, side="right")) - 1
        last = int(np.searchsorted(offsets, stop, side="left"))
        docs = np.arange(first, last)
        docs = docs[offsets[docs + 1] > offsets[docs]]
        piece_starts = np.maximum(offsets[docs], start) - start
        minima = np.minimum.reduceat(v, piece_starts, axis=1)
        out[docs] = np.minimum(out[docs], minima.T)
    return out


def _mod_mersenne_low32(v: np.ndarray, tmp: np.ndarray) -> None:
    """In place: v = (v mod (2**61 - 1)) & (2**32 - 1), for any uint64 v, without a division.

    v = q * 2**61 + r with q <= 7, and 2**61 = 1 (mod p), so v = q + r (mod p) with q + r < 2p.
    """
    np.right_shift(v, np.uint64(61), out=tmp)
    np.bitwise_and(v, _U64_PRIME, out=v)
    np.add(v, tmp, out=v)
    np.greater_equal(v, _U64_PRIME, out=tmp)  # 0/1 flags as uint64
    np.multiply(tmp, _U64_PRIME, out=tmp)
    np.subtract(v, tmp, out=v)
    np.bitwise_and(v, _U64_MAX_HASH32, out=v)


# ---------------------------------------------------------------------------------------------------
# The user-facing kernel


class MinHasher:
    """Batch MinHash signatures of texts, identical to datasketch for the same shingles and hash.

    hasher = MinHasher(num_perm=128, seed=1)            # scheme affine32, hash "fast"
    sigs = hasher.signatures(texts)                      # uint32 [len(texts), 128]
    m = datasketch.MinHash(**hasher.datasketch_kwargs()) # the same numbers for one text:
    m.update_batch(kernels.shingles.shingles(texts[0]))  # m.hashvalues == sigs[0]
    """

    def __init__(
        self,
        num_perm: int = 128,
        seed: int = 1,
        scheme: str = "affine32",
        hash: str = "fast",
        ngram: int = NGRAM,
        block: int = 8192,
    ) -> None:
        _check_choice("scheme", scheme, SCHEMES)
        _check_choice("hash", hash, HASHES)
        self.num_perm = num_perm
        self.seed = seed
        self.scheme = scheme
        self.hash = hash
        self.ngram = ngram
        self.block = block
        self.width = scheme_width(scheme)
        self.dtype = signature_dtype(scheme)
        self.a, self.b = permutations(num_perm, seed, scheme)

    def datasketch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `datasketch.MinHash` that reproduce these signatures."""
        return {
            "num_perm": self.num_perm,
            "seed": self.seed,
            "scheme": self.scheme,
            "hashfunc": hashfunc(self.hash, self.width),
        }

    def empty(self, n_docs: int) -> np.ndarray:
        fill = MASK64 if self.scheme == "affine64" else MAX_HASH32
        return np.full((n_docs, self.num_perm), fill, dtype=self.dtype)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """Signatures [len(texts), num_perm] of the texts' shingles (`kernels.shingles` rule)."""
        out = self.empty(len(texts))
        start = 0
        while start < len(texts):
            stop, chars = start, 0
            while stop < len(texts) and (stop == start or chars + len(texts[stop]) <= _SUB_BATCH_CHARS):
                chars += len(texts[stop])
                stop += 1
            spans = shingle_spans(texts[start:stop], self.ngram)
            hashes = hash_spans(spans, self.hash, self.width)
            apply_permutations(
                hashes, spans.doc_offsets, self.a, self.b, self.scheme, out[start:stop], self.block
            )
            start = stop
        return out

    def signatures_from_shingles(self, shingle_lists: Iterable[Sequence[bytes]]) -> np.ndarray:
        """Signatures of arbitrary shingle lists (any bytes), hashed with the scalar hash function."""
        hashes, offsets = hash_shingles(shingle_lists, hashfunc(self.hash, self.width), self.width)
        return apply_permutations(hashes, offsets, self.a, self.b, self.scheme, block=self.block)


def minhash_signatures(
    texts: Sequence[str], num_perm: int = 128, seed: int = 1, scheme: str = "affine32", hash: str = "fast"
) -> np.ndarray:
    """One-call form of `MinHasher(...).signatures(texts)`."""
    return MinHasher(num_perm=num_perm, seed=seed, scheme=scheme, hash=hash).signatures(texts)
