"""Forked worker processes for the Python-heavy batch work of a stage (parsing, cleaning, text statistics), and
background warm-ups that overlap with it.

Python code holds the GIL, so threads cannot run two batches of it at once; processes can. Workers are forked
(nothing is re-imported or re-loaded: they start with the parent's modules, models and tables) once per stage and
joined at its end, so their CPU time is counted with the build's. Forking while another thread is importing
modules can leave a child waiting forever on that thread's import lock, so no background thread runs while a pool
forks: a warm-up (e.g. importing the validation library) is queued with `warm_up_after_fork` and started once the
next pool's workers exist, and every fork waits for running warm-ups to finish first.
"""
from __future__ import annotations

import gc
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator

MAX_WORKERS = 8  # each holds a couple of batches in flight; more would mostly add memory
_queued: list[Callable[[], None]] = []
_running: list[threading.Thread] = []
_lock = threading.Lock()


def available_workers() -> int:
    """How many worker processes a stage may use: one per core (at most MAX_WORKERS), none on one core or where
    forking is not the platform's safe default (Linux has it; macOS and Windows spawn)."""
    if not sys.platform.startswith("linux"):
        return 0
    n = len(os.sched_getaffinity(0))
    return min(n, MAX_WORKERS) if n > 1 else 0


def warm_up_after_fork(fn: Callable[[], None]) -> None:
    """Run `fn` in a background thread right after the next pool has forked (errors are ignored: a warm-up only
    does early what its user would otherwise do when needed)."""
    with _lock:
        _queued.append(fn)


def cancel_warm_ups() -> None:
    """Forget queued warm-ups (a build that ends without forking)."""
    with _lock:
        _queued.clear()


def start_warm_ups() -> None:
    """Start the queued warm-ups now: once a pool has forked, or where a stage's work runs in no forked worker
    (on a Ray cluster)."""
    with _lock:
        queued, _queued[:] = list(_queued), []
        for fn in queued:
            thread = threading.Thread(target=_run_quietly, args=(fn,), name="xwin-warm-up", daemon=True)
            thread.start()
            _running.append(thread)


def wait_for_warm_ups() -> None:
    with _lock:
        running = list(_running)
    for thread in running:
        thread.join()
    with _lock:
        _running[:] = [t for t in _running if t.is_alive()]


def _run_quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - the user of the warm-up repeats the work and reports its own errors
        pass


def _load_what_workers_would_each_load() -> None:
    """pyarrow imports pandas (~0.3 CPU-s, ~90 MB) the first time a process builds an array from Python objects;
    done here, before the fork, every worker shares the parent's copy instead of importing its own. (The build
    process imports it anyway in a later stage.)"""
    import pyarrow as pa

    pa.array([0])


@contextmanager
def pool(n: int) -> Iterator[ProcessPoolExecutor]:
    """`n` forked worker processes for the duration of the block; queued warm-ups start once they exist."""
    wait_for_warm_ups()
    _load_what_workers_would_each_load()
    executor = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("fork"))
    # The parent's objects go to the collector's permanent generation while the workers fork, so no worker's
    # collections write to their headers (which would copy every page holding one, in each worker).
    gc.freeze()
    try:
        try:
            executor.submit(os.getpid).result()  # forks every worker now, before any thread of ours starts
        finally:
            gc.unfreeze()
        start_warm_ups()
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
