"""The `xwin-data` command: build, plan, show, sql, validate, export; command groups live beside it in `xwin_data/cli/`."""
from __future__ import annotations

import csv
import importlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from xwin_data.core.progress import console

app = typer.Typer(
    name="xwin-data",
    help="Build, validate and explore LLM alignment data the Xwin-LM way, from declarative YAML recipes on "
         "DuckDB/Parquet.\n\n"
         "Start with the main job: xwin-data build recipes/xwin_set.yaml (64 reward-scored responses per prompt, "
         "and the RS / DPO / WIND / best-of-n tables made from them), then xwin-data show. "
         "Next: build recipes/sharegpt_sft.yaml and recipes/xwin_pair.yaml, then xwin-data train sft|rm|rs|dpo|wind.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
DEBUG = {"on": False}


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", envvar="XWIN_DATA_DEBUG",
                               help="Show the full traceback of expected errors (env XWIN_DATA_DEBUG=1)."),
) -> None:
    """Options that apply to every command."""
    DEBUG["on"] = debug


def main(argv: list[str] | None = None) -> None:
    """The console script: run the app and print any expected error (an `XwinError`) as one line."""
    from xwin_data.core.errors import XwinError

    args = list(sys.argv[1:] if argv is None else argv)
    if "export" in args:
        _describe_exporters()
    try:
        app(args=args, prog_name="xwin-data")
    except XwinError as err:
        if DEBUG["on"]:
            raise
        print_error(str(err))
        sys.exit(err.exit_code)


def print_error(message: str) -> None:
    """`error: message` on stderr as one line, whatever the terminal's width (the message is not markup)."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)

CatalogOpt = typer.Option("xwin-catalog", "--catalog", "-c", envvar="XWIN_DATA_CATALOG",
                          help="Catalog folder where tables live (env XWIN_DATA_CATALOG).")
ExecutorOpt = typer.Option(None, "--executor", "-x", help="Where batch and model work runs: local (default) or ray "
                           "(overrides the recipe's `executor:`).")
RayAddressOpt = typer.Option(None, "--ray-address", envvar="XWIN_DATA_RAY_ADDRESS",
                             help="Ray cluster to run on (auto, ray://host:10001, host:6379); without it "
                                  "--executor ray starts a Ray for the build.")
SetOpt = typer.Option(None, "--set", "-s", help="Override a recipe field: key=value (a variable such as "
                      "input=path.jsonl, or stage.params.key=value). Repeatable.")


def _fail(message: str, code: int = 2) -> None:
    print_error(message)
    raise typer.Exit(code)


def fail_on(err: BaseException, code: int = 2) -> None:
    """An expected error caught by a command: one line and exit `code`; with --debug, its traceback."""
    if DEBUG["on"]:
        raise err
    _fail(str(err), code)


def _load(recipe: Path, sets: list[str]):
    from xwin_data.core.recipe import load_recipe
    from xwin_data.core.yaml_lines import RecipeError

    try:
        return load_recipe(recipe, sets)
    except RecipeError as err:
        fail_on(err)


@app.command()
def build(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/sharegpt_sft.yaml"),
    sets: Optional[List[str]] = SetOpt,
    catalog: Path = CatalogOpt,
    wait: float = typer.Option(0.0, help="Seconds to wait if another build holds the catalog (default: fail)."),
    force: Optional[List[str]] = typer.Option(None, "--force", help="Rebuild this stage even if built. Repeatable."),
    force_all: bool = typer.Option(False, "--force-all", help="Rebuild every stage."),
    memory_limit: str = typer.Option("4GB", help="DuckDB memory limit per stage; larger work spills to disk."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    verify: bool = typer.Option(False, "--verify", help="Check the checksums of the catalog parts the build "
                                "relies on (sizes are always checked); damaged outputs are rebuilt."),
    executor: Optional[str] = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt,
) -> None:
    """Build a recipe: run every stage whose fingerprint is not yet in the catalog, validate, publish."""
    from xwin_data.core.catalog import Catalog, CatalogBusy
    from xwin_data.core.engine import BuildError, build as run_build
    from xwin_data.core.yaml_lines import RecipeError

    rec = _load(recipe, sets or [])
    cat = Catalog(catalog)
    try:
        report = run_build(rec, cat, wait=wait, force=True if force_all else (force or []), overrides=sets or [],
                           memory_limit=memory_limit, show_progress=not quiet, verify=verify,
                           executor=executor, ray_address=ray_address)
    except (RecipeError, CatalogBusy) as err:
        fail_on(err)
    except BuildError as err:
        fail_on(err, code=1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] finished stages are kept; run the same command to resume.")
        raise typer.Exit(130)
    _print_report(report)


def _print_report(report) -> None:
    table = Table(title=f"build {report.build_id}: {report.status}")
    table.add_column("stage", no_wrap=True, overflow="ignore")  # names in full; the counts wrap instead
    for col in ("status", "rows in", "rows out", "dropped", "seconds"):
        table.add_column(col, justify="right" if col != "status" else "left")
    for st in report.stages:
        rows_out = ", ".join(f"{n:,}" for n in st.tables.values()) if len(st.tables) == 1 else (
            f"{sum(st.tables.values()):,} in {len(st.tables)} tables" if st.tables else "")
        rows_in = f"{st.rows_in:,}" if st.status == "built" and st.rows_in is not None else ""
        table.add_row(st.stage_id, st.status, rows_in, rows_out,
                      f"{sum(st.drops.values()):,}" if st.drops else "", f"{st.seconds:.1f}" if st.seconds else "")
    console.print(table)
    reasons: dict[str, int] = {}
    for st in report.stages:
        for reason, n in st.drops.items():
            reasons[f"{st.stage_id}: {reason}"] = reasons.get(f"{st.stage_id}: {reason}", 0) + n
    if reasons:
        console.print("dropped by reason: " + "; ".join(f"{k} {v:,}" for k, v in reasons.items()))
    if all(st.status == "skipped" for st in report.stages):
        console.print("[green]nothing to do:[/] every stage is already built with the same fingerprint.")


@app.command()
def plan(
    recipe: Path = typer.Argument(..., help="Recipe YAML"),
    sets: Optional[List[str]] = SetOpt,
    catalog: Path = CatalogOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    executor: Optional[str] = ExecutorOpt,
    ray_address: Optional[str] = RayAddressOpt,
) -> None:
    """Show the stages of a recipe, which are already built (same fingerprint) and which would run, with
    estimates of model calls, tokens and cost where a stage can tell."""
    from xwin_data.core.catalog import Catalog
    from xwin_data.core.errors import BuildError
    from xwin_data.core.plan import choose_executor, describe_plan, plan as make_plan
    from xwin_data.core.yaml_lines import RecipeError

    rec = _load(recipe, sets or [])
    try:
        rows = describe_plan(make_plan(rec, Catalog(catalog)), choose_executor(rec, executor, ray_address))
    except RecipeError as err:
        fail_on(err)
    except BuildError as err:
        fail_on(err, code=1)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    cat = Catalog(catalog)
    table = Table(title=f"plan for {rec.name} ({recipe})")
    table.add_column("stage", no_wrap=True, overflow="ignore")  # names in full; the other columns wrap
    table.add_column("op", no_wrap=True, overflow="ignore")
    for col in ("tables", "status", "why", "runs on", "estimate"):
        table.add_column(col)
    for r in rows:
        style = {"built": "green", "run": "yellow", "restore": "cyan"}[r["status"]]
        est = ", ".join(f"{k}={v}" for k, v in (r["estimate"] or {}).items())
        outputs = r["outputs"]
        tables = "" if outputs == [r["stage"]] else outputs[0] if len(outputs) == 1 else f"{len(outputs)} tables"
        why = r["reason"]
        if r["status"] == "run" and not any(cat.current(t) is not None for t in outputs):
            why = "not built yet"  # rather than "an input changed" for a stage that never ran
        table.add_row(r["stage"], r["op"], tables, f"[{style}]{r['status']}[/]", why, r["runs_on"], est)
    console.print(table)


@app.command()
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
        _fail(f"no catalog at {cat.root}; build the main job first: xwin-data build recipes/xwin_set.yaml")
    if table:
        try:
            show_table(cat, table, rows)
        except KeyError as err:
            _fail(str(err.args[0]))
    else:
        show_catalog(cat)


@app.command()
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
        _fail(f"no catalog at {cat.root}; build the main job first: xwin-data build recipes/xwin_set.yaml")
    if fmt not in ("table", "csv", "json"):
        _fail(f"--format must be table, csv or json, not {fmt!r}")
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
        _fail(f"refused: {err}")
    except duckdb.Error as err:
        _fail(str(err).strip())
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


@app.command()
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
        _check_files(cat, table)
        return
    if table is None:
        _fail("name a table, or pass --files to check the files of every table")
    tv = cat.current(table)
    if tv is None:
        _fail(f"no table {table!r} in catalog {cat.root}")
    name = schema or tv.schema_name
    if not name:
        _fail(f"table {table!r} has no schema; pass --schema NAME")
    res = validate_parquet(cat.data_glob(tv), name, table)
    for c in res.checks:
        mark = "[green]✓[/]" if c["success"] else "[red]✗[/]"
        console.print(f"{mark} {c['expectation']} {c.get('column') or ''} {c.get('message', '')}")
        for ex in c.get("examples", [])[:3]:
            console.print(f"    e.g. {ex}")
    if not res.success:
        raise typer.Exit(1)


def _check_files(cat, table: str | None) -> None:
    if not cat.exists():
        _fail(f"no catalog at {cat.root}")
    tables = cat.current_tables()
    if table is not None:
        tables = [tv for tv in tables if tv.name == table]
        if not tables:
            _fail(f"no table {table!r} in catalog {cat.root}")
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


@app.command()
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

    _load_exporters()
    cat = Catalog(catalog)
    try:
        result = export_table(cat, table, fmt, out)
    except KeyError as err:
        _fail(str(err.args[0]))
    if card:
        writer = EXPORTERS.get("__card__")
        if writer is None:
            _fail("dataset cards are not available in this version")
        writer[0](cat, table, Path(out))
    console.print(f"exported {result.get('rows', 0):,} rows of {table} as {fmt} to {result.get('path', out)}")


EXPORT_DOC = "Export a table to files other tools load (see the formats below)."


def _describe_exporters() -> None:
    """`export --help` lists every installed format with what it writes (loading the exporters costs ~0.4 s, so
    only commands that export pay it)."""
    from xwin_data.exports.base import EXPORTERS

    _load_exporters()
    lines = [f"{name}: {help_}" for name, (_, help_) in sorted(EXPORTERS.items()) if not name.startswith("__")]
    export.__doc__ = (EXPORT_DOC + "\n\nFormats (--format):\n\n" + "\n\n".join(lines) +
                      "\n\n--card also writes README.md: licence, sources, the funnel of every upstream stage, "
                      "lineage, stage parameters and recorded model cost.")


def _load_exporters() -> None:
    try:
        importlib.import_module("xwin_data.exports")
    except ModuleNotFoundError as err:
        if err.name != "xwin_data.exports":
            raise


def describe_columns(cls) -> str:
    """What an op reads and writes, as `xwin-data ops` shows it."""
    needs = ", ".join(sorted(n if isinstance(n, str) else " or ".join(n) for n in cls.needs)) or "any"
    if cls.adds is None:
        out = "not declared"
    else:
        out = ", ".join(sorted(cls.adds))
        if cls.keeps:
            out = "the input's columns" + (f" plus {out}" if out else "")
    return f"needs {needs}; writes {out}"


@app.command()
def ops() -> None:
    """List the ops recipes can use, with their parameters."""
    from xwin_data.ops import all_ops

    for name, cls in all_ops().items():
        console.print(f"[bold]{name}[/] — {cls.summary or (cls.__doc__ or '').strip().splitlines()[0]}")
        console.print(f"    [dim]columns: {describe_columns(cls)}[/]")
        for field_name, f in cls.Params.model_fields.items():
            default = "required" if f.is_required() else f"default {f.default!r}"
            console.print(f"    {field_name}: {f.description or ''} ({default})")


@app.command()
def schemas() -> None:
    """List the table contracts in schemas/."""
    from xwin_data.core.validate import list_schemas, load_schema

    for name in list_schemas():
        s = load_schema(name)
        console.print(f"[bold]{name}[/]: {s.description} — columns: {', '.join(s.columns)}; "
                      f"invariants: {', '.join(s.invariants) or 'none'}")


COMMAND_GROUPS = ("train", "study", "eval")


def _add_command_groups() -> None:
    """Each command-group module of this package defines `app` (a typer.Typer) and `NAME`."""
    for name in COMMAND_GROUPS:
        mod = importlib.import_module(f"xwin_data.cli.{name}")
        app.add_typer(mod.app, name=mod.NAME)


_add_command_groups()

