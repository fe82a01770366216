"""`xwin_data.connect(catalog)`: a DuckDB connection where every current table is a view.

The connection is in memory and holds no lock on the catalog: metadata is copied in at connect time, tables are
views over their immutable Parquet files, so a notebook can stay open while builds run.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import duckdb

from xwin_data.core.catalog import DEFAULT_CATALOG, DROPS_COLUMNS, Catalog

META_TABLES = ("table_versions", "builds", "validations")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _parquet(files: list[str]) -> str:
    return "read_parquet([" + ", ".join(_sql_str(f) for f in files) + "])"


def _failing(message: str, columns: str = "*") -> str:
    """A query that binds now and raises `message` when run, so one broken table leaves the others usable."""
    return f"SELECT {columns} FROM range(1) WHERE error({_sql_str(message)})"


def _empty(columns: dict | None) -> str:
    cols = ", ".join(f"NULL::{t} AS {_quote(c)}" for c, t in (columns or {}).items()) or "NULL AS empty"
    return f"SELECT {cols} WHERE false"


def attach_tables(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> list[str]:
    """Create a view per current table over the parts recorded at publish, plus `drops` (the drops of every
    current table). A table whose files are missing or damaged gets a view that fails, naming the file, only
    when it is queried."""
    names = []
    drops_parts = []
    columns = {r["name"]: json.loads(r["columns"]) if isinstance(r["columns"], str) else r["columns"]
               for r in catalog._rows("SELECT name, columns FROM table_versions WHERE is_current")}
    drop_cols = ", ".join(f"NULL::{t} AS {c}" for c, t in (col.split(" ") for col in DROPS_COLUMNS.split(", ")))
    parts = catalog.current_part_records()
    for tv in catalog.current_tables():
        records = parts.get(tv.name, [])
        problems = catalog.check_files(tv, records=records)
        files = catalog.data_files(tv, records)
        if problems:
            body = _failing(f"table {tv.name} (version {tv.version}) is damaged: {problems[0]}")
        elif not files:
            body = _empty(columns.get(tv.name))
        else:
            body = f"SELECT * FROM {_parquet(files)}"
        try:
            con.execute(f"CREATE OR REPLACE VIEW {_quote(tv.name)} AS {body}")
        except duckdb.Error as err:
            msg = str(err).strip().splitlines()[0]
            con.execute(f"CREATE OR REPLACE VIEW {_quote(tv.name)} AS "
                        + _failing(f"table {tv.name} (version {tv.version}) cannot be read: {msg}"))
        names.append(tv.name)
        drops = catalog.drops_files(tv, records) if tv.n_drops else []
        if drops:
            part = f"SELECT * FROM {_parquet(drops)}"
            try:
                con.execute(f"DESCRIBE {part}")
            except duckdb.Error as err:
                msg = str(err).strip().splitlines()[0]
                part = _failing(f"drops of table {tv.name} (version {tv.version}) cannot be read: {msg}", drop_cols)
            if problems and any("/drops/" in p for p in problems):
                part = _failing(f"drops of table {tv.name} (version {tv.version}) are damaged: {problems[0]}",
                                drop_cols)
            drops_parts.append(part)
    # The empty part first fixes every column (drops written before a column existed read as NULL there).
    empty = f"SELECT {drop_cols} WHERE false"
    con.execute("CREATE OR REPLACE VIEW drops AS " + " UNION ALL BY NAME ".join([empty] + drops_parts))
    return names


def readable_files(catalog: Catalog) -> list[str]:
    """Every Parquet part of the current tables: all that a read-only session may open."""
    files = []
    parts = catalog.current_part_records()
    for tv in catalog.current_tables():
        records = parts.get(tv.name, [])
        files += catalog.data_files(tv, records) + catalog.drops_files(tv, records)
    return files


def confine_read_only(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
    """Lock a catalog connection down for read-only use: external access off, only the published parts of the
    current tables readable, settings locked (so `SET` cannot undo it)."""
    from xwin_data.core.sql_guard import confine

    confine(con, files=readable_files(catalog) or [str(catalog.tables_dir / ".none")])


def _copy_meta(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
    if not catalog.exists():
        catalog.init()
    with catalog.meta() as meta:
        for table in META_TABLES:
            frame = meta.sql(f"SELECT * FROM {table}").to_arrow_table()
            con.register(f"__meta_{table}", frame)
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM __meta_{table}")
            con.unregister(f"__meta_{table}")
    con.execute(
        "CREATE OR REPLACE VIEW tables AS SELECT name, version, rows, n_drops, fingerprint, recipe, stage, op, "
        "schema_name, created_at FROM table_versions WHERE is_current ORDER BY name"
    )


def create_canned_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Run every `resources/views/*.sql` shipped with the package; a view whose tables are absent is skipped.

    A view may build on another canned view: files that fail are retried while a pass still makes progress."""
    made: list[str] = []
    try:
        folder = resources.files("xwin_data") / "resources" / "views"
        pending = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    except (FileNotFoundError, NotADirectoryError):
        return made
    while pending:
        failed = []
        for f in pending:
            try:
                con.execute(f.read_text(encoding="utf-8"))
                made.append(f.name[:-4])
            except duckdb.Error:
                failed.append(f)
        if len(failed) == len(pending):
            break
        pending = failed
    return made


def connect(catalog: str | Path | Catalog = DEFAULT_CATALOG, *, canned_views: bool = True,
            read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the catalog for SQL: one view per current table, `drops`, and metadata tables. With `read_only`
    the connection can read the current tables' parts and nothing else (see `confine_read_only`).

    >>> con = connect("xwin-catalog")
    >>> con.sql("SELECT n_turns, count(*) FROM sft_sharegpt GROUP BY 1").show()
    """
    cat = catalog if isinstance(catalog, Catalog) else Catalog(catalog)
    con = duckdb.connect(":memory:")
    _copy_meta(con, cat)
    attach_tables(con, cat)
    if canned_views:
        create_canned_views(con)
    if read_only:
        confine_read_only(con, cat)
    return con
