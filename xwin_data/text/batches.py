"""Run a batch function over an input table's row groups in worker processes or threads, keeping the input order.

The batch functions of the conversation ops are mostly Python (cleaning) or many small numpy steps (language id),
which hold the GIL: threads barely overlap them, forked worker processes do (see `xwin_data.core.workers`). A function
given with `processes=True` must be picklable (a module-level function, or a `functools.partial` of one); inputs of
at most `2 * batch_size` rows stay in this process, where forking would cost more than it saves. Functions that are
Arrow kernels release the GIL and run on threads. Either way each row group is read, computed and written as a
Parquet file of its own by one worker (Parquet decoding and encoding release the GIL too), the files named in input
order, so nothing is handed over but file names and small results. At most `2 * workers` (or `threads + 1`) row
groups are in flight, which bounds memory.
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


@contextmanager
def _executor(total: int, batch_size: int, processes: bool, threads: int) -> Iterator[tuple[Any, int]]:
    """Forked workers where they pay, else threads; with how many batches may be in flight."""
    from xwin_data.core.workers import available_workers, pool

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


def map_input_parallel(ctx, fn: BatchFn, schema: pa.Schema, on_result: Callable[[Any], None] | None = None, *,
                       index: int = 0, table: str | None = None, batch_size: int = 20_000, description: str = "",
                       threads: int | None = None, processes: bool = False) -> int:
    """`fn(batch) -> (table, extra)` over all rows of an input table: each row group is read from the input's
    Parquet files, computed and written by one worker (nothing is scanned here and handed over); the tables land in
    input order and `on_result(extra)` runs in the calling thread, in input order."""
    import glob

    import pyarrow.parquet as pq

    groups = []
    for source in sorted(glob.glob(ctx.inputs[index].glob)):
        meta = pq.ParquetFile(source).metadata
        groups += [(source, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    total = sum(n for _, _, n in groups)
    pending: deque = deque()
    written = 0
    with _executor(total, batch_size, processes, threads or ctx.threads or default_threads()) as (executor, in_flight), \
            ctx.track(description, total, "rows") as bar:
        def finish_one() -> None:
            nonlocal written
            n_in, future = pending.popleft()
            rows, extras = future.result()
            ctx.add_rows(rows, table)
            written += rows
            for extra in extras if on_result is not None else ():
                on_result(extra)
            bar.advance(n_in)

        for (source, i, n), path in zip(groups, ctx.part_paths(table)):
            pending.append((n, executor.submit(read_and_write_part, fn, schema, str(path), source, i, batch_size)))
            while len(pending) >= in_flight:
                finish_one()
        while pending:
            finish_one()
    if not written:  # the output still gets a (empty) file with its schema
        with ctx.writer(schema, table):
            pass
    return ctx.rows_written(table)
