"""Language identification with py3langid, whose model ships inside the package (nothing is downloaded).

A conversation's language is that of a sample of its text: the first few non-system messages, cut to a number of
characters (py3langid's cost grows with length, and a few hundred characters decide the language well).
"""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_pickled_model(MODEL_FILE) if hasattr(LanguageIdentifier, "from_pickled_model") \
        else None


def detect(text: str) -> str:
    import py3langid

    if not text or not any(ch.isalpha() for ch in text[:200]):
        return "und"
    return py3langid.classify(text)[0]


def sample_sql(messages: str = "messages", n_messages: int = 4, chars: int = 400) -> str:
    """SQL for the text sample whose language stands for the conversation."""
    return (f"left(array_to_string(list_transform(list_filter({messages}, lambda m: m.role <> 'system')[1:{n_messages}], "
            f"lambda m: m.content), '\n'), {chars})")


def sample_py(messages: list[dict], n_messages: int = 4, chars: int = 400) -> str:
    body = [m["content"] for m in messages if m["role"] != "system"][:n_messages]
    return "\n".join(body)[:chars]
