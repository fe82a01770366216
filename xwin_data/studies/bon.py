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


SET_OP = "score_responses"  # the Xwin-Set op: every response of every prompt, scored
DERIVED_OPS = {"rs_best_of_n", "wind_groups", "dpo_pairs", "bon_curve"}  # tables made from a set, not sets


def set_tables(catalog: Catalog) -> list[str]:
    """The scored sets to plot: tables the Xwin-Set op made; else (sets made elsewhere) tables with prompt_id,
    score and response columns and more than one scored response per prompt, not made from a set by a derived op
    (`rs_best_of_<n>` holds one response per prompt, `wind_groups` repeats its set)."""
    current = catalog.current_tables()
    made = [tv.name for tv in current if tv.op == SET_OP]
    if made:
        return made
    con = connect(catalog, canned_views=False)
    try:
        names = []
        for tv in current:
            if tv.op in DERIVED_OPS:
                continue
            cols = {r[0] for r in con.execute(f'DESCRIBE "{tv.name}"').fetchall()}
            if {"prompt_id", "score"} <= cols and ({"response_id", "response"} & cols):
                most = con.execute(f'SELECT max(c) FROM (SELECT count(score) AS c FROM "{tv.name}" '
                                   f'GROUP BY prompt_id)').fetchone()[0]
                if most and most > 1:
                    names.append(tv.name)
        return names
    finally:
        con.close()


def policy_names(catalog: Catalog, table: str) -> dict[str, str]:
    """{policy identity (`name@content-hash`) -> the model as the recipe named it (`tiny-policy`, `runs/sft`)},
    read from the stage parameters of the table's sampling input."""
    import json

    tv = catalog.current(table)
    names: dict[str, str] = {}
    con = connect(catalog, canned_views=False)
    try:
        for ref in (tv.inputs or []) if tv else []:
            row = con.execute("SELECT params FROM table_versions WHERE name = ? AND fingerprint = ?",
                              [ref.get("name"), ref.get("fingerprint")]).fetchone()
            params = json.loads(row[0]) if row and row[0] else {}
            policies = params.get("policies") or ([params["policy"]] if isinstance(params.get("policy"), dict) else [])
            ids = [r[0] for r in con.execute(f'SELECT DISTINCT policy::VARCHAR FROM "{table}"').fetchall()] \
                if policies else []
            if len(policies) == 1 and len(ids) == 1 and policies[0].get("model"):
                names[ids[0]] = str(policies[0]["model"])
    except Exception:  # noqa: BLE001 - lineage without parameters: fall back to the identity's name
        pass
    finally:
        con.close()
    return names


def _label(identity: str, names: dict[str, str]) -> str:
    return names.get(identity) or identity.split("@", 1)[0]


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
            names = policy_names(catalog, table) if "policy" in cols else {}
            data = con.execute(f'SELECT {policy}::VARCHAR AS policy, prompt_id::VARCHAR, list(score ORDER BY score) '
                               f'FROM "{table}" WHERE score IS NOT NULL GROUP BY ALL ORDER BY 1, 2').fetchall()
            by_policy: dict[str, list[np.ndarray]] = {}
            for pol, _, scores in data:
                curve = np.array(best_of_curve(scores, n_max))
                label = _label(pol, names) if "policy" in cols else table
                by_policy.setdefault(label if len(tables) == 1 else f"{label} ({table})", []).append(curve)
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
        raise StudyError("no scored set (prompt_id, response_id, score; several responses per prompt) in the "
                         "catalog; make one with `xwin-data build recipes/xwin_set.yaml`, or name tables")
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
