"""Generic set-oriented ops: a SQL query over the inputs, and a SQL predicate filter whose rejects become drops."""
from __future__ import annotations

from pydantic import Field

from xwin_data.ops.base import Op, Params, register


class SqlParams(Params):
    query: str = Field(description="SELECT over the inputs, named by their input names (the first also as `input`)")


@register
class SqlOp(Op):
    """Any SELECT over the stage's inputs, written as the output table."""

    name = "sql"
    Params = SqlParams
    sql_params = {"query": "select"}
    summary = "a SELECT over the inputs (named by input name; the first also as `input`)"

    def run(self, ctx, params: SqlParams) -> None:
        ctx.write_sql(params.query)


class FilterParams(Params):
    where: dict[str, str] = Field(
        description="reason -> SQL predicate that a kept row satisfies; a row failing one is dropped with that reason")
    id_column: str = Field("id", description="column recorded as the dropped record's id")
    detail: str | None = Field(None, description="SQL expression recorded as the drop's detail (default: the row)")


@register
class FilterOp(Op):
    """Keep rows satisfying every predicate; each reject becomes a drops row naming the first failed predicate."""

    name = "filter"
    Params = FilterParams
    sql_params = {"where": "expression", "detail": "expression"}
    min_inputs = max_inputs = 1
    keeps, adds = True, set()
    summary = "SQL predicates, one per drop reason"

    def output_schema(self, table, main, params):
        return None

    def input_columns(self, params: FilterParams) -> set:
        return {params.id_column}

    def run(self, ctx, params: FilterParams) -> None:
        from xwin_data.core.context import DETAIL_MAX, quote_ident
        from xwin_data.text.batches import write_input_except

        checks = [(reason, f"coalesce(({pred}), false)") for reason, pred in params.where.items()]
        keep = " AND ".join(c for _, c in checks) or "true"
        first_fail = "CASE " + " ".join(f"WHEN NOT {c} THEN '{r.replace(chr(39), chr(39) * 2)}'" for r, c in checks) + " END"
        detail = params.detail or "to_json(t)::VARCHAR"
        src, key = ctx.input(), quote_ident(params.id_column)
        drops = (f"SELECT t.{key} AS source_id, {first_fail} AS reason, left(CAST({detail} AS VARCHAR), {DETAIL_MAX}) "
                 f"AS detail FROM {src} t WHERE NOT ({keep})")
        if not ctx.con.execute(f"SELECT count(DISTINCT {key}) = count(*) FROM {src}").fetchall()[0][0]:
            ctx.write_sql(f"SELECT * FROM {src} t WHERE {keep}")  # rows can only be told apart by the predicates
            ctx.rows_are_copies()  # `SELECT *` with a WHERE: input rows, unchanged
            ctx.drop_sql(drops)
            return
        # The predicates run once: the rejects, with their reasons, first; then the rows not among them are written.
        ctx.con.execute(f"CREATE TEMP TABLE __rejects AS {drops}")
        write_input_except(ctx, "SELECT source_id FROM __rejects", params.id_column)
        ctx.drop_sql("SELECT * FROM __rejects")
