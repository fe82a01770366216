"""Token counts per message: a fast built-in approximation, or a real Hugging Face tokenizer.

The approximation counts regex pieces: a run of letters/digits/marks is one piece, and every CJK character and
every punctuation or symbol character is one piece. On English prose a BPE tokenizer such as Llama's gives about
1.2–1.4× as many tokens; use a tokenizer path or hub id where exact budgets matter. The same pattern runs in DuckDB
(RE2) and in Python (the `regex` module), so both count alike. `approx_count_column` counts a whole Arrow column in
numpy from each byte's character class (a table RE2 itself fills in), with the same counts as the RE2 pattern.
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


SPACE, WORD, SINGLE, CJK_WORD = 0, 1, 2, 3  # piece classes of a character (see `_char_classes`)


@lru_cache(maxsize=1)
def _char_classes():
    """Piece class of every code point, decided by RE2 itself on each character, so the numpy count below gives
    the pattern's own answers: SPACE (RE2's \\s), WORD ([\\pL\\pN\\pM_]), CJK_WORD (a Han/Hiragana/Katakana
    character that is also a word character: a piece of its own, unless a word run already started before it),
    SINGLE (anything else, a piece of its own). Computed once per machine and Arrow version (~0.3 s), then
    memory-mapped (`xwin_data.text.derived`)."""
    import pyarrow as pa

    from xwin_data.text.derived import cached_arrays

    return cached_arrays("char-classes", {"pyarrow": pa.__version__, "pattern": PIECE_PATTERN},
                         lambda: {"classes": _derive_char_classes()})["classes"]


def _derive_char_classes():
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    cps = np.concatenate([np.arange(0, 0xD800), np.arange(0xE000, 0x110000)])  # no surrogates in UTF-8
    data = cps.astype("<u4").tobytes().decode("utf-32-le").encode("utf-8")
    widths = np.where(cps < 0x80, 1, np.where(cps < 0x800, 2, np.where(cps < 0x10000, 3, 4)))
    offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int32)
    chars = pa.StringArray.from_buffers(len(cps), pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))

    def has(pattern: str):
        return pc.match_substring_regex(chars, f"^{pattern}$").to_numpy(zero_copy_only=False)

    word, cjk, space = has(r"[\pL\pN\pM_]"), has(r"[\p{Han}\p{Hiragana}\p{Katakana}]"), has(r"\s")
    cls = np.full(0x110000, SINGLE, dtype=np.uint8)
    cls[cps[word]] = WORD
    cls[cps[word & cjk]] = CJK_WORD  # a CJK character that is no word character stays SINGLE
    cls[cps[space]] = SPACE
    return cls


@lru_cache(maxsize=1)
def _byte_table():
    import numpy as np

    return np.concatenate([_char_classes()[:128], np.full(128, SINGLE, dtype=np.uint8)])


def _byte_classes(data):
    """The piece class of the character each UTF-8 byte belongs to (continuation bytes take their lead's)."""
    import numpy as np

    table = _char_classes()
    cls = _byte_table()[data]  # right for ASCII bytes; the others are overwritten below
    lead = np.flatnonzero(data >= 0xC0)
    if len(lead):
        last = len(data) - 1
        b0 = data[lead].astype(np.int32)
        b1, b2, b3 = (data[np.minimum(lead + k, last)].astype(np.int32) & 0x3F for k in (1, 2, 3))
        width = np.where(b0 >= 0xF0, 4, np.where(b0 >= 0xE0, 3, 2))
        cp = np.where(width == 2, ((b0 & 0x1F) << 6) | b1,
                      np.where(width == 3, ((b0 & 0x0F) << 12) | (b1 << 6) | b2,
                               ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3))
        char_cls = table[cp]
        cls[lead] = char_cls
        cls[lead + 1] = char_cls
        for k in (2, 3):
            longer = width > k
            cls[lead[longer] + k] = char_cls[longer]
    return cls


COUNT_CHUNK_BYTES = 1 << 20  # text counted at once: the per-byte arrays stay a few MB (and in the CPU caches)


def approx_count_column(content):
    """Approximate token counts (int32) of an Arrow string column; the same numbers as the RE2 pattern.

    Every byte gets its character's class; a piece starts at each SINGLE character, at each CJK_WORD character
    outside a word run, and where a word run starts (a WORD character after a byte outside any run). A run is a
    WORD character, or a CJK_WORD character whose nearest non-CJK character before it (in the same value) is WORD.
    The column is counted in slices of whole values of about `COUNT_CHUNK_BYTES` each.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    content = content.combine_chunks() if isinstance(content, pa.ChunkedArray) else content
    if content.type != pa.string() or content.null_count or len(content) == 0:
        return pc.count_substring_regex(content, PIECE_PATTERN).cast(pa.int32())
    offsets = np.frombuffer(content.buffers()[1], dtype=np.int32)[content.offset:content.offset + len(content) + 1]
    total = int(offsets[-1] - offsets[0])
    if total <= COUNT_CHUNK_BYTES:
        return _approx_count(content, offsets)
    cuts = np.unique(np.searchsorted(offsets - offsets[0], np.arange(COUNT_CHUNK_BYTES, total, COUNT_CHUNK_BYTES)))
    cuts = [0, *(int(c) for c in cuts if 0 < c < len(content)), len(content)]
    return pa.concat_arrays([_approx_count(content.slice(a, b - a), offsets[a:b + 1]) for a, b in zip(cuts, cuts[1:])])


def _approx_count(content, offsets):
    import numpy as np
    import pyarrow as pa

    data = np.frombuffer(content.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    if len(data) == 0:
        return pa.array(np.zeros(len(content), dtype=np.int32))
    cls = _byte_classes(data)
    value_starts = offsets[:-1][offsets[:-1] < len(data)]
    run = cls == WORD
    cjk = cls == CJK_WORD
    has_cjk = bool(cjk.any())
    if has_cjk:  # a block of CJK_WORD bytes continues a run when the byte before it is WORD, in the same value
        at = np.flatnonzero(cjk)
        opens_value = np.zeros(len(cls), dtype=bool)
        opens_value[value_starts] = True
        opens = opens_value[at]
        opens[0] = True
        opens[1:] |= at[1:] != at[:-1] + 1
        first = at[opens]
        continues = ~opens_value[first] & (cls[np.maximum(first - 1, 0)] == WORD)
        run[at] = continues[np.cumsum(opens) - 1]
    starts = run.copy()  # a run starts where a run byte follows a byte outside any run, or opens a value
    starts[1:] &= ~run[:-1]
    starts[value_starts] = run[value_starts]
    lead = (data & 0xC0) != 0x80
    single = cls == SINGLE
    if has_cjk:
        single |= cjk & ~run
    piece = starts | (single & lead)
    positions = np.flatnonzero(piece)
    return pa.array(np.diff(np.searchsorted(positions, offsets)).astype(np.int32), pa.int32())


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
    from xwin_data.core.fingerprint import path_fingerprint

    if name == APPROX:
        return {"tokenizer": APPROX, "pattern": PIECE_PATTERN}
    p = Path(name)
    return {"tokenizer": name, "files": path_fingerprint(p)} if p.exists() else {"tokenizer": name}
