"""Vectorised MinHash over word shingles, and LSH band keys, in numpy.

Words arrive as 64-bit hashes (DuckDB `hash()`), one flat array with per-document offsets. A shingle is k
consecutive words, hashed position-independently from prefix sums of w_j·P^j (mod 2^64) times P^-s, so every
shingle of a batch is computed in a few array operations. Each permutation is a multiply-shift hash
((a·x + b) mod 2^64) >> 32 with odd a; the signature is the per-document minimum, via `np.minimum.reduceat`.
"""
from __future__ import annotations

import numpy as np

_P = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2^64


def _inverse_mod_2_64(x: int) -> int:
    return pow(x, -1, 1 << 64)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def shingles(words: np.ndarray, offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every k-word window of each document (a shorter document gives one window of all its words)."""
    n = len(words)
    with np.errstate(over="ignore"):
        pw = np.empty(n + 1, dtype=np.uint64)
        pw[0] = 1
        if n:
            pw[1:] = np.cumprod(np.full(n, _P, dtype=np.uint64), dtype=np.uint64)
        ipw = np.empty(n + 1, dtype=np.uint64)
        ipw[0] = 1
        if n:
            ipw[1:] = np.cumprod(np.full(n, np.uint64(_inverse_mod_2_64(int(_P))), dtype=np.uint64), dtype=np.uint64)
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


def signatures(hashes: np.ndarray, sh_offsets: np.ndarray, a: np.ndarray, b: np.ndarray,
               chunk: int = 16) -> np.ndarray:
    """(n_docs, num_perm) uint32 MinHash signatures."""
    n_docs = len(sh_offsets) - 1
    sig = np.empty((n_docs, len(a)), dtype=np.uint32)
    starts = sh_offsets[:-1]
    with np.errstate(over="ignore"):
        for c in range(0, len(a), chunk):
            vals = (hashes[:, None] * a[None, c:c + chunk] + b[None, c:c + chunk]) >> np.uint64(32)
            sig[:, c:c + chunk] = np.minimum.reduceat(vals, starts, axis=0)
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
