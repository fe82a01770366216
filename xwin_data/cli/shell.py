"""An interactive SQL shell over the catalog: line editing, history kept in the catalog folder across sessions,
dot commands (.tables, .views, .format, .help), and results as a table, CSV or JSON."""
from __future__ import annotations

import duckdb

from xwin_data.core.catalog import Catalog
from xwin_data.core.progress import console

FORMATS = ("table", "csv", "json")
HELP = """\
.tables               tables of the catalog (name, version, rows)
.views                canned views (funnel, drops_by_reason, cost_by_stage, pair_stats, set_spread, ...)
.format table|csv|json  how results print
.help                 this text
.quit                 leave (also Ctrl-D)
End SQL statements with ';'. History is kept in <catalog>/.sql_history."""


def _names(con: duckdb.DuckDBPyConnection, kind: str) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_type = ? ORDER BY 1", [kind]).fetchall()]


def dot_command(con: duckdb.DuckDBPyConnection, catalog: Catalog, line: str, state: dict) -> bool:
    """Run a dot command; False means leave the shell."""
    from xwin_data.cli.tables import print_rows
    from xwin_data.core.connection import create_canned_views

    cmd, _, arg = line.strip().partition(" ")
    if cmd in (".quit", ".exit", "\\q"):
        return False
    if cmd == ".tables":
        cur = con.execute("SELECT name, version, rows, n_drops, recipe, stage FROM tables ORDER BY name")
        print_rows([d[0] for d in cur.description], cur.fetchall(), state["format"])
    elif cmd == ".views":
        canned = set(create_canned_views(con))
        rows = [(v, "canned" if v in canned else "catalog") for v in _names(con, "VIEW")]
        print_rows(["view", "kind"], rows, state["format"])
    elif cmd == ".format":
        if arg.strip() not in FORMATS:
            console.print(f"[red].format takes one of {', '.join(FORMATS)}[/]")
        else:
            state["format"] = arg.strip()
    elif cmd == ".help":
        console.print(HELP, markup=False)
    else:
        console.print(f"[red]unknown command {cmd}[/] (.help lists them)")
    return True


def interactive_shell(con: duckdb.DuckDBPyConnection, catalog: Catalog, fmt: str = "table",
                      read_only: bool = False) -> None:
    from xwin_data.core.sql_guard import SqlRefused, check_read_only

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
        readline.set_history_length(5000)
    from xwin_data.cli.tables import print_rows

    state = {"format": fmt}
    names = _names(con, "VIEW") + _names(con, "BASE TABLE")
    console.print(f"xwin-data sql on {catalog.root} — {len(names)} tables and views (.tables, .views, .help)")
    buffer: list[str] = []
    while True:
        try:
            line = input("xwin> " if not buffer else "  ... ")
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if not buffer and line.strip().startswith((".", "\\q")):
            if readline is not None:
                readline.add_history(line.strip())
            if not dot_command(con, catalog, line, state):
                break
            continue
        buffer.append(line)
        text = "\n".join(buffer).strip()
        if not text.endswith(";"):
            continue
        buffer.clear()
        if readline is not None:
            # one history entry per statement (also when input is piped and readline is not in the loop)
            readline.add_history(" ".join(text.split()))
        try:
            cur = con.execute(check_read_only(text) if read_only else text)
            if cur.description:
                print_rows([d[0] for d in cur.description], cur.fetchall(), state["format"])
        except SqlRefused as err:
            console.print(f"refused: {err}", style="red", markup=False)
        except duckdb.Error as err:
            console.print(str(err).strip(), style="red", markup=False)
    if readline is not None:
        try:
            readline.write_history_file(str(history))
        except OSError:
            pass
