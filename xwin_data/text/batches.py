"""Run a batch function over a query's Arrow batches in worker processes or threads, keeping the input order.

The batch functions of the conversation ops are mostly Python (cleaning) or many small numpy steps (language id),
which hold the GIL: threads barely overlap them, forked worker processes do (see `xwin_data.workers`). A function
given with `processes=True` must be picklable (a module-level function, or a `functools.partial` of one); inputs of
at most `2 * batch_size` rows stay in this process, where forking would cost more than it saves. Functions that are
Arrow kernels release the GIL and run on threads. Either way each batch's result is written as a Parquet file of its
own by whoever computed it (Parquet encoding releases the GIL too), named in input order, so writing is parallel
and results never travel back. At most `2 * workers` (or `threads + 1`) batches are in flight, which bounds memory.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pyarrow as pa

BatchFn = Callable[[pa.RecordBatch], tuple["pa.Table | None", Any]]


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def write_part(fn: BatchFn, schema: pa.Schema, path: str, batch: pa.RecordBatch) -> tuple[int, Any]:
    """`fn(batch)`, its table written to `path` (nothing when empty); the row count and the extra."""
    import pyarrow.parquet as pq

    out, extra = fn(batch)
    if out is None or not out.num_rows:
        return 0, extra
    if out.schema != schema:
        out = out.select(schema.names).cast(schema)
    pq.write_table(out, path, compression="zstd")
    return out.num_rows, extra


@contextmanager
def _executor(total: int, batch_size: int, processes: bool, threads: int) -> Iterator[tuple[Any, int]]:
    """Forked workers where they pay, else threads; with how many batches may be in flight."""
    from ..workers import available_workers, pool

    workers = available_workers() if processes else 0
    if workers > 1 and total > 2 * batch_size:
        with pool(workers) as executor:
            yield executor, 2 * workers
    else:
        with ThreadPoolExecutor(max_workers=threads) as executor:
            yield executor, threads + 1


def map_batches_parallel(ctx, sql: str, fn: BatchFn, schema: pa.Schema, on_result: Callable[[Any], None] | None = None,
                         *, table: str | None = None, batch_size: int = 20_000, description: str = "",
                         threads: int | None = None, processes: bool = False) -> int:
    """`fn(batch) -> (table, extra)`; tables are written in order, `on_result(extra)` runs in the calling thread."""
    total = ctx.con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
    pending: deque = deque()
    written = 0
    with _executor(total, batch_size, processes, threads or ctx.threads or default_threads()) as (executor, in_flight), \
            ctx.track(description, total, "rows") as bar:
        paths = ctx.part_paths(table)
        reader = ctx.con.cursor().sql(sql).to_arrow_reader(batch_size)  # streams (execute() would materialise)

        def finish_one() -> None:
            nonlocal written
            n_in, future = pending.popleft()
            rows, extra = future.result()
            ctx.add_rows(rows, table)
            written += rows
            if on_result is not None:
                on_result(extra)
            bar.advance(n_in)

        for batch in reader:
            pending.append((batch.num_rows, executor.submit(write_part, fn, schema, str(next(paths)), batch)))
            while len(pending) >= in_flight:
                finish_one()
        while pending:
            finish_one()
    if not written:  # the output still gets a (empty) file with its schema
        with ctx.writer(schema, table):
            pass
    return ctx.rows_written(table)
