"""The `xwin-data` command: build, plan, ops, schemas here; show, sql, validate, export in `tables.py`; the command
groups (train, study, eval) beside it in `xwin_data/cli/`."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from xwin_data.cli.common import DEBUG, CatalogOpt, fail_on, print_error
from xwin_data.cli.tables import describe_exporters, export, show, sql, validate
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
        describe_exporters()
    try:
        app(args=args, prog_name="xwin-data")
    except XwinError as err:
        if DEBUG["on"]:
            raise
        print_error(str(err))
        sys.exit(err.exit_code)


ExecutorOpt = typer.Option(None, "--executor", "-x", help="Where batch and model work runs: local (default) or ray "
                           "(overrides the recipe's `executor:`).")
RayAddressOpt = typer.Option(None, "--ray-address", envvar="XWIN_DATA_RAY_ADDRESS",
                             help="Ray cluster to run on (auto, ray://host:10001, host:6379); without it "
                                  "--executor ray starts a Ray for the build.")
TargetOpt = typer.Option(None, "--target", "-t", help="Only this stage or table and the stages it needs, e.g. -t "
                         "sft_sharegpt; the others are left as they are. Repeatable.")
SetOpt = typer.Option(None, "--set", "-s", help="Override a recipe field: key=value (a variable such as "
                      "input=path.jsonl, or stage.params.key=value). Repeatable.")


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
    target: Optional[List[str]] = TargetOpt,
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
                           executor=executor, ray_address=ray_address, targets=target or None)
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
    target: Optional[List[str]] = TargetOpt,
) -> None:
    """Show the stages of a recipe, which are already built (same fingerprint) and which would run, with
    estimates of model calls, tokens and cost where a stage can tell."""
    from xwin_data.core.catalog import Catalog
    from xwin_data.core.errors import BuildError
    from xwin_data.core.plan import choose_executor, describe_plan, plan as make_plan, select_stages
    from xwin_data.core.yaml_lines import RecipeError

    rec = _load(recipe, sets or [])
    try:
        stages = select_stages(make_plan(rec, Catalog(catalog)), target or None, rec)
        rows = describe_plan(stages, choose_executor(rec, executor, ray_address))
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


for _command in (show, sql, validate, export):  # after build and plan, before ops and schemas, as --help lists them
    app.command()(_command)


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

