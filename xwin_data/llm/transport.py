"""The HTTP layer under ChatClient: how a chat-completions body reaches the endpoint and what a failure says.

Two transports, one interface (`acquire` a request slot, `post_chat` a body and get the reply's bytes, `release`,
`close`):
- `AiohttpTransport` (the default where aiohttp imports): one aiohttp session, one pool of `concurrency`
  connections, the JSON body posted as is. About a fifth of the openai client's CPU per request, which is what
  lets one process keep 512 calls a second in flight at 1 s latency.
- `OpenAITransport`: the `openai` AsyncOpenAI client on httpx (its own retries off), for endpoints that need what
  it does beyond a bearer-token POST: HTTP(S) proxies from the environment, Azure-style deployments, openai's
  own request headers. httpx scans every pooled connection on each request, so the slots are spread over
  clients of 8 connections each to keep that scan short.

Both raise the same things: `StatusFailure` (an HTTP error status, its message and headers; `status_error` maps it
to a typed error), `Timeout` and `ConnectionFailed`. Messages are not redacted here; the client redacts them."""
from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import os
import time
import urllib.request
from typing import Any, Callable

from xwin_data.llm.errors import (AuthError, ConnectionFailed, LLMError, RateLimited, RequestRejected, ServerError,
                                  Timeout)

OPENAI_URL = "https://api.openai.com/v1"
TRANSPORTS = ("auto", "aiohttp", "openai", "httpx")  # "httpx": the earlier name of "openai"


@functools.lru_cache(maxsize=None)
def aiohttp_available() -> bool:
    """Whether aiohttp imports (a dependency; an install without it falls back to the openai client)."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_transport(transport: str) -> str:
    """`auto` is aiohttp where it imports and no proxy is set in the environment (the openai client on httpx
    honours HTTP(S)_PROXY; the direct transport does not), else the openai client."""
    if transport == "httpx":
        return "openai"
    if transport == "auto":
        return "aiohttp" if aiohttp_available() and not urllib.request.getproxies() else "openai"
    if transport == "aiohttp" and not aiohttp_available():
        raise RuntimeError('transport "aiohttp" needs aiohttp: pip install aiohttp (or set transport: openai)')
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r} (one of {', '.join(TRANSPORTS)})")
    return transport


def make_transport(api_key: str, base_url: str | None, timeout_s: float, concurrency: int, transport: str,
                   headers: dict[str, str] | None = None):
    """The transport named by `transport` (after `resolve_transport`)."""
    kind = resolve_transport(transport)
    cls = AiohttpTransport if kind == "aiohttp" else OpenAITransport
    return cls(api_key, base_url, timeout_s, concurrency, dict(headers or {}))


class StatusFailure(Exception):
    """The endpoint answered with an HTTP error status."""

    def __init__(self, status: int, message: str, headers: Any = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.headers = status, message, headers


def status_error(err: StatusFailure, retry_after_max_s: float,
                 redact: Callable[[str], str]) -> tuple[LLMError, float | None]:
    """An HTTP error status as a typed error, and how long every call should pause: 429 RateLimited (a
    `Retry-After` within `retry_after_max_s` pauses every call; a longer one only backs this call off), 401/403
    AuthError, 5xx/408/409 ServerError, any other RequestRejected. `redact` cleans the message of keys."""
    status = err.status
    if status == 429:
        wait = retry_after_seconds(err.headers)
        if wait and wait > retry_after_max_s:  # not honoured: this call backs off, the run goes on
            return RateLimited(redact(f"429 rate limited: {err.message} (Retry-After {wait:g}s is more than "
                                      f"retry_after_max_s={retry_after_max_s:g})"), wait), None
        return RateLimited(redact(f"429 rate limited: {err.message}"), wait), wait or None
    if status in (401, 403):
        return AuthError(redact(f"{status} not authorised: {err.message}")), None
    if status >= 500 or status in (408, 409):
        return ServerError(redact(f"{status}: {err.message}")), None
    return RequestRejected(redact(f"{status}: {err.message}")), None


def error_message(raw: bytes) -> str:
    """The server's own message from an OpenAI-style error body (`{"error": {"message": ...}}`), else the body."""
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str) and err:
        return err
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return text[:300]


def user_agent() -> str:
    import aiohttp

    from xwin_data import __version__

    return f"xwin-data/{__version__} aiohttp/{aiohttp.__version__}"


class AiohttpTransport:
    """`concurrency` slots over one aiohttp session with a pool of `concurrency` connections; the session (and
    its connections) opens lazily on the first request, so the first calls go out while the rest are prepared."""

    name = "aiohttp"

    def __init__(self, api_key: str, base_url: str | None, timeout_s: float, concurrency: int,
                 headers: dict[str, str]):
        base = without_credentials(base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL)
        self.url = base.rstrip("/") + "/chat/completions"
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                        "Accept": "application/json", "User-Agent": user_agent()}
        for env, name in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
            if os.environ.get(env):  # as the openai client sends them
                self.headers[name] = os.environ[env]
        self.headers.update(headers)
        self._slots = asyncio.Semaphore(concurrency)
        self._session = None

    def _open(self):
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0)
        self._session = aiohttp.ClientSession(connector=connector, headers=self.headers,
                                              timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                              skip_auto_headers=("Accept-Encoding",))
        return self._session

    async def acquire(self) -> None:
        await self._slots.acquire()

    def release(self, slot: None) -> None:
        self._slots.release()

    async def post_chat(self, slot: None, body: dict) -> bytes:
        import aiohttp

        session = self._session or self._open()
        data = json.dumps(body, ensure_ascii=False).encode()
        try:
            async with session.post(self.url, data=data) as response:
                raw = await response.read()
                status = response.status
                if status >= 300:
                    raise StatusFailure(status, error_message(raw), response.headers)
                return raw
        except asyncio.TimeoutError as err:  # aiohttp's time-outs (ServerTimeoutError included) are these
            raise Timeout(f"no answer within {self.timeout_s:g}s") from err
        except aiohttp.ClientError as err:  # refused, reset, closed without an answer, a broken body
            raise ConnectionFailed(f"connection failed: {type(err).__name__}: {err}") from err

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class OpenAITransport:
    """`concurrency` slots over AsyncOpenAI clients on httpx, posting through the client's own `post` (its
    headers, time-outs and status errors, without `create`'s per-request TypedDict transform)."""

    name = "openai"
    PER_SHARD = 8

    def __init__(self, api_key: str, base_url: str | None, timeout_s: float, concurrency: int,
                 headers: dict[str, str]):
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        try:  # openai >= 3 ships on httpx2, earlier releases on httpx
            import httpx2
        except ImportError:  # pragma: no cover - depends on the installed openai
            import httpx as httpx2

        self.timeout_s = timeout_s
        shards = -(-concurrency // self.PER_SHARD)
        per_shard = -(-concurrency // shards)
        limits = httpx2.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        self.response_type = httpx2.Response
        self.clients = [AsyncOpenAI(api_key=api_key, base_url=without_credentials(base_url), max_retries=0,
                                    timeout=timeout_s, default_headers=headers or None,
                                    http_client=DefaultAsyncHttpxClient(limits=limits, timeout=timeout_s))
                        for _ in range(shards)]
        self._free: asyncio.Queue = asyncio.Queue()  # one entry per request slot: the shard it may use
        for i in range(concurrency):
            self._free.put_nowait(i % shards)

    async def acquire(self) -> int:
        return await self._free.get()

    def release(self, shard: int) -> None:
        self._free.put_nowait(shard)

    async def post_chat(self, shard: int, body: dict) -> bytes:
        import openai

        try:
            response = await self.clients[shard].post("/chat/completions", cast_to=self.response_type, body=body)
            return response.content
        except openai.APITimeoutError as err:
            raise Timeout(f"no answer within {self.timeout_s:g}s") from err
        except openai.APIConnectionError as err:
            raise ConnectionFailed(f"connection failed: {err.__cause__ or err}") from err
        except openai.APIStatusError as err:
            raise StatusFailure(err.status_code, err.message, err.response.headers) from err

    async def close(self) -> None:
        """Close every client (and its connection pool), even if one fails."""
        errors = []
        for c in self.clients:
            try:
                await c.close()
            except Exception as err:  # pragma: no cover - closing a pool rarely fails
                errors.append(err)
        if errors:  # pragma: no cover
            raise errors[0]


def without_credentials(base_url: str | None) -> str | None:
    """The URL without a `user:password@` part: the key travels as the bearer token (from `api_key_env`), and
    aiohttp refuses a URL with credentials beside an Authorization header."""
    if not base_url or "@" not in base_url:
        return base_url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base_url)
    if parts.username is None and parts.password is None:
        return base_url
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class Pacer:
    """Requests (or tokens) per minute as an even pace: each start is 60/limit seconds (per unit) after the
    previous one's theoretical time (GCRA), with no burst beyond `burst` units. A token bucket filled to the
    whole minute's allowance would let a 240 RPM limit send 240 requests in its first second; this sends 4.
    A late start does not earn a catch-up burst: the pace resumes from the time it actually started."""

    def __init__(self, per_minute: float, burst: float = 1.0):
        self.unit_s = 60.0 / float(per_minute)
        self.tolerance_s = max(0.0, burst - 1.0) * self.unit_s
        self._tat = 0.0  # theoretical arrival time of the next unit

    def delay(self, amount: float = 1.0, now: float | None = None) -> float:
        """Book `amount` units and return how long to wait before starting (the booking is made at once, so
        concurrent callers on one event loop are spaced out, not raced)."""
        now = time.monotonic() if now is None else now
        start = max(self._tat - self.tolerance_s, now)
        self._tat = max(self._tat, now) + amount * self.unit_s
        return start - now
