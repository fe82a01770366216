"""The HTTP layer under the openai client: AsyncOpenAI clients on aiohttp (openai's `aiohttp` extra) or httpx, the
request slots over them, and reading what a failed response says (a dropped connection, `Retry-After`)."""
from __future__ import annotations

import asyncio
import email.utils
import functools
import time
from typing import Any


@functools.lru_cache(maxsize=None)
def aiohttp_available() -> bool:
    """Whether the installed openai can run on aiohttp (its `aiohttp` extra): openai raises RuntimeError from
    `DefaultAioHttpClient()` when it cannot."""
    try:
        import aiohttp  # noqa: F401
        from openai import DefaultAioHttpClient
    except ImportError:
        return False
    try:
        DefaultAioHttpClient()  # opens nothing: aiohttp's session is created on the first request
    except RuntimeError:
        return False
    return True


class ClientPool:
    """`concurrency` request slots over AsyncOpenAI clients, on aiohttp where installed, else on httpx.

    aiohttp (openai's `aiohttp` extra, `openai.DefaultAioHttpClient`) costs about a third less CPU per request
    than httpx, and one connection pool of any size serves all slots. httpx scans every pooled connection on
    each request, so there one pool of 64 connections costs O(64) per call: shards of 8 keep that scan short."""

    PER_SHARD = 8

    def __init__(self, api_key: str, base_url: str | None, timeout_s: float, concurrency: int, transport: str):
        from openai import AsyncOpenAI, DefaultAioHttpClient, DefaultAsyncHttpxClient

        try:  # openai >= 3 ships on httpx2, earlier releases on httpx
            import httpx2
        except ImportError:  # pragma: no cover - depends on the installed openai
            import httpx as httpx2

        if transport == "auto":
            transport = "aiohttp" if aiohttp_available() else "httpx"
        if transport == "aiohttp" and not aiohttp_available():
            raise RuntimeError('transport "aiohttp" needs openai\'s aiohttp extra: pip install "openai[aiohttp]"')
        self.transport = transport
        base_url = without_credentials(base_url)
        shards = 1 if transport == "aiohttp" else -(-concurrency // self.PER_SHARD)
        per_shard = -(-concurrency // shards)
        limits = httpx2.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        self.response_type = httpx2.Response
        http_class = DefaultAioHttpClient if transport == "aiohttp" else DefaultAsyncHttpxClient
        self.clients = []
        for _ in range(shards):
            self.clients.append(AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s,
                                            http_client=http_class(limits=limits, timeout=timeout_s)))
        self._free: asyncio.Queue = asyncio.Queue()  # one entry per request slot: the shard it may use
        for i in range(concurrency):
            self._free.put_nowait(i % shards)

    async def acquire(self) -> int:
        return await self._free.get()

    def release(self, shard: int) -> None:
        self._free.put_nowait(shard)

    async def close(self) -> None:
        """Close every client (and its connection pool, aiohttp's session included), even if one fails."""
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


def dropped_connection(err: BaseException) -> bool:
    """openai's aiohttp transport reports a connection the server closed as a connect *time-out*; tell them apart
    so a dropped connection stays a ConnectionFailed, as on httpx."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover
        return False
    seen = 0
    cause = err.__cause__ or err.__context__
    while cause is not None and seen < 8:
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(cause, asyncio.TimeoutError):
            return True
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return False


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
