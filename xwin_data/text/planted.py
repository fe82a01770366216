"""Planted near-duplicate and similar-but-distinct conversations, for measuring near-dedup quality.

Unrelated conversations draw their words from a large pseudo-word vocabulary (their shingles practically never
meet). A near copy edits 0.5-2% of the original's words (replace, insert or delete) and changes the case of some
words and the whitespace between others: its 5-word-shingle Jaccard stays at about 0.82 or above. A similar pair
shares a prefix or a share of its words with the original, tuned to an exact Jaccard between 0.3 and 0.75, and must
not be merged. Copies come later in the list than their originals (the originals are what dedup keeps).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field


@dataclass
class Planted:
    records: list[dict]  # ShareGPT-form {"id", "conversations"}
    near: list[tuple[str, str]] = field(default_factory=list)  # (original id, copy id): the copy must go
    similar: list[tuple[str, str, float]] = field(default_factory=list)  # (original, other, exact jaccard): both stay


def shingle_jaccard(x: str, y: str, k: int = 5) -> float:
    """Exact Jaccard of k-word shingles after lower-casing and splitting on non-word characters."""
    def grams(t: str) -> set:
        w = [v for v in re.split(r"[^\w]+", t.lower()) if v]
        return {tuple(w[i:i + k]) for i in range(max(1, len(w) - k + 1))}
    a, b = grams(x), grams(y)
    return len(a & b) / len(a | b)


def _vocabulary(rng: random.Random, n: int = 20_000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def _text(words: list[str]) -> str:
    return " ".join(words)


def _conv(cid: str, question: list[str], answer: list[str]) -> dict:
    return {"id": cid, "conversations": [{"from": "human", "value": _text(question)},
                                         {"from": "gpt", "value": _text(answer)}]}


def _near_copy(rng: random.Random, words: list[str], vocab: list[str]) -> list[str]:
    out = list(words)
    edits = max(1, int(len(words) * rng.uniform(0.005, 0.02)))
    for _ in range(edits):
        i = rng.randrange(len(out))
        kind = rng.random()
        if kind < 0.5:
            out[i] = rng.choice(vocab)
        elif kind < 0.75:
            out.insert(i, rng.choice(vocab))
        elif len(out) > 2:
            del out[i]
    for i in rng.sample(range(len(out)), k=max(1, len(out) // 20)):  # case
        out[i] = out[i].upper() if rng.random() < 0.5 else out[i].title()
    return out


def _join_noisy(rng: random.Random, words: list[str]) -> str:
    """Words joined with varied whitespace (double spaces, newlines, tabs)."""
    seps = [" "] * 20 + ["  ", "\n", "\t", " \n "]
    return "".join(w + rng.choice(seps) for w in words).strip()


def _similar(rng: random.Random, words: list[str], vocab: list[str]) -> list[str]:
    if rng.random() < 0.5:  # a shared prefix, the rest rewritten
        target = rng.uniform(0.32, 0.72)
        keep = int(len(words) * 2 * target / (1 + target))
        return words[:keep] + [rng.choice(vocab) for _ in range(len(words) - keep)]
    out = list(words)  # heavy scattered edits
    for i in rng.sample(range(len(out)), k=max(1, int(len(out) * rng.uniform(0.04, 0.09)))):
        out[i] = rng.choice(vocab)
    return out


def planted(n_unique: int = 2000, n_near: int = 200, n_similar: int = 200, seed: int = 0,
            answer_words: tuple[int, int] = (80, 500)) -> Planted:
    """`n_unique` unrelated conversations, then `n_near` near copies and `n_similar` similar ones of some of them,
    shuffled into the later part of the list (always after their originals)."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    originals = []
    for i in range(n_unique):
        q = [rng.choice(vocab) for _ in range(rng.randint(8, 30))]
        a = [rng.choice(vocab) for _ in range(rng.randint(*answer_words))]
        originals.append((f"u{i:07d}", q, a))
    out = Planted([_conv(cid, q, a) for cid, q, a in originals])
    picks = rng.sample(range(n_unique), n_near + n_similar)
    later: list[tuple[int, dict]] = []
    for j, i in enumerate(picks[:n_near]):
        cid, q, a = originals[i]
        copy = {"id": f"n{j:07d}", "conversations": [
            {"from": "human", "value": _join_noisy(rng, _near_copy(rng, q, vocab) if len(q) > 40 else q)},
            {"from": "gpt", "value": _join_noisy(rng, _near_copy(rng, a, vocab))}]}
        later.append((i, copy))
        out.near.append((cid, copy["id"]))
    j = 0
    for i in picks[n_near:]:
        cid, q, a = originals[i]
        while True:
            other = _similar(rng, a, vocab)
            sim = shingle_jaccard(f"user {_text(q)} assistant {_text(a)}", f"user {_text(q)} assistant {_text(other)}")
            if 0.3 <= sim <= 0.75:
                break
        rec = _conv(f"s{j:07d}", q, other)
        later.append((i, rec))
        out.similar.append((cid, rec["id"], sim))
        j += 1
    # Each copy goes somewhere after its original.
    slots: dict[int, list[dict]] = {}
    for i, rec in later:
        slots.setdefault(rng.randint(i, n_unique - 1), []).append(rec)
    merged = []
    for i, rec in enumerate(out.records):
        merged.append(rec)
        merged.extend(slots.get(i, []))
    out.records = merged
    return out
