"""Exact best-of-n expectations from a finite set of scored responses, without resampling.

With a prompt's m scores sorted ascending s_1 <= ... <= s_m, the best of n draws without replacement is s_k with
probability C(k-1, n-1) / C(m, n), so E[best of n] = sum_k s_k * C(k-1, n-1) / C(m, n). Ties are equal values, so
their order does not change the sum. The weights are computed in exact integer arithmetic and rounded once.

One implementation for every Python user: the training evaluation, the best-of-n study, the tiny-pipeline
benchmark, and the weights table the `bon_curve` op joins in SQL.
"""
from __future__ import annotations

from functools import lru_cache
from math import comb
from typing import Iterable, Mapping, Sequence


@lru_cache(maxsize=4096)
def best_of_weights(m: int, n: int) -> tuple[float, ...]:
    """P(the best of n draws without replacement from m sorted values is the k-th smallest), k = 1..m."""
    if not 1 <= n <= m:
        raise ValueError(f"best-of-{n} needs 1 <= n <= m (m = {m} scores)")
    total = comb(m, n)
    # int / int is correctly rounded in Python: the exact ratio rounded once, as float(Fraction(...)), without
    # the gcd reductions (10x faster; the bon_curve op builds 2,080 of these vectors for m <= 64).
    return tuple(comb(k - 1, n - 1) / total for k in range(1, m + 1))


def expected_best(scores: Iterable[float], n: int) -> float:
    """E[max of n draws without replacement] from one prompt's scores."""
    ordered = sorted(float(s) for s in scores)
    return sum(w * s for w, s in zip(best_of_weights(len(ordered), n), ordered))


def best_of_curve(scores: Iterable[float], n_max: int | None = None) -> list[float]:
    """E[best of n] for n = 1..min(m, n_max) from one prompt's scores."""
    ordered = sorted(float(s) for s in scores)
    top = min(len(ordered), n_max or len(ordered))
    return [sum(w * s for w, s in zip(best_of_weights(len(ordered), n), ordered)) for n in range(1, top + 1)]


def mean_best_of(scores_by_prompt: Mapping[str, Sequence[float]], ns: Sequence[int]) -> dict[int, float]:
    """Mean over prompts of E[best of n] for each n; every prompt needs at least max(ns) scores."""
    if not scores_by_prompt:
        raise ValueError("no scores to evaluate")
    smallest = min(len(s) for s in scores_by_prompt.values())
    if max(ns) > smallest:
        raise ValueError(f"best-of-{max(ns)} needs at least {max(ns)} samples per prompt (have {smallest})")
    return {int(n): sum(expected_best(s, n) for s in scores_by_prompt.values()) / len(scores_by_prompt)
            for n in ns}
