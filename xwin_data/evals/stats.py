"""Statistics shared by the evaluation runners and the studies: outcome counts, percentile bootstrap confidence
intervals, Cohen's kappa, and a simplified length-controlled win rate.

Outcomes are scored from the evaluated side: win = 1, tie = 0.5, loss = 0 (AlpacaEval counts a tie as half a win).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

OUTCOME_VALUE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def win_tie_loss(outcomes: Sequence[str | None]) -> dict[str, int]:
    counts = {"win": 0, "tie": 0, "loss": 0, "invalid": 0}
    for o in outcomes:
        counts[o if o in OUTCOME_VALUE else "invalid"] += 1
    return counts


def bootstrap_ci(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean, n_boot: int = 2000,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over items (prompts): resample with replacement, recompute `stat`."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    if stat is np.mean:
        boots = arr[idx].mean(axis=1)
    else:
        boots = np.array([stat(arr[i]) for i in idx])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def win_rate_summary(outcomes: Sequence[str | None], n_boot: int = 2000, seed: int = 0) -> dict:
    """Counts, the win rate (ties as half) over valid outcomes in percent, and its bootstrap 95% CI."""
    counts = win_tie_loss(outcomes)
    vals = [OUTCOME_VALUE[o] for o in outcomes if o in OUTCOME_VALUE]
    rate = 100 * float(np.mean(vals)) if vals else math.nan
    lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
    return {**counts, "n": len(vals), "win_rate": rate, "ci_low": 100 * lo, "ci_high": 100 * hi,
            "shares": outcome_shares(outcomes, n_boot=n_boot, seed=seed)}


def outcome_shares(outcomes: Sequence[str | None], n_boot: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """Share of win / tie / loss among valid outcomes, in percent, each as [value, ci_low, ci_high]."""
    valid = [o for o in outcomes if o in OUTCOME_VALUE]
    out = {}
    for kind in OUTCOME_VALUE:
        flags = [float(o == kind) for o in valid]
        lo, hi = bootstrap_ci(flags, n_boot=n_boot, seed=seed)
        out[kind] = [100 * float(np.mean(flags)) if flags else math.nan, 100 * lo, 100 * hi]
    return out


def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's kappa of two raters over the same items: (p_o - p_e) / (1 - p_e)."""
    if len(a) != len(b) or not a:
        raise ValueError("kappa needs two equally long, non-empty label lists")
    labels = sorted(set(a) | set(b), key=str)
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((list(a).count(lab) / n) * (list(b).count(lab) / n) for lab in labels)
    return 1.0 if p_e == 1 else (p_o - p_e) / (1 - p_e)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float | np.ndarray = 1e-3, iters: int = 100) -> np.ndarray:
    """Logistic regression with fractional targets (ties as 0.5) by Newton's method; x includes the intercept.
    `l2` (a scalar or one value per coefficient) keeps the fit finite when outcomes are separable."""
    w = np.zeros(x.shape[1])
    lam = np.broadcast_to(np.asarray(l2, dtype=float), w.shape)
    for _ in range(iters):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) + lam * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(lam)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


LENGTH_L2 = 1.0


def length_controlled_win_rate(preference: Sequence[float], len_model: Sequence[float],
                               len_reference: Sequence[float]) -> dict:
    """A simplified form of AlpacaEval's length-controlled win rate.

    AlpacaEval 2.0 fits a GLM per model: logit P(model preferred) = θ + φ·tanh(Δlen / sd(Δlen)) + ψ·difficulty,
    then reports the win rate with the length term set to zero. Here the instruction-difficulty term is left out
    (it needs many models' annotations on the same instructions): we fit
    logit p_i = θ + φ·tanh((len_model_i - len_ref_i) / sd(Δlen)) on the per-instruction preferences
    (1 win, 0.5 tie, 0 loss) and report LC = 100·σ(θ), the predicted win rate at equal length. The length
    coefficient gets a unit L2 penalty (`LENGTH_L2`) so that a model which wins nearly everything does not have
    its wins explained away by length alone on ~80 instructions.
    """
    y = np.asarray(preference, dtype=float)
    d = np.asarray(len_model, dtype=float) - np.asarray(len_reference, dtype=float)
    sd = float(np.std(d)) or 1.0
    x = np.column_stack([np.ones_like(d), np.tanh(d / sd)])
    theta, phi = fit_logistic(x, y, l2=np.array([1e-4, LENGTH_L2]))
    return {"lc_win_rate": 100 * float(_sigmoid(np.array(theta))), "theta": float(theta), "length_coef": float(phi),
            "len_diff_sd": sd}


def length_controlled_ci(preference, len_model, len_reference, n_boot: int = 500, seed: int = 0) -> tuple[float, float]:
    y = np.asarray(preference, dtype=float)
    lm, lr = np.asarray(len_model, dtype=float), np.asarray(len_reference, dtype=float)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, y.size, y.size)
        vals.append(length_controlled_win_rate(y[i], lm[i], lr[i])["lc_win_rate"])
    lo, hi = np.quantile(vals, [0.025, 0.975])
    return float(lo), float(hi)
