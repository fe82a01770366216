"""Nested data-scaling subsets by number of assistant turns (2K ⊂ 4K ⊂ … ⊂ 64K by default).

Conversations are put in one fixed random order, md5(seed:id), ties broken by id; the subset of size S is the
shortest prefix of that order whose assistant turns reach S. The pieces of a split conversation (rows sharing a
`conversation_id`) are one unit of that order: a subset takes all of them or none, and `conversations` in the
manifest counts conversations, `rows` the pieces. Every smaller subset is therefore a prefix of every
larger one. A size larger than the data is not padded: its table holds all the data, and the stage's main table
(`<prefix>_subsets`, one row per size) marks it `complete = false`; the build log warns about it.
"""
from __future__ import annotations

import pyarrow as pa
from pydantic import Field, field_validator

from xwin_data.core.context import sql_str
from xwin_data.ops.base import Op, Params, register

MANIFEST_SCHEMA = pa.schema([("size", pa.int64()), ("table_name", pa.string()), ("conversations", pa.int64()),
                             ("rows", pa.int64()), ("assistant_turns", pa.int64()), ("complete", pa.bool_())])



def size_label(size: int) -> str:
    return f"{size // 1000}k" if size % 1000 == 0 else str(size)


class SubsetParams(Params):
    sizes: list[int] = Field([2000, 4000, 8000, 16000, 32000, 64000],
                             description="subset sizes in assistant turns; tables <prefix>_2k, <prefix>_4k, …")
    seed: int = Field(42, description="seed of the fixed random order")
    prefix: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                               description="table name prefix (default: the stage table without `_subsets`)")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if not v or any(s <= 0 for s in v):
            raise ValueError("sizes must be positive integers")
        labels = [size_label(s) for s in v]
        if len(set(labels)) != len(labels):
            raise ValueError(f"sizes repeat: {v}")
        return sorted(v)


def _prefix(table: str, params: SubsetParams) -> str:
    return params.prefix or (table[: -len("_subsets")] if table.endswith("_subsets") else table)


@register
class NestedSubsets(Op):
    """Write one table per size (nested, fixed seed) and a manifest table with rows, turns and completeness."""

    name = "nested_subsets"
    needs, adds = {"id", "messages"}, set(MANIFEST_SCHEMA.names)  # the main table is the manifest
    Params = SubsetParams
    schema = None
    min_inputs = max_inputs = 1
    summary = "nested subsets by assistant turns (fixed seed), one table per size + a manifest"

    def output_tables(self, table: str, params: SubsetParams) -> list[str]:
        return [table] + [f"{_prefix(table, params)}_{size_label(s)}" for s in params.sizes]

    def output_schema(self, table: str, main: str, params: SubsetParams) -> str | None:
        return None if table == main else "conversations"

    def output_columns(self, table: str, main: str, params: SubsetParams, input_columns: set | None) -> set | None:
        return set(MANIFEST_SCHEMA.names) if table == main else input_columns

    def output_unit(self, table: str, main: str, params: SubsetParams) -> str | None:
        return "subsets" if table == main else None  # a subset's rows are its input's (conversations or pieces)

    def run(self, ctx, params: SubsetParams) -> None:
        con, src = ctx.con, ctx.input()
        con.execute("SET threads = 1")  # copying whole conversations: one thread holds one row group of them
        have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        turns_sql = "n_turns" if "n_turns" in have else "len(list_filter(messages, lambda m: m.role = 'assistant'))"
        split = "conversation_id" in have
        group = "coalesce(conversation_id, id)" if split else "id"
        group_of_i = "coalesce(i.conversation_id, i.id)" if split else "i.id"
        order = f"md5_number({params.seed}::VARCHAR || ':' || conv), conv"
        con.execute(f"""CREATE TEMP TABLE __order AS
            SELECT conv, n_turns, pieces, sum(n_turns) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING) AS cum,
                   row_number() OVER (ORDER BY {order}) AS pos
            FROM (SELECT {group} AS conv, sum({turns_sql}) AS n_turns, count(*) AS pieces FROM {src} GROUP BY 1)""")
        total = con.execute("SELECT coalesce(sum(n_turns), 0), coalesce(sum(pieces), 0) FROM __order").fetchone()
        manifest = []
        prefix = _prefix(ctx.table, params)
        largest = None
        for size in sorted(params.sizes, reverse=True):  # each smaller subset is a prefix of the largest one
            name = f"{prefix}_{size_label(size)}"
            convs, rows, turns = con.execute(f"SELECT count(*), coalesce(sum(pieces), 0), coalesce(sum(n_turns), 0) "
                                             f"FROM __order WHERE cum - n_turns < {size}").fetchone()
            if largest is None:
                ctx.write_sql(f"SELECT i.* FROM {src} i JOIN __order o ON o.conv = {group_of_i} "
                              f"WHERE o.cum - o.n_turns < {size} ORDER BY o.pos, i.id", table=name,
                              total_rows=total[1])
                largest = ctx.output_glob(name)
            else:  # the first rows of the largest subset's file, in its order (insertion order is preserved)
                ctx.write_sql(f"SELECT * FROM read_parquet({sql_str(largest)}) LIMIT {rows}", table=name, total_rows=rows)
            ctx.rows_are_copies(name)  # the input's rows, each subset in the order of the subsets
            manifest.append({"size": size, "table_name": name, "conversations": convs, "rows": rows,
                             "assistant_turns": turns, "complete": bool(turns >= size)})
        manifest.sort(key=lambda m: m["size"])
        for m in manifest:
            if not m["complete"]:
                ctx.log(f"[yellow]size {m['size']:,} is larger than the data ({total[0]:,} assistant turns): "
                        f"{m['table_name']} holds all of it and is marked complete = false[/]")
        with ctx.writer(MANIFEST_SCHEMA) as w:
            w.write(manifest)
        ctx.stats.update({"total_assistant_turns": int(total[0]), "seed": params.seed,
                          "incomplete_sizes": [m["size"] for m in manifest if not m["complete"]], "subsets": manifest})
