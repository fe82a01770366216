"""Dataset card (OUT/README.md) for an exported table: what it is, how it was made, what it cost, its licence.

The card is built from the catalog alone: the table's lineage (every ancestor version by fingerprint), the
funnel of each stage (rows in, rows out, drops by reason), the recipe and its parameters, the judge/model cost
recorded in stage stats, and the licence fields the recipe declares (``vars.license``, ``vars.license_details``,
``vars.sources``). A missing licence is written as ``other`` with a visible note rather than guessed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xwin_data.core.catalog import Catalog
from xwin_data.core.connection import connect
from xwin_data.exports.base import exporter
from xwin_data.exports.kinds import table_columns, table_kind


def _load(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def lineage(catalog: Catalog, table: str) -> list[dict]:
    """The table's version and every ancestor version, upstream first (matched by fingerprint)."""
    con = connect(catalog, canned_views=False)
    try:
        cur = con.execute("SELECT * FROM table_versions")
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()
    by_fp = {r["fingerprint"]: r for r in rows}
    current = next((r for r in rows if r["name"] == table and r["is_current"]), None)
    if current is None:
        raise KeyError(f"no table {table!r} in catalog {catalog.root}")
    seen: dict[str, dict] = {}

    def visit(r: dict) -> None:
        for inp in _load(r["inputs"]) or []:
            parent = by_fp.get(inp.get("fingerprint"))
            if parent is not None and parent["fingerprint"] not in seen:
                visit(parent)
        seen.setdefault(r["fingerprint"], r)

    visit(current)
    out = []
    for r in seen.values():
        stats = _load(r["stats"]) or {}
        out.append({"table": r["name"], "version": r["version"], "fingerprint": r["fingerprint"],
                    "recipe": r["recipe"], "recipe_path": r["recipe_path"], "stage": r["stage"], "op": r["op"],
                    "params": _load(r["params"]) or {}, "rows_in": stats.get("rows_in"), "rows_out": r["rows"],
                    "drops": stats.get("drops_by_reason") or {}, "stats": stats,
                    "library_versions": _load(r["library_versions"]) or {}, "created_at": r["created_at"],
                    "inputs": [i.get("name") for i in (_load(r["inputs"]) or [])]})
    return out


def cost_of(stats: dict) -> dict[str, float]:
    """Numeric cost and token fields a stage recorded (``cost_usd``, ``cost``, ``*_tokens``, nested ``cost``)."""
    found: dict[str, float] = {}
    for key, value in (stats or {}).items():
        if isinstance(value, dict) and "cost" in key.lower():
            for k, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    found[f"{key}.{k}"] = float(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and (
                "cost" in key.lower() or "tokens" in key.lower() or key.lower() in ("calls", "requests")):
            found[key] = float(value)
    return found


def _is_dollars(key: str) -> bool:
    """Cost fields in dollars: ``cost``, ``cost_usd``, ``judge_cost_usd``, ``cost.usd``, ``cost.total_usd``."""
    k = key.lower()
    return k == "cost" or k.endswith("cost_usd") or k.endswith(".usd") or k.endswith(".total_usd")


def _recipe_vars(path: str | None) -> dict:
    if not path or not Path(path).exists():
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return data.get("vars") or {} if isinstance(data, dict) else {}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def render_card(catalog: Catalog, table: str) -> str:
    chain = lineage(catalog, table)
    me = chain[-1]
    kind = table_kind(table_columns(catalog, table))
    rvars: dict = {}
    for step in chain:  # licence fields may be declared by any recipe upstream; the nearest wins
        rvars.update({k: v for k, v in _recipe_vars(step["recipe_path"]).items()
                      if k in ("license", "license_details", "sources")})
    license_id = rvars.get("license") or me["stats"].get("license") or "other"
    task = {"pairs": "text-classification", "responses": "text-generation"}.get(kind, "text-generation")
    lines = [
        "---",
        f"license: {license_id}",
        f"pretty_name: {table}",
        f"task_categories:\n- {task}",
        f"size_categories:\n- {_size_category(me['rows_out'] or 0)}",
        "tags:\n- xwin-data\n- alignment\n- " + {"pairs": "preference", "responses": "best-of-n"}.get(kind, "sft"),
        "---",
        "",
        f"# {table}",
        "",
        f"A {kind} table built by xwin-data recipe `{me['recipe']}` (stage `{me['stage']}`, op `{me['op']}`), "
        f"version {me['version']}, fingerprint `{me['fingerprint'][:16]}`: {me['rows_out']:,} rows.",
        "",
        "## Licence",
        "",
        f"- licence: `{license_id}`" + ("" if rvars.get("license") else
                                         " (not declared: set `vars.license` in the recipe; check every source)"),
    ]
    if rvars.get("license_details"):
        lines.append(f"- details: {rvars['license_details']}")
    for src in rvars.get("sources") or []:
        lines.append(f"- source: {src}")
    lines += ["", "## Funnel", "", "Rows in, out and dropped are counted in each table's unit; the reasons list every "
              "drop, whatever its unit.", "",
              "| stage | table | op | unit | rows in | rows out | dropped | drop reasons |",
              "|---|---|---|---|---:|---:|---:|---|"]
    for s in chain:
        dropped = s["stats"].get("dropped", sum(s["drops"].values()))
        reasons = ", ".join(f"{k}: {v:,}" for k, v in s["drops"].items())
        rows_in = "" if s["rows_in"] is None else f"{s['rows_in']:,}"
        lines.append(f"| {s['stage']} | {s['table']} | {s['op']} | {s['stats'].get('unit', 'rows')} | {rows_in} | "
                     f"{s['rows_out']:,} | {dropped:,} | {reasons} |")
    lines += ["", "## Lineage", ""]
    for s in chain:
        src = f" ← {', '.join(s['inputs'])}" if s["inputs"] else ""
        lines.append(f"- `{s['table']}` v{s['version']} (`{s['fingerprint'][:12]}`), recipe `{s['recipe']}` "
                     f"stage `{s['stage']}`{src}, built {str(s['created_at'])[:19]}")
    lines += ["", "## Recipe", "", f"Recipe file: `{me['recipe_path']}`. Stage parameters:", "", "```json",
              json.dumps({s["stage"]: s["params"] for s in chain}, indent=1, default=str), "```", ""]
    costs = {s["stage"]: cost_of(s["stats"]) for s in chain}
    costs = {k: v for k, v in costs.items() if v}
    lines += ["## Cost", ""]
    if costs:
        lines += ["| stage | field | value |", "|---|---|---:|"]
        total = 0.0
        for stage, fields in costs.items():
            for k, v in fields.items():
                lines.append(f"| {stage} | {k} | {v:,.4f} |" if "cost" in k else f"| {stage} | {k} | {v:,.0f} |")
                if _is_dollars(k):
                    total += v
        lines += ["", f"Total recorded model cost: ${total:,.4f}."]
    else:
        lines.append("No stage in the lineage recorded model calls or cost.")
    lines += ["", "## Load it", "", "```python", "import datasets",
              "ds = datasets.load_from_disk(\"OUT\")            # after --format hf",
              "ds = datasets.load_dataset(\"json\", data_files=\"OUT/" + table + ".jsonl\", split=\"train\")"
              "  # trl / openrlhf / llama-factory",
              "```", "", "## Library versions", "", "```json",
              json.dumps(me["library_versions"], indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


@exporter("__card__", "dataset card (README.md) with funnel, lineage, recipe, licence and cost")
def write_card(catalog: Catalog, table: str, out: Path) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "README.md"
    path.write_text(render_card(catalog, table), encoding="utf-8")
    return {"rows": 0, "path": str(path)}
