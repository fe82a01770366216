"""`xwin_data.connect(catalog)`: a DuckDB connection where every current table is a view.

The connection is in memory and holds no lock on the catalog: metadata is copied in at connect time, tables are
views over their immutable Parquet files, so a notebook can stay open while builds run.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import duckdb

from xwin_data.core.catalog import DEFAULT_CATALOG, DROPS_COLUMNS, Catalog

META_TABLES = ("table_versions", "builds", "validations")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def attach_tables(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> list[str]:
    """Create a view per current table, plus `drops` (the drops of every current table)."""
    names = []
    drops_parts = []
    for tv in catalog.current_tables():
        data_glob = catalog.data_glob(tv)
        con.execute(f"CREATE OR REPLACE VIEW {_quote(tv.name)} AS SELECT * FROM read_parquet({_sql_str(data_glob)})")
        names.append(tv.name)
        if tv.n_drops:
            drops_parts.append(f"SELECT * FROM read_parquet({_sql_str(catalog.drops_glob(tv))})")
    empty = "SELECT " + ", ".join(f"NULL::{t} AS {c}" for c, t in
                                  (col.split(" ") for col in DROPS_COLUMNS.split(", "))) + " WHERE false"
    # The empty part first fixes every column (drops written before a column existed read as NULL there).
    con.execute("CREATE OR REPLACE VIEW drops AS " + " UNION ALL BY NAME ".join([empty] + drops_parts))
    return names


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


def connect(catalog: str | Path | Catalog = DEFAULT_CATALOG, *, canned_views: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the catalog for SQL: one view per current table, `drops`, and metadata tables.

    >>> con = connect("xwin-catalog")
    >>> con.sql("SELECT n_turns, count(*) FROM sft_sharegpt GROUP BY 1").show()
    """
    cat = catalog if isinstance(catalog, Catalog) else Catalog(catalog)
    con = duckdb.connect(":memory:")
    _copy_meta(con, cat)
    attach_tables(con, cat)
    if canned_views:
        create_canned_views(con)
    return con
