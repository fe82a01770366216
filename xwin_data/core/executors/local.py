"""The default executor: units run in this process, on threads, or in forked worker processes.

Python-heavy batch functions (parsing, cleaning, language id) hold the GIL, so they run in forked workers
(`xwin_data.core.workers`) when there is enough input for forking to pay (more than `fork_above_rows` rows) and
the function is picklable; Arrow kernels release the GIL and run on threads. A model (a `Model`) is loaded once,
here, and runs its units one after another. At most `2 * workers` (or `threads + 1`) units are in flight, which
bounds memory; each worker reads its unit's input and writes its committed parts itself, so only file names and
small records cross process boundaries.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import pyarrow as pa

from xwin_data.core.executors.base import BatchFn, Executor, Model, Resources, Unit, commit_unit


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class LocalExecutor(Executor):
    name = "local"

    def workers(self, resources: Resources, model: bool, n_units: int) -> int:
        from xwin_data.core.workers import available_workers

        return 1 if model else max(1, available_workers())

    def describe(self, resources: Resources, model: bool, ray_data_llm: dict | None = None) -> str:
        return "local: this process (model loaded once)" if model else "local: forked workers / threads"

    @contextmanager
    def _pool(self, total: int, processes: bool, threads: int, fork_above_rows: int) -> Iterator[tuple[Any, int]]:
        from xwin_data.core.workers import available_workers, pool

        workers = available_workers() if processes else 0
        if workers > 1 and total > fork_above_rows:
            with pool(workers) as executor:
                yield executor, 2 * workers
        else:
            with ThreadPoolExecutor(max_workers=threads) as executor:
                yield executor, threads + 1

    def _execute(self, ctx, fn: BatchFn | Model, todo: list[tuple[int, str, Unit]], part_dir: str,
                 schemas: dict[str, pa.Schema], main: str, resources: Resources,
                 options: dict) -> Iterable[tuple[int, dict]]:
        if not todo:
            return
        if isinstance(fn, Model):
            instance = fn.cls(**fn.kwargs)
            try:
                for index, key, unit in todo:
                    yield index, commit_unit(instance, unit.payload, key, part_dir, schemas, main)
            finally:
                close = getattr(instance, "close", None)
                if close is not None:
                    close()
            return
        threads = options.get("threads") or ctx.threads or default_threads()
        total = sum(u.rows for _, _, u in todo)
        with self._pool(total, bool(options.get("processes")), threads,
                        int(options.get("fork_above_rows", 0))) as (executor, in_flight):
            pending: deque = deque()
            for index, key, unit in todo:
                pending.append((index, executor.submit(commit_unit, fn, unit.payload, key, part_dir, schemas, main)))
                while len(pending) >= in_flight:
                    i, future = pending.popleft()
                    yield i, future.result()
            while pending:
                i, future = pending.popleft()
                yield i, future.result()
