"""Row batches of an input table through a function on this machine, for stages whose work stays on the driver
(e.g. writing what a deduplication keeps). Stages whose batches may run elsewhere call `ctx.executor.map_input`;
see `xwin_data.core.executors` for how units are run, committed and published in input order."""
from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa

from xwin_data.core.executors.local import LocalExecutor, default_threads  # noqa: F401 - re-exported

BatchFn = Callable[[pa.RecordBatch], tuple["pa.Table | None", Any]]


def map_input_parallel(ctx, fn: BatchFn, schema: pa.Schema, on_result: Callable[[Any], None] | None = None,
                       **options: Any) -> int:
    """`fn(batch) -> (table, extra)` over all rows of an input table on the local executor (forked workers or
    threads), the tables in input order, `on_result(extra)` in input order on this thread."""
    return LocalExecutor().map_input(ctx, fn, schema, on_result, record=False, **options)
