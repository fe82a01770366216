"""Vectorised MinHash over word shingles, LSH band keys and exact shingle sets, in numpy and Arrow.

Words come from Arrow string kernels (lower case, runs of anything but letters, digits and `_` as one space) and
are hashed once per distinct word of a batch (a polynomial over the UTF-8 bytes, then a 64-bit mixer), so a batch
costs a few array operations and no Python per word; the same code runs in forked workers. A shingle is k
consecutive words, hashed position-independently from prefix sums of w_j·P^j (mod 2^64) times P^-s. Each
permutation is an affine bijection (a·x + b) mod 2^32 of the shingle hashes' high half; the signature is the
per-document minimum, via `np.minimum.reduceat`. Candidates are verified by exact Jaccard, so the estimate only
has to find them (its error is that of random permutations: checked on planted pairs).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_P = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2^64
_BYTE_P = np.uint64(0x100000001B3)  # FNV prime: the byte polynomial of a word
_NON_WORD = r"[^\p{L}\p{N}_]+"


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """`np.unique` of an integer array by a radix sort: numpy 2's hash-based `np.unique` is ~30x slower on
    millions of 64-bit keys."""
    s = np.sort(x, kind="stable")
    if len(s) < 2:
        return s
    return s[np.concatenate([[True], s[1:] != s[:-1]])]


def _inverse_mod_2_64(x: int) -> int:
    return pow(x, -1, 1 << 64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads a polynomial hash over all 64 bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.empty(n + 1, dtype=np.uint64)
    out[0] = 1
    if n:
        with np.errstate(over="ignore"):
            out[1:] = np.cumprod(np.full(n, base, dtype=np.uint64), dtype=np.uint64)
    return out


def _string_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, UTF-8 bytes) of a string array."""
    arr = arr.cast(pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], data[offsets[0]:offsets[-1]]


def hash_strings(arr: pa.Array) -> np.ndarray:
    """A stable 64-bit hash of each string (null as empty): the same in every process and run."""
    arr = pc.fill_null(arr, "")
    offsets, data = _string_parts(arr)
    pw = _powers(_BYTE_P, len(data))
    with np.errstate(over="ignore"):
        q = np.zeros(len(data) + 1, dtype=np.uint64)
        q[1:] = np.cumsum((data.astype(np.uint64) + np.uint64(1)) * pw[:-1], dtype=np.uint64)
        ipw = _powers(np.uint64(_inverse_mod_2_64(int(_BYTE_P))), len(data))
        s, e = offsets[:-1], offsets[1:]
        poly = (q[e] - q[s]) * ipw[s] + (e - s).astype(np.uint64) * _P
    return _mix(poly)


def conversation_text(messages: pa.Array, on: str) -> pa.Array:
    """The text a conversation is compared on: every message as 'role content' (`conversation`), or the first
    user message (`first_user`, empty when there is none)."""
    messages = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
    flat = messages.flatten()
    offsets = np.asarray(messages.offsets.to_numpy(), dtype=np.int64)
    offsets = offsets - offsets[0]
    role, content = pc.fill_null(flat.field("role"), ""), pc.fill_null(flat.field("content"), "")
    if on == "first_user":
        users = np.flatnonzero(np.asarray(pc.equal(role, "user").to_numpy(zero_copy_only=False), dtype=bool))
        first = np.searchsorted(users, offsets[:-1])
        pick = np.where(first < len(users), users[np.minimum(first, max(len(users) - 1, 0))], -1) if len(users) \
            else np.full(len(offsets) - 1, -1)
        pick = np.where((pick >= offsets[:-1]) & (pick < offsets[1:]), pick, -1)
        taken = content.take(pa.array(np.where(pick < 0, 0, pick) if len(content) else np.zeros(0, np.int64)))
        return pc.if_else(pa.array(pick >= 0), taken, "") if len(content) else pa.array([""] * len(pick))
    pieces = pc.binary_join_element_wise(role, content, " ")
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pieces), " ")


def word_hashes(text: pa.Array, max_words: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint64 hashes of the first `max_words` words of each text, per-text offsets); an empty text has one
    empty word. Distinct words are hashed once per call."""
    cleaned = pc.utf8_trim(pc.replace_substring_regex(pc.utf8_lower(pc.fill_null(text, "")), pattern=_NON_WORD,
                                                      replacement=" "), " ")
    words = pc.list_slice(pc.split_pattern(cleaned, " "), 0, max_words)
    offsets = np.asarray(words.offsets.to_numpy(), dtype=np.int64)
    offsets = offsets - offsets[0]
    encoded = pc.dictionary_encode(words.flatten())
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    per_word = hash_strings(encoded.dictionary)
    idx = encoded.indices.to_numpy(zero_copy_only=False)
    return per_word[idx] if len(idx) else np.zeros(0, np.uint64), offsets


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def shingles(words: np.ndarray, offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every k-word window of each document (a shorter document gives one window of all its words)."""
    n = len(words)
    with np.errstate(over="ignore"):
        pw = _powers(_P, n)
        ipw = _powers(np.uint64(_inverse_mod_2_64(int(_P))), n)
        q = np.zeros(n + 1, dtype=np.uint64)
        q[1:] = np.cumsum(words.astype(np.uint64) * pw[:-1], dtype=np.uint64)
        starts_doc, ends_doc = offsets[:-1], offsets[1:]
        counts = np.maximum(ends_doc - starts_doc - k + 1, 1)
        sh_offsets = np.concatenate([[0], np.cumsum(counts)])
        doc_of = np.repeat(np.arange(len(counts)), counts)
        s = starts_doc[doc_of] + (np.arange(sh_offsets[-1]) - sh_offsets[doc_of])
        e = np.minimum(s + k, ends_doc[doc_of])
        hashes = (q[e] - q[s]) * ipw[s]
    return hashes, sh_offsets


def signatures(hashes: np.ndarray, sh_offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n_docs, num_perm) uint32 MinHash signatures. Each permutation is x -> a·x + b (mod 2^32, a odd: a bijection)
    of the shingle hashes' high 32 bits, applied to the whole batch as one flat array (native 32-bit SIMD, one
    buffer reused), then `np.minimum.reduceat` per document; a 2-D broadcast over permutations is ~15x slower."""
    n_docs = len(sh_offsets) - 1
    sig = np.empty((n_docs, len(a)), dtype=np.uint32)
    if n_docs == 0:
        return sig
    starts = sh_offsets[:-1]
    x = (hashes >> np.uint64(32)).astype(np.uint32)
    a32 = (a & np.uint64(0xFFFFFFFF)).astype(np.uint32) | np.uint32(1)
    b32 = (b >> np.uint64(32)).astype(np.uint32)
    buf = np.empty(len(x), dtype=np.uint32)
    for c in range(len(a)):
        np.multiply(x, a32[c], out=buf)
        np.add(buf, b32[c], out=buf)
        sig[:, c] = np.minimum.reduceat(buf, starts)
    return sig


def band_keys(sig: np.ndarray, bands: int, seed: int = 0) -> np.ndarray:
    """(n_docs, bands) uint64 keys: documents sharing a key in some band are candidate near-duplicates."""
    rows = sig.shape[1] // bands
    rng = np.random.default_rng(seed + 1)
    mult = rng.integers(1, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            block = sig[:, j * rows:(j + 1) * rows].astype(np.uint64)
            out[:, j] = (block * mult[None, :]).sum(axis=1, dtype=np.uint64) + np.uint64(j)
    return out


def shingle_sets(hashes: np.ndarray, sh_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's distinct shingles as sorted 32-bit hashes, all in one flat array with per-document offsets
    (for exact Jaccard; 4 bytes a shingle, one sort for the whole batch)."""
    n_docs = len(sh_offsets) - 1
    doc = np.repeat(np.arange(n_docs, dtype=np.uint64), np.diff(sh_offsets))
    keys = sorted_unique((doc << np.uint64(32)) | (hashes >> np.uint64(32)))
    flat = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    offsets = np.searchsorted(keys >> np.uint64(32), np.arange(n_docs + 1, dtype=np.uint64))
    return flat, offsets


def jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """Jaccard similarity of two sorted sets of distinct shingle hashes (exact up to 32-bit hash collisions,
    about one in 4 million pairs of shingles)."""
    inter = len(np.intersect1d(x, y, assume_unique=True))
    union = len(x) + len(y) - inter
    return inter / union if union else 1.0
