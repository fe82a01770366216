"""Win rates and exact best-of-n curves from a scored response set, in SQL.

- `wind_groups`: every response with its leave-one-out empirical win rate within its prompt,
  w_i = mean over j != i of 1[s_i > s_j] + 0.5 * 1[s_i = s_j] (the target of WIND's regression), in TRL's
  conversational prompt-completion format.
- `bon_curve`: the expected best score of n draws without replacement from a prompt's m stored responses, for
  every n <= m, and the probability that a best-of-n draw beats an independent best-of-1 draw (ties count
  half). Exact: with the scores sorted ascending, P(max of n draws is the k-th) = C(k-1, n-1) / C(m, n), so each
  curve point is a dot product of the sorted scores (or their mid-ranks) with a weight vector that depends on
  (m, n) only. Tied scores are equal values, so any order among them gives the same expectation; the win rate
  uses mid-ranks, (#lower + 0.5 * #equal) / m, which counts ties exactly.
"""
from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from xwin_data.bon import best_of_weights
from xwin_data.core.context import sql_str
from xwin_data.ops.base import Params, register
from xwin_data.ops.sets.products import SetOp, assistant, drop_unscored, require_columns, scored_rows_sql


# ------------------------------------------------------------------------------------------------ wind_groups
def prepare_wind(con, source: str, min_group_size: int = 2) -> None:
    """Temp table `__wind_groups`: one row per prompt with at least `min_group_size` scored responses: m and its
    scores sorted ascending (`s`) and descending (`r`). A response's #lower is its score's first position in `s`
    minus one and #lower + #equal is m minus its first position in `r` plus one, so each wide row needs one
    hash-join probe on prompt_id and two list lookups; no window sort of the wide rows (texts included), which cost
    more than this join. A table, not a CTE: it is the join's small build side either way, and the planner then
    never re-evaluates the list functions per row."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE __wind_groups AS
        SELECT prompt_id, m, s, list_reverse(s) AS r
        FROM (SELECT prompt_id, count(*) AS m, list_sort(list(score)) AS s
              FROM ({scored_rows_sql(source)}) GROUP BY prompt_id)
        WHERE m >= {int(min_group_size)}""")


def wind_groups_sql(source: str) -> str:
    """Every scored response of the prompts in `__wind_groups` (`prepare_wind`), with its own prompt messages and
    its leave-one-out win rate (#lower + (#equal - 1) / 2) / (m - 1). Rows come in the source's order (row order
    is not meaningful; sort in queries), which also keeps ids and texts of one prompt together for the Parquet
    encoder."""
    return f"""
        SELECT x.response_id AS id, x.prompt_id, x.prompt, {assistant('x.response')} AS completion, x.response,
               x.response_id, x.sample_index, x.score, g.m AS group_size,
               (list_position(g.s, x.score) + g.m - list_position(g.r, x.score) - 1) * 0.5 / (g.m - 1) AS win_rate
        FROM ({scored_rows_sql(source)}) x JOIN __wind_groups g USING (prompt_id)
    """


class WindParams(Params):
    min_group_size: int = Field(2, ge=2, description="prompts with fewer scored responses are dropped "
                                                     "(a win rate needs at least one other response)")


@register
class WindGroups(SetOp):
    """WIND data: responses grouped by prompt with their leave-one-out empirical win rates."""

    name = "wind_groups"
    adds = {"id", "prompt_id", "prompt", "completion", "response", "response_id", "sample_index", "score",
            "group_size", "win_rate"}
    Params = WindParams
    schema = "wind_groups"
    version = "1"
    summary = "per prompt, each response with its leave-one-out win rate (ties count half)"

    def run(self, ctx, params: WindParams) -> None:
        src = ctx.input()
        require_columns(ctx.con, src)
        drop_unscored(ctx, src)
        prepare_wind(ctx.con, src, params.min_group_size)
        ctx.write_sql(wind_groups_sql(src))
        ctx.drop_sql(f"SELECT prompt_id AS source_id, 'group_too_small' AS reason, "
                     f"count(*) || ' scored response(s) < {params.min_group_size}' AS detail "
                     f"FROM ({scored_rows_sql(src)}) GROUP BY prompt_id HAVING count(*) < {params.min_group_size}",
                     unit="prompts")


# ------------------------------------------------------------------------------------------------ bon_curve
def order_stat_weights(max_m: int) -> pa.Table:
    """For each m <= max_m and n <= m, the list P(max of n draws from m is the k-th smallest), k = 1..m
    (`xwin_data.bon.best_of_weights`, the same weights the Python evaluations use)."""
    ms, ns, ws = [], [], []
    for m in range(1, max_m + 1):
        for n in range(1, m + 1):
            ms.append(m)
            ns.append(n)
            ws.append(list(best_of_weights(m, n)))
    return pa.table({"m": pa.array(ms, pa.int64()), "n": pa.array(ns, pa.int64()),
                     "w": pa.array(ws, pa.list_(pa.float64()))})


def prepare_bon(con, source: str, max_m: int) -> None:
    """Temp view `__bon_lists`: per prompt, m, its scores sorted ascending and twice their mid-ranks
    (2 * #lower + #equal, self included) in the same order, plus the weights table `__bon_weights`.
    One GROUP BY, no window sort over the rows: in the sorted list, the k-th score's tie block spans positions
    first..last, so #lower = first - 1 and #lower + #equal = last (found from each end with list_position).
    A view, not a temp table: the lists are built inside the query that writes the curve, whose join and dot
    products then run on every thread; a temp table of 100K prompts is a single row group, which one thread
    scans (the whole per-prompt write ran on one core). twice_mid is DOUBLE, as list_inner_product takes it; an
    integer list would be cast again for each of the prompt's m output rows."""
    con.register("__bon_weights", order_stat_weights(max_m))
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW __bon_lists AS
        SELECT prompt_id, m, s,
               list_transform(s, lambda x: (list_position(s, x) - 1 + m + 1 - list_position(r, x))::DOUBLE)
                   AS twice_mid
        FROM (SELECT prompt_id, m, s, list_reverse(s) AS r
              FROM (SELECT prompt_id, count(*) AS m, list_sort(list(score)) AS s
                    FROM ({scored_rows_sql(source)}) GROUP BY prompt_id))""")


def bon_per_prompt_sql() -> str:
    """Row order is not meaningful (sort in queries); per prompt and n <= m."""
    return """
        SELECT p.prompt_id, p.m, w.n,
               list_inner_product(p.s, w.w) AS expected_best_score,
               list_inner_product(p.twice_mid, w.w) * 0.5 / p.m AS win_rate_vs_best_of_1
        FROM __bon_lists p JOIN __bon_weights w ON w.m = p.m
    """


def bon_overall_sql(per_prompt: str) -> str:
    """Means and sd over prompts, each summed in prompt_id order (an ordered list, then one sequential list
    aggregate): a parallel avg() adds the threads' partial sums in whatever order they finish, so two builds of the
    same set differed in the last digit."""
    return f"""
        SELECT n, list_avg(best) AS mean_best_score, list_avg(win) AS win_rate_vs_best_of_1,
               len(best) AS n_prompts, list_stddev_samp(best) AS sd_best_score
        FROM (SELECT n, list(expected_best_score ORDER BY prompt_id) AS best,
                     list(win_rate_vs_best_of_1 ORDER BY prompt_id) AS win
              FROM {per_prompt} GROUP BY n)
        ORDER BY n
    """


class BonParams(Params):
    max_m: int = Field(64, ge=1, description="largest group size expected; larger groups are an error")


@register
class BonCurve(SetOp):
    """Exact best-of-n curves from the stored set: per prompt and averaged over prompts."""

    name = "bon_curve"
    adds = {"n", "mean_best_score", "win_rate_vs_best_of_1", "n_prompts", "sd_best_score"}
    Params = BonParams
    schema = "bon_curve"
    version = "1"
    summary = "expected best-of-n score and win rate vs best-of-1, exact order statistics; <table>_per_prompt"

    def output_tables(self, table: str, params: BonParams) -> list[str]:
        return [table, f"{table}_per_prompt"]

    def output_schema(self, table: str, main: str, params: BonParams) -> str | None:
        return "bon_curve" if table == main else "bon_curve_per_prompt"

    def output_columns(self, table: str, main: str, params: BonParams, input_columns: set | None) -> set:
        return set(self.adds) if table == main else {"prompt_id", "m", "n", "expected_best_score",
                                                     "win_rate_vs_best_of_1"}

    def run(self, ctx, params: BonParams) -> None:
        src = ctx.input()
        con = ctx.con
        require_columns(con, src)
        drop_unscored(ctx, src)
        largest = con.execute(f"SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM "
                              f"({scored_rows_sql(src)}) GROUP BY prompt_id)").fetchall()[0][0]
        if largest > params.max_m:
            raise ValueError(f"a prompt has {largest} scored responses, more than max_m={params.max_m}; "
                             "raise bon_curve's max_m")
        prepare_bon(con, src, params.max_m)
        per_prompt = ctx.outputs[1]
        n = ctx.write_sql(bon_per_prompt_sql(), table=per_prompt)
        per_prompt_rows = f"read_parquet({sql_str(ctx.output_glob(per_prompt))})"
        ctx.write_sql(bon_overall_sql(per_prompt_rows), total_rows=params.max_m)
        ctx.stats.update({"per_prompt_rows": n, "largest_group": int(largest)})

