"""Training data derived from a scored response set (Xwin-Set), in SQL: rejection-sampling SFT sets and DPO pairs.

Input: one row per (prompt, response) with at least `prompt_id`, `prompt` (messages), `response_id`,
`sample_index` (generation order, 0-based), `response` and `score` — the `xwin_set` table. Ranks are computed
here (score descending, earlier sample first on ties), so any table of that shape works where sample_index tells a
prompt's equally scored responses apart.

- `rs_best_of_n` writes one table per n: the best of the first n samples of each prompt, as SFT `messages`.
- `dpo_pairs` writes one table per strategy: chosen = the best response, rejected picked by the strategy
  (`margin` instead keeps every pair whose scores differ by at least the margin), in TRL's conversational
  preference format (`prompt`, `chosen`, `rejected` as message lists).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from xwin_data.core.context import sql_str
from xwin_data.core.fingerprint import stable_hash
from xwin_data.ops.base import Op, Params, register

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
# Selection runs over the narrow columns (order, score); the texts of the picked rows are fetched once.

def fetch_picked_rows(con, table: str, keys_sql: str, columns: str) -> None:
    """Temp table `table`: `columns` of the scored rows named by `keys_sql`'s (prompt_id, sample_index, score), in
    one semi-join over `__scored`. Picks are named so because selecting them on the narrow key columns is cheaper
    than carrying ids or texts; a name must then be unique, i.e. no two responses of a prompt share both
    sample_index and score (their rank order would be undefined) -- an error otherwise."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table}_keys AS SELECT DISTINCT prompt_id, sample_index, score "
                f"FROM ({keys_sql})")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT s.prompt_id, s.sample_index, s.score, {columns}
        FROM __scored s SEMI JOIN {table}_keys k
            ON s.prompt_id = k.prompt_id AND s.sample_index IS NOT DISTINCT FROM k.sample_index
               AND s.score = k.score""")
    keys, rows = (con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in (f"{table}_keys", table))
    if rows != keys:
        dup = con.execute(f"SELECT prompt_id, sample_index, score FROM {table} GROUP BY ALL HAVING count(*) > 1 "
                          "LIMIT 1").fetchall()
        which = (f"prompt {dup[0][0]!r} has several responses with sample_index {dup[0][1]} and score {dup[0][2]}"
                 if dup else f"{keys - rows} picked response(s) not found again")
        raise ValueError(f"{which}; sample_index must tell a prompt's responses apart (it breaks score ties in the "
                         "ranks)")
    con.execute(f"DROP TABLE {table}_keys")


def prepare_rs(con, source: str, ns: list[int]) -> None:
    """Temp tables `__rs_picks` (n, prompt_id, sample_index, score, n_available) and `__rs_texts` (the picked rows'
    response_id and SFT messages). Every n is picked in one scan and one GROUP BY (the largest (score,
    -sample_index) per n, with a FILTER), then unpivoted."""
    aggs = ", ".join(f"max({{'score': score, 'neg_index': -sample_index}}) FILTER (WHERE sample_index < {int(n)}) "
                     f"AS b{i}, count(*) FILTER (WHERE sample_index < {int(n)}) AS c{i}" for i, n in enumerate(ns))
    selects = " UNION ALL ".join(f"SELECT {int(n)} AS n, prompt_id, -b{i}.neg_index AS sample_index, "
                                 f"b{i}.score AS score, c{i} AS n_available FROM __rs_best WHERE c{i} > 0"
                                 for i, n in enumerate(ns))
    con.execute(f"CREATE OR REPLACE TEMP VIEW __scored AS {scored_rows_sql(source)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE __rs_best AS SELECT prompt_id, {aggs} FROM __scored GROUP BY prompt_id")
    con.execute(f"CREATE OR REPLACE TEMP TABLE __rs_picks AS {selects}")
    con.execute("DROP TABLE __rs_best")
    fetch_picked_rows(con, "__rs_texts", "SELECT prompt_id, sample_index, score FROM __rs_picks",
                      f"s.response_id, list_concat(s.prompt, {assistant('s.response')}) AS messages")


def rs_table_sql(n: int) -> str:
    """Best of the first n samples (by sample_index) of each prompt as SFT messages; ties go to the earlier one."""
    return f"""
        SELECT p.prompt_id AS id, t.messages, p.prompt_id, t.response_id, p.sample_index, p.score, p.n, p.n_available
        FROM __rs_picks p
        JOIN __rs_texts t ON t.prompt_id = p.prompt_id AND t.sample_index = p.sample_index AND t.score = p.score
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
    """Temp tables `__groups` (per prompt: m, best and worst score, for counts and drop reasons), `__pairs` (every
    strategy's picks: ranks, sample indices, scores) and `__pair_texts` (the picked rows' id, prompt, response).

    Ranks come from one GROUP BY, not a window over every row: each prompt's (-score, sample_index) keys sorted
    (`ranked_groups_sql`), so rank r is `ranked[r]`, and each strategy's pick is list arithmetic on one row per
    prompt. A picked response is named by (prompt_id, sample_index, score) until `fetch_picked_rows` fetches its
    texts."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW __scored AS {scored_rows_sql(source)}")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE __groups AS
        SELECT prompt_id, count(*) AS m, max(score) AS best_score, min(score) AS worst_score
        FROM __scored GROUP BY prompt_id""")
    picks = []
    margin, capped = "margin" in params.strategies, bool(params.max_pairs_per_prompt)
    if [s for s in params.strategies if s != "margin"] or (margin and capped):
        picks.append(ranked_picks_sql(params))
    if margin and not capped:
        con.execute(f"CREATE OR REPLACE TEMP TABLE __ranked AS {ranked_rows_sql()}")
        picks.append(all_margin_pairs_sql(params))
    con.execute("CREATE OR REPLACE TEMP TABLE __pairs AS " + " UNION ALL ".join(picks))
    fetch_picked_rows(con, "__pair_texts", "SELECT prompt_id, chosen_index AS sample_index, chosen_score AS score "
                      "FROM __pairs UNION ALL SELECT prompt_id, rejected_index, rejected_score FROM __pairs",
                      "s.response_id, s.prompt, s.response")


def ranked_groups_sql() -> str:
    """One row per prompt: m, mean, population sd, best score, and `ranked`, its responses' {neg_score,
    sample_index} sorted ascending, i.e. in rank order: score descending, earlier sample first on ties (a missing
    sample_index last, as in ORDER BY score DESC, sample_index). Mean and sd are taken over the sorted scores, so
    they are summed in one order whatever the threads do (a parallel avg() differs in the last digit)."""
    return """
        SELECT prompt_id, m, list_avg(s) AS mu, coalesce(list_stddev_pop(s), 0) AS sd, best_score, ranked
        FROM (SELECT prompt_id, count(*) AS m, max(score) AS best_score, list_sort(list(score)) AS s,
                     list_sort(list({'neg_score': -score, 'sample_index': sample_index})) AS ranked
              FROM __scored GROUP BY prompt_id)"""


def pair_rows_sql(picks: str) -> str:
    """`__pairs` rows from (strategy, prompt_id, m, ranked, c, r): the responses at ranks c (chosen) and r."""
    return (f"SELECT strategy, prompt_id, ranked[c].sample_index AS chosen_index, "
            f"ranked[r].sample_index AS rejected_index, c AS chosen_rank, r AS rejected_rank, "
            f"-ranked[c].neg_score AS chosen_score, -ranked[r].neg_score AS rejected_score, m AS group_size "
            f"FROM ({picks})")


def rejected_rank_sql(strategy: str, params: DpoParams) -> str:
    """The rank of the rejected response (NULL: the prompt has none), from a prompt's m, n_best (responses tied
    with the best; they hold ranks 1 .. n_best, the lower ones n_best + 1 .. m), mu, sd and `ranked`."""
    if strategy == "worst":  # the last rank: lowest score, the latest sample among ties
        return "CASE WHEN m > n_best THEN m END"
    if strategy == "rank_k":
        k = int(params.k)
        return f"CASE WHEN m >= {k} AND n_best < {k} THEN {k} END"
    if strategy == "random_lower":  # uniform over ranks n_best+1 .. m, from a per-prompt seeded hash
        u = f"(md5_number({sql_str(str(params.seed))} || ':' || prompt_id)::DOUBLE / pow(2::DOUBLE, 128))"
        return f"CASE WHEN m > n_best THEN n_best + 1 + least(floor({u} * (m - n_best))::BIGINT, m - n_best - 1) END"
    if strategy == "mean_minus_2sd":  # nearest the target among the lower ones; ties: lower score, then rank
        target = f"(mu - {float(params.sd_multiplier)!r} * sd)"
        nearest = (f"list_min(list_transform(ranked[n_best + 1:], "
                   f"lambda e, i: {{'d': abs(-e.neg_score - {target}), 's': -e.neg_score, 'i': i}})).i")
        return f"CASE WHEN m > n_best THEN n_best + {nearest} END"
    raise ValueError(f"unknown strategy {strategy!r}")


def capped_margin_picks_sql(params: DpoParams) -> str:
    """A list of {strategy, c, r}: the (at most K) widest pairs at least `margin` apart, ties to the better chosen,
    then the worse rejected. The pair of the a-th best and the j-th worst is beaten or tied (and ordered first) by
    the a*j - 1 other pairs of a better-or-equal chosen and a worse-or-equal rejected, so only the pairs with
    a*j <= K (`cand`, about K ln K of them) can make it; they are sorted within each prompt's row."""
    k, margin = int(params.max_pairs_per_prompt), float(params.margin)
    cand = "list_filter(cand.pairs, lambda x: x.a < m - x.j + 1)"  # chosen rank a above rejected rank m - j + 1
    keyed = (f"list_transform({cand}, lambda x: {{'neg_diff': ranked[x.a].neg_score - ranked[m - x.j + 1].neg_score, "
             f"'c': x.a, 'neg_r': x.j - m - 1}})")
    widest = f"list_slice(list_sort(list_filter({keyed}, lambda x: x.neg_diff <= -{margin!r})), 1, {k})"
    return f"list_transform({widest}, lambda x: {{'strategy': 'margin', 'c': x.c, 'r': -x.neg_r}})"


def ranked_picks_sql(params: DpoParams) -> str:
    """Every strategy's pairs except uncapped margin, from one row per prompt: the (strategy, chosen rank,
    rejected rank) picks of all strategies as one list, unnested."""
    by_rank = [s for s in params.strategies if s != "margin"]
    lists = []
    if by_rank:
        items = ", ".join(f"{{'strategy': {sql_str(s)}, 'c': 1::BIGINT, 'r': ({rejected_rank_sql(s, params)})::BIGINT}}"
                          for s in by_rank)
        lists.append(f"list_filter([{items}], lambda x: x.r IS NOT NULL)")
    cte = f"WITH g AS ({ranked_groups_sql()})"
    source = "g"
    if by_rank:
        cte += ", h AS (SELECT *, len(list_filter(ranked, lambda e: -e.neg_score = best_score)) AS n_best FROM g)"
        source = "h"
    if "margin" in params.strategies and params.max_pairs_per_prompt:
        k = int(params.max_pairs_per_prompt)
        cte += (f", cand AS (SELECT list({{'a': a, 'j': j}}) AS pairs FROM "
                f"(SELECT a, unnest(range(1, {k} // a + 1)) AS j FROM range(1, {k} + 1) t(a)))")
        source += ", cand"
        lists.append(capped_margin_picks_sql(params))
    picks = lists[0] if len(lists) == 1 else f"list_concat({', '.join(lists)})"
    return pair_rows_sql(f"{cte} SELECT prompt_id, m, ranked, unnest({picks}, recursive := true) FROM {source}")


def ranked_rows_sql() -> str:
    """One row per scored response: prompt_id, m, rnk, score, sample_index (the ranks of `ranked_groups_sql`)."""
    return (f"SELECT prompt_id, m, rnk, -e.neg_score AS score, e.sample_index FROM "
            f"(SELECT prompt_id, m, generate_subscripts(ranked, 1) AS rnk, unnest(ranked) AS e "
            f"FROM ({ranked_groups_sql()}))")


def all_margin_pairs_sql(params: DpoParams) -> str:
    """Every (higher, lower) pair at least `margin` apart, enumerated without an all-pairs join: the rows scored
    <= s - margin are the lowest `below` of the prompt, i.e. ranks m - below + 1 .. m."""
    margin = float(params.margin)
    below = (f"count(*) OVER (PARTITION BY prompt_id ORDER BY score "
             f"RANGE BETWEEN UNBOUNDED PRECEDING AND {margin!r} PRECEDING)")
    return (f"SELECT 'margin' AS strategy, c.prompt_id, c.sample_index AS chosen_index, "
            f"r.sample_index AS rejected_index, c.rnk AS chosen_rank, r.rnk AS rejected_rank, "
            f"c.score AS chosen_score, r.score AS rejected_score, c.m AS group_size "
            f"FROM (SELECT *, unnest(range(m - below + 1, m + 1)) AS rejected_rnk FROM "
            f"(SELECT *, {below} AS below FROM __ranked) WHERE below > 0) c "
            f"JOIN __ranked r ON r.prompt_id = c.prompt_id AND r.rnk = c.rejected_rnk")


def dpo_table_sql(strategy: str) -> str:
    """One strategy's pairs in TRL's conversational preference format."""
    return f"""
        SELECT p.prompt_id || ':' || c.response_id || ':' || r.response_id AS id, p.prompt_id, c.prompt,
               {assistant('c.response')} AS chosen, {assistant('r.response')} AS rejected,
               c.response_id AS chosen_id, r.response_id AS rejected_id, p.chosen_score, p.rejected_score,
               p.chosen_rank, p.rejected_rank, p.group_size, p.strategy
        FROM __pairs p
        JOIN __pair_texts c
            ON c.prompt_id = p.prompt_id AND c.sample_index IS NOT DISTINCT FROM p.chosen_index
               AND c.score = p.chosen_score
        JOIN __pair_texts r
            ON r.prompt_id = p.prompt_id AND r.sample_index IS NOT DISTINCT FROM p.rejected_index
               AND r.score = p.rejected_score
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
