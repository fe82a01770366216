"""Candidate pairs from LSH band keys, and clusters of verified pairs, over row ordinals (input order).

Documents are numbered by their position in the input (source file, then line), so "the first occurrence" is the
smallest ordinal. Each band's keys are sorted once; documents sharing a key form a bucket. A bucket of up to
`ALL_PAIRS_UP_TO` documents yields all its pairs (a chance member cannot hide a true pair behind it); a larger
one (many copies of one text) yields each member paired with the bucket's first and with its predecessor, which
keeps the candidate count linear.
"""
from __future__ import annotations

import numpy as np

from xwin_data.text.minhash import sorted_unique

ALL_PAIRS_UP_TO = 16


def bucket_pairs(keys: np.ndarray) -> np.ndarray:
    """Candidate pairs of one band as int64 codes a << 32 | b with ordinals a < b."""
    order = np.argsort(keys, kind="stable")  # members of a bucket stay in ordinal order
    k = keys[order]
    if len(k) < 2:
        return np.zeros(0, np.int64)
    same = k[1:] == k[:-1]
    if not same.any():
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    sizes = np.diff(np.concatenate([starts, [len(k)]]))
    codes = []
    for size in sorted_unique(sizes[(sizes >= 2) & (sizes <= ALL_PAIRS_UP_TO)]).tolist():
        members = order[starts[sizes == size][:, None] + np.arange(size)].astype(np.int64)  # (buckets, size)
        i, j = np.triu_indices(size, 1)
        codes.append(((members[:, i] << 32) | members[:, j]).ravel())
    for s, n in zip(starts[sizes > ALL_PAIRS_UP_TO], sizes[sizes > ALL_PAIRS_UP_TO]):
        members = order[s:s + n].astype(np.int64)
        codes.append((members[0] << 32) | members[1:])
        codes.append((members[1:-1] << 32) | members[2:])
    return sorted_unique(np.concatenate(codes))


def decode(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return codes >> 32, codes & 0xFFFFFFFF


class Clusters:
    """Union-find over the ordinals below `n_docs`, each cluster rooted at its smallest ordinal. One list entry per
    document, no dictionaries."""

    def __init__(self, n_docs: int) -> None:
        self.parent = list(range(n_docs))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join_roots(self, rx: int, ry: int) -> None:
        """Join two different clusters, given their roots."""
        self.parent[max(rx, ry)] = min(rx, ry)

    def roots(self) -> np.ndarray:
        return np.fromiter((self.find(x) for x in range(len(self.parent))), dtype=np.int64, count=len(self.parent))


def cluster_roots(a: np.ndarray, b: np.ndarray, n_docs: int) -> np.ndarray:
    """Union-find over verified pairs (a[i], b[i]) of ordinals below `n_docs`: each document's cluster's smallest
    ordinal (itself where it is in no pair)."""
    clusters = Clusters(n_docs)
    find = clusters.find
    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = find(x), find(y)
        if rx != ry:
            clusters.join_roots(rx, ry)
    return clusters.roots()
