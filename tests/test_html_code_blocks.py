"""ChatGPT-page HTML: a code block's header (language name beside "Copy code") becomes the fence's info string."""
from __future__ import annotations

import pyarrow as pa

from xwin_data.text.cleaning import clean_column, clean_value

HEADER = ('<div class="flex items-center relative text-gray-200 bg-gray-800 px-4 py-2 text-xs font-sans">'
          '<span class="">{lang}</span><button class="flex ml-auto gap-2"><svg stroke="currentColor" fill="none">'
          '<path d="M16 4h2"></path></svg>Copy code</button></div>')
BLOCK = ('<pre><div class="bg-black mb-4 rounded-md">{header}<div class="p-4 overflow-y-auto">'
         '<code class="!whitespace-pre hljs{cls}">{code}</code></div></div></pre>')


def page(lang: str, cls: str = "", code: str = "def f(x):\n    return x + 1\n") -> str:
    return (f"<p>Here is the function:</p>{BLOCK.format(header=HEADER.format(lang=lang), cls=cls, code=code)}"
            "<p>Call it with one argument.</p>")


def test_header_becomes_info_string() -> None:
    out = clean_value(page("python"))
    assert "```python\ndef f(x):\n    return x + 1\n```" in out
    assert "Copy code" not in out
    assert "\npython\n" not in out  # the header is not the code's first line


def test_code_class_and_missing_language() -> None:
    # The code element's own class wins; a header without a name gives a plain fence.
    assert "```bash\nls -la\n```" in clean_value(page("", cls=" language-bash", code="ls -la\n"))
    assert "```\nSELECT 1;\n```" in clean_value(page("", code="SELECT 1;\n"))
    # Several blocks each keep their own language.
    two = page("javascript", code="let a = 1;\n") + page("css", code="a { color: red; }\n")
    out = clean_value(two)
    assert "```javascript\nlet a = 1;\n```" in out and "```css\na { color: red; }\n```" in out


def test_column_path_matches_value_path() -> None:
    values = [page("python"), page("", cls=" language-rust", code="fn main() {}\n"), "plain text answer"]
    content = pa.array(values)
    role = pa.array(["assistant"] * len(values))
    cleaned, counts = clean_column(content, role)
    assert counts["html"] == 2
    assert cleaned.to_pylist() == [clean_value(v) for v in values]
    assert "```rust\nfn main() {}\n```" in cleaned[1].as_py()
