"""Training data derived from a scored response set (Xwin-Set), in SQL: rejection-sampling SFT sets and DPO pairs.

Input: one row per (prompt, response) with at least `prompt_id`, `prompt` (messages), `response_id`,
`sample_index` (generation order, 0-based), `response` and `score` — the `xwin_set` table. Ranks are computed
here (score descending, earlier sample first on ties), so any table of that shape works where sample_index tells a
prompt's equally scored responses apart.

- `rs_best_of_n` writes one table per n: the best of the first n samples of each prompt, as SFT `messages`.
- `dpo_pairs` writes one table per strategy: chosen = the best response, rejected picked by the strategy
  (`margin` instead keeps every pair whose scores differ by at least the margin), in TRL's conversational
  preference format (`prompt`, `chosen`, `rejected` as message lists). Strategies are registered classes
  (`xwin_data.ops.sets.pair_strategies`).
"""
from __future__ import annotations


from pydantic import Field, field_validator

from xwin_data.core.context import sql_str
from xwin_data.ops.base import Op, Params, register
from xwin_data.ops.sets.pair_strategies import PAIR_STRATEGIES, get_strategy

SET_COLUMNS = ("prompt_id", "prompt", "response_id", "sample_index", "response", "score")
DEFAULT_NS = [1, 2, 4, 8, 16, 32, 64]
STRATEGIES = tuple(PAIR_STRATEGIES)  # the built-in ones, all on by default


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
    """Each output table lost the unscored responses: the drop is filed under each, counted in responses."""
    for table in ctx.outputs:
        ctx.drop_sql(f"SELECT response_id AS source_id, 'missing_score' AS reason, "
                     f"'prompt ' || prompt_id || ', score ' || coalesce(CAST(score AS VARCHAR), 'NULL') AS detail "
                     f"FROM {source} WHERE score IS NULL OR isnan(score)", table=table, unit="responses")


def assistant(expr: str) -> str:
    """A one-message assistant turn, typed like the `prompt` messages."""
    return f"[{{'role': 'assistant', 'content': {expr}}}]"


class SetOp(Op):
    """An op over a scored set."""

    min_inputs = max_inputs = 1
    needs = set(SET_COLUMNS)

    def output_columns(self, table: str, main: str, params, input_columns: set | None) -> set | None:
        """Every output of a set op is a table of the same kind (one per n, one per strategy)."""
        return None if self.adds is None else set(self.adds)


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
    adds = {"id", "messages", "prompt_id", "response_id", "sample_index", "score", "n", "n_available"}
    Params = RsParams
    schema = "rs_best_of"
    version = "1"
    summary = "best of the first n samples per prompt, one SFT table per n (<table>_<n>)"

    def output_tables(self, table: str, params: RsParams) -> list[str]:
        return [f"{table}_{n}" for n in params.ns]

    def output_unit(self, table: str, main: str, params: RsParams) -> str:
        return "prompts"

    def run(self, ctx, params: RsParams) -> None:
        src = ctx.input()
        require_columns(ctx.con, src)
        drop_unscored(ctx, src)
        prepare_rs(ctx.con, src, params.ns)
        prompts = ctx.con.execute("SELECT count(DISTINCT prompt_id) FROM __rs_picks").fetchall()[0][0]
        prompts_in = ctx.con.execute(f"SELECT count(DISTINCT prompt_id) FROM {src}").fetchall()[0][0]
        for n, table in zip(params.ns, ctx.outputs):
            ctx.write_sql(rs_table_sql(n), table=table, total_rows=prompts)
            ctx.rows_in[table] = int(prompts_in)
            ctx.drop_sql(f"SELECT DISTINCT prompt_id AS source_id, 'no_scored_response_in_first_n' AS reason, "
                         f"'no scored response among the first {int(n)} samples' AS detail FROM {src} "
                         f"WHERE prompt_id NOT IN (SELECT prompt_id FROM __rs_picks WHERE n = {int(n)})", table=table)
        short = ctx.con.execute(f"SELECT count(*) FROM __rs_picks WHERE n = {max(params.ns)} "
                                f"AND n_available < n").fetchall()[0][0]
        ctx.stats.update({"prompts": prompts, "ns": params.ns, "prompts_with_fewer_than_max_n": int(short)})


# ------------------------------------------------------------------------------------------------ dpo_pairs
class DpoParams(Params):
    strategies: list[str] = Field(
        list(STRATEGIES),
        description="how the rejected response is picked (chosen is the best response, rank 1); one table "
                    "<table>_<strategy> each: " + "; ".join(f"{n} = {st.summary}" for n, st in PAIR_STRATEGIES.items()))
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
        for name in v:
            get_strategy(name)
        return v


def prepare_dpo(con, source: str, params: DpoParams) -> None:
    """Temp tables `__groups` (per prompt: m, best and worst score, for counts and drop reasons), `__pairs` (every
    strategy's picks: ranks, sample indices, scores) and `__pair_texts` (the picked rows' id, prompt, response).

    Ranks come from one GROUP BY, not a window over every row: each prompt's (-score, sample_index) keys sorted
    (`ranked_groups_sql`), so rank r is `ranked[r]`, and each strategy's pick is list arithmetic on one row per
    prompt (`xwin_data.ops.sets.pair_strategies`). A picked response is named by (prompt_id, sample_index, score)
    until `fetch_picked_rows` fetches its texts."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW __scored AS {scored_rows_sql(source)}")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE __groups AS
        SELECT prompt_id, count(*) AS m, max(score) AS best_score, min(score) AS worst_score
        FROM __scored GROUP BY prompt_id""")
    strategies = [get_strategy(n) for n in params.strategies]
    enumerated = [sql for st in strategies if (sql := st.pair_rows(params)) is not None]
    by_row = [st for st in strategies if st.pair_rows(params) is None]
    picks = [ranked_picks_sql(by_row, params)] if by_row else []
    if enumerated:
        con.execute(f"CREATE OR REPLACE TEMP TABLE __ranked AS {ranked_rows_sql()}")
        picks += enumerated
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


def ranked_picks_sql(strategies: list, params: DpoParams) -> str:
    """The pairs of strategies that pick from a prompt's row: every strategy's (strategy, chosen rank, rejected
    rank) picks of one row per prompt as one list, unnested."""
    ctes = {"g": ranked_groups_sql(),
            "h": "SELECT *, len(list_filter(ranked, lambda e: -e.neg_score = best_score)) AS n_best FROM g"}
    for st in strategies:
        ctes.update(st.ctes(params))
    extra = [name for name in ctes if name not in ("g", "h")]
    lists = [st.picks(params) for st in strategies]
    picks = lists[0] if len(lists) == 1 else f"list_concat({', '.join(lists)})"
    with_ = "WITH " + ", ".join(f"{name} AS ({sql})" for name, sql in ctes.items())
    source = ", ".join(["h", *extra])
    return pair_rows_sql(f"{with_} SELECT prompt_id, m, ranked, unnest({picks}, recursive := true) FROM {source}")


def ranked_rows_sql() -> str:
    """One row per scored response: prompt_id, m, rnk, score, sample_index (the ranks of `ranked_groups_sql`)."""
    return (f"SELECT prompt_id, m, rnk, -e.neg_score AS score, e.sample_index FROM "
            f"(SELECT prompt_id, m, generate_subscripts(ranked, 1) AS rnk, unnest(ranked) AS e "
            f"FROM ({ranked_groups_sql()}))")


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
    why = get_strategy(strategy).no_pair_reason(params)
    return (f"SELECT g.prompt_id AS source_id, 'no_pair_{strategy}' AS reason, {why} AS detail FROM __groups g "
            f"WHERE g.prompt_id NOT IN (SELECT prompt_id FROM __pairs WHERE strategy = {sql_str(strategy)})")


@register
class DpoPairs(SetOp):
    """DPO preference pairs from a scored set, one table per rejected-response strategy."""

    name = "dpo_pairs"
    adds = {"id", "prompt_id", "prompt", "chosen", "rejected", "chosen_id", "rejected_id", "chosen_score",
            "rejected_score", "chosen_rank", "rejected_rank", "group_size", "strategy"}
    Params = DpoParams
    schema = "dpo_pairs"
    version = "1"
    summary = "chosen = best; rejected by a registered strategy (worst, random_lower, rank_k, mean_minus_2sd, margin, ...)"

    def output_tables(self, table: str, params: DpoParams) -> list[str]:
        return [f"{table}_{s}" for s in params.strategies]

    def output_unit(self, table: str, main: str, params: DpoParams) -> str:
        return "pairs"

    def run(self, ctx, params: DpoParams) -> None:
        src = ctx.input()
        require_columns(ctx.con, src)
        drop_unscored(ctx, src)
        prepare_dpo(ctx.con, src, params)
        prompts = ctx.con.execute("SELECT count(*) FROM __groups").fetchall()[0][0]
        counts = {}
        for strategy, table in zip(params.strategies, ctx.outputs):
            counts[strategy] = ctx.write_sql(dpo_table_sql(strategy), table=table, total_rows=prompts)
            ctx.drop_sql(unpaired_sql(strategy, params), table=table, unit="prompts")
        ctx.stats.update({"prompts": prompts, "pairs": counts})
