"""Row batches of an input table through a function on this machine, for stages whose work stays on the driver
(e.g. writing what a deduplication keeps). Stages whose batches may run elsewhere call `ctx.executor.map_input`;
see `xwin_data.core.executors` for how units are run, committed and published in input order."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import pyarrow as pa

from xwin_data.core.executors.local import LocalExecutor, default_threads  # noqa: F401 - re-exported

BatchFn = Callable[[pa.RecordBatch], tuple["pa.Table | None", Any]]


def map_input_parallel(ctx, fn: BatchFn, schema: pa.Schema, on_result: Callable[[Any], None] | None = None,
                       **options: Any) -> int:
    """`fn(batch) -> (table, extra)` over all rows of an input table on the local executor (forked workers or
    threads), the tables in input order, `on_result(extra)` in input order on this thread."""
    return LocalExecutor().map_input(ctx, fn, schema, on_result, record=False, **options)


def write_input_except(ctx, dropped_sql: str, id_column: str = "id") -> int:
    """Write the input rows whose `id_column` is not among the ids `dropped_sql` selects, in input order: the
    input's row groups read, filtered and written by threads (Arrow releases the GIL), rather than an anti-join,
    whose parallel probe loses the order. The ids must be unique in the input (a key). The rows are the input's,
    unchanged, so a contract the input passed in this build and that holds for subsets of rows holds here too."""
    if not ctx.con.execute(f"SELECT count(*) FROM ({dropped_sql})").fetchall()[0][0]:
        return ctx.pass_through()  # nothing dropped: the input's files are the output's
    schema = ctx.con.sql(f"SELECT * FROM {ctx.input()} LIMIT 0").to_arrow_table().schema
    ids = ctx.con.sql(dropped_sql).to_arrow_table().column(0).combine_chunks().cast(schema.field(id_column).type)
    total = map_input_parallel(ctx, partial(_without_ids, ids=ids, id_column=id_column), schema, batch_size=5_000,
                               threads=2, description=f"{ctx.stage_id}: writing the kept rows")
    ctx.rows_are_copies()
    return total


def _without_ids(batch: pa.RecordBatch, ids: pa.Array, id_column: str) -> tuple[pa.Table, None]:
    import pyarrow.compute as pc

    keep = pc.invert(pc.is_in(batch.column(id_column), value_set=ids))
    return pa.Table.from_batches([batch]).filter(keep), None
