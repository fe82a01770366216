"""Bit-reproducible tables: two uninterrupted builds of the same recipe give equal values, float for float, in every
table, including the float reductions over many prompts (bon_curve's means and sd, dpo_pairs' mean and sd per
prompt). The set is large enough (240,000 rows, several row groups) that DuckDB aggregates it on several threads,
where an unordered sum differs in the last digit from build to build."""
from __future__ import annotations

import struct

import duckdb

import xwin_data
from scored_sets import SET_FROM_JSONL_STAGE

RECIPE = "name: reproducible\nstages:\n" + SET_FROM_JSONL_STAGE + """\
  - {id: bon_curve, op: bon_curve, inputs: [xwin_set], params: {max_m: 8}}
  - {id: dpo_pairs, op: dpo_pairs, inputs: [xwin_set], params: {strategies: [mean_minus_2sd, worst]}}
  - {id: wind_groups, op: wind_groups, inputs: [xwin_set]}
  - {id: rs_best_of, op: rs_best_of_n, inputs: [xwin_set], params: {ns: [1, 4]}}
"""
TABLES = ("bon_curve", "bon_curve_per_prompt", "dpo_pairs_mean_minus_2sd", "dpo_pairs_worst", "wind_groups",
          "rs_best_of_1", "rs_best_of_4")


def _digests(catalog) -> dict[str, tuple[int, str]]:
    """Per table: rows and a digest of every row's text, floats written as the shortest text that reads back as the
    same double, so equal digests mean byte-equal values."""
    con = xwin_data.connect(catalog)
    try:
        return {t: con.execute(f"SELECT count(*), md5(string_agg(r::VARCHAR, chr(10) ORDER BY r::VARCHAR)) "
                               f"FROM (SELECT x AS r FROM {t} x)").fetchone() for t in TABLES}
    finally:
        con.close()


def _bits(catalog, table: str) -> list[tuple]:
    """A small table's rows with floats as their 8 bytes (0.1 + 0.2 != 0.3 shows)."""
    con = xwin_data.connect(catalog)
    try:
        rows = con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
    finally:
        con.close()
    return [tuple(struct.pack("<d", v) if isinstance(v, float) else v for v in row) for row in rows]


def test_two_builds_give_byte_equal_tables(tmp_path) -> None:
    con = duckdb.connect()
    con.execute("SELECT setseed(0.25)")
    con.execute(f"""COPY (SELECT 'p' || p AS prompt_id, [{{'role': 'user', 'content': 'q'}}] AS prompt,
                                 'p' || p || '-' || j AS response_id, j AS sample_index, 'a' AS response,
                                 (random() - 0.5) * 10 ** (floor(random() * 7) - 3) AS score
                          FROM range(30000) a(p), range(8) b(j))
                    TO '{tmp_path / "set.jsonl"}' (FORMAT json)""")  # magnitudes that make summation order show
    con.close()
    (tmp_path / "r.yaml").write_text(RECIPE)
    for name in ("first", "second"):
        xwin_data.build(tmp_path / "r.yaml", tmp_path / name, show_progress=False)
    first, second = _digests(tmp_path / "first"), _digests(tmp_path / "second")
    for table in TABLES:
        assert first[table][0] > 0, table
        assert first[table] == second[table], f"{table} differs between two builds"
    assert _bits(tmp_path / "first", "bon_curve") == _bits(tmp_path / "second", "bon_curve")
