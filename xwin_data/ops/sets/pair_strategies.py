"""DPO pair strategies: how the rejected response of a pair is picked, one registered class each.

A strategy works on one row per prompt of the scored set (`prompt_id`, `m` responses, `n_best` tied with the best,
mean `mu`, population `sd`, `best_score`, and `ranked`: the responses' {neg_score, sample_index} in rank order,
score descending, earlier sample first on ties). Most give one rejected rank per prompt (`rejected_rank`, a SQL
expression, NULL for no pair; the chosen is rank 1). A strategy with several pairs per prompt gives the list of its
{strategy, c, r} rank pairs instead (`picks`), or whole pair rows (`pair_rows`). `no_pair_reason` says, over a
prompt's `m`, `best_score` and `worst_score` (table alias `g`), why a prompt got none, for the drops table.
`uses` names the `dpo_pairs` parameters a strategy reads.

Adding a strategy is one class here (or in any imported module) with `@pair_strategy`; `dpo_pairs` then accepts its
name and writes a table `<table>_<name>`.
"""
from __future__ import annotations

from typing import Any, ClassVar

from xwin_data.core.context import sql_str

PAIR_STRATEGIES: dict[str, "PairStrategy"] = {}


def pair_strategy(cls: type["PairStrategy"]) -> type["PairStrategy"]:
    """Register a strategy class under its `name`."""
    if cls.name in PAIR_STRATEGIES:
        raise ValueError(f"pair strategy {cls.name!r} is already registered")
    PAIR_STRATEGIES[cls.name] = cls()
    return cls


def get_strategy(name: str) -> "PairStrategy":
    try:
        return PAIR_STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown pair strategy {name!r} (known: {', '.join(PAIR_STRATEGIES)})") from None


class PairStrategy:
    name: ClassVar[str]
    summary: ClassVar[str]
    uses: ClassVar[tuple[str, ...]] = ()

    def rejected_rank(self, params: Any) -> str:
        raise NotImplementedError

    def picks(self, params: Any) -> str:
        """A list of {strategy, c, r} for one prompt row: by default the one pair (rank 1, `rejected_rank`)."""
        r = f"({self.rejected_rank(params)})::BIGINT"
        return f"list_filter([{{'strategy': {sql_str(self.name)}, 'c': 1::BIGINT, 'r': {r}}}], lambda x: x.r IS NOT NULL)"

    def ctes(self, params: Any) -> dict[str, str]:
        """Extra one-row tables `picks` may read (joined to every prompt row)."""
        return {}

    def pair_rows(self, params: Any) -> str | None:
        """SQL of whole `__pairs` rows over `__ranked` (one row per response: prompt_id, m, rnk, score,
        sample_index), for strategies that enumerate pairs rather than pick from a prompt's row; None otherwise."""
        return None

    def no_pair_reason(self, params: Any) -> str:
        return "'all ' || g.m || ' responses tie the best score'"


@pair_strategy
class Worst(PairStrategy):
    name = "worst"
    summary = "the lowest score (the latest sample among ties)"

    def rejected_rank(self, params: Any) -> str:
        return "CASE WHEN m > n_best THEN m END"


@pair_strategy
class RandomLower(PairStrategy):
    name = "random_lower"
    summary = "a seeded uniform pick among the responses scored below the best"
    uses = ("seed",)

    def rejected_rank(self, params: Any) -> str:  # ranks n_best+1 .. m, from a per-prompt seeded hash
        u = f"(md5_number({sql_str(str(params.seed))} || ':' || prompt_id)::DOUBLE / pow(2::DOUBLE, 128))"
        return f"CASE WHEN m > n_best THEN n_best + 1 + least(floor({u} * (m - n_best))::BIGINT, m - n_best - 1) END"


@pair_strategy
class RankK(PairStrategy):
    name = "rank_k"
    summary = "the response at rank k (1 = best)"
    uses = ("k",)

    def rejected_rank(self, params: Any) -> str:
        k = int(params.k)
        return f"CASE WHEN m >= {k} AND n_best < {k} THEN {k} END"

    def no_pair_reason(self, params: Any) -> str:
        return f"'group of ' || g.m || ': fewer than {params.k} responses, or rank {params.k} ties the best score'"


@pair_strategy
class MeanMinus2Sd(PairStrategy):
    name = "mean_minus_2sd"
    summary = "the response scored below the best nearest mean - sd_multiplier * sd (population sd)"
    uses = ("sd_multiplier",)

    def rejected_rank(self, params: Any) -> str:  # nearest the target among the lower ones; ties: lower score, rank
        target = f"(mu - {float(params.sd_multiplier)!r} * sd)"
        nearest = (f"list_min(list_transform(ranked[n_best + 1:], "
                   f"lambda e, i: {{'d': abs(-e.neg_score - {target}), 's': -e.neg_score, 'i': i}})).i")
        return f"CASE WHEN m > n_best THEN n_best + {nearest} END"


@pair_strategy
class Margin(PairStrategy):
    name = "margin"
    summary = ("every pair (higher, lower) whose scores differ by at least `margin`; with max_pairs_per_prompt, "
               "the widest ones")
    uses = ("margin", "max_pairs_per_prompt")

    def ctes(self, params: Any) -> dict[str, str]:
        if not params.max_pairs_per_prompt:
            return {}
        k = int(params.max_pairs_per_prompt)
        return {"cand": f"SELECT list({{'a': a, 'j': j}}) AS pairs FROM "
                        f"(SELECT a, unnest(range(1, {k} // a + 1)) AS j FROM range(1, {k} + 1) t(a))"}

    def picks(self, params: Any) -> str:
        """The (at most K) widest pairs at least `margin` apart, ties to the better chosen, then the worse rejected.
        The pair of the a-th best and the j-th worst is beaten or tied (and ordered first) by the a*j - 1 other
        pairs of a better-or-equal chosen and a worse-or-equal rejected, so only the pairs with a*j <= K (`cand`,
        about K ln K of them) can make it; they are sorted within each prompt's row."""
        k, margin = int(params.max_pairs_per_prompt), float(params.margin)
        cand = "list_filter(cand.pairs, lambda x: x.a < m - x.j + 1)"  # chosen rank a above rejected m - j + 1
        keyed = (f"list_transform({cand}, lambda x: {{'neg_diff': ranked[x.a].neg_score - "
                 f"ranked[m - x.j + 1].neg_score, 'c': x.a, 'neg_r': x.j - m - 1}})")
        widest = f"list_slice(list_sort(list_filter({keyed}, lambda x: x.neg_diff <= -{margin!r})), 1, {k})"
        return f"list_transform({widest}, lambda x: {{'strategy': 'margin', 'c': x.c, 'r': -x.neg_r}})"

    def pair_rows(self, params: Any) -> str | None:
        """Uncapped: every pair, enumerated without an all-pairs join: the rows scored <= s - margin are the lowest
        `below` of the prompt, i.e. ranks m - below + 1 .. m."""
        if params.max_pairs_per_prompt:
            return None
        margin = float(params.margin)
        below = (f"count(*) OVER (PARTITION BY prompt_id ORDER BY score "
                 f"RANGE BETWEEN UNBOUNDED PRECEDING AND {margin!r} PRECEDING)")
        return (f"SELECT 'margin' AS strategy, c.prompt_id, c.sample_index AS chosen_index, "
                f"r.sample_index AS rejected_index, c.rnk AS chosen_rank, r.rnk AS rejected_rank, "
                f"c.score AS chosen_score, r.score AS rejected_score, c.m AS group_size "
                f"FROM (SELECT *, unnest(range(m - below + 1, m + 1)) AS rejected_rnk FROM "
                f"(SELECT *, {below} AS below FROM __ranked) WHERE below > 0) c "
                f"JOIN __ranked r ON r.prompt_id = c.prompt_id AND r.rnk = c.rejected_rnk")

    def no_pair_reason(self, params: Any) -> str:
        return f"'score range ' || round(g.best_score - g.worst_score, 6) || ' < margin {params.margin}'"
