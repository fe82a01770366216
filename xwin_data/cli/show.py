"""`xwin-data show`: the catalog at a glance (tables, the kept/dropped funnel per stage, recent builds), or one
table in depth (versions, lineage, stats an op recorded, validation, sample rows)."""
from __future__ import annotations

import json

from rich.table import Table

from xwin_data.core.catalog import Catalog
from xwin_data.core.connection import connect
from xwin_data.core.progress import console


def funnel_rows(catalog: Catalog) -> list[dict]:
    """One row per current table that a stage made: its unit, rows in, rows out, dropped in that unit, and the
    drops by reason (all units)."""
    out = []
    for tv in catalog.current_tables():
        stats = tv.stats or {}
        reasons = stats.get("drops_by_reason") or {}
        out.append({"stage": tv.stage, "table": tv.name, "recipe": tv.recipe, "rows_in": stats.get("rows_in"),
                    "rows_out": tv.rows, "dropped": stats.get("dropped", sum(reasons.values())),
                    "unit": stats.get("unit", "rows"), "reasons": reasons,
                    "version": tv.version, "created_at": tv.created_at})
    return out


def _names(table: Table, *columns: str) -> None:
    """Columns of names: never abbreviated (the other columns wrap instead)."""
    for col in columns:
        table.add_column(col, no_wrap=True, overflow="ignore")


def show_catalog(catalog: Catalog) -> None:
    """One table per recipe (names in full, counts), the drop reasons below it, then the recent builds: readable
    at 80 columns."""
    rows = funnel_rows(catalog)
    console.print(f"[bold]catalog {catalog.root}[/]")
    by_recipe: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: str(r["created_at"])):
        by_recipe.setdefault(r["recipe"] or "(made by commands)", []).append(r)
    for recipe, group in by_recipe.items():
        table = Table(title=f"{recipe}, built {str(group[-1]['created_at'])[:16]}", title_justify="left")
        _names(table, "table")
        for col in ("v", "unit", "rows in", "rows out", "dropped"):
            table.add_column(col, justify="right", no_wrap=True)
        for r in group:
            rows_in = f"{r['rows_in']:,}" if r["rows_in"] is not None else ""
            table.add_row(r["table"], str(r["version"]), r["unit"], rows_in, f"{r['rows_out']:,}",
                          f"{r['dropped']:,}" if r["dropped"] else "")
        console.print(table)
        for r in group:
            if r["reasons"]:
                console.print(f"  dropped in {r['table']}: " + ", ".join(f"{k} {v:,}" for k, v in r["reasons"].items()),
                              highlight=False)
    builds = Table(title="recent builds", title_justify="left")
    _names(builds, "build", "recipe")
    for col in ("status", "started", "stages"):
        builds.add_column(col)
    for b in catalog.builds(5):
        ran, skipped = json.loads(b["stages_run"] or "[]"), json.loads(b["stages_skipped"] or "[]")
        builds.add_row(b["build_id"], b["recipe"] or "", b["status"], str(b["started_at"])[:16],
                       f"{len(ran)} ran, {len(skipped)} skipped")
    console.print(builds)
    console.print("one table in depth: xwin-data show TABLE", highlight=False)


def show_table(catalog: Catalog, name: str, sample_rows: int = 3) -> None:
    versions = catalog.versions(name)
    if not versions:
        known = ", ".join(t.name for t in catalog.current_tables())
        raise KeyError(f"no table {name!r} in catalog {catalog.root} (tables: {known or 'none'})")
    cur = next((v for v in versions if v.is_current), versions[-1])
    console.print(f"[bold]{name}[/] v{cur.version}: {cur.rows:,} rows, built by recipe {cur.recipe} stage "
                  f"{cur.stage} (op {cur.op}) at {str(cur.created_at)[:19]}, fingerprint {cur.fingerprint[:12]}")
    if cur.inputs:
        console.print("inputs: " + ", ".join(f"{i['name']} ({i['fingerprint'][:12]})" for i in cur.inputs))
    stats = dict(cur.stats or {})
    reasons = stats.pop("drops_by_reason", {}) or {}
    stats.pop("overrides", None)
    rows_in = stats.pop("rows_in", None)
    if rows_in is not None:
        console.print(f"funnel: {rows_in:,} in → {cur.rows:,} out" +
                      (", dropped: " + ", ".join(f"{k} {v:,}" for k, v in reasons.items()) if reasons else ""))
    if stats:
        st = Table(title="stats")
        st.add_column("stat")
        st.add_column("value")
        for k, v in stats.items():
            st.add_row(k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))
        console.print(st)
    if len(versions) > 1:
        console.print("versions: " + ", ".join(f"v{v.version}{'*' if v.is_current else ''} ({v.rows:,} rows, "
                                                f"{str(v.created_at)[:19]})" for v in versions))
    con = connect(catalog, canned_views=False)
    try:
        val = con.execute("SELECT success, created_at FROM validations WHERE table_name = ? AND version = ?",
                          [name, cur.version]).fetchall()
        if val:
            console.print(f"validation ({cur.schema_name}): {'passed' if val[0][0] else 'FAILED'}")
        cols = con.execute(f'DESCRIBE "{name}"').fetchall()
        console.print("columns: " + ", ".join(f"{c[0]} {c[1]}" for c in cols))
        if sample_rows:
            cur_ = con.execute(f'SELECT * FROM "{name}" LIMIT {int(sample_rows)}')
            names = [d[0] for d in cur_.description]
            for row in cur_.fetchall():
                text = json.dumps(dict(zip(names, row)), default=str, ensure_ascii=False)
                console.print(text if len(text) < 600 else text[:600] + "…", markup=False)
    finally:
        con.close()
