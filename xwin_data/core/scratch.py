"""A cursor on one in-memory DuckDB database per process, for short queries that need no settings of their own (a
file's columns, a row count): opening a DuckDB database costs ~15 ms of CPU, a cursor on an open one next to
nothing, and a build asks such questions of every table it writes."""
from __future__ import annotations

import os
import threading

import duckdb

_lock = threading.Lock()
_database: tuple[int, duckdb.DuckDBPyConnection] | None = None


def scratch() -> duckdb.DuckDBPyConnection:
    """A fresh cursor (close it when done); the database is opened again in a forked child, never shared with it."""
    global _database
    with _lock:
        if _database is None or _database[0] != os.getpid():
            _database = (os.getpid(), duckdb.connect(":memory:"))
        return _database[1].cursor()
