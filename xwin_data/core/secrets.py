"""Credentials kept out of what the catalog records: a URL's user:password (`https://user:key@host`) and secret-like
query parameters (`?api_key=...`) are masked in params, overrides, stats and error text before they are written.
The op itself still gets the real value; only the record is masked (and fingerprints are taken over the masked
form, so rotating a key does not rebuild anything)."""
from __future__ import annotations

import re
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s?#]+)@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&](?:api[_-]?key|key|token|access[_-]?token|secret|password|sig)=)[^&#\s]+",
                           re.IGNORECASE)


def redact_text(text: str) -> str:
    if "@" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}", text)


def redact(value: Any) -> Any:
    """`value` (strings, lists, tuples, dicts, nested) with credentials in URLs masked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value
