"""`xwin-data study judge|bon|scaling`: studies that write a results table and PNGs."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

NAME = "study"
app = typer.Typer(help="Studies: judge reliability, best-of-n curves, data scaling. Each writes results.parquet, "
                       "summary.json and PNGs (default folder <catalog>/studies/<study>).", no_args_is_help=True)

CatalogOpt = typer.Option("xwin-catalog", "--catalog", "-c", envvar="XWIN_DATA_CATALOG", help="Catalog folder.")
OutOpt = typer.Option(None, "--out", "-o", help="Output folder (default <catalog>/studies/<study>).")


def _fail_on(err: BaseException) -> None:
    from xwin_data.cli.app import fail_on

    fail_on(err)


def _fail(message: str) -> None:
    from xwin_data.cli.app import print_error

    print_error(message)
    raise typer.Exit(2)


def _print_metrics(rows: list[dict], title: str) -> None:
    from rich.table import Table

    from xwin_data.core.progress import console

    t = Table(title=title)
    for c in ("metric", "value", "95% CI", "n"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["metric"], f"{r['value']:.3f}", f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]", str(r["n"]))
    console.print(t)


@app.command()
def judge(
    table: str = typer.Argument(..., help="A pair table with per-order verdicts (see `xwin_data.studies.judge`)."),
    catalog: Path = CatalogOpt,
    out: Optional[Path] = OutOpt,
    n_boot: int = typer.Option(2000, help="Bootstrap resamples for the confidence intervals."),
    invalid_as_wrong: bool = typer.Option(False, "--invalid-as-wrong",
                                          help="Count unparseable verdicts as wrong in the label accuracies "
                                               "(default: leave them out)."),
) -> None:
    """Position-flip, tie, invalid and length-bias rates of a judge; accuracy (per order, averaged over the two
    orders, strict both-orders) and kappa against labels and agreement with a reward model where the table has
    them."""
    import pyarrow.parquet as pq

    from xwin_data.core.catalog import Catalog
    from xwin_data.core.progress import console
    from xwin_data.studies.judge import StudyError, run_judge_study

    try:
        summary = run_judge_study(Catalog(catalog), table, out, n_boot=n_boot, invalid_as_wrong=invalid_as_wrong)
    except StudyError as err:
        _fail_on(err)
    rows = pq.read_table(Path(summary["folder"]) / "results.parquet").to_pylist()
    _print_metrics(rows, f"judge study on {table}: {summary['pairs']} pairs, {summary['calls']} judge calls")
    for k in ("label_kappa", "rm_judge_kappa"):
        if k in summary:
            console.print(f"{k}: {summary[k]:.3f}")
    if summary.get("note"):
        console.print(f"note: {summary['note']}")
    console.print(f"wrote {summary['folder']} ({', '.join(Path(p).name for p in summary['pngs'])})")


@app.command()
def bon(
    tables: Optional[List[str]] = typer.Argument(None, help="xwin_set-like tables (default: every such table)."),
    catalog: Path = CatalogOpt,
    out: Optional[Path] = OutOpt,
    n_max: int = typer.Option(64, help="Largest n."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples over prompts."),
) -> None:
    """Best-of-n curves (exact expected best score for every n) of several policies on one plot."""
    from xwin_data.core.catalog import Catalog
    from xwin_data.core.progress import console
    from xwin_data.studies.judge import StudyError
    from xwin_data.studies.bon import run_bon_study

    try:
        summary = run_bon_study(Catalog(catalog), tables or None, out, n_max=n_max, n_boot=n_boot)
    except StudyError as err:
        _fail_on(err)
    for p in summary["policies"]:
        console.print(f"{p}: best-of-1 {summary['best_of_1'][p]:.4f} → best-of-max {summary['best_of_max'][p]:.4f}")
    console.print(f"wrote {summary['folder']}")


@app.command()
def scaling(
    config: Path = typer.Argument(..., help="Study config, e.g. recipes/scaling.yaml."),
    catalog: Path = CatalogOpt,
    out: Optional[Path] = OutOpt,
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config key: a.b=value (repeatable)."),
) -> None:
    """SFT on each nested subset through the training layer, evaluate against reference answers, plot the win
    rate against subset size. Finished sizes are not retrained; a changed evaluator only re-evaluates."""
    from xwin_data.core.catalog import Catalog
    from xwin_data.core.progress import console
    from xwin_data.studies.judge import StudyError
    from xwin_data.studies.scaling import load_scaling_config, run_scaling_study

    try:
        cfg = load_scaling_config(config, set_ or [])
        summary = run_scaling_study(Catalog(catalog), cfg, out, log=lambda m: console.print(m))
    except (StudyError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    import pyarrow.parquet as pq
    from rich.table import Table

    t = Table(title=f"data scaling ({summary['evaluator']}, {summary['prompts']} prompts)")
    for c in ("size", "table", "win rate %", "95% CI", "W/T/L", "trained now"):
        t.add_column(c)
    for r in pq.read_table(Path(summary["folder"]) / "results.parquet").to_pylist():
        t.add_row(str(r["size"]), r["table"], f"{r['win_rate']:.1f}", f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]",
                  f"{r['win']}/{r['tie']}/{r['loss']}", "yes" if r["trained_now"] else "no")
    console.print(t)
    console.print(f"trained {len(summary['trained'])} size(s), reused {len(summary['reused'])}; "
                  f"wrote {summary['folder']}")
