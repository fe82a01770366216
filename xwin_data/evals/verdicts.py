"""Parsers for recorded and live judge outputs.

- ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (FastChat pair prompts; C is a tie), also ``[A]`` as FastChat's fallback;
- ``[[rating]]`` single grades (``Rating: [[7]]``, ``[[8.5]]``), also ``[7]``;
- the original Vicuna-eval reviews: a first line ``"s1 s2"`` with two 1-10 scores (``"8, 9"`` accepted too).

Each returns None when the text holds no verdict; callers keep such rows as invalid, never drop them silently.
"""
from __future__ import annotations

import re

_PAIR = re.compile(r"\[\[(A|B|C)\]\]")
_PAIR_LOOSE = re.compile(r"\[(A|B|C)\]")
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_LOOSE = re.compile(r"\[(\d+\.?\d*)\]")


def parse_pair_verdict(text: str | None) -> str | None:
    """'A', 'B' or 'tie' in presentation terms (A = the answer shown first)."""
    if not text:
        return None
    found = _PAIR.findall(text) or _PAIR_LOOSE.findall(text)
    if not found or len(set(found)) > 1:
        return None  # none, or contradictory verdicts
    return {"A": "A", "B": "B", "C": "tie"}[found[-1]]


def parse_rating(text: str | None) -> float | None:
    if not text:
        return None
    found = _RATING.findall(text) or _RATING_LOOSE.findall(text)
    return float(found[-1]) if found else None


_NUM = r"(\d+(?:\.\d+)?)"
_TUPLE = re.compile(r"\(\s*" + _NUM + r"\s*,\s*" + _NUM + r"\s*\)")
_ASSISTANT = re.compile(r"Assistant\s*([12])\s*(?:'s score)?\s*[:=]\s*" + _NUM, re.I)


def parse_score_pair(text: str | None) -> tuple[float, float] | None:
    """Two scores, for the first and the second assistant, from a Vicuna-eval review: the first line "s1 s2"
    (general prompt); else the last "Assistant 1: s1" and "Assistant 2: s2" lines; else the last "(s1, s2)" tuple
    (the math and coding prompts ask for a Python tuple; problems also contain coordinate tuples, so it is last)."""
    if not text:
        return None
    parts = text.strip().split("\n", 1)[0].replace(",", " ").split()
    if len(parts) == 2:
        try:
            return float(parts[0]), float(parts[1])
        except ValueError:
            pass
    named = {k: float(v) for k, v in _ASSISTANT.findall(text)}
    if set(named) == {"1", "2"}:
        return named["1"], named["2"]
    tuples = _TUPLE.findall(text)
    if tuples:
        return float(tuples[-1][0]), float(tuples[-1][1])
    return None


def score_pair_verdict(text: str | None) -> str | None:
    scores = parse_score_pair(text)
    if scores is None:
        return None
    return "A" if scores[0] > scores[1] else "B" if scores[0] < scores[1] else "tie"


def parse_any_pair(text: str | None) -> str | None:
    """Try the bracket verdict, then the score-pair first line."""
    return parse_pair_verdict(text) or score_pair_verdict(text)
