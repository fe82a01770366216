"""Conversation filters: SQL predicates over the computed columns, plus typed language and provenance filters.

Built on the generic `filter` op (one drop reason per predicate); the typed lists are quoted here so a recipe
never has to write SQL list literals.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from xwin_data.core.context import sql_str
from xwin_data.ops.base import Op, Params, register
from xwin_data.ops.readers.sql import FilterOp, FilterParams

DETAIL_COLUMNS = ("language", "language_raw", "model", "n_turns", "n_chars", "n_tokens")


class ConversationFilterParams(Params):
    languages: list[str] = Field(default_factory=list,
                                 description="keep only these languages (empty: any); a macrolanguage keeps its "
                                             "varieties: [zh] keeps zh, cmn, wuu, yue")
    refusals: bool | list[str] = Field(False, description="drop conversations whose assistant turns contain refusal "
                                                          "boilerplate: true for every shipped language's patterns "
                                                          "(resources/refusals/), or a list of languages")
    exclude_models: list[str] = Field(default_factory=list,
                                      description="drop conversations whose `model` is one of these (provenance)")
    where: dict[str, str] = Field(default_factory=dict,
                                  description="reason -> SQL predicate a kept row satisfies (n_turns, n_chars, "
                                              "n_tokens, turn_tokens, language, model, messages, ...)")

    @field_validator("refusals")
    @classmethod
    def _known_refusals(cls, v):
        from xwin_data.text.refusals import patterns

        if isinstance(v, list):
            patterns(v)  # an unknown language is an error before any work
        return v

    def refusal_languages(self) -> list[str] | None:
        """None for every shipped language, else the chosen ones (only meaningful when `refusals` is set)."""
        return self.refusals if isinstance(self.refusals, list) else None


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
    summary = "language list, refusal boilerplate, excluded answering models, SQL predicates (one drop reason each)"

    def external_fingerprint(self, params: ConversationFilterParams) -> dict:
        from xwin_data.text.refusals import patterns

        return {"refusal_patterns": patterns(params.refusal_languages())} if params.refusals else {}

    def input_columns(self, params: ConversationFilterParams) -> set:
        return {"id", "messages"} | ({"language"} if params.languages else set()) | (
            {"model"} if params.exclude_models else set())

    def run(self, ctx, params: ConversationFilterParams) -> None:
        from xwin_data.text.language import matching_codes
        from xwin_data.text.refusals import refusal_regex

        where: dict[str, str] = {}
        if params.languages:
            found = [r[0] for r in ctx.con.execute(f"SELECT DISTINCT language FROM {ctx.input()}").fetchall()]
            accepted = matching_codes(params.languages, found)
            where["language_not_allowed"] = f"list_contains({_sql_list(accepted)}, language)"
            ctx.stats["languages_kept"] = sorted(accepted)
        if params.exclude_models:
            where["excluded_model"] = f"model IS NULL OR NOT list_contains({_sql_list(params.exclude_models)}, model)"
        where.update(params.where)
        if params.refusals:
            regex = sql_str(refusal_regex(params.refusal_languages()))
            where["refusal_boilerplate"] = (
                "NOT coalesce(list_bool_or(list_transform(list_filter(messages, lambda m: m.role = 'assistant'), "
                f"lambda m: regexp_matches(m.content, {regex}))), false)")
        have = {r[0] for r in ctx.con.execute(f"DESCRIBE SELECT * FROM {ctx.input()}").fetchall()}
        pairs = [f"'{c}', t.{c}" for c in DETAIL_COLUMNS if c in have]
        detail = f"json_object({', '.join(pairs + ['{q}first_message{q}, left(t.messages[1].content, 200)'.format(q=chr(39))])})::VARCHAR"
        FilterOp().run(ctx, FilterParams(where=where, detail=detail))
        ctx.stats["predicates"] = where
