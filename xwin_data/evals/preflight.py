"""Before a judged evaluation does any work: is there a judge to call? A key where the endpoint needs one, and an
endpoint that accepts connections. Each failure is one `JudgeUnavailable` line that says what to set."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from xwin_data.core.errors import XwinError

OPENAI_URL = "https://api.openai.com/v1"


class JudgeUnavailable(XwinError):
    """No key, or no reachable endpoint, for the judge a command needs."""


def check_judge(base_url: str | None, api_key_env: str, *, url_flag: str = "--judge-base-url",
                key_flag: str = "--judge-key-env", timeout: float = 3.0) -> None:
    """Raise `JudgeUnavailable` unless the judge endpoint can be called: OpenAI's own API needs the key variable
    set; any endpoint must accept a TCP connection (a local OpenAI-compatible server may run without a key)."""
    url = base_url or OPENAI_URL
    if "api.openai.com" in url and not os.environ.get(api_key_env):
        raise JudgeUnavailable(f"no judge: set {api_key_env} (the variable {key_flag} names) to call {url}, or "
                               f"point {url_flag} at an OpenAI-compatible server (vLLM, SGLang, ...)")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise JudgeUnavailable(f"judge endpoint {url!r} is not an http(s) URL; set {url_flag}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise JudgeUnavailable(f"judge endpoint {url} is not reachable ({reason}); start the server or set "
                               f"{url_flag}") from None
