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


def read_and_write_part(fn: BatchFn, schema: pa.Schema, path: str, source: str, row_group: int,
                        batch_size: int) -> tuple[int, list]:
    """One row group of a Parquet file through `fn` (in batches of at most `batch_size` rows), written to `path`;
    the row count and the extras, one per batch."""
    import pyarrow.parquet as pq

    group = pq.ParquetFile(source).read_row_group(row_group, use_threads=False)
    outs, extras = [], []
    for batch in group.to_batches(max_chunksize=batch_size):
        out, extra = fn(batch)
        extras.append(extra)
        if out is not None and out.num_rows:
            outs.append(out if out.schema == schema else out.select(schema.names).cast(schema))
    if outs:
        pq.write_table(pa.concat_tables(outs), path, compression="zstd")
    return sum(o.num_rows for o in outs), extras


def map_batches_parallel(ctx, sql: str, fn: BatchFn, schema: pa.Schema, on_result: Callable[[Any], None] | None = None,
                         *, table: str | None = None, batch_size: int = 20_000, description: str = "",
                         threads: int | None = None, processes: bool = False) -> int:
    """`fn(batch) -> (table, extra)` over the batches of a query; tables are written in order, `on_result(extra)`
    runs in the calling thread."""
    total = ctx.con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
    reader = lambda: ctx.con.cursor().sql(sql).to_arrow_reader(batch_size)  # noqa: E731 - streams, opened after forking
    tasks = ((batch.num_rows, write_part, (batch,)) for batch in _lazy(reader))
    return _run(ctx, tasks, total, fn, schema, on_result, table, batch_size, description, threads, processes)


def map_input_parallel(ctx, fn: BatchFn, schema: pa.Schema, on_result: Callable[[Any], None] | None = None, *,
                       index: int = 0, table: str | None = None, batch_size: int = 20_000, description: str = "",
                       threads: int | None = None, processes: bool = False) -> int:
    """`map_batches_parallel` over all rows of an input table in file order, each row group read from the input's
    Parquet files by the worker that computes it (nothing is scanned here and handed over)."""
    import glob

    import pyarrow.parquet as pq

    groups = []
    for source in sorted(glob.glob(ctx.inputs[index].glob)):
        meta = pq.ParquetFile(source).metadata
        groups += [(source, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    tasks = ((n, read_and_write_part, (source, i, batch_size)) for source, i, n in groups)
    each = (lambda extras: [on_result(e) for e in extras]) if on_result is not None else None
    return _run(ctx, tasks, sum(g[2] for g in groups), fn, schema, each, table, batch_size, description, threads,
                processes)


def _lazy(open_reader: Callable[[], Any]):
    yield from open_reader()


def _run(ctx, tasks, total: int, fn: BatchFn, schema: pa.Schema, on_result, table, batch_size, description, threads,
         processes) -> int:
    """Submit `(rows in, work, args)` tasks in order, `work(fn, schema, part path, *args)` writing the next part."""
    pending: deque = deque()
    written = 0
    with _executor(total, batch_size, processes, threads or ctx.threads or default_threads()) as (executor, in_flight), \
            ctx.track(description, total, "rows") as bar:
        paths = ctx.part_paths(table)

        def finish_one() -> None:
            nonlocal written
            n_in, future = pending.popleft()
            rows, extra = future.result()
            ctx.add_rows(rows, table)
            written += rows
            if on_result is not None:
                on_result(extra)
            bar.advance(n_in)

        for n_in, work, args in tasks:
            path = str(next(paths))
            pending.append((n_in, executor.submit(work, fn, schema, path, *args)))
            while len(pending) >= in_flight:
                finish_one()
        while pending:
            finish_one()
    if not written:  # the output still gets a (empty) file with its schema
        with ctx.writer(schema, table):
            pass
    return ctx.rows_written(table)
