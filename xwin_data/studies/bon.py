"""Best-of-n study: expected best reward score of n responses drawn without replacement from each prompt's stored
set, for every n up to the set size, one curve per policy (table, or `policy` column), on one plot.

Exact, no resampling: with a prompt's m scores sorted ascending s_1 ≤ … ≤ s_m, the best of n draws is s_k with
probability C(k-1, n-1) / C(m, n), so E[best of n] = Σ_k s_k · C(k-1, n-1) / C(m, n) (`xwin_data.bon`, shared with
the training evaluation and the `bon_curve` op). The curve is the mean over prompts; its 95% CI bootstraps prompts. Where the catalog has a `bon_curve` table made by the Xwin-Set recipe,
`xwin-data sql` reads that directly; this study adds the comparison across policies and the picture.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xwin_data.bon import best_of_curve
from xwin_data.core.catalog import Catalog
from xwin_data.core.connection import connect
from xwin_data.studies.judge import StudyError
from xwin_data.studies.output import study_dir, write_results
from xwin_data.studies.plots import lines_with_ci


def set_tables(catalog: Catalog) -> list[str]:
    """Current tables shaped like xwin_set: prompt_id and score per response."""
    con = connect(catalog, canned_views=False)
    try:
        names = []
        for tv in catalog.current_tables():
            cols = {r[0] for r in con.execute(f'DESCRIBE "{tv.name}"').fetchall()}
            if {"prompt_id", "score"} <= cols and ({"response_id", "response"} & cols):
                names.append(tv.name)
        return names
    finally:
        con.close()


def curves(catalog: Catalog, tables: list[str], n_max: int = 64, n_boot: int = 1000,
           seed: int = 0) -> list[dict]:
    rows = []
    con = connect(catalog, canned_views=False)
    try:
        for table in tables:
            cols = {r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()}
            if not {"prompt_id", "score"} <= cols:
                raise StudyError(f"table {table!r} needs columns prompt_id and score (has {', '.join(sorted(cols))})")
            policy = "policy" if "policy" in cols else f"'{table}'"
            data = con.execute(f'SELECT {policy}::VARCHAR AS policy, prompt_id::VARCHAR, list(score ORDER BY score) '
                               f'FROM "{table}" WHERE score IS NOT NULL GROUP BY ALL ORDER BY 1, 2').fetchall()
            by_policy: dict[str, list[np.ndarray]] = {}
            for pol, _, scores in data:
                curve = np.array(best_of_curve(scores, n_max))
                by_policy.setdefault(pol if "policy" in cols else table, []).append(curve)
            for pol, per_prompt in by_policy.items():
                width = min(len(c) for c in per_prompt)  # prompts with fewer responses cap the curve
                mat = np.stack([c[:width] for c in per_prompt])
                rng = np.random.default_rng(seed)
                idx = rng.integers(0, mat.shape[0], size=(n_boot, mat.shape[0]))
                boots = mat[idx].mean(axis=1)
                lo, hi = np.quantile(boots, [0.025, 0.975], axis=0)
                mean = mat.mean(axis=0)
                for j in range(width):
                    rows.append({"table": table, "policy": pol, "n": j + 1, "mean_best_score": float(mean[j]),
                                 "ci_low": float(lo[j]), "ci_high": float(hi[j]), "prompts": int(mat.shape[0])})
    finally:
        con.close()
    return rows


def run_bon_study(catalog: Catalog, tables: list[str] | None = None, out: Path | None = None,
                  n_max: int = 64, n_boot: int = 1000) -> dict:
    tables = tables or set_tables(catalog)
    if not tables:
        raise StudyError("no xwin_set-like table (prompt_id, response_id, score) in the catalog; "
                         "build recipes/xwin_set.yaml or name tables explicitly")
    rows = curves(catalog, tables, n_max=n_max, n_boot=n_boot)
    folder = study_dir(catalog, "bon", out)
    series: dict[str, dict] = {}
    for r in rows:
        s = series.setdefault(r["policy"], {"x": [], "y": [], "low": [], "high": []})
        s["x"].append(r["n"]), s["y"].append(r["mean_best_score"])
        s["low"].append(r["ci_low"]), s["high"].append(r["ci_high"])
    png = lines_with_ci(folder / "bon_curves.png", series, "best-of-n: expected best reward score",
                        "n (responses drawn, log scale)", "mean best score (95% CI over prompts)")
    summary = {"tables": tables, "policies": list(series), "pngs": [str(png)], "folder": str(folder),
               "best_of_1": {p: s["y"][0] for p, s in series.items()},
               "best_of_max": {p: s["y"][-1] for p, s in series.items()}}
    write_results(folder, rows, summary)
    return summary
