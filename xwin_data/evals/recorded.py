"""Recorded judgments as evaluation input: FastChat's original Vicuna-eval GPT-4 reviews (``review_*.jsonl``,
one order per pair, a ``"s1 s2"`` first line) joined to their answers (``answer_*.jsonl``) for lengths and names.

The verdict comes from parsing the review text, as it would from a live judge; the numeric ``score`` field the
files also carry is kept only as ``recorded_scores`` so tests can check the parser against it.
"""
from __future__ import annotations

import json
from pathlib import Path

from xwin_data.evals.verdicts import parse_any_pair


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_answers(answers_dir: Path | None) -> dict[str, dict]:
    if answers_dir is None or not Path(answers_dir).is_dir():
        return {}
    out = {}
    for f in sorted(Path(answers_dir).glob("*.jsonl")):
        for a in _read_jsonl(f):
            out[a["answer_id"]] = a
    return out


def load_vicuna_reviews(review_path: Path, answers: dict[str, dict] | None = None) -> list[dict]:
    """One record per review: the two answers (first/second presented), the parsed verdict and lengths."""
    answers = answers or {}
    rows = []
    for r in _read_jsonl(Path(review_path)):
        a1, a2 = answers.get(r["answer1_id"], {}), answers.get(r["answer2_id"], {})
        rows.append({
            "question_id": r["question_id"], "review_id": r["review_id"], "judge": r.get("reviewer_id"),
            "model_1": a1.get("model_id"), "model_2": a2.get("model_id"),
            "answer_1": a1.get("text"), "answer_2": a2.get("text"),
            "len_1": len(a1["text"]) if a1.get("text") is not None else None,
            "len_2": len(a2["text"]) if a2.get("text") is not None else None,
            "judgment": r["text"], "verdict": parse_any_pair(r["text"]), "recorded_scores": r.get("score"),
        })
    return rows


def outcome_for(verdict: str | None, position: int) -> str | None:
    """Outcome for the answer shown at `position` (1 or 2) given a presentation-order verdict A/B/tie."""
    if verdict not in ("A", "B", "tie"):
        return None
    if verdict == "tie":
        return "tie"
    return "win" if (verdict == "A") == (position == 1) else "loss"
