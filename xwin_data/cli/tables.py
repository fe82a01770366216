"""Commands that read what a catalog holds: `show`, `sql`, `validate` and `export` (the app registers them)."""
from __future__ import annotations

import csv
import importlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from xwin_data.cli.common import CatalogOpt, fail
from xwin_data.core.progress import console


def show(
    table: Optional[str] = typer.Argument(None, help="A table to describe; omit for the whole catalog."),
    catalog: Path = CatalogOpt,
    rows: int = typer.Option(3, help="Sample rows to print for a table."),
) -> None:
    """Tables, versions, rows and the kept/dropped funnel per stage; or one table's lineage, stats and sample."""
    from xwin_data.cli.show import show_catalog, show_table

    from xwin_data.core.catalog import Catalog

    cat = Catalog(catalog)
    if not cat.exists():
        fail(f"no catalog at {cat.root}; build the main job first: xwin-data build recipes/xwin_set.yaml")
    if table:
        try:
            show_table(cat, table, rows)
        except KeyError as err:
            fail(str(err.args[0]))
    else:
        show_catalog(cat)


def sql(
    query: Optional[str] = typer.Argument(None, help="SQL to run; omit for an interactive shell."),
    catalog: Path = CatalogOpt,
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    write: bool = typer.Option(False, "--write", help="Allow writes: attach the catalog's DuckDB file as "
                               "catalog_db and lift the file-access limits. Without it only the current tables' "
                               "parts can be read, one statement at a time, and nothing is written."),
    limit: int = typer.Option(1000, help="Rows shown in table format."),
) -> None:
    """Query the catalog with DuckDB SQL; every current table is a view. Read-only unless --write."""
    import duckdb

    from xwin_data.core.catalog import Catalog
    from xwin_data.core.connection import connect

    cat = Catalog(catalog)
    if not cat.exists():
        fail(f"no catalog at {cat.root}; build the main job first: xwin-data build recipes/xwin_set.yaml")
    if fmt not in ("table", "csv", "json"):
        fail(f"--format must be table, csv or json, not {fmt!r}")
    from xwin_data.core.sql_guard import SqlRefused, check_read_only

    con = connect(cat, read_only=not write)
    if write:
        con.execute(f"ATTACH '{cat.meta_path}' AS catalog_db")
    if query is None:
        from xwin_data.cli.shell import interactive_shell

        interactive_shell(con, cat, fmt, read_only=not write)
        return
    try:
        cur = con.execute(query if write else check_read_only(query))
    except SqlRefused as err:
        fail(f"refused: {err}")
    except duckdb.Error as err:
        fail(str(err).strip())
    if cur.description is None:
        return
    cols = [d[0] for d in cur.description]
    data = cur.fetchall()
    print_rows(cols, data, fmt, limit)


def print_rows(cols: list[str], data: list[tuple], fmt: str, limit: int = 1000) -> None:
    if fmt == "json":
        print(json.dumps([dict(zip(cols, r)) for r in data], default=str, ensure_ascii=False, indent=1))
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(data)
    else:
        table = Table(show_lines=False)
        for c in cols:
            table.add_column(c, overflow="fold")
        for r in data[:limit]:
            table.add_row(*[_cell(v) for v in r])
        console.print(table)
        if len(data) > limit:
            console.print(f"({len(data):,} rows, {limit:,} shown)")


def _cell(v) -> str:
    text = json.dumps(v, default=str, ensure_ascii=False) if isinstance(v, (list, dict)) else str(v)
    return text if len(text) < 400 else text[:400] + "…"


def validate(
    table: Optional[str] = typer.Argument(None, help="Current table to check (omit with --files for all)."),
    schema: Optional[str] = typer.Option(None, help="Schema name (default: the one it was built with)."),
    files: bool = typer.Option(False, "--files", help="Check the Parquet parts of every current table (or of "
                               "TABLE) against the sizes and checksums recorded at publish."),
    catalog: Path = CatalogOpt,
) -> None:
    """Re-run a table's great-expectations suite and print each expectation's result; with --files, check
    that the tables' files are those that were published."""
    from xwin_data.core.catalog import Catalog
    from xwin_data.core.validate import validate_parquet

    cat = Catalog(catalog)
    if files:
        check_files(cat, table)
        return
    if table is None:
        fail("name a table, or pass --files to check the files of every table")
    tv = cat.current(table)
    if tv is None:
        fail(f"no table {table!r} in catalog {cat.root}")
    name = schema or tv.schema_name
    if not name:
        fail(f"table {table!r} has no schema; pass --schema NAME")
    res = validate_parquet(cat.data_glob(tv), name, table)
    for c in res.checks:
        mark = "[green]✓[/]" if c["success"] else "[red]✗[/]"
        console.print(f"{mark} {c['expectation']} {c.get('column') or ''} {c.get('message', '')}")
        for ex in c.get("examples", [])[:3]:
            console.print(f"    e.g. {ex}")
    if not res.success:
        raise typer.Exit(1)


def check_files(cat, table: str | None) -> None:
    if not cat.exists():
        fail(f"no catalog at {cat.root}")
    tables = cat.current_tables()
    if table is not None:
        tables = [tv for tv in tables if tv.name == table]
        if not tables:
            fail(f"no table {table!r} in catalog {cat.root}")
    bad = 0
    for tv in tables:
        problems = cat.check_files(tv, verify=True)
        n = len(cat.part_records(tv))
        if problems:
            bad += 1
            console.print(f"[red]✗[/] {tv.name} v{tv.version}: " + escape("; ".join(problems)))
        else:
            console.print(f"[green]✓[/] {tv.name} v{tv.version}: "
                          + (f"{n} parts match their sizes and checksums" if n else "no parts recorded (published "
                             "before parts were recorded); folder present"))
    console.print(f"{len(tables) - bad} of {len(tables)} tables sound" + (f", {bad} damaged: rebuild them with "
                  "`xwin-data build RECIPE` (a damaged output is rebuilt)" if bad else ""))
    if bad:
        raise typer.Exit(1)


def export(
    table: str = typer.Argument(..., help="Table to export."),
    out: Path = typer.Argument(..., help="Output folder."),
    fmt: str = typer.Option("hf", "--format", "-f", help="Export format (listed above)."),
    catalog: Path = CatalogOpt,
    card: bool = typer.Option(False, "--card", help="Also write a dataset card (README.md) where supported."),
) -> None:
    """Export a table to files other tools load (see the formats below)."""
    from xwin_data.core.catalog import Catalog
    from xwin_data.exports.base import EXPORTERS, export_table

    load_exporters()
    cat = Catalog(catalog)
    try:
        result = export_table(cat, table, fmt, out)
    except KeyError as err:
        fail(str(err.args[0]))
    if card:
        writer = EXPORTERS.get("__card__")
        if writer is None:
            fail("dataset cards are not available in this version")
        writer[0](cat, table, Path(out))
    console.print(f"exported {result.get('rows', 0):,} rows of {table} as {fmt} to {result.get('path', out)}")


EXPORT_DOC = "Export a table to files other tools load (see the formats below)."


def describe_exporters() -> None:
    """`export --help` lists every installed format with what it writes (loading the exporters costs ~0.4 s, so
    only commands that export pay it)."""
    from xwin_data.exports.base import EXPORTERS

    load_exporters()
    lines = [f"{name}: {help_}" for name, (_, help_) in sorted(EXPORTERS.items()) if not name.startswith("__")]
    export.__doc__ = (EXPORT_DOC + "\n\nFormats (--format):\n\n" + "\n\n".join(lines) +
                      "\n\n--card also writes README.md: licence, sources, the funnel of every upstream stage, "
                      "lineage, stage parameters and recorded model cost.")


def load_exporters() -> None:
    try:
        importlib.import_module("xwin_data.exports")
    except ModuleNotFoundError as err:
        if err.name != "xwin_data.exports":
            raise
