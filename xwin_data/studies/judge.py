"""Judge study: how far a pairwise judge can be trusted on a pair table.

Input columns (any pair table; names are matched, the first present wins):

- per-order verdicts, in presentation terms (A = the response shown first): ``verdict_ab`` / ``verdict_ba``
  (A, B, C or tie, invalid, NULL = not asked), or raw judge text ``judgment_ab`` / ``judgment_ba`` (parsed with
  the ``[[A]]`` parser, then the Vicuna-eval ``"s1 s2"`` parser); a single ``verdict`` / ``judgment`` counts as
  the AB order only;
- the two responses ``response_a`` / ``response_b`` (text or messages; ``first`` / ``second`` as in the
  ``xwin_pair_judgments`` table, where a is the response shown first in the AB order), or ``len_a`` / ``len_b``;
  verdicts may also be the graded judge's labels (``A>B``, ``A>>B``, ``B<A``, ``A=B``);
- optional ``label`` (a, b, tie; human or reference), optional ``reward_a`` / ``reward_b`` (reward-model scores).

Measures: invalid rate (calls whose verdict could not be parsed), tie rate (valid calls), first-position win share
(decisive calls won by the response shown first; 0.5 = no position bias), position-flip rate (pairs judged in
both orders whose winner changed with the order), inconsistency rate (any disagreement between orders), length
bias (decisive calls won by the longer response; 0.5 = none), and where present accuracy and Cohen's kappa against
labels and agreement and kappa between the reward model and the judge. Rates carry bootstrap 95% CIs.

Accuracy against labels comes in the forms papers report: `label_accuracy` (the pair's aggregated verdict),
`label_accuracy_ab` / `_ba` (each presentation order alone), `label_accuracy_order_avg` (their mean, LLMBar's
headline) and `label_accuracy_both_orders` (strict: right in both orders). Invalid verdicts are left out of these
by default; `invalid_as_wrong` counts them as wrong, as a paper that scores every prompt does.

Columns are read typed: a JSON column's values are unquoted first, and a response stored as a JSON number or
boolean is measured as its text, never as a length.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from xwin_data.core.catalog import Catalog
from xwin_data.core.connection import connect
from xwin_data.core.errors import XwinError
from xwin_data.evals.stats import bootstrap_ci, cohen_kappa
from xwin_data.evals.verdicts import parse_any_pair
from xwin_data.studies.output import study_dir, write_results
from xwin_data.studies.plots import bar_with_ci, confusion

_GRADED = re.compile(r"^([AB])\s*(>>|>|<<|<|==|=)\s*([AB])$")
_SCORES = re.compile(r"^(\d+(?:\.\d+)?)\s+(\d+(?:\.\d+)?)$")  # the scores template's label: "s_A s_B"
VERDICT_ALIASES = {"a": "A", "b": "B", "c": "tie", "tie": "tie", "1": "A", "2": "B", "0": "tie"}


class StudyError(XwinError, ValueError):
    """The table lacks what the study needs; the message names the expected columns."""


def _first(cols: set[str], *names: str) -> str | None:
    return next((n for n in names if n in cols), None)


def _norm_verdict(value, raw: bool) -> str | None:
    """-> 'A' | 'B' | 'tie' | 'invalid' | None (not asked)."""
    if value is None:
        return None
    if raw:
        return parse_any_pair(str(value)) or "invalid"
    v = str(value).strip().strip("[]")
    graded = _GRADED.match(v)  # the graded judge's labels: "A>B", "A>>B", "B<A", "A=B"
    if graded:
        left, op, right = graded.groups()
        if op.startswith("="):
            return "tie"
        return left if op.startswith(">") else right
    scores = _SCORES.match(v)
    if scores:
        a, b = float(scores.group(1)), float(scores.group(2))
        return "A" if a > b else "B" if b > a else "tie"
    return VERDICT_ALIASES.get(v.lower(), "invalid")


def _length(value, is_length: bool = False) -> int | None:
    """Characters of a response (text, or messages' contents); `is_length` when the column already is one."""
    if value is None:
        return None
    if is_length:
        return int(value)
    if isinstance(value, list):
        return sum(len(str(m.get("content") or "")) for m in value if isinstance(m, dict))
    return len(str(value))


def _typed(column: str, duckdb_type: str) -> str:
    """SQL reading a column as the study needs it: JSON values unquoted (a JSON string's text, a JSON number or
    boolean as its text), scalars as text, lists (messages) as they are."""
    quoted = f'"{column}"'
    if duckdb_type == "JSON":
        return f"json_extract_string({quoted}, '$')"
    if duckdb_type.endswith("[]") or duckdb_type.startswith(("STRUCT", "MAP")):
        return quoted
    return f"CAST({quoted} AS VARCHAR)"


def load_pairs(catalog: Catalog, table: str) -> list[dict]:
    """Rows in the study's canonical form: v_ab / v_ba in a/b terms, len_a, len_b, label, reward_a, reward_b."""
    con = connect(catalog, canned_views=False)
    try:
        try:
            types = {r[0]: r[1] for r in con.execute(f'DESCRIBE "{table}"').fetchall()}
        except Exception as err:  # noqa: BLE001 - duckdb raises CatalogException
            raise StudyError(f"no table {table!r} in catalog {catalog.root}") from err
        cols = set(types)
        ab_raw = _first(cols, "judgment_ab", "judgment")
        ab = _first(cols, "verdict_ab", "verdict")
        ba_raw, ba = _first(cols, "judgment_ba"), _first(cols, "verdict_ba")
        if not (ab or ab_raw):
            raise StudyError(f"table {table!r} has no judge verdicts: expected verdict_ab/verdict_ba, "
                             f"judgment_ab/judgment_ba, verdict or judgment (columns: {', '.join(sorted(cols))})")
        pick = {
            "id": _first(cols, "pair_id", "id", "question_id", "prompt_id"),
            "ab": ab or ab_raw, "ba": ba or ba_raw,
            "a": _first(cols, "len_a", "response_a", "answer_a", "first"),
            "b": _first(cols, "len_b", "response_b", "answer_b", "second"),
            "label": _first(cols, "label", "human_label", "reference_label"),
            "reward_a": _first(cols, "reward_a", "rm_score_a"), "reward_b": _first(cols, "reward_b", "rm_score_b"),
        }
        numeric = {"reward_a", "reward_b"} | ({"a", "b"} if pick["a"] == "len_a" else set())
        select = ", ".join(
            (f'"{c}" AS "{k}"' if k in numeric and types[c] != "JSON" else
             f'CAST(json_extract_string("{c}", \'$\') AS DOUBLE) AS "{k}"' if k in numeric else
             f'{_typed(c, types[c])} AS "{k}"') if c else f'NULL AS "{k}"' for k, c in pick.items())
        cur = con.execute(f'SELECT {select} FROM "{table}"')
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()
    out = []
    for r in rows:
        v_ab = _norm_verdict(r["ab"], raw=not ab)
        v_ba = _norm_verdict(r["ba"], raw=not ba) if pick["ba"] else None
        label = _norm_verdict(r["label"], raw=False) if r["label"] is not None else None
        out.append({
            "id": r["id"],
            "v_ab": {"A": "a", "B": "b"}.get(v_ab, v_ab),   # order ab: A is response a
            "v_ba": {"A": "b", "B": "a"}.get(v_ba, v_ba),   # order ba: A is response b
            "len_a": _length(r["a"], pick["a"] == "len_a"), "len_b": _length(r["b"], pick["b"] == "len_b"),
            "label": {"A": "a", "B": "b"}.get(label, label) if label != "invalid" else None,
            "reward_a": r["reward_a"], "reward_b": r["reward_b"],
        })
    return out


def aggregate(v_ab: str | None, v_ba: str | None) -> str | None:
    """The pair's verdict: agreeing orders give theirs, disagreeing orders a tie, one valid order its own."""
    valid = [v for v in (v_ab, v_ba) if v in ("a", "b", "tie")]
    if not valid:
        return None
    return valid[0] if len(valid) == 1 or valid[0] == valid[1] else "tie"


def _rate(flags: list[float], name: str, n_boot: int, seed: int) -> dict:
    value = sum(flags) / len(flags) if flags else math.nan
    lo, hi = bootstrap_ci(flags, n_boot=n_boot, seed=seed) if flags else (math.nan, math.nan)
    return {"metric": name, "value": value, "ci_low": lo, "ci_high": hi, "n": len(flags)}


def order_accuracies(labelled: list[dict], invalid_as_wrong: bool) -> tuple[list[float], list[float], list[float]]:
    """Per-call correctness in the AB order and the BA order, and per-pair correctness in both orders at once, on
    pairs with a label. An invalid verdict counts as wrong when `invalid_as_wrong`, else its call (and, for the
    both-orders measure, its pair) is left out; an order never asked is always left out."""
    per_order: dict[str, list[float]] = {"ab": [], "ba": []}
    both: list[float] = []
    for p in labelled:
        right = {}
        for order in ("ab", "ba"):
            v = p[f"v_{order}"]
            if v is None or (v == "invalid" and not invalid_as_wrong):
                continue
            right[order] = float(v == p["label"])
            per_order[order].append(right[order])
        if len(right) == 2:
            both.append(float(right["ab"] and right["ba"]))
    return per_order["ab"], per_order["ba"], both


def judge_metrics(pairs: list[dict], n_boot: int = 2000, seed: int = 0, invalid_as_wrong: bool = False
                  ) -> tuple[list[dict], dict]:
    calls = [(p, order, p[f"v_{order}"]) for p in pairs for order in ("ab", "ba") if p[f"v_{order}"] is not None]
    valid = [(p, o, v) for p, o, v in calls if v != "invalid"]
    decisive = [(p, o, v) for p, o, v in valid if v in ("a", "b")]
    both = [p for p in pairs if p["v_ab"] in ("a", "b", "tie") and p["v_ba"] in ("a", "b", "tie")]
    longer = [(p, v) for p, _, v in decisive
              if p["len_a"] is not None and p["len_b"] is not None and p["len_a"] != p["len_b"]]
    rows = [
        _rate([v == "invalid" for _, _, v in calls], "invalid_rate", n_boot, seed),
        _rate([v == "tie" for _, _, v in valid], "tie_rate", n_boot, seed),
        _rate([v == ("a" if o == "ab" else "b") for _, o, v in decisive], "first_position_win_share", n_boot, seed),
        _rate([{p["v_ab"], p["v_ba"]} == {"a", "b"} for p in both], "position_flip_rate", n_boot, seed),
        _rate([p["v_ab"] != p["v_ba"] for p in both], "inconsistent_rate", n_boot, seed),
        _rate([v == ("a" if p["len_a"] > p["len_b"] else "b") for p, v in longer], "longer_wins_share", n_boot, seed),
    ]
    summary: dict = {"pairs": len(pairs), "calls": len(calls), "pairs_both_orders": len(both)}
    labelled = [(aggregate(p["v_ab"], p["v_ba"]), p["label"]) for p in pairs if p["label"] in ("a", "b", "tie")]
    labelled = [(j, lab) for j, lab in labelled if j is not None]
    if labelled:
        rows.append(_rate([j == lab for j, lab in labelled], "label_accuracy", n_boot, seed))
        ab, ba, both_right = order_accuracies([p for p in pairs if p["label"] in ("a", "b", "tie")],
                                              invalid_as_wrong)
        for flags, name in ((ab, "label_accuracy_ab"), (ba, "label_accuracy_ba")):
            if flags:
                rows.append(_rate(flags, name, n_boot, seed))
        if ab and ba:  # LLMBar's headline: the mean of the two orders' accuracies (CI from the pooled calls)
            avg = _rate(ab + ba, "label_accuracy_order_avg", n_boot, seed)
            avg["value"] = (sum(ab) / len(ab) + sum(ba) / len(ba)) / 2
            rows.append(avg)
        if both_right:
            rows.append(_rate(both_right, "label_accuracy_both_orders", n_boot, seed))
        summary["invalid_as_wrong"] = invalid_as_wrong
        summary["label_kappa"] = cohen_kappa([j for j, _ in labelled], [lab for _, lab in labelled])
        labels = ["a", "b", "tie"]
        summary["label_confusion"] = [[sum(1 for j, lab in labelled if lab == r and j == c) for c in labels]
                                      for r in labels]
    rm = []
    for p in pairs:
        j = aggregate(p["v_ab"], p["v_ba"])
        if j in ("a", "b") and p["reward_a"] is not None and p["reward_b"] is not None:
            rm.append((j, "a" if p["reward_a"] > p["reward_b"] else "b" if p["reward_a"] < p["reward_b"] else "tie"))
    if rm:
        rows.append(_rate([j == r for j, r in rm], "rm_judge_agreement", n_boot, seed))
        summary["rm_judge_kappa"] = cohen_kappa([j for j, _ in rm], [r for _, r in rm])
    summary["metrics"] = {r["metric"]: r["value"] for r in rows}
    return rows, summary


def judged_table(catalog: Catalog, table: str) -> tuple[str, str | None]:
    """The table to study and a note. The judge stage's main table (`xwin_pair`) keeps only decided pairs (ties
    and unparseable ones are dropped), which would understate tie and invalid rates; its `<table>_judgments`
    sibling holds every judged pair with the responses as shown first / second, so the study reads that."""
    sibling = f"{table}_judgments"
    tv = catalog.current(table)
    if tv is None or catalog.current(sibling) is None:
        return table, None
    con = connect(catalog, canned_views=False)
    try:
        cols = {r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()}
    finally:
        con.close()
    if {"chosen", "rejected"} <= cols:
        return sibling, (f"{table} holds only the decided pairs; read {sibling} (every judged pair, ties and "
                         "invalid verdicts included)")
    return table, None


def run_judge_study(catalog: Catalog, table: str, out: Path | None = None, n_boot: int = 2000,
                    invalid_as_wrong: bool = False) -> dict:
    source, note = judged_table(catalog, table)
    pairs = load_pairs(catalog, source)
    if not pairs:
        raise StudyError(f"table {table!r} is empty")
    rows, summary = judge_metrics(pairs, n_boot=n_boot, invalid_as_wrong=invalid_as_wrong)
    folder = study_dir(catalog, f"judge_{table}", out)
    summary["table"] = table
    summary["source_table"] = source
    if note:
        summary["note"] = note
    write_results(folder, rows, summary)
    shown = [r for r in rows if r["n"]]
    pngs = [bar_with_ci(folder / "judge_rates.png", [r["metric"] for r in shown], [r["value"] for r in shown],
                        [r["ci_low"] for r in shown], [r["ci_high"] for r in shown],
                        f"judge study: {table} ({len(pairs)} pairs)", "share (95% bootstrap CI)", reference=0.5)]
    if "label_confusion" in summary:
        pngs.append(confusion(folder / "judge_vs_labels.png", summary["label_confusion"], ["a", "b", "tie"],
                              f"judge vs labels (kappa {summary['label_kappa']:.2f})", "judge", "label"))
    summary["pngs"] = [str(p) for p in pngs]
    summary["folder"] = str(folder)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary
