"""Run a batch function over a query's Arrow batches on a few threads, writing results in input order.

The batch functions of the conversation ops spend their time in Arrow compute kernels, numpy and scipy, which
release the GIL, so threads overlap them; at most `threads + 1` batches are in memory at once.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pyarrow as pa


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def map_batches_parallel(ctx, sql: str, fn: Callable[[pa.RecordBatch], tuple[pa.Table | None, Any]],
                         schema: pa.Schema, on_result: Callable[[Any], None] | None = None, *,
                         table: str | None = None, batch_size: int = 20_000, description: str = "",
                         threads: int | None = None) -> int:
    """`fn(batch) -> (table, extra)`; tables are written in order, `on_result(extra)` runs in the calling thread."""
    threads = threads or ctx.threads or default_threads()
    total = ctx.con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
    reader = ctx.con.cursor().sql(sql).to_arrow_reader(batch_size)  # streams (execute() would materialise)
    pending: deque = deque()
    with ctx.writer(schema, table) as writer, ctx.track(description, total, "rows") as bar, \
            ThreadPoolExecutor(max_workers=threads) as pool:
        def finish_one() -> None:
            n_in, future = pending.popleft()
            out, extra = future.result()
            if out is not None and out.num_rows:
                writer.write(out)
            if on_result is not None:
                on_result(extra)
            bar.advance(n_in)

        for batch in reader:
            pending.append((batch.num_rows, pool.submit(fn, batch)))
            while len(pending) > threads:
                finish_one()
        while pending:
            finish_one()
    return ctx.rows_written(table)
