"""Training data derived from a scored response set (Xwin-Set), in SQL: rejection-sampling SFT sets and DPO pairs.

Input: one row per (prompt, response) with at least `prompt_id`, `prompt` (messages), `response_id`,
`sample_index` (generation order, 0-based), `response` and `score` — the `xwin_set` table. Ranks are computed
here (score descending, earlier sample first on ties), so any table of that shape works.

- `rs_best_of_n` writes one table per n: the best of the first n samples of each prompt, as SFT `messages`.
- `dpo_pairs` writes one table per strategy: chosen = the best response, rejected picked by the strategy
  (`margin` instead keeps every pair whose scores differ by at least the margin), in TRL's conversational
  preference format (`prompt`, `chosen`, `rejected` as message lists).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..context import sql_str
from ..fingerprint import stable_hash
from .base import Op, Params, register

SET_COLUMNS = ("prompt_id", "prompt", "response_id", "sample_index", "response", "score")
DEFAULT_NS = [1, 2, 4, 8, 16, 32, 64]
STRATEGIES = ("worst", "random_lower", "rank_k", "mean_minus_2sd", "margin")


def require_columns(con, source: str, needed: tuple[str, ...] = SET_COLUMNS) -> None:
    """A clear error, before any work, when the input is not a scored response set."""
    have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    missing = [c for c in needed if c not in have]
    if missing:
        raise ValueError(f"input is not a scored response set: missing column(s) {', '.join(missing)} "
                         f"(has: {', '.join(sorted(have))}); expected the columns of the xwin_set table")


def scored_rows_sql(source: str) -> str:
    """Rows with a usable score; the rest are recorded as drops by `drop_unscored`."""
    return f"SELECT * FROM {source} WHERE score IS NOT NULL AND NOT isnan(score)"


def drop_unscored(ctx, source: str) -> None:
    ctx.drop_sql(f"SELECT response_id AS source_id, 'missing_score' AS reason, "
                 f"'prompt ' || prompt_id || ', score ' || coalesce(CAST(score AS VARCHAR), 'NULL') AS detail "
                 f"FROM {source} WHERE score IS NULL OR isnan(score)")


def assistant(expr: str) -> str:
    """A one-message assistant turn, typed like the `prompt` messages."""
    return f"[{{'role': 'assistant', 'content': {expr}}}]"


class SetOp(Op):
    """An op over a scored set: its fingerprint also covers this module, whose SQL helpers it uses."""

    min_inputs = max_inputs = 1

    @classmethod
    def code_version(cls) -> str:
        shared = Op.code_version.__func__(RsBestOfN)  # this module's source
        return stable_hash([super().code_version(), shared], length=16)


# ------------------------------------------------------------------------------------------------ rs_best_of_n
# Selection runs over the narrow columns (ids, order, score); the texts of the picked rows are fetched once.

def prepare_rs(con, source: str, ns: list[int]) -> None:
    """Temp tables `__rs_picks` (n, prompt_id, response_id, n_available) and `__rs_texts` (the picked rows).
    Every n is picked in one scan and one GROUP BY (an aggregate per n with a FILTER), then unpivoted."""
    aggs = ", ".join(f"arg_max(response_id, (score, -sample_index)) FILTER (WHERE sample_index < {int(n)}) AS r{i}, "
                     f"count(*) FILTER (WHERE sample_index < {int(n)}) AS c{i}" for i, n in enumerate(ns))
    selects = " UNION ALL ".join(f"SELECT {int(n)} AS n, prompt_id, r{i} AS response_id, c{i} AS n_available "
                                 f"FROM __rs_best WHERE c{i} > 0" for i, n in enumerate(ns))
    con.execute(f"CREATE OR REPLACE TEMP VIEW __scored AS {scored_rows_sql(source)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE __rs_best AS SELECT prompt_id, {aggs} FROM __scored GROUP BY prompt_id")
    con.execute(f"CREATE OR REPLACE TEMP TABLE __rs_picks AS {selects}")
    con.execute("DROP TABLE __rs_best")
    con.execute("CREATE OR REPLACE TEMP TABLE __rs_texts AS SELECT prompt, response_id, sample_index, response, score "
                "FROM __scored WHERE response_id IN (SELECT response_id FROM __rs_picks)")


def rs_table_sql(n: int) -> str:
    """Best of the first n samples (by sample_index) of each prompt as SFT messages; ties go to the earlier one."""
    return f"""
        SELECT p.prompt_id AS id, list_concat(t.prompt, {assistant('t.response')}) AS messages,
               p.prompt_id, p.response_id, t.sample_index, t.score, p.n, p.n_available
        FROM __rs_picks p JOIN __rs_texts t USING (response_id)
        WHERE p.n = {int(n)}
        ORDER BY p.prompt_id
    """


class RsParams(Params):
    ns: list[int] = Field(list(DEFAULT_NS),
                          description="sample counts n; one table <table>_<n> each (best of the first n samples)")

    @field_validator("ns")
    @classmethod
    def _positive_unique(cls, v: list[int]) -> list[int]:
        if not v or any(n < 1 for n in v) or len(set(v)) != len(v):
            raise ValueError("ns must be a non-empty list of distinct positive integers")
        return v


@register
class RsBestOfN(SetOp):
    """Rejection-sampling SFT data: per prompt, the best of its first n samples, for each n."""

    name = "rs_best_of_n"
    Params = RsParams
    schema = "rs_best_of"
    version = "1"
    summary = "best of the first n samples per prompt, one SFT table per n (<table>_<n>)"

    def output_tables(self, table: str, params: RsParams) -> list[str]:
        return [f"{table}_{n}" for n in params.ns]

    def run(self, ctx, params: RsParams) -> None:
        src = ctx.input()
        require_columns(ctx.con, src)
        drop_unscored(ctx, src)
        prepare_rs(ctx.con, src, params.ns)
        prompts = ctx.con.execute("SELECT count(DISTINCT prompt_id) FROM __rs_picks").fetchall()[0][0]
        for n, table in zip(params.ns, ctx.outputs):
            ctx.write_sql(rs_table_sql(n), table=table, total_rows=prompts)
        short = ctx.con.execute(f"SELECT count(*) FROM __rs_picks WHERE n = {max(params.ns)} "
                                f"AND n_available < n").fetchall()[0][0]
        ctx.stats.update({"prompts": prompts, "ns": params.ns, "prompts_with_fewer_than_max_n": int(short)})


# ------------------------------------------------------------------------------------------------ dpo_pairs
class DpoParams(Params):
    strategies: list[Literal["worst", "random_lower", "rank_k", "mean_minus_2sd", "margin"]] = Field(
        list(STRATEGIES),
        description="how the rejected response is picked; one table <table>_<strategy> each. chosen is the best "
                    "response (rank 1), rejected: worst = lowest score; random_lower = a seeded uniform pick "
                    "among the responses scored below the best; rank_k = the response at rank k; "
                    "mean_minus_2sd = the response scored below the best nearest mean - sd_multiplier * sd "
                    "(population sd of the prompt's scores); margin = every pair (higher, lower) whose scores "
                    "differ by at least `margin`")
    k: int = Field(2, ge=2, description="rank of the rejected response for rank_k (1 = best, 2 = runner-up)")
    seed: int = Field(0, description="seed of random_lower")
    sd_multiplier: float = Field(2.0, gt=0, description="mean_minus_2sd target: mean - sd_multiplier * sd")
    margin: float = Field(1.0, gt=0, description="margin strategy: minimum score difference chosen - rejected")
    max_pairs_per_prompt: int | None = Field(
        None, ge=1, description="margin strategy: at most this many pairs per prompt, widest margins first "
                                "(null = all)")

    @field_validator("strategies")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("strategies must be a non-empty list without repeats")
        return v


def prepare_dpo(con, source: str, params: DpoParams) -> None:
    """Narrow temp tables: `__ranked` (rank 1 = best, score desc then earlier sample), `__pairs` (every strategy's
    picks), `__pair_texts` (the picked rows' prompt and response)."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW __scored AS {scored_rows_sql(source)}")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE __groups AS
        SELECT prompt_id, count(*) AS m, avg(score) AS mu, coalesce(stddev_pop(score), 0) AS sd,
               max(score) AS best_score, min(score) AS worst_score
        FROM __scored GROUP BY prompt_id""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE __ranked AS
        SELECT r.*, g.m, g.mu, g.sd, g.best_score
        FROM (SELECT prompt_id, response_id, sample_index, score,
                     row_number() OVER (PARTITION BY prompt_id ORDER BY score DESC, sample_index) AS rnk
              FROM __scored) r JOIN __groups g USING (prompt_id)""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE __groups AS
        SELECT g.*, coalesce(t.n_best, 0) AS n_best FROM __groups g
        LEFT JOIN (SELECT prompt_id, count(*) AS n_best FROM __ranked WHERE score = best_score GROUP BY prompt_id) t
        USING (prompt_id)""")
    by_rank = [s for s in params.strategies if s != "margin"]
    picks = [ranked_picks_sql(by_rank, params)] if by_rank else []
    if "margin" in params.strategies:
        picks.append(margin_pick_sql(PAIR_COLUMNS, params))
    con.execute("CREATE OR REPLACE TEMP TABLE __pairs AS " + " UNION ALL ".join(picks))
    con.execute("""
        CREATE OR REPLACE TEMP TABLE __pair_texts AS
        SELECT prompt, response_id, response FROM __scored
        WHERE response_id IN (SELECT chosen_id FROM __pairs UNION SELECT rejected_id FROM __pairs)""")


PAIR_COLUMNS = ("strategy, c.prompt_id, c.response_id AS chosen_id, r.response_id AS rejected_id, "
                "c.rnk AS chosen_rank, r.rnk AS rejected_rank, c.score AS chosen_score, r.score AS rejected_score, "
                "c.m AS group_size")


def rejected_rank_sql(strategy: str, params: DpoParams) -> str:
    """(strategy, prompt_id, rnk): the rank of the rejected response, one row per prompt that has one. The best
    response is rank 1 and ranks n_best + 1 .. m are the responses scored below it."""
    label = f"{sql_str(strategy)} AS strategy"
    if strategy == "worst":  # the last rank: lowest score, the latest sample among ties
        return f"SELECT {label}, prompt_id, m AS rnk FROM __groups WHERE m > n_best"
    if strategy == "rank_k":
        k = int(params.k)
        return f"SELECT {label}, prompt_id, {k} AS rnk FROM __groups WHERE m >= {k} AND n_best < {k}"
    if strategy == "random_lower":  # uniform over ranks n_best+1 .. m, from a per-prompt seeded hash
        u = f"(md5_number({sql_str(str(params.seed))} || ':' || prompt_id)::DOUBLE / pow(2::DOUBLE, 128))"
        pos = f"n_best + 1 + least(floor({u} * (m - n_best))::BIGINT, m - n_best - 1)"
        return f"SELECT {label}, prompt_id, {pos} AS rnk FROM __groups WHERE m > n_best"
    if strategy == "mean_minus_2sd":  # nearest the target among the lower ones; ties: lower score, then rank
        target = f"(mu - {float(params.sd_multiplier)!r} * sd)"
        return (f"SELECT {label}, prompt_id, arg_min(rnk, (abs(score - {target}), score, rnk)) AS rnk FROM __ranked "
                f"WHERE score < best_score GROUP BY prompt_id")
    raise ValueError(f"unknown strategy {strategy!r}")


def ranked_picks_sql(strategies: list[str], params: DpoParams) -> str:
    """Pairs of every strategy that names one rejected rank per prompt, found in a single join: the target ranks
    of all strategies first (a row per prompt each), then the rejected and the chosen (rank 1) rows by
    (prompt_id, rnk)."""
    targets = " UNION ALL ".join(rejected_rank_sql(s, params) for s in strategies)
    return (f"SELECT {PAIR_COLUMNS} FROM ({targets}) t "
            f"JOIN __ranked r ON r.prompt_id = t.prompt_id AND r.rnk = t.rnk "
            f"JOIN __ranked c ON c.prompt_id = t.prompt_id AND c.rnk = 1")


def margin_pick_sql(cols: str, params: DpoParams) -> str:
    """Every (higher, lower) pair at least `margin` apart, enumerated without an all-pairs join: the rows scored
    <= s - margin are the lowest `below` of the prompt, i.e. ranks m - below + 1 .. m. With a cap of K pairs,
    widest first: the pair of the a-th best and the b-th worst is beaten or tied (and ordered first) by the a*b - 1
    other pairs of a better-or-equal chosen and a worse-or-equal rejected, so only pairs with a*b <= K can make it."""
    margin = float(params.margin)
    cols = f"{sql_str('margin')} AS {cols}"
    if params.max_pairs_per_prompt:
        k = int(params.max_pairs_per_prompt)
        return (f"SELECT {cols} FROM __ranked c JOIN __ranked r ON r.prompt_id = c.prompt_id "
                f"AND r.rnk > r.m - {k} AND c.rnk * (r.m - r.rnk + 1) <= {k} AND c.score - r.score >= {margin!r} "
                f"WHERE c.rnk <= {k} "
                f"QUALIFY row_number() OVER (PARTITION BY c.prompt_id "
                f"ORDER BY c.score - r.score DESC, c.rnk, r.rnk DESC) <= {k}")
    below = (f"count(*) OVER (PARTITION BY prompt_id ORDER BY score "
             f"RANGE BETWEEN UNBOUNDED PRECEDING AND {margin!r} PRECEDING)")
    return (f"SELECT {cols} FROM (SELECT *, unnest(range(m - below + 1, m + 1)) AS rejected_rnk FROM "
            f"(SELECT *, {below} AS below FROM __ranked) WHERE below > 0) c "
            f"JOIN __ranked r ON r.prompt_id = c.prompt_id AND r.rnk = c.rejected_rnk")


def dpo_table_sql(strategy: str) -> str:
    """One strategy's pairs in TRL's conversational preference format."""
    return f"""
        SELECT p.prompt_id || ':' || p.chosen_id || ':' || p.rejected_id AS id, p.prompt_id, c.prompt,
               {assistant('c.response')} AS chosen, {assistant('r.response')} AS rejected,
               p.chosen_id, p.rejected_id, p.chosen_score, p.rejected_score, p.chosen_rank, p.rejected_rank,
               p.group_size, p.strategy
        FROM __pairs p
        JOIN __pair_texts c ON c.response_id = p.chosen_id
        JOIN __pair_texts r ON r.response_id = p.rejected_id
        WHERE p.strategy = {sql_str(strategy)}
        ORDER BY p.prompt_id, p.chosen_rank, p.rejected_rank
    """


def unpaired_sql(strategy: str, params: DpoParams) -> str:
    """Prompts for which a strategy finds no pair, with why (for the drops table)."""
    if strategy == "margin":
        why = f"'score range ' || round(g.best_score - g.worst_score, 6) || ' < margin {params.margin}'"
    elif strategy == "rank_k":
        why = f"'group of ' || g.m || ': fewer than {params.k} responses, or rank {params.k} ties the best score'"
    else:
        why = "'all ' || g.m || ' responses tie the best score'"
    return (f"SELECT g.prompt_id AS source_id, 'no_pair_{strategy}' AS reason, {why} AS detail FROM __groups g "
            f"WHERE g.prompt_id NOT IN (SELECT prompt_id FROM __pairs WHERE strategy = {sql_str(strategy)})")


@register
class DpoPairs(SetOp):
    """DPO preference pairs from a scored set, one table per rejected-response strategy."""

    name = "dpo_pairs"
    Params = DpoParams
    schema = "dpo_pairs"
    version = "1"
    summary = "chosen = best; rejected by strategy (worst, random_lower, rank_k, mean_minus_2sd, margin)"

    def output_tables(self, table: str, params: DpoParams) -> list[str]:
        return [f"{table}_{s}" for s in params.strategies]

    def run(self, ctx, params: DpoParams) -> None:
        src = ctx.input()
        require_columns(ctx.con, src)
        drop_unscored(ctx, src)
        prepare_dpo(ctx.con, src, params)
        prompts = ctx.con.execute("SELECT count(*) FROM __groups").fetchall()[0][0]
        counts = {}
        for strategy, table in zip(params.strategies, ctx.outputs):
            counts[strategy] = ctx.write_sql(dpo_table_sql(strategy), table=table, total_rows=prompts)
            ctx.drop_sql(unpaired_sql(strategy, params))
        ctx.stats.update({"prompts": prompts, "pairs": counts})
