"""Verdicts of recorded and live judge replies, read with the judge's own parser (`xwin_data.llm.judge`), so the
evaluation runners, the judge study and the Xwin-Pair judge stage agree on every reply.

- pairwise: ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (MT-bench, C is a tie), the graded ``[[A>B]]`` labels, and the 2023
  Vicuna-eval reviews' two 1-10 scores (first line ``"s1 s2"``, ``Assistant 1: s``, or a ``(s1, s2)`` tuple);
  each is returned in presentation terms: 'A' (the answer shown first), 'B' or 'tie';
- single grades: ``[[rating]]`` (``Rating: [[7]]``, ``[[8.5]]``), FastChat's ``[rating]`` fallback too.

Each returns None when the text holds no verdict; callers keep such rows as invalid, never drop them silently.
"""
from __future__ import annotations

import re

from xwin_data.llm.judge import parse_verdict

PAIR_KINDS = ("abc", "graded", "scores")
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_LOOSE = re.compile(r"\[(\d+\.?\d*)\]")


def _side(preference: float | None) -> str | None:
    if preference is None:
        return None
    return "A" if preference > 0 else "B" if preference < 0 else "tie"


def parse_pair_verdict(text: str | None, kind: str = "abc") -> str | None:
    """'A', 'B' or 'tie' from a reply in the `kind` format of `xwin_data.llm.judge.parse_verdict`."""
    v = parse_verdict(kind, text)
    return _side(v.preference) if v.status == "ok" else None


def parse_any_pair(text: str | None) -> str | None:
    """The first format that parses: bracket letters, graded labels, then a pair of scores."""
    for kind in PAIR_KINDS:
        side = parse_pair_verdict(text, kind)
        if side is not None:
            return side
    return None


def parse_rating(text: str | None) -> float | None:
    """A single 1-10 grade; the last one given wins (judges restate the format before answering)."""
    if not text:
        return None
    found = _RATING.findall(text) or _RATING_LOOSE.findall(text)
    return float(found[-1]) if found else None
