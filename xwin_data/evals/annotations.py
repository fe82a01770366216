"""AlpacaEval from recorded annotations: alpaca_eval's `annotations.json` files (one record per instruction with
`output_1` = the baseline's answer, `output_2` = the evaluated model's, `generator_1` / `generator_2`, and a
`preference` from 1 (baseline preferred) to 2 (model preferred), continuous for the weighted annotators).

- win rate: 100 · mean(preference − 1), the continuous preference as AlpacaEval reports it;
- discrete win rate: preference > 1.5 a win, < 1.5 a loss, exactly 1.5 (or 0, alpaca_eval's older draw code) a
  tie counted half;
- length-controlled win rate: the published GLM (Dubois et al. 2024, arXiv 2404.04475), length term plus
  instruction-difficulty term, without its `not_gamed_baseline` indicator: logit P(model m preferred on
  instruction i) = θ_m + φ_m·tanh(Δlen_i / sd(Δlen)) + γ_i, fitted on the continuous preferences jointly over
  every evaluated model in the files (an L2 penalty on the difficulties γ); LC = 100 · mean_i σ(θ_m + γ_i), the
  win rate predicted with the length term at zero. AlpacaEval ships γ pre-fitted on its leaderboard's models
  and weights it per model; here γ comes from the preferences given and enters with weight 1, so with one
  model's file it rests on that model's preferences alone (see the README).
A record without a numeric preference is invalid: counted, never silently dropped.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from xwin_data.core.errors import XwinError
from xwin_data.evals.stats import _sigmoid, bootstrap_ci, fit_logistic, outcome_shares

DIFFICULTY_L2 = 1.0  # shrinks each instruction's difficulty toward 0 (one model's file cannot pin it down alone)


class AnnotationsError(XwinError, ValueError):
    """An annotations file that is not alpaca_eval's format; the message names the file and what is missing."""


def is_annotations_file(path: Path) -> bool:
    """A JSON / JSONL file whose first record has alpaca_eval's `preference` and `output_2` fields."""
    try:
        first = _records(path)[:1]
    except (AnnotationsError, OSError):
        return False
    return bool(first) and "preference" in first[0] and "output_2" in first[0]


def _records(path: Path) -> list[dict]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as err:
            raise AnnotationsError(f"{path}: neither a JSON array nor JSON lines ({err})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise AnnotationsError(f"{path}: expected a list of annotation records")
    return data


def _preference(value) -> float | None:
    """alpaca_eval's preference -> P(model preferred) in [0, 1]; 0 (an old draw code) is 0.5; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if value == 0:
        return 0.5
    if 1 <= value <= 2:
        return float(value) - 1.0
    return None


def load_annotations(paths: list[Path]) -> list[dict]:
    """Records {model, baseline, instruction, p (None = invalid), len_model, len_baseline, file}."""
    out = []
    for path in paths:
        for i, r in enumerate(_records(path)):
            missing = [k for k in ("instruction", "output_1", "output_2", "preference") if k not in r]
            if missing:
                raise AnnotationsError(f"{path}: record {i} lacks {', '.join(missing)} (alpaca_eval annotations "
                                       "have instruction, output_1, output_2, generator_1, generator_2, preference)")
            out.append({"model": str(r.get("generator_2") or Path(path).parent.name or "model"),
                        "baseline": str(r.get("generator_1") or "baseline"), "instruction": str(r["instruction"]),
                        "p": _preference(r["preference"]), "preference": r["preference"],
                        "len_model": len(str(r["output_2"] or "")), "len_baseline": len(str(r["output_1"] or "")),
                        "file": Path(path).name})
    if not out:
        raise AnnotationsError(f"no annotation records in {', '.join(map(str, paths))}")
    return out


def fit_glm(records: list[dict]) -> tuple[dict[str, dict], dict[str, float]]:
    """The GLM over every valid record: logit p_{m,i} = θ_m + φ_m·tanh(Δlen / sd_m) + γ_i, an L2 penalty
    `DIFFICULTY_L2` on the instruction difficulties γ (tiny ones on θ, φ) -> ({model: θ, φ, sd}, {instruction: γ}).
    γ enters with weight 1: fitted on these same preferences, a free per-model weight would let it re-fit each
    preference (one model's file has one record per instruction)."""
    valid = [r for r in records if r["p"] is not None]
    models = sorted({r["model"] for r in valid})
    instructions = sorted({r["instruction"] for r in valid})
    m = len(models)
    x = np.zeros((len(valid), 2 * m + len(instructions)))
    sds = {}
    for k, model in enumerate(models):
        rows = [j for j, r in enumerate(valid) if r["model"] == model]
        d = np.array([valid[j]["len_model"] - valid[j]["len_baseline"] for j in rows], dtype=float)
        sds[model] = float(np.std(d)) or 1.0
        x[rows, k] = 1.0
        x[rows, m + k] = np.tanh(d / sds[model])
    ii = {s: 2 * m + k for k, s in enumerate(instructions)}
    for row, r in enumerate(valid):
        x[row, ii[r["instruction"]]] = 1.0
    lam = np.r_[np.full(m, 1e-6), np.full(m, 1e-3), np.full(len(instructions), DIFFICULTY_L2)]
    w = fit_logistic(x, np.array([r["p"] for r in valid]), l2=lam)
    coefs = {model: {"theta": float(w[k]), "length_coef": float(w[m + k]), "len_diff_sd": sds[model]}
             for k, model in enumerate(models)}
    return coefs, {s: float(w[ii[s]]) for s in instructions}


def _fit_with_offset(x: np.ndarray, y: np.ndarray, offset: np.ndarray, iters: int = 50) -> np.ndarray:
    """Logistic regression of fractional targets on x with a fixed offset (Newton; a tiny ridge keeps it finite)."""
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = _sigmoid(x @ w + offset)
        step = np.linalg.solve((x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(len(w)), x.T @ (p - y) + 1e-6 * w)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def lc_rate(p: np.ndarray, tanh_len: np.ndarray, gamma: np.ndarray) -> float:
    """θ and φ of one model with its instructions' γ fixed -> 100 · mean σ(θ + γ), the length term at zero."""
    theta, _ = _fit_with_offset(np.column_stack([np.ones_like(p), tanh_len]), p, gamma)
    return 100 * float(np.mean(_sigmoid(theta + gamma)))


def summarize_annotations(records: list[dict], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One summary per evaluated model: counts, win rate and discrete win rate (with bootstrap CIs over
    instructions), the length-controlled win rate (with a bootstrap CI over the model's instructions, γ fixed)."""
    coefs, gamma = fit_glm(records)
    out = []
    for model in sorted({r["model"] for r in records}):
        mine = [r for r in records if r["model"] == model]
        valid = [r for r in mine if r["p"] is not None]
        p = np.array([r["p"] for r in valid])
        outcome = np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))
        s = {"model": model, "reference_model": ", ".join(sorted({r["baseline"] for r in mine})),
             "judge": "recorded:alpaca_eval", "files": sorted({r["file"] for r in mine}), "n": len(valid),
             "invalid": len(mine) - len(valid), "win": int((outcome == 1).sum()), "tie": int((outcome == 0.5).sum()),
             "loss": int((outcome == 0).sum())}
        s["win_rate"] = 100 * float(p.mean()) if len(p) else math.nan
        s["ci_low"], s["ci_high"] = (100 * v for v in bootstrap_ci(p, n_boot=n_boot, seed=seed))
        s["discrete_win_rate"] = 100 * float(outcome.mean()) if len(p) else math.nan
        s["discrete_ci_low"], s["discrete_ci_high"] = (100 * v for v in bootstrap_ci(outcome, n_boot=n_boot, seed=seed))
        s["shares"] = outcome_shares([{1.0: "win", 0.5: "tie", 0.0: "loss"}[o] for o in outcome], n_boot=n_boot,
                                     seed=seed)
        if len(valid) >= 5:
            c = coefs[model]
            lm = np.array([r["len_model"] for r in valid], dtype=float)
            lb = np.array([r["len_baseline"] for r in valid], dtype=float)
            t = np.tanh((lm - lb) / c["len_diff_sd"])
            g = np.array([gamma[r["instruction"]] for r in valid])
            s.update(c, lc_win_rate=100 * float(np.mean(_sigmoid(c["theta"] + g))))
            rng = np.random.default_rng(seed)
            boots = []
            for _ in range(min(n_boot, 300)):  # instructions resampled; γ held at the full fit
                i = rng.integers(0, len(p), len(p))
                boots.append(lc_rate(p[i], t[i], g[i]))
            s["lc_ci_low"], s["lc_ci_high"] = (float(v) for v in np.quantile(boots, [0.025, 0.975]))
            s["mean_len_model"], s["mean_len_reference"] = float(lm.mean()), float(lb.mean())
        out.append(s)
    return out
