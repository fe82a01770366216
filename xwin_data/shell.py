"""An interactive SQL shell over the catalog: line editing and history kept in the catalog folder."""
from __future__ import annotations

import duckdb

from .catalog import Catalog
from .progress import console


def interactive_shell(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
    try:
        import readline
    except ImportError:  # pragma: no cover - platforms without readline
        readline = None  # type: ignore[assignment]
    history = catalog.root / ".sql_history"
    if readline is not None:
        try:
            readline.read_history_file(str(history))
        except OSError:
            pass
    from .cli import print_rows

    names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
    console.print(f"xwin-data sql on {catalog.root} — tables and views: {', '.join(names)}")
    console.print("End statements with ';'. Type .quit to leave.")
    buffer: list[str] = []
    while True:
        try:
            line = input("xwin> " if not buffer else "  ... ")
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if not buffer and line.strip() in (".quit", ".exit", "\\q"):
            break
        buffer.append(line)
        text = "\n".join(buffer).strip()
        if not text.endswith(";"):
            continue
        buffer.clear()
        try:
            cur = con.execute(text)
            if cur.description:
                print_rows([d[0] for d in cur.description], cur.fetchall(), "table")
        except duckdb.Error as err:
            console.print(f"[red]{str(err).strip()}[/]")
    if readline is not None:
        try:
            readline.write_history_file(str(history))
        except OSError:
            pass
