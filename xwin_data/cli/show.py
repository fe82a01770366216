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


def show_catalog(catalog: Catalog) -> None:
    rows = funnel_rows(catalog)
    table = Table(title=f"catalog {catalog.root}")
    for col in ("table", "version", "recipe", "stage", "unit", "rows in", "rows out", "dropped", "drop reasons",
                "built"):
        table.add_column(col, justify="right" if col in ("version", "rows in", "rows out", "dropped") else "left")
    for r in sorted(rows, key=lambda r: (r["recipe"] or "", str(r["created_at"]))):
        reasons = ", ".join(f"{k} {v:,}" for k, v in r["reasons"].items())
        table.add_row(r["table"], str(r["version"]), r["recipe"] or "", r["stage"] or "", r["unit"],
                      f"{r['rows_in']:,}" if r["rows_in"] is not None else "", f"{r['rows_out']:,}",
                      f"{r['dropped']:,}" if r["dropped"] else "", reasons, str(r["created_at"])[:19])
    console.print(table)
    builds = Table(title="recent builds")
    for col in ("build", "recipe", "status", "started", "finished", "ran", "skipped"):
        builds.add_column(col)
    for b in catalog.builds(5):
        builds.add_row(b["build_id"], b["recipe"] or "", b["status"], str(b["started_at"])[:19],
                       str(b["finished_at"] or "")[:19], ", ".join(json.loads(b["stages_run"] or "[]")),
                       ", ".join(json.loads(b["stages_skipped"] or "[]")))
    console.print(builds)


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
                      (f", dropped: " + ", ".join(f"{k} {v:,}" for k, v in reasons.items()) if reasons else ""))
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
