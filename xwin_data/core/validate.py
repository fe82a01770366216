"""Table contracts: column types checked in DuckDB, per-row invariants computed in DuckDB, and a
great-expectations suite run over the narrow invariant frame in chunks (bounded memory). A failed suite blocks
publishing and reports the failed expectation with example rows.

A build validates in a child process of its own (`validate_source` on a `read_parquet(...)` source): the
validation library and pandas take ~0.2 GB once loaded and cannot be unloaded, so the long-lived build process
never imports them. The child starts while the first stage runs (`warm_up`) and ends with its parent.
"""
from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import duckdb
import yaml

from xwin_data.core.errors import SchemaError

# The contracts ship inside the package (`schemas/` in the project is a link to them), so an installed toolkit
# validates without a checkout; XWIN_DATA_SCHEMAS points elsewhere.
SCHEMAS_DIR = Path(os.environ.get("XWIN_DATA_SCHEMAS", Path(__file__).resolve().parents[1] / "schemas"))
CHUNK_ROWS = 250_000


@dataclass
class TableSchema:
    name: str
    description: str
    columns: dict[str, str]
    key: str | None
    invariants: dict[str, str]
    expectations: list[dict]
    frame_columns: list[str] = field(default_factory=list)


@dataclass
class ValidationResult:
    table: str
    schema: str
    success: bool
    rows: int
    checks: list[dict]

    def failures(self) -> list[dict]:
        return [c for c in self.checks if not c["success"]]

    def report(self) -> str:
        lines = [f"table {self.table} against schema {self.schema}: {'passed' if self.success else 'FAILED'}"]
        for c in self.failures():
            lines.append(f"  ✗ {c['expectation']} {c.get('column') or ''}: {c.get('message', '')}")
            for ex in c.get("examples", [])[:3]:
                lines.append(f"      e.g. {ex}")
        return "\n".join(lines)


@lru_cache(maxsize=None)
def load_schema(name: str) -> TableSchema:
    path = SCHEMAS_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in SCHEMAS_DIR.glob("*.yaml"))
        raise SchemaError(f"no schema {name!r} in {SCHEMAS_DIR} (known: {', '.join(known)})")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return TableSchema(
        name=name, description=data.get("description", ""), columns=data.get("columns", {}),
        key=data.get("key"), invariants=data.get("invariants", {}) or {},
        expectations=data.get("expectations", []) or [], frame_columns=data.get("frame_columns", []) or [],
    )


# Expectations that hold on every subset of the rows of a table they hold on.
_SUBSET_CLOSED = {"expect_column_values_to_be_in_set", "expect_column_values_to_not_be_null",
                  "expect_column_values_to_be_null", "expect_column_values_to_be_unique",
                  "expect_column_values_to_be_between", "expect_column_values_to_match_regex",
                  "expect_column_values_to_not_match_regex", "expect_column_values_to_not_be_in_set",
                  "expect_column_value_lengths_to_be_between"}
_ACROSS_ROWS = re.compile(r"\b(over|select)\b", re.IGNORECASE)  # a window or a subquery: not a per-row check


def holds_for_subsets(schema: TableSchema) -> bool:
    """Whether every check of a contract that a table passes also passes on any subset of its rows (the same rows,
    unchanged): invariants that read one row each, the key's uniqueness, value expectations."""
    return (not any(_ACROSS_ROWS.search(expr) for expr in schema.invariants.values())
            and all(spec["type"] in _SUBSET_CLOSED for spec in schema.expectations))


def list_schemas() -> list[str]:
    return sorted(p.stem for p in SCHEMAS_DIR.glob("*.yaml"))


def _normalise_type(t: str) -> str:
    return " ".join(t.upper().replace('"', "").split())


def check_columns(con: duckdb.DuckDBPyConnection, source: str, schema: TableSchema) -> list[dict]:
    actual = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    checks = []
    for col, typ in schema.columns.items():
        if col not in actual:
            checks.append({"expectation": "column_exists", "column": col, "success": False,
                           "message": f"missing column (table has: {', '.join(actual)})"})
        elif typ != "ANY" and _normalise_type(actual[col]) != _normalise_type(typ):
            checks.append({"expectation": "column_type", "column": col, "success": False,
                           "message": f"type {actual[col]}, expected {typ}"})
        else:
            checks.append({"expectation": "column_type", "column": col, "success": True, "message": typ})
    return checks


def _ge_suite(schema: TableSchema):
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=f"xwin_data.{schema.name}")
    for inv in schema.invariants:
        suite.add_expectation(gx.expectations.ExpectColumnValuesToBeInSet(column=inv, value_set=[True]))
    for spec in schema.expectations:
        kind = spec["type"]
        cls_name = "".join(part.capitalize() for part in kind.split("_"))
        cls = getattr(gx.expectations, cls_name, None)
        if cls is None:
            raise SchemaError(f"schema {schema.name}: unknown expectation {kind!r}")
        suite.add_expectation(cls(**spec.get("kwargs", {})))
    return suite


_ge_lock = threading.Lock()


def warm_up() -> None:
    """Start the validation process ahead of the first validation (it spends ~3 s importing great-expectations),
    e.g. in a background thread while a build's first stage runs (`xwin_data.core.workers.warm_up_after_fork`)."""
    _validator()


class _Validator:
    """A child process running `validate_source` for this one, one request at a time, over a socket pair.

    It is a fresh interpreter (not a fork), so it holds only what validation needs; it exits when this process
    closes its end, and is waited for at exit, so its CPU time counts with this process's children."""

    def __init__(self) -> None:
        import socket
        import subprocess
        from multiprocessing.connection import Connection

        import xwin_data

        ours, theirs = socket.socketpair()
        package_root = str(Path(xwin_data.__file__).resolve().parents[1])  # the same xwin_data as this process
        env = {**os.environ, "GX_ANALYTICS_ENABLED": "False",
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        code = f"from xwin_data.core.validate import serve; serve({theirs.fileno()})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(theirs.fileno(),), env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # results: the socket
        theirs.close()
        self.conn = Connection(ours.detach())
        self.lock = threading.Lock()

    def validate(self, source: str, schema_name: str, table: str) -> ValidationResult:
        with self.lock:
            self.conn.send((source, schema_name, table))
            kind, value = self.conn.recv()
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        with self.lock:
            self.conn.close()
        try:
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - a child that does not exit is killed rather than left behind
            self.proc.kill()
            self.proc.wait()


_validator_lock = threading.Lock()
_validators: list[_Validator] = []
_broken = False


def _validator() -> _Validator | None:
    """This process's validation child, started on first use (None where it cannot run: validation then runs
    here)."""
    global _broken
    with _validator_lock:
        if _broken:
            return None
        if not _validators:
            try:
                _validators.append(_Validator())
            except OSError:
                _broken = True
                return None
            atexit.register(_close_validator)
        return _validators[0]


def _close_validator() -> None:
    with _validator_lock:
        for v in _validators:
            v.close()
        _validators.clear()


def serve(fd: int) -> None:
    """The validation child's loop: (source, schema, table) in, ("ok", result) or ("error", exception) out."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    try:
        _ge_context()  # imported now, while the parent's first stage runs
    except Exception:  # noqa: BLE001 - the first request reports it
        pass
    con = duckdb.connect(":memory:")  # one connection for every request: its threads and their memory stay
    while True:
        try:
            source, schema_name, table = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", _validate_here(con.cursor(), source, schema_name, table))
        except Exception as err:  # noqa: BLE001 - raised again in the parent
            reply = ("error", err)
        try:
            conn.send(reply)
        except Exception:  # noqa: BLE001 - an exception that does not pickle is sent as text
            conn.send(("error", SchemaError(f"validation failed: {type(reply[1]).__name__}: {reply[1]}")))


def _ge_context():
    with _ge_lock:  # a warm-up thread and the first validation must not both build it
        return _new_ge_context()


# Modules great-expectations imports at start-up only for expectations no shipped contract uses (the distribution
# tests' scipy.stats: ~0.7 CPU-s and ~55 MB of a ~2.5 CPU-s import). They load on first use instead.
DEFERRED_MODULES = ("scipy.stats",)


def defer_unused_imports() -> None:
    """Make each of `DEFERRED_MODULES` not yet imported a lazy module: importing it is free, and the module runs
    the first time one of its attributes is read (`importlib.util.LazyLoader`)."""
    for name in DEFERRED_MODULES:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or spec.loader is None:
            continue
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)


@lru_cache(maxsize=1)
def _new_ge_context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    if "great_expectations" not in sys.modules:
        defer_unused_imports()
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    batch_def = ctx.data_sources.add_pandas("xwin").add_dataframe_asset("frame").add_batch_definition_whole_dataframe("all")
    return ctx, batch_def


def validate_source(con: duckdb.DuckDBPyConnection, source: str, schema_name: str, table: str) -> ValidationResult:
    """Validate a relation (`read_parquet(...)` or a view) against a schema: a `read_parquet(...)` source in the
    validation child, unless this process has the validation library loaded already; a view of `con` here."""
    global _broken
    if source.startswith("read_parquet(") and "great_expectations" not in sys.modules:
        validator = _validator()
        if validator is not None:
            try:
                return validator.validate(source, schema_name, table)
            except (EOFError, OSError):  # the child is gone: validate here from now on
                _broken = True
    return _validate_here(con, source, schema_name, table)


def _validate_here(con: duckdb.DuckDBPyConnection, source: str, schema_name: str, table: str) -> ValidationResult:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    schema = load_schema(schema_name)
    checks = check_columns(con, source, schema)
    rows = con.execute(f"SELECT count(*) FROM {source}").fetchone()[0]
    if not all(c["success"] for c in checks):
        return ValidationResult(table, schema_name, False, rows, checks)

    key = schema.key
    # __key carries whether the key is present (NULL where the key is NULL) for the not-null expectation: GE hashes
    # every frame column of every batch, and a boolean hashes far faster than the key strings.
    exprs = [f"CASE WHEN {key} IS NULL THEN NULL ELSE true END AS __key" if key else "NULL AS __key"]
    exprs += [f"coalesce(({expr}), false) AS {name}" for name, expr in schema.invariants.items()]
    exprs += schema.frame_columns
    if key:
        exprs.append(f"count(*) OVER (PARTITION BY {key}) = 1 AS key_unique")
    frame_sql = f"SELECT {', '.join(exprs)} FROM {source}"

    ctx, batch_def = _ge_context()
    suite = _ge_suite(schema)
    if key:
        import great_expectations as gx

        suite.add_expectation(gx.expectations.ExpectColumnValuesToBeInSet(column="key_unique", value_set=[True]))
        suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column="__key"))
    counts: dict[str, dict] = {}
    cur = con.cursor()
    cur.execute(frame_sql)
    while True:
        frame = cur.fetch_df_chunk(max(1, CHUNK_ROWS // 2048))
        if frame is None or len(frame) == 0:
            break
        result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format="SUMMARY")
        for res in result.results:
            cfg = res.expectation_config
            ident = f"{cfg.type}:{cfg.kwargs.get('column', '')}"
            entry = counts.setdefault(ident, {"expectation": cfg.type, "column": cfg.kwargs.get("column"),
                                              "success": True, "unexpected": 0, "examples": []})
            entry["success"] = entry["success"] and bool(res.success)
            entry["unexpected"] += int(res.result.get("unexpected_count") or 0)
    for entry in counts.values():
        col = entry["column"]
        entry["message"] = f"{entry['unexpected']} of {rows} rows unexpected" if not entry["success"] else "ok"
        if not entry["success"] and (col in schema.invariants or col == "key_unique"):
            cond = f"NOT coalesce(({schema.invariants[col]}), false)" if col in schema.invariants \
                else f"{key} IN (SELECT {key} FROM {source} GROUP BY 1 HAVING count(*) > 1)"
            sample = con.execute(f"SELECT * FROM {source} WHERE {cond} LIMIT 3").fetchall()
            entry["examples"] = [_preview(r) for r in sample]
        checks.append(entry)
    return ValidationResult(table, schema_name, all(c["success"] for c in checks), rows, checks)


def _preview(row: Any, limit: int = 300) -> str:
    text = repr(row)
    return text if len(text) <= limit else text[:limit] + "…"


def validate_parquet(glob: str, schema_name: str, table: str) -> ValidationResult:
    con = duckdb.connect(":memory:")
    try:
        return _validate_here(con, f"read_parquet('{glob}')", schema_name, table)  # one-off: no child
    finally:
        con.close()
