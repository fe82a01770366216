"""Where an evaluation's results go: a row per run in the catalog table `eval_results` (SQL via
`xwin_data.connect` / `xwin-data sql`), records.parquet + summary.json + a PNG in the run's folder.

`eval_results` is appended like the training layer's `runs` / `evals` tables (each append publishes a new
version: the previous Parquet parts unchanged plus one new part), so `SELECT model, win_rate, ci_low, ci_high FROM eval_results` compares runs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa

from xwin_data.core.catalog import utcnow

EVAL_RESULTS_SCHEMA = pa.schema([
    ("eval_id", pa.string()), ("eval", pa.string()), ("model", pa.string()), ("reference_model", pa.string()),
    ("judge", pa.string()), ("template", pa.string()), ("items", pa.int64()),
    ("win", pa.int64()), ("tie", pa.int64()), ("loss", pa.int64()), ("invalid", pa.int64()),
    ("win_rate", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("lc_win_rate", pa.float64()), ("lc_ci_low", pa.float64()), ("lc_ci_high", pa.float64()),
    ("score", pa.float64()), ("score_ci_low", pa.float64()), ("score_ci_high", pa.float64()),
    ("turn_1_score", pa.float64()), ("turn_2_score", pa.float64()), ("by_category", pa.string()),
    ("folder", pa.string()), ("png", pa.string()), ("summary", pa.string()), ("created_at", pa.timestamp("us")),
])


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def result_row(kind: str, summary: dict, *, model: str | None, items: int, folder: Path | None,
               png: Path | None, reference_model: str | None = None) -> dict:
    """One `eval_results` row: win/tie/loss columns from a win-rate summary (MT-bench: its pairwise part),
    score columns from MT-bench's overall grade."""
    import uuid

    wr = summary.get("pairwise", summary) if kind == "mtbench" else summary
    row = {"eval_id": uuid.uuid4().hex[:12], "eval": kind, "model": model, "reference_model": reference_model,
           "judge": summary.get("judge"), "template": summary.get("template"), "items": items,
           "folder": str(folder) if folder else None, "png": str(png) if png else None,
           "summary": json.dumps(summary, default=str), "created_at": utcnow()}
    for k in ("win", "tie", "loss", "invalid", "win_rate", "ci_low", "ci_high", "lc_win_rate", "lc_ci_low",
              "lc_ci_high"):
        row[k] = _num(wr.get(k)) if "win_rate" in wr else None
    if kind == "mtbench":
        overall = summary["overall"]
        row.update(score=_num(overall["score"]), score_ci_low=_num(overall["ci_low"]),
                   score_ci_high=_num(overall["ci_high"]), turn_1_score=_num(summary["turn_1"]["score"]),
                   turn_2_score=_num(summary["turn_2"]["score"]), by_category=json.dumps(summary["by_category"]))
    return row


def record_results(catalog, rows: list[dict]) -> None:
    """Append rows to the catalog's `eval_results` table (one new table version per row)."""
    from xwin_data.training.records import append_record

    for row in rows:
        append_record(catalog, "eval_results", row, EVAL_RESULTS_SCHEMA)


# ------------------------------------------------------------------------------------------------- PNGs
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, labels, values, lows, highs, color, ylabel, title, ref=None) -> None:
    err = [[max(0.0, v - lo) if not math.isnan(lo) else 0.0 for v, lo in zip(values, lows)],
           [max(0.0, hi - v) if not math.isnan(hi) else 0.0 for v, hi in zip(values, highs)]]
    ax.bar(range(len(labels)), values, yerr=err, capsize=4, color=color)
    for i, v in enumerate(values):
        if not math.isnan(v):
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    if ref is not None:
        ax.axhline(ref, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(labels)), labels, rotation=15, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)


def win_rate_png(path: Path, results: list[tuple[str, dict]], title: str) -> Path:
    """Per evaluated pairing: win / tie / loss shares and the win rate (and LC win rate) with 95% CIs."""
    plt = _plt()
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.4 * len(results)), squeeze=False)
    for (name, s), (left, right) in zip(results, axes):
        sh = s["shares"]
        _bars(left, ["win", "tie", "loss"], [sh[k][0] for k in ("win", "tie", "loss")],
              [sh[k][1] for k in ("win", "tie", "loss")], [sh[k][2] for k in ("win", "tie", "loss")],
              ["#55A868", "#999999", "#C44E52"], "% of judged items", f"{name}: outcomes (n={s['n']})")
        labels, vals, lo, hi = ["win rate"], [s["win_rate"]], [s["ci_low"]], [s["ci_high"]]
        if "lc_win_rate" in s:
            labels.append("length-controlled")
            vals.append(s["lc_win_rate"]), lo.append(s["lc_ci_low"]), hi.append(s["lc_ci_high"])
        _bars(right, labels, vals, lo, hi, "#4C72B0", "% (ties count half)", f"{name}: win rate, 95% CI", ref=50)
        right.set_ylim(0, 100)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def mtbench_png(path: Path, summary: dict, title: str) -> Path:
    """Mean 1-10 grade per category and per turn, with 95% bootstrap CIs."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1.3]})
    cats = list(summary["by_category"])
    ci = summary.get("by_category_ci", {})
    _bars(left, cats, [summary["by_category"][c] for c in cats], [ci.get(c, [math.nan] * 2)[0] for c in cats],
          [ci.get(c, [math.nan] * 2)[1] for c in cats], "#4C72B0", "mean grade (1-10)", "by category")
    turns = ["turn_1", "turn_2", "overall"]
    _bars(right, turns, [summary[t]["score"] for t in turns], [summary[t]["ci_low"] for t in turns],
          [summary[t]["ci_high"] for t in turns], "#8172B2", "mean grade (1-10)", "by turn")
    for ax in (left, right):
        ax.set_ylim(0, 10.5)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
