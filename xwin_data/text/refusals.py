"""Refusal and AI-disclaimer boilerplate, one pattern file per language under resources/refusals/ (data, not code).

Each line of `<lang>.txt` is an RE2 pattern matched case-insensitively anywhere in an assistant message; `#` lines
are comments. `refusal_regex` joins the chosen languages' patterns into one expression DuckDB evaluates per value.
"""
from __future__ import annotations

from importlib import resources

PACKAGE = "xwin_data.resources"


def _folder():
    return resources.files(PACKAGE) / "refusals"


def known_languages() -> list[str]:
    return sorted(f.name[:-4] for f in _folder().iterdir() if f.name.endswith(".txt"))


def patterns(languages: list[str] | None = None) -> dict[str, list[str]]:
    """{language: its patterns}, for `languages` (None: every shipped language); an unknown one is an error."""
    known = known_languages()
    chosen = known if languages is None else languages
    unknown = [lang for lang in chosen if lang not in known]
    if unknown:
        raise ValueError(f"no refusal patterns for {', '.join(unknown)} (known: {', '.join(known)}); add "
                         f"resources/refusals/<lang>.txt")
    out = {}
    for lang in chosen:
        lines = (_folder() / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        out[lang] = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return out


def refusal_regex(languages: list[str] | None = None) -> str:
    """One case-insensitive RE2 expression matching any pattern of the chosen languages."""
    pats = [p for ps in patterns(languages).values() for p in ps]
    return "(?i)" + "|".join(f"(?:{p})" for p in pats)
