"""Token counts per message: a fast built-in approximation, or a real Hugging Face tokenizer.

The approximation counts regex pieces: a run of letters/digits/marks is one piece, and every CJK character and
every punctuation or symbol character is one piece. On English prose a BPE tokenizer such as Llama's gives about
1.2–1.4× as many tokens; use a tokenizer path or hub id where exact budgets matter. The same pattern runs in DuckDB
(RE2) and in Python (the `regex` module), so both count alike. `approx_count_column` counts a whole Arrow column:
ASCII values (most of them) by byte classes in numpy, the rest with the RE2 pattern; both give the same counts.
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


@lru_cache(maxsize=1)
def _ascii_classes():
    """Byte class of each ASCII byte under PIECE_PATTERN in RE2: 0 space (RE2's \\s), 1 word, 2 a piece alone."""
    import numpy as np

    cls = np.full(256, 2, dtype=np.uint8)
    for c in b"\t\n\f\r ":
        cls[c] = 0
    for c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
        cls[c] = 1
    return cls


def approx_count_column(content):
    """Approximate token counts (int32) of an Arrow string column; the same numbers as the RE2 pattern."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    content = content.combine_chunks() if isinstance(content, pa.ChunkedArray) else content
    if content.type != pa.string() or content.null_count or len(content) == 0:
        return pc.count_substring_regex(content, PIECE_PATTERN).cast(pa.int32())
    offsets = np.frombuffer(content.buffers()[1], dtype=np.int32)[content.offset:content.offset + len(content) + 1]
    data = np.frombuffer(content.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    cls = _ascii_classes()[data]
    word = cls == 1
    piece = cls == 2
    starts = word.copy()  # a word piece starts where a word byte follows a non-word byte or opens a value
    starts[1:] &= ~word[:-1]
    starts[offsets[:-1][offsets[:-1] < len(word)]] = word[offsets[:-1][offsets[:-1] < len(word)]]
    piece |= starts
    positions = np.flatnonzero(piece)
    counts = np.diff(np.searchsorted(positions, offsets)).astype(np.int32)
    result = pa.array(counts, pa.int32())
    is_ascii = pc.string_is_ascii(content)
    if not pc.all(is_ascii).as_py():  # non-ASCII values: the RE2 pattern (Unicode classes)
        other = pc.invert(is_ascii)
        exact = pc.count_substring_regex(content.filter(other), PIECE_PATTERN).cast(pa.int32())
        result = pc.replace_with_mask(result, other, exact)
    return result


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
