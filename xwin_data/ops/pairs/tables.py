"""The tables and statistics of the judge stage: decided pairs, every judgment, every call, drops with reasons.

Statistics (in `xwin-data show xwin_pair`): verdict mix of the final replies, flip rate (pairs whose two valid
orders disagree in sign), tie rate, invalid rate (final replies with no verdict; pairs with none), position
bias (share of non-tie verdicts for the answer shown first), length bias (share of decided pairs whose chosen
response is the longer one; 0.5 means none), tokens and dollars of all calls behind the table.
"""
from __future__ import annotations

from collections import Counter

import pyarrow as pa

from xwin_data.conversation import MESSAGES_TYPE

CALLS_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("order", pa.string()), ("attempt", pa.int32()), ("request_key", pa.string()),
    ("raw_text", pa.string()), ("verdict", pa.string()), ("preference", pa.float64()),
    ("parse_status", pa.string()), ("error", pa.string()), ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()), ("cost_usd", pa.float64()), ("cached", pa.bool_()), ("judge", pa.string()),
    ("template_version", pa.string())])

_COMMON = [("pair_id", pa.string()), ("prompt_id", pa.string()), ("prompt", MESSAGES_TYPE)]
_TAIL = [("strength", pa.float64()), ("consistent", pa.bool_()), ("n_valid_orders", pa.int32()),
         ("verdict_ab", pa.string()), ("verdict_ba", pa.string()), ("judge", pa.string()),
         ("template_version", pa.string()), ("judge_calls", pa.int32()), ("prompt_tokens", pa.int64()),
         ("completion_tokens", pa.int64()), ("cost_usd", pa.float64())]
PAIR_SCHEMA = pa.schema(_COMMON + [("chosen", pa.string()), ("rejected", pa.string()), ("chosen_id", pa.string()),
                                   ("rejected_id", pa.string()), ("chosen_policy", pa.string()),
                                   ("rejected_policy", pa.string())] + _TAIL)
JUDGMENT_SCHEMA = pa.schema(_COMMON + [("first", pa.string()), ("second", pa.string()), ("first_id", pa.string()),
                                       ("second_id", pa.string()), ("first_policy", pa.string()),
                                       ("second_policy", pa.string()), ("outcome", pa.string())] + _TAIL)


def write_outputs(ctx, params, rows: list[dict], run, judge_id: str, template_id: str) -> None:
    main, judgments_t, calls_t = ctx.outputs
    by_pair: dict[str, list] = {}
    for c in run.calls:
        by_pair.setdefault(c.pair_id, []).append(c)
    pair_rows, judgment_rows = [], []
    reasons: Counter = Counter()
    for r in rows:
        pid = r["pair_id"]
        out = run.outcomes[pid]
        calls = by_pair.get(pid, [])
        ab, ba = run.final.get((pid, "ab")), run.final.get((pid, "ba"))
        tail = {"strength": out.strength, "consistent": out.consistent, "n_valid_orders": out.n_valid,
                "verdict_ab": ab.verdict if ab else None, "verdict_ba": ba.verdict if ba else None,
                "judge": judge_id, "template_version": template_id, "judge_calls": len(calls),
                "prompt_tokens": sum(c.prompt_tokens for c in calls),
                "completion_tokens": sum(c.completion_tokens for c in calls),
                "cost_usd": round(sum(c.cost_usd for c in calls), 8)}
        common = {"pair_id": pid, "prompt_id": r["prompt_id"], "prompt": r["prompt"]}
        outcome = out.winner or "invalid"
        judgment_rows.append({**common, "first": r["first"], "second": r["second"], "first_id": r["first_id"],
                              "second_id": r["second_id"], "first_policy": r["first_policy"],
                              "second_policy": r["second_policy"], "outcome": outcome, **tail})
        reason = None
        if out.winner is None:
            failed = any(c.parse_status == "error" for c in calls)
            reason = "judge_call_failed" if failed else "judge_unparseable"
        elif out.winner == "tie":
            reason = "tie"
        elif out.consistent is False and not params.keep_inconsistent:
            reason = "inconsistent"
        elif (out.strength or 0.0) < params.min_strength:
            reason = "below_min_strength"
        if reason:
            reasons[reason] += 1
            detail = " | ".join(f"{c.order}#{c.attempt}: {c.verdict or c.error or (c.raw_text or '')[:150]}"
                                for c in calls)
            ctx.drop(pid, reason, detail)
            continue
        x_wins = out.winner == "first"
        c_side, r_side = ("first", "second") if x_wins else ("second", "first")
        pair_rows.append({**common, "chosen": r[c_side], "rejected": r[r_side], "chosen_id": r[f"{c_side}_id"],
                          "rejected_id": r[f"{r_side}_id"], "chosen_policy": r[f"{c_side}_policy"],
                          "rejected_policy": r[f"{r_side}_policy"], **tail})
    with ctx.writer(PAIR_SCHEMA, main) as w:
        w.write(pair_rows)
    with ctx.writer(JUDGMENT_SCHEMA, judgments_t) as w:
        w.write(judgment_rows)
    with ctx.writer(CALLS_SCHEMA, calls_t) as w:
        w.write([{**c.__dict__, "judge": judge_id, "template_version": template_id} for c in run.calls])
    ctx.stats.update(pair_stats(run, judgment_rows, pair_rows, dict(reasons)))


def pair_stats(run, judgment_rows: list[dict], pair_rows: list[dict], reasons: dict) -> dict:
    finals = list(run.final.values())
    valid = [c for c in finals if c.parse_status == "ok"]
    both = [o for o in run.outcomes.values() if o.n_valid == 2]
    n = max(1, len(judgment_rows))
    non_tie = [c for c in valid if c.preference]
    longer = [len(p["chosen"]) > len(p["rejected"]) for p in pair_rows if len(p["chosen"]) != len(p["rejected"])]
    outcomes = Counter(j["outcome"] for j in judgment_rows)
    return {
        "pairs_judged": len(judgment_rows), "pairs_kept": len(pair_rows), "not_kept_by_reason": reasons,
        "outcomes": dict(outcomes),
        "verdict_mix": dict(Counter(c.verdict for c in valid)),
        "flip_rate": round(sum(1 for o in both if not o.consistent) / max(1, len(both)), 4),
        "tie_rate": round(outcomes.get("tie", 0) / n, 4),
        "invalid_rate": round(sum(1 for c in finals if c.parse_status != "ok") / max(1, len(finals)), 4),
        "invalid_pair_rate": round(outcomes.get("invalid", 0) / n, 4),
        "first_position_win_rate": round(sum(1 for c in non_tie if c.preference > 0) / max(1, len(non_tie)), 4),
        "chosen_longer_share": round(sum(longer) / len(longer), 4) if longer else None,
        "calls": len(run.calls), "parse_retries": sum(1 for c in run.calls if c.attempt > 0),
        "cached_calls": sum(1 for c in run.calls if c.cached),
        "prompt_tokens": sum(c.prompt_tokens for c in run.calls),
        "completion_tokens": sum(c.completion_tokens for c in run.calls),
        "cost_usd": round(sum(c.cost_usd for c in run.calls), 6),
    }
