"""Token counts per message: a fast built-in approximation, or a real Hugging Face tokenizer.

The approximation counts regex pieces: a run of letters/digits/marks is one piece, and every CJK character and
every punctuation or symbol character is one piece. On English prose a BPE tokenizer such as Llama's gives about
1.2–1.4× as many tokens; use a tokenizer path or hub id where exact budgets matter. The same pattern runs in DuckDB
(RE2) and in Python (the `regex` module), so both count alike.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

APPROX = "approx"
PIECE_PATTERN = r"[\p{Han}\p{Hiragana}\p{Katakana}]|[\pL\pN\pM_]+|[^\s\pL\pN\pM_]"


def approx_sql(expr: str) -> str:
    """SQL for the approximate token count of a VARCHAR expression."""
    return f"len(regexp_extract_all({expr}, '{PIECE_PATTERN}'))::INTEGER"


@lru_cache(maxsize=1)
def _piece_re():
    import regex

    return regex.compile(PIECE_PATTERN)


def approx_count(text: str) -> int:
    return sum(1 for _ in _piece_re().finditer(text))


@lru_cache(maxsize=4)
def load_tokenizer(name: str):
    """A tokenizer from a local folder or a hub id (the hub needs network; offline it fails with its own error)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def count_with_tokenizer(name: str, texts: list[str]) -> list[int]:
    tok = load_tokenizer(name)
    if not texts:
        return []
    ids = tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [len(x) for x in ids]


def tokenizer_fingerprint(name: str) -> dict:
    from ..fingerprint import path_fingerprint

    if name == APPROX:
        return {"tokenizer": APPROX, "pattern": PIECE_PATTERN}
    p = Path(name)
    return {"tokenizer": name, "files": path_fingerprint(p)} if p.exists() else {"tokenizer": name}
