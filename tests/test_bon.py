"""Exact best-of-n expectations (`xwin_data.bon`) against enumeration of every n-subset, and the `bon_curve` op's
SQL against the same Python function."""
from __future__ import annotations

import itertools
import math

import duckdb
import pytest

from xwin_data.bon import best_of_curve, best_of_weights, expected_best, mean_best_of
from xwin_data.ops.sets.curves import bon_per_prompt_sql, prepare_bon

# Ties inside, at the top and at the bottom; a flat group; a singleton.
SCORES = {"a": [0.3, -1.0, 2.0, 0.3, 1.1, 0.0], "b": [5.0, 4.0, 4.0, -2.0, 1.0, 3.5], "flat": [2.0, 2.0, 2.0],
          "one": [0.7]}


def brute(scores: list[float], n: int) -> float:
    return sum(max(c) for c in itertools.combinations(scores, n)) / math.comb(len(scores), n)


def test_expectations_match_enumeration() -> None:
    for scores in SCORES.values():
        m = len(scores)
        curve = best_of_curve(scores)
        assert len(curve) == m and best_of_curve(scores, 2) == curve[:2]
        for n in range(1, m + 1):
            assert sum(best_of_weights(m, n)) == pytest.approx(1.0, abs=1e-15)
            assert expected_best(scores, n) == pytest.approx(brute(scores, n), abs=1e-12)
            assert curve[n - 1] == pytest.approx(brute(scores, n), abs=1e-12)
    six = {k: v for k, v in SCORES.items() if len(v) == 6}
    got = mean_best_of(six, [1, 2, 3, 6])
    for n in (1, 2, 3, 6):
        assert got[n] == pytest.approx(sum(brute(s, n) for s in six.values()) / 2, abs=1e-12)


def test_bad_inputs_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="needs at least 4 samples per prompt"):
        mean_best_of(SCORES, [1, 4])
    with pytest.raises(ValueError, match="no scores"):
        mean_best_of({}, [1])
    with pytest.raises(ValueError, match="1 <= n <= m"):
        best_of_weights(3, 4)


def test_bon_curve_sql_equals_python() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE s (prompt_id VARCHAR, score DOUBLE)")
    con.executemany("INSERT INTO s VALUES (?, ?)", [(p, x) for p, xs in SCORES.items() for x in xs])
    prepare_bon(con, "s", max_m=6)
    rows = con.sql(bon_per_prompt_sql()).fetchall()
    assert len(rows) == sum(len(v) for v in SCORES.values())
    for prompt_id, m, n, expected_score, _ in rows:
        assert expected_score == pytest.approx(best_of_curve(SCORES[prompt_id])[n - 1], abs=1e-12)
