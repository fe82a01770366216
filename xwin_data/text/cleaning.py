"""Cleaning of message text: HTML to markdown, unicode repair, whitespace.

Each step has a cheap test that says whether a value needs it, written once and compiled for both Python `re` and
Arrow's RE2, so the op can test whole Arrow columns at C speed and send only the values that need work through
Python (`clean_column`), while `clean_value` does the same to one string (for row-at-a-time code and tests).
Both give identical results.

- HTML: only assistant values (ShareGPT scrapes of the ChatGPT page) with a block-level tag and no markdown code
  fence are converted with markdownify; the page's "Copy code" buttons and icons are removed first, and a code
  block's header (the language name beside that button) becomes the fence's info string.
- Unicode: `fast` runs ftfy on values with mojibake signatures (a Latin-1 lead character followed by a
  continuation-like one, as UTF-8 read as Latin-1/Windows-1252 gives), HTML entities or control characters;
  `full` runs ftfy on every non-ASCII value (about 100× slower on non-English text); `off` skips it.
- Whitespace: CRLF to LF, non-breaking and zero-width spaces, trailing spaces on lines, 3+ newlines to 2, trim.
"""
from __future__ import annotations

import re
from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

_CONT = [(0x80, 0xBF), (0x152, 0x153), (0x160, 0x161), (0x178, 0x178), (0x17D, 0x17E), (0x192, 0x192),
         (0x2C6, 0x2C6), (0x2DC, 0x2DC), (0x2013, 0x2014), (0x2018, 0x201E), (0x2020, 0x2022), (0x2026, 0x2026),
         (0x2030, 0x2030), (0x2039, 0x203A), (0x20AC, 0x20AC), (0x2122, 0x2122)]
_CTRL = [(0x00, 0x08), (0x0B, 0x0C), (0x0E, 0x1F), (0x7F, 0x7F)]
_ENTITY = r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,30});"
_HTML = r"<(?:p|div|ol|ul|li|pre|h[1-6]|table|blockquote|br)(?:\s[^>]*)?/?>"
_WS_RULES = [(r"\r\n?", "\n"), ("\u200b", ""), ("\u00a0", " "), (r"[ \t]+\n", "\n"), (r"\n{3,}", "\n\n")]


def _cls(ranges: list[tuple[int, int]], re2: bool) -> str:
    def ch(c: int) -> str:
        return f"\\x{{{c:X}}}" if re2 else f"\\u{c:04x}"
    return "[" + "".join(ch(a) if a == b else f"{ch(a)}-{ch(b)}" for a, b in ranges) + "]"


def suspect_pattern(mode: str, re2: bool) -> str:
    if mode == "full":
        return (r"[^\x{9}\x{A}\x{D}\x{20}-\x{7E}]" if re2 else r"[^\t\n\r\x20-\x7e]") + "|" + _ENTITY
    return _cls([(0xC2, 0xF0)], re2) + _cls(_CONT, re2) + "|" + _cls(_CTRL, re2) + "|" + _ENTITY


@lru_cache(maxsize=None)
def _py(pattern: str, flags: int = 0) -> re.Pattern:
    return re.compile(pattern, flags)


_LANG = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")
_NO_LANG = {"", "undefined", "null", "none", "plaintext", "text"}


def _code_language(pre) -> str:
    """The language of a ChatGPT-page code block: the `language-x` class of its code element, else the text of its
    header (the bar with the language name and the "Copy code" button); "" when neither names one."""
    names = []
    code = pre.find("code")
    if code is not None:
        names += [c[len("language-"):] for c in code.get("class", []) if c.startswith("language-")]
    names.append(pre.get("data-code-header", ""))
    for name in names:
        name = name.strip()
        if name.lower() not in _NO_LANG and _LANG.fullmatch(name):
            return name.lower()
    return ""


def _html_to_markdown(text: str) -> str:
    """HTML to markdown; a code block's header becomes the fence's info string (```python), never code."""
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(text, "html.parser")
    for button in soup.find_all("button"):
        header = button.parent
        pre = button.find_parent("pre")
        if pre is not None and header is not None and header is not pre and header.find("code") is None:
            pre["data-code-header"] = header.get_text(" ", strip=True).replace("Copy code", "").strip()
            header.decompose()
        else:
            button.decompose()
    for svg in soup.find_all("svg"):
        svg.decompose()
    return MarkdownConverter(heading_style="ATX", bullets="-", code_language_callback=_code_language).convert_soup(soup)


def needs_html(text: str, role: str) -> bool:
    return role == "assistant" and "```" not in text and bool(_py(_HTML, re.I).search(text))


def python_fixes(text: str, role: str, html: bool = True, unicode: str = "fast") -> str:
    """The steps that need Python (HTML, unicode), applied where their test says so."""
    if html and needs_html(text, role):
        text = _html_to_markdown(text)
    if unicode != "off" and _py(suspect_pattern(unicode, False)).search(text):
        import ftfy

        text = ftfy.fix_text(text)
    return text


def normalise_whitespace(text: str) -> str:
    for pattern, repl in _WS_RULES:
        text = _py(pattern).sub(repl, text)
    return text.strip()


def clean_value(text: str, role: str = "assistant", html: bool = True, unicode: str = "fast",
                whitespace: bool = True) -> str:
    """Clean one message value (the row-at-a-time form of `clean_column`)."""
    text = python_fixes(text, role, html, unicode)
    return normalise_whitespace(text) if whitespace else text


def clean_column(content: pa.Array, role: pa.Array, html: bool = True, unicode: str = "fast",
                 whitespace: bool = True) -> tuple[pa.Array, dict[str, int]]:
    """Clean a flat column of message values; returns the new column and how many values each step touched."""
    counts = {"html": 0, "unicode": 0}
    need = None
    if html:
        is_html = pc.and_(pc.equal(role, "assistant"), pc.match_substring_regex(content, _HTML, ignore_case=True))
        if pc.any(is_html).as_py():  # the code-fence test only where a tag was found (few values)
            fenced = pc.match_substring(content.filter(is_html), "```")
            is_html = pc.replace_with_mask(is_html, is_html, pc.invert(fenced))
        counts["html"] = pc.sum(is_html).as_py() or 0
        need = is_html
    if unicode != "off":
        sus = pc.match_substring_regex(content, suspect_pattern(unicode, True))
        counts["unicode"] = pc.sum(sus).as_py() or 0
        need = sus if need is None else pc.or_(need, sus)
    if need is not None and (counts["html"] or counts["unicode"]):
        idx = pc.indices_nonzero(need).to_pylist()
        values, roles = content.take(idx).to_pylist(), role.take(idx).to_pylist()
        fixed = [python_fixes(v, r, html, unicode) for v, r in zip(values, roles)]
        content = pc.replace_with_mask(content, need, pa.array(fixed, type=content.type))
    if whitespace:  # one matching pass finds the few values the rewriting passes need to touch
        rules = [(p.replace("\u200b", r"\x{200B}").replace("\u00a0", r"\x{A0}"), r) for p, r in _WS_RULES]
        touch = pc.match_substring_regex(content, "|".join(p for p, _ in rules))
        if pc.any(touch).as_py():
            part = content.filter(touch)
            for pattern, repl in rules:
                part = pc.replace_substring_regex(part, pattern, repl)
            content = pc.replace_with_mask(content, touch, part)
        content = pc.utf8_trim_whitespace(content)
    return content, counts
