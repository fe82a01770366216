"""Language identification with py3langid's model, which ships inside the package (nothing is downloaded).

py3langid walks a byte-level DFA in a Python loop, one text at a time (~300 µs for a few hundred characters).
`detect_batch` runs the same model over a whole batch at once: texts are encoded exactly as py3langid does, the DFA
advances one byte column for all texts per numpy step, feature counts become a sparse matrix, and the naive Bayes
scores are one sparse-dense product. The result is py3langid's label (up to float rounding in near ties).

A conversation's language is that of a sample of its text: the first few non-system messages, cut to a number of
characters (a few hundred characters decide the language well).

Users mean languages as macrolanguages: `zh` is Chinese whether a detector says `cmn`, `wuu` or `yue`.
`macrolanguage` maps a detector's code to its ISO 639-3 macrolanguage (SIL's mappings, from `iso639-lang`) in its
shortest form; the raw code is kept beside it.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache

import numpy as np

from xwin_data.text.derived import cached_arrays

UNDETERMINED = "und"


@lru_cache(maxsize=1)
def _model():
    """(DFA next-move table, pre-shifted row offsets, feature per state, per-class log-probabilities per feature,
    class priors, labels, alias pairs) as compact numpy arrays, derived from py3langid's model once per machine
    (`xwin_data.text.derived`) and memory-mapped: the build's processes share their pages. py3langid's own
    identifier (Python lists and a float64 copy of the table, ~150 MB more) is held only while they are derived."""
    from importlib.metadata import version

    a = cached_arrays("py3langid-model", {"py3langid": version("py3langid")}, _derive_model)
    return (a["nextmove"], a["rowbase"], a["output"], a["nb_ptc"], a["nb_pc"], np.asarray(a["classes"], dtype=object),
            [tuple(p) for p in a["alias_pairs"].tolist()])


def _derive_model() -> dict[str, np.ndarray]:
    import gc

    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE)
    arrays = {"nextmove": np.asarray(ident.tk_nextmove, dtype=np.int32),
              "rowbase": np.asarray(ident.tk_row, dtype=np.int32) << 8,
              "output": np.asarray(ident.tk_output, dtype=np.int32),
              "nb_ptc": np.asarray(ident.nb_ptc, dtype=np.float32), "nb_pc": np.asarray(ident.nb_pc),
              "classes": np.asarray(ident.nb_classes, dtype=str),
              "alias_pairs": np.asarray(list(ident._alias_pairs), dtype=np.int64).reshape(-1, 2)}
    del ident
    gc.collect()
    return arrays


@lru_cache(maxsize=None)
def _lang(code: str):
    from iso639 import Lang
    from iso639.exceptions import InvalidLanguageValue

    try:
        return Lang(code)
    except (InvalidLanguageValue, ValueError, TypeError):
        return None


@lru_cache(maxsize=None)
def normalise_code(code: str) -> str:
    """A language code in its shortest ISO 639 form (`eng` -> `en`, `zho` -> `zh`); unknown codes unchanged."""
    lang = _lang(code.strip().lower()) if code else None
    return (lang.pt1 or lang.pt3) if lang is not None else code


@lru_cache(maxsize=None)
def macrolanguage(code: str) -> str:
    """The macrolanguage a code belongs to, where that macrolanguage has a two-letter code (`wuu`, `yue`, `cmn`
    -> `zh`; `arb` -> `ar`; `nb` -> `no`), else the code itself in its shortest form (`hr` stays `hr`: its
    macrolanguage `hbs` has no two-letter code and is not what users filter by)."""
    lang = _lang(code.strip().lower()) if code else None
    if lang is None:
        return code
    macro = lang.macro()
    best = macro if macro is not None and macro.pt1 else lang
    return best.pt1 or best.pt3


def matching_codes(wanted: list[str], codes: list[str]) -> list[str]:
    """Those of `codes` (as found in a table) that a user asking for `wanted` means: a code matches when it, its
    shortest form or its macrolanguage is one of the wanted codes (in their shortest form)."""
    want = {normalise_code(w) for w in wanted}
    return [c for c in codes if c is not None and (c in want or normalise_code(c) in want or macrolanguage(c) in want)]


def release_model() -> None:
    """Free the model (~95 MB) once a stage is done with it; the next `detect_batch` loads it again."""
    import gc

    _model.cache_clear()
    gc.collect()


def _encode(text: str) -> bytes:
    """py3langid's own input encoding."""
    if text.isupper():
        text = text.lower()
    return unicodedata.normalize("NFC", text).encode("utf8", errors="surrogatepass")


def _has_letters(text: str) -> bool:
    return any(ch.isalpha() for ch in text[:200])


def detect(text: str) -> str:
    """Language code of one text (py3langid), `und` for text without letters."""
    import py3langid

    if not text or not _has_letters(text):
        return UNDETERMINED
    return py3langid.classify(text)[0]


def _feature_counts(slots: np.ndarray, lens: np.ndarray, n_feat: int):
    """Counts of each (text, feature) as a sparse matrix (CSC, one entry per pair), from the feature hit at each
    byte of each text (`slots`: the texts' bytes one after another, -1 where no feature ends). Dropping the -1s
    leaves the hits grouped by text (CSR); the column-major transpose then puts a text's repeats of a feature side
    by side to be summed, all in linear time."""
    from scipy import sparse

    hit = slots >= 0
    hits_before = np.concatenate([[0], np.cumsum(hit, dtype=np.int64)])
    indptr = hits_before[np.concatenate([[0], np.cumsum(lens)])]  # hits before each text's first byte
    by_text = sparse.csr_matrix((np.ones(int(indptr[-1]), dtype=np.float32), slots[hit], indptr),
                                shape=(len(lens), n_feat))
    counts = by_text.tocsc()  # texts ascending within each column
    counts.sum_duplicates()
    return counts


DETECT_CHUNK = 2048  # texts scored together: bounds the per-chunk arrays (a few MB) and the padding


def detect_batch(texts: list[str]) -> list[str]:
    """Language codes of many texts, vectorised: the texts are sorted by length and scored in chunks of similar
    lengths, so a chunk's byte matrix is barely wider than its texts."""
    out = [UNDETERMINED] * len(texts)
    keep = [i for i, t in enumerate(texts) if t and _has_letters(t)]
    if not keep:
        return out
    encoded = [_encode(texts[i]) for i in keep]
    lens = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    order = np.argsort(-lens, kind="stable")  # longest first: the texts still walking are always a prefix
    for lo in range(0, len(order), DETECT_CHUNK):
        chunk = order[lo:lo + DETECT_CHUNK]
        for pos, label in zip(chunk, _labels([encoded[i] for i in chunk], lens[chunk])):
            out[keep[pos]] = str(label)
    return out


def _labels(encoded: list[bytes], lens: np.ndarray) -> np.ndarray:
    """py3langid's labels of texts already encoded, longest first."""
    nextmove, rowbase, output, nb_ptc, nb_pc, classes, alias_pairs = _model()
    width = int(lens[0])
    padded = b"".join(b.ljust(width, b"\0") for b in encoded)  # zero bytes past a text's end are never read
    columns = np.frombuffer(padded, dtype=np.uint8).reshape(len(encoded), width).T.copy()  # byte j of every text
    active_until = np.searchsorted(-lens, -np.arange(1, width + 1), side="right")  # texts longer than j
    state = np.zeros(len(encoded), dtype=np.int32)
    starts = np.zeros(len(encoded), dtype=np.int64)  # where each text's bytes begin in `slots`
    np.cumsum(lens[:-1], out=starts[1:])
    slots = np.empty(int(lens.sum()), dtype=np.int32)  # the feature ending at each byte of each text, or -1
    for j in range(width):
        k = int(active_until[j])
        s = nextmove[rowbase[state[:k]] + columns[j, :k]]
        state[:k] = s
        slots[starts[:k] + j] = output[s]
    n_feat, n_cls = nb_ptc.shape
    scores = np.full((len(encoded), n_cls), np.finfo(np.float32).min, dtype=np.float32)
    if (slots >= 0).any():
        counts = _feature_counts(slots, lens, n_feat)
        counts.data = np.log1p(counts.data)
        has = np.bincount(counts.indices, minlength=len(encoded)) > 0
        dense = np.asarray(counts @ nb_ptc, dtype=np.float32) + nb_pc
        scores[has] = dense[has]
    for i, j in alias_pairs:
        scores[:, i] = np.maximum(scores[:, i], scores[:, j])
        scores[:, j] = np.finfo(np.float32).min
    return classes[scores.argmax(axis=1)]


def sample_column(messages, n_messages: int = 4, chars: int = 400):
    """The text sample whose language stands for each conversation of a list<struct<role, content>> column: its
    first `n_messages` non-system messages joined by newlines, cut to `chars` characters (code points)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    messages = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
    flat = pc.list_flatten(messages)
    parents = pc.list_parent_indices(messages).to_numpy()
    kept = pc.fill_null(pc.not_equal(flat.field("role"), "system"), False).to_numpy(zero_copy_only=False)
    parents = parents[kept]
    rank = np.arange(len(parents)) - np.searchsorted(parents, parents)  # place among the row's kept messages
    first = rank < n_messages
    content = pc.utf8_slice_codeunits(flat.field("content").filter(pa.array(kept)).filter(pa.array(first)), 0, chars)
    offsets = np.zeros(len(messages) + 1, dtype=np.int32)
    np.cumsum(np.bincount(parents[first], minlength=len(messages)), out=offsets[1:])
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), content), "\n")
    return pc.utf8_slice_codeunits(joined, 0, chars)


def sample_py(messages: list[dict], n_messages: int = 4, chars: int = 400) -> str:
    body = [m["content"] for m in messages if m["role"] != "system"][:n_messages]
    return "\n".join(body)[:chars]
