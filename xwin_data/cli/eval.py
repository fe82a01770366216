"""`xwin-data eval alpaca|mtbench|recorded`: win rates and grades with bootstrap CIs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

NAME = "eval"
app = typer.Typer(help="Evaluate a model with an LLM judge (AlpacaEval-style, MT-bench), or aggregate recorded "
                       "judgments. Each run adds a row to the catalog table `eval_results` and writes "
                       "<catalog>/evals/<name> (records.parquet, summary.json, a PNG).",
                  no_args_is_help=True)

CatalogOpt = typer.Option("xwin-catalog", "--catalog", "-c", envvar="XWIN_DATA_CATALOG", help="Catalog folder.")
OutOpt = typer.Option(None, "--out", "-o", help="Output folder (default <catalog>/evals/<name>).")
JudgePromptsOpt = typer.Option(None, "--judge-prompts", envvar="XWIN_JUDGE_PROMPTS",
                               help="Override the shipped FastChat prompts with a judge_prompts.jsonl "
                                    "(env XWIN_JUDGE_PROMPTS).")


def _fail_on(err: BaseException) -> None:
    from xwin_data.cli.app import fail_on

    fail_on(err)


def _fail(message: str) -> None:
    from xwin_data.cli.app import print_error

    print_error(message)
    raise typer.Exit(2)


def _write(folder: Path, records: list[dict], summary: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), folder / "records.parquet")
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")


def _print_win_rate(s: dict, title: str) -> None:
    from xwin_data.core.progress import console

    console.print(f"[bold]{title}[/]: win {s['win']}, tie {s['tie']}, loss {s['loss']}, invalid {s['invalid']} — "
                  f"win rate {s['win_rate']:.1f}% [{s['ci_low']:.1f}, {s['ci_high']:.1f}]"
                  + (f", length-controlled {s['lc_win_rate']:.1f}% [{s['lc_ci_low']:.1f}, {s['lc_ci_high']:.1f}]"
                     if "lc_win_rate" in s else ""))


def _check_judge(base_url: str, key_env: str) -> None:
    """Fail in one line, before any answer is generated, when there is no judge to call."""
    from xwin_data.evals.preflight import JudgeUnavailable, check_judge

    try:
        check_judge(base_url, key_env)
    except JudgeUnavailable as err:
        _fail(str(err))


def _judge(judge_model, judge_base_url, judge_key_env, concurrency, budget):
    from xwin_data.evals.live import JudgeConfig

    return JudgeConfig(model=judge_model, base_url=judge_base_url, api_key_env=judge_key_env,
                       concurrency=concurrency, budget_usd=budget)


JudgeModel = typer.Option("gpt-4", "--judge-model", help="Judge model id at the endpoint.")
JudgeURL = typer.Option("https://api.openai.com/v1", "--judge-base-url", help="OpenAI-compatible judge endpoint.")
JudgeKey = typer.Option("OPENAI_API_KEY", "--judge-key-env", help="NAME of the env var holding the judge key.")
Concurrency = typer.Option(8, help="Judge requests in flight.")
Budget = typer.Option(None, "--budget-usd", help="Stop judging past this many dollars.")
Backend = typer.Option("transformers", help="Generation backend for the model: transformers | vllm | openai.")
ModelURL = typer.Option(None, "--model-base-url", help="Server URL when --backend openai.")


@app.command()
def alpaca(
    model: Optional[str] = typer.Option(None, "--model", help="Model under test: local path, hub id or tiny-policy."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Reference answers: a JSON/JSONL file "
                                            "(instruction/output or prompt/response) or a catalog table."),
    annotations: Optional[List[Path]] = typer.Option(None, "--annotations", help="alpaca_eval annotations.json "
                                                     "files instead of a live judge (repeatable); no model is run."),
    template: str = typer.Option("pairwise-abc", "--template", help="Pairwise judge template: a shipped one "
                                 "(xwin_data/templates/judge: pairwise-abc, pairwise-graded, ...), pair-v2 "
                                 "(FastChat's MT-bench prompt), or a YAML path."),
    judge_prompts: Optional[Path] = JudgePromptsOpt,
    catalog: Path = CatalogOpt, out: Optional[Path] = OutOpt,
    judge_model: str = JudgeModel, judge_base_url: str = JudgeURL, judge_key_env: str = JudgeKey,
    concurrency: int = Concurrency, budget_usd: Optional[float] = Budget, backend: str = Backend,
    model_base_url: Optional[str] = ModelURL,
    max_new_tokens: int = typer.Option(256, help="Answer length cap."),
    limit: Optional[int] = typer.Option(None, help="Evaluate the first N instructions only."),
) -> None:
    """AlpacaEval-style win rate against reference answers (both orders judged), with a length-controlled
    variant and bootstrap CIs; or, with --annotations, the win rates of recorded alpaca_eval annotations."""
    from xwin_data.core.catalog import Catalog
    from xwin_data.evals.live import load_reference, run_alpaca
    from xwin_data.evals.results import record_results, result_row, win_rate_png
    from xwin_data.llm.cache import RequestCache

    if annotations:
        _annotations(list(annotations), out, catalog, n_boot=1000)
        return
    if not model or not reference:
        _fail("eval alpaca needs --model and --reference (a live judge), or --annotations FILE (recorded)")
    _check_judge(judge_base_url, judge_key_env)
    cat = Catalog(catalog)
    cat.init()
    try:
        ref = load_reference(reference, cat)
    except ValueError as err:
        _fail_on(err)
    cache = RequestCache(cat.cache_dir / "eval_requests.sqlite")
    try:
        records, summary = run_alpaca(model, ref, _judge(judge_model, judge_base_url, judge_key_env, concurrency,
                                                         budget_usd), cache, template=template,
                                      judge_prompts=judge_prompts, backend=backend, max_new_tokens=max_new_tokens,
                                      limit=limit, model_base_url=model_base_url)
    except ValueError as err:
        _fail_on(err)
    folder = Path(out or cat.root / "evals" / f"alpaca_{Path(model).name}")
    _write(folder, records, summary)
    png = win_rate_png(folder / "alpaca.png", [(f"{Path(model).name} vs reference", summary)],
                       f"AlpacaEval-style: {model} (judge {judge_model})")
    record_results(cat, [result_row("alpaca", summary, model=model, reference_model=reference, items=len(records),
                                    folder=folder, png=png)])
    _print_win_rate(summary, f"{model} vs reference ({len(records)} instructions, judge {judge_model})")
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, default=str))


@app.command()
def mtbench(
    model: str = typer.Option(..., "--model", help="Model under test: local path, hub id or tiny-policy."),
    questions: Path = typer.Option(..., "--questions", help="MT-bench question.jsonl (FastChat)."),
    judge_prompts: Optional[Path] = JudgePromptsOpt,
    reference_answers: Optional[Path] = typer.Option(None, help="Reference answers (FastChat reference_answer/"
                                                     "gpt-4.jsonl) for math, reasoning and coding."),
    baseline: Optional[Path] = typer.Option(None, help="A baseline's answers (FastChat model_answer/*.jsonl) for "
                                            "pairwise judging on turn 1."),
    catalog: Path = CatalogOpt, out: Optional[Path] = OutOpt,
    judge_model: str = JudgeModel, judge_base_url: str = JudgeURL, judge_key_env: str = JudgeKey,
    concurrency: int = Concurrency, budget_usd: Optional[float] = Budget, backend: str = Backend,
    model_base_url: Optional[str] = ModelURL,
    max_new_tokens: int = typer.Option(256, help="Answer length cap per turn."),
    limit: Optional[int] = typer.Option(None, help="First N questions only."),
) -> None:
    """MT-bench: two-turn answers graded 1-10 per turn with FastChat's prompts; pairwise against a baseline."""
    from xwin_data.core.catalog import Catalog
    from xwin_data.evals.live import run_mtbench
    from xwin_data.evals.results import mtbench_png, record_results, result_row
    from xwin_data.llm.cache import RequestCache
    from xwin_data.core.progress import console

    _check_judge(judge_base_url, judge_key_env)
    cat = Catalog(catalog)
    cat.init()
    cache = RequestCache(cat.cache_dir / "eval_requests.sqlite")
    try:
        records, summary = run_mtbench(model, questions, _judge(judge_model, judge_base_url, judge_key_env,
                                                                concurrency, budget_usd), cache,
                                       judge_prompts=judge_prompts, reference_answers=reference_answers,
                                       baseline=baseline, backend=backend, max_new_tokens=max_new_tokens,
                                       limit=limit, model_base_url=model_base_url)
    except ValueError as err:
        _fail_on(err)
    folder = Path(out or cat.root / "evals" / f"mtbench_{Path(model).name}")
    _write(folder, records, summary)
    png = mtbench_png(folder / "mtbench.png", summary, f"MT-bench: {model} (judge {judge_model})")
    record_results(cat, [result_row("mtbench", summary, model=model, reference_model=str(baseline) if baseline
                                    else None, items=summary["questions"], folder=folder, png=png)])
    for k in ("turn_1", "turn_2", "overall"):
        s = summary[k]
        console.print(f"{k}: {s['score']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}] (n={s['n']})")
    if "pairwise" in summary:
        _print_win_rate(summary["pairwise"], "pairwise vs baseline (turn 1)")
    console.print(f"invalid grades: {summary['invalid_grades']}; wrote {folder}")


@app.command()
def recorded(
    reviews: List[Path] = typer.Argument(..., help="FastChat Vicuna-eval review_*.jsonl files, or alpaca_eval "
                                         "annotations.json files."),
    answers: Optional[Path] = typer.Option(None, help="The answer/ folder (names and lengths; enables LC)."),
    position: int = typer.Option(2, help="Which answer is the evaluated model's: 1 or 2 (Vicuna-eval: 2)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write records.parquet, summary.json and "
                                       "recorded.png here."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", "-c", help="Also add one `eval_results` row per "
                                           "review file to this catalog."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples."),
) -> None:
    """Aggregate recorded pairwise judgments into win/tie/loss with CIs: FastChat reviews (parsed from the judge's
    text) or alpaca_eval annotations.json files (continuous and discrete win rates, length-controlled GLM)."""
    from xwin_data.evals.alpaca import summarize
    from xwin_data.evals.annotations import is_annotations_file
    from xwin_data.evals.recorded import load_answers, load_vicuna_reviews, outcome_for
    missing = [str(p) for p in reviews if not p.is_file()]
    if missing:
        _fail(f"no such file: {', '.join(missing)}")
    if all(is_annotations_file(p) for p in reviews):
        _annotations(list(reviews), out, catalog, n_boot=n_boot)
        return
    ans = load_answers(answers)
    results, all_records = [], []
    for path in reviews:
        rows = load_vicuna_reviews(path, ans)
        recs = [{"review": path.name, "question_id": r["question_id"], "verdict": r["verdict"],
                 "outcome": outcome_for(r["verdict"], position), "model": r[f"model_{position}"],
                 "reference_model": r[f"model_{3 - position}"], "len_model": r[f"len_{position}"],
                 "len_reference": r[f"len_{3 - position}"]} for r in rows]
        s = summarize(recs, n_boot=n_boot) | {"review": path.name, "model": recs[0]["model"] if recs else None,
                                              "reference_model": recs[0]["reference_model"] if recs else None}
        _print_win_rate(s, f"{path.name} ({s['model']} vs {s['reference_model']})")
        results.append(s)
        all_records += recs
    _report_recorded("recorded", all_records, [r | {"judge": "recorded:" + r["review"]} for r in results],
                     out, catalog, [r["review"] for r in results], "recorded.png",
                     "recorded judgments (evaluated model vs reference)")


def _annotations(paths: list[Path], out: Optional[Path], catalog: Optional[Path], n_boot: int) -> None:
    """alpaca_eval annotations -> per model: win rate, discrete win rate, length-controlled (GLM) win rate."""
    from xwin_data.core.progress import console
    from xwin_data.evals.annotations import load_annotations, summarize_annotations
    records = load_annotations(paths)
    results = summarize_annotations(records, n_boot=n_boot)
    for r in results:
        _print_win_rate(r, f"{r['model']} vs {r['reference_model']} ({r['n']} annotations)")
        console.print(f"  discrete win rate {r['discrete_win_rate']:.1f}% "
                      f"[{r['discrete_ci_low']:.1f}, {r['discrete_ci_high']:.1f}]", highlight=False)
    _report_recorded("alpaca_recorded", records, results, out, catalog, [r["model"] for r in results],
                     "alpaca_annotations.png", "recorded alpaca_eval annotations (model vs baseline)")


def _report_recorded(kind: str, records: list[dict], results: list[dict], out: Optional[Path],
                     catalog: Optional[Path], labels: list[str], png_name: str, title: str) -> None:
    """Write records, summaries and a win-rate plot to `out`, record the results in the catalog, print JSON."""
    from xwin_data.evals.results import record_results, result_row, win_rate_png

    png = None
    if out:
        _write(Path(out), records, {"results": results})
        png = win_rate_png(Path(out) / png_name, list(zip(labels, results)), title)
    if catalog is not None:
        from xwin_data.core.catalog import Catalog

        cat = Catalog(catalog)
        cat.init()
        record_results(cat, [result_row(kind, r, model=r["model"], reference_model=r["reference_model"],
                                        items=r["n"] + r["invalid"], folder=out, png=png) for r in results])
    print(json.dumps(results, default=str))
