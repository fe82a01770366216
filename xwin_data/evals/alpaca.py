"""AlpacaEval-style evaluation: a model's answers against reference answers, judged pairwise.

Win rate = mean over instructions of 1 (win), 0.5 (tie), 0 (loss), in percent, with a percentile bootstrap CI
over instructions. The length-controlled variant is `stats.length_controlled_win_rate` (documented there): the
win rate predicted at equal answer length by a logistic fit on the length difference.

Both presentation orders are judged in the live runner; an instruction's outcome is the mean of its orders
(win in one and loss in the other is a tie), and an order whose verdict could not be parsed is left out.
"""
from __future__ import annotations

import math

import numpy as np

from xwin_data.evals.stats import OUTCOME_VALUE, length_controlled_ci, length_controlled_win_rate, win_rate_summary


def summarize(records: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """records: {"outcome": win|tie|loss|None, "len_model", "len_reference"} per instruction (one order each)."""
    summary = win_rate_summary([r.get("outcome") for r in records], n_boot=n_boot, seed=seed)
    valid = [r for r in records if r.get("outcome") in OUTCOME_VALUE
             and r.get("len_model") is not None and r.get("len_reference") is not None]
    summary["invalid_rate"] = summary["invalid"] / len(records) if records else math.nan
    if len(valid) >= 5:
        pref = [OUTCOME_VALUE[r["outcome"]] for r in valid]
        lm = [r["len_model"] for r in valid]
        lr = [r["len_reference"] for r in valid]
        lc = length_controlled_win_rate(pref, lm, lr)
        lo, hi = length_controlled_ci(pref, lm, lr, n_boot=min(n_boot, 500), seed=seed)
        summary.update(lc_win_rate=lc["lc_win_rate"], lc_ci_low=lo, lc_ci_high=hi, length_coef=lc["length_coef"],
                       mean_len_model=float(np.mean(lm)), mean_len_reference=float(np.mean(lr)))
    return summary


def combine_orders(first: str | None, second: str | None) -> str | None:
    """One instruction judged in both orders (outcomes already from the model's side) -> one outcome."""
    vals = [OUTCOME_VALUE[o] for o in (first, second) if o in OUTCOME_VALUE]
    if not vals:
        return None
    mean = sum(vals) / len(vals)
    return "win" if mean > 0.5 else "loss" if mean < 0.5 else "tie"
