"""A durable request-level cache: every model call is stored as it completes, keyed by everything that changes
its output, so a killed build resumes without paying for a finished call twice.

SQLite in WAL mode: one small transaction per call survives a killed process, lookups are fast (an indexed
primary key), and several threads of one process can share it.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from xwin_data.core.fingerprint import stable_hash


def request_key(**parts: Any) -> str:
    """Hash of everything that changes a call's answer (model id, rendered messages, parameters, template version).
    Never pass secrets (API keys) here."""
    return stable_hash(parts, length=40)


class RequestCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=60)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, namespace TEXT, value TEXT, created REAL)")

    def get(self, key: str) -> Any | None:
        with self._lock:
            row = self._con.execute("SELECT value FROM requests WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(keys)
        out: dict[str, Any] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for k, v in self._con.execute(f"SELECT key, value FROM requests WHERE key IN ({marks})", chunk):
                    out[k] = json.loads(v)
        return out

    def put(self, key: str, value: Any, namespace: str = "") -> None:
        """Store one completed call; durable when this returns."""
        text = json.dumps(value, ensure_ascii=False, default=str)
        with self._lock:
            self._con.execute("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)", (key, namespace, text, time.time()))

    def put_many(self, items: Iterable[tuple[str, Any]], namespace: str = "") -> None:
        """Store the results of one call that answered many requests, in one transaction (one commit instead of
        one per row: thousands of samples per engine call); durable when this returns."""
        now = time.time()
        rows = [(k, namespace, json.dumps(v, ensure_ascii=False, default=str), now) for k, v in items]
        with self._lock:
            self._con.execute("BEGIN")
            try:
                self._con.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)", rows)
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._con.execute("SELECT 1 FROM requests WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return self._con.execute("SELECT count(*) FROM requests").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> "RequestCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
