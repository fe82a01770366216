"""Conversation filters: SQL predicates over the computed columns, plus typed language and provenance filters.

Built on the generic `filter` op (one drop reason per predicate); the typed lists are quoted here so a recipe
never has to write SQL list literals.
"""
from __future__ import annotations

from pydantic import Field

from xwin_data.core.context import sql_str
from xwin_data.ops.base import Op, Params, register
from xwin_data.ops.readers.sql import FilterOp, FilterParams

DETAIL_COLUMNS = ("language", "model", "n_turns", "n_chars", "n_tokens")


class ConversationFilterParams(Params):
    languages: list[str] = Field(default_factory=list, description="keep only these language codes (empty: any)")
    exclude_models: list[str] = Field(default_factory=list,
                                      description="drop conversations whose `model` is one of these (provenance)")
    where: dict[str, str] = Field(default_factory=dict,
                                  description="reason -> SQL predicate a kept row satisfies (n_turns, n_chars, "
                                              "n_tokens, turn_tokens, language, model, messages, ...)")


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join(sql_str(v) for v in values) + "]::VARCHAR[]"


@register
class ConversationFilter(Op):
    """Keep conversations in the wanted languages, not answered by excluded models, satisfying every predicate."""

    name = "filter_conversations"
    keeps, adds = True, set()
    Params = ConversationFilterParams
    schema = "conversations"
    min_inputs = max_inputs = 1
    summary = "language list, excluded answering models, and SQL predicates (one drop reason each)"

    def input_columns(self, params: ConversationFilterParams) -> set:
        return {"id", "messages"} | ({"language"} if params.languages else set()) | (
            {"model"} if params.exclude_models else set())

    def run(self, ctx, params: ConversationFilterParams) -> None:
        where: dict[str, str] = {}
        if params.languages:
            where["language_not_allowed"] = f"list_contains({_sql_list(params.languages)}, language)"
        if params.exclude_models:
            where["excluded_model"] = f"model IS NULL OR NOT list_contains({_sql_list(params.exclude_models)}, model)"
        where.update(params.where)
        have = {r[0] for r in ctx.con.execute(f"DESCRIBE SELECT * FROM {ctx.input()}").fetchall()}
        pairs = [f"'{c}', t.{c}" for c in DETAIL_COLUMNS if c in have]
        detail = f"json_object({', '.join(pairs + ['{q}first_message{q}, left(t.messages[1].content, 200)'.format(q=chr(39))])})::VARCHAR"
        FilterOp().run(ctx, FilterParams(where=where, detail=detail))
        ctx.stats["predicates"] = where
