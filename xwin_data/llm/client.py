"""An async chat-completions client for any OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, ...).

Every call goes through the request cache first (keyed by the endpoint's model id, the rendered messages, the
sampling parameters and whatever the caller adds, such as a template version and an attempt index) and is
written to it durably as soon as it completes, so a killed run pays for nothing twice. New calls run with
bounded concurrency under request-per-minute and token-per-minute limits, retried with jittered exponential
backoff that honours `Retry-After` (the openai client's own retries are off), and are charged to a cost
ledger with a budget cap. Failures surface as typed errors. The openai client runs on aiohttp (openai's
`aiohttp` extra, less CPU per request) where installed, else on httpx; every connection pool is closed when a
run ends.

The API key is read from the environment variable named by `api_key_env` at call time; it is never part of a
cache key, a cached value, a log line or an error message (errors are redacted).
"""
from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from .cache import RequestCache, request_key
from .costs import BudgetExceeded, CostLedger, PriceTable

__all__ = ["ClientSettings", "ChatCall", "ChatResult", "ChatClient", "LLMError", "RateLimited", "ServerError",
           "Timeout", "BadResponse", "ConnectionFailed", "RequestRejected", "AuthError", "MissingKey",
           "BudgetExceeded"]

LOCAL_PLACEHOLDER_KEY = "sk-local-no-key"


# ---------------------------------------------------------------------------------------------- errors
class LLMError(RuntimeError):
    """A model call failed; `retryable` says whether trying again may help."""

    retryable = False


class RateLimited(LLMError):
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ServerError(LLMError):
    retryable = True


class Timeout(LLMError):
    retryable = True


class ConnectionFailed(LLMError):
    retryable = True


class BadResponse(LLMError):
    """The endpoint answered with something that is not a chat completion (malformed JSON, no choices)."""

    retryable = True


class RequestRejected(LLMError):
    """A 4xx other than 429: the request itself is wrong (unknown model, context too long); retrying won't help."""


class AuthError(RequestRejected):
    pass


class MissingKey(LLMError):
    pass


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


class _ClientPool:
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


def _dropped_connection(err: BaseException) -> bool:
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


# ---------------------------------------------------------------------------------------------- settings
class ClientSettings(BaseModel):
    """Where and how to call; only `model`, the sampling parameters and caller-given parts enter cache keys."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("judge", description="model id served by the endpoint (part of every cache key)")
    base_url: str | None = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint; "
                                 "https://api.openai.com/v1 for OpenAI")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key (never stored)")
    concurrency: int = Field(16, ge=1, description="requests in flight at once")
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="prompt + max completion tokens per minute")
    timeout_s: float = Field(120.0, gt=0, description="per-request time-out")
    max_retries: int = Field(6, ge=0, description="retries of a failed request (429, 5xx, time-out, bad JSON)")
    backoff_initial_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    budget_usd: float | None = Field(None, ge=0, description="stop making new calls past this many dollars")
    prices: dict[str, list[float]] = Field(default_factory=dict,
                                           description="model -> [prompt $/1M tokens, completion $/1M tokens]")
    transport: Literal["auto", "aiohttp", "httpx"] = Field(
        "auto", description="HTTP transport under the openai client: aiohttp (openai's aiohttp extra, less CPU "
                            "per request) where installed, else httpx")

    def needs_real_key(self) -> bool:
        return "api.openai.com" in (self.base_url or "https://api.openai.com")


@dataclass
class ChatCall:
    messages: list[dict]
    params: dict = field(default_factory=dict)  # temperature, max_tokens, n, seed, top_p, stop
    key_parts: dict = field(default_factory=dict)  # template version, attempt index, ...
    tag: Any = None  # the caller's bookkeeping, returned untouched


@dataclass
class ChatResult:
    call: ChatCall
    key: str
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False
    attempts: int = 0
    error: LLMError | BudgetExceeded | None = None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def ok(self) -> bool:
        return self.error is None


def _retry_after(headers: Any) -> float | None:
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


_NOT_PARAMS = {"model", "messages", "stream", "stream_options", "extra_headers", "extra_query", "timeout"}


@functools.lru_cache(maxsize=None)
def _chat_param_names() -> frozenset:
    """Keyword arguments of `chat.completions.create` a call may set (plus `extra_body`, merged into the body)."""
    import inspect

    from openai.resources.chat.completions import AsyncCompletions

    names = set(inspect.signature(AsyncCompletions.create).parameters) - {"self"} - _NOT_PARAMS
    return frozenset(names)


def _check_params(calls: Sequence[ChatCall]) -> None:
    """Unknown or reserved parameter names fail before any request, as `create(**params)` would."""
    names = set().union(*(c.params.keys() for c in calls)) if calls else set()
    bad = names - _chat_param_names()
    if bad:
        raise TypeError(f"not chat-completion parameters: {sorted(bad)} (the model comes from the client "
                        f"settings, the messages from the call; streaming is not supported)")


def _request_body(model: str, call: ChatCall) -> dict:
    body = {"messages": call.messages, "model": model, **call.params}
    extra = body.pop("extra_body", None)
    if extra:
        body.update(extra)
    return body


_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*.]{4,})")


class ChatClient:
    """Cached, rate-limited, retried chat calls. `run(calls)` is the synchronous entry point ops use."""

    def __init__(self, settings: ClientSettings, cache: RequestCache | None = None,
                 ledger: CostLedger | None = None, *, sleep: Callable[[float], Any] = asyncio.sleep):
        self.settings = settings
        self.cache = cache
        self.ledger = ledger or CostLedger(PriceTable.with_overrides(settings.prices), settings.budget_usd)
        self._sleep = sleep
        self._pause_until = 0.0
        self.retries = 0  # retried attempts, all causes
        self.errors_by_kind: dict[str, int] = {}
        self.transport = ""  # the HTTP transport of the last run that made calls (aiohttp or httpx)

    # ------------------------------------------------------------------------------------------ keys
    def key(self, call: ChatCall) -> str:
        return request_key(kind="chat", model=self.settings.model, messages=call.messages,
                           params=dict(sorted(call.params.items())), **call.key_parts)

    def _api_key(self) -> str:
        key = os.environ.get(self.settings.api_key_env)
        if key:
            return key
        if self.settings.needs_real_key():
            raise MissingKey(f"set the environment variable {self.settings.api_key_env} to call "
                             f"{self.settings.base_url or 'api.openai.com'}")
        return LOCAL_PLACEHOLDER_KEY

    def redact(self, text: str) -> str:
        key = os.environ.get(self.settings.api_key_env)
        if key:
            text = text.replace(key, "***")
        return _KEYLIKE.sub("sk-***", text)

    # ------------------------------------------------------------------------------------------ sync entry
    def run(self, calls: Sequence[ChatCall], on_done: Callable[[ChatResult], None] | None = None) -> list[ChatResult]:
        """Answer every call (from the cache or the endpoint); failures are returned in `result.error`."""
        return asyncio.run(self.arun(calls, on_done))

    async def arun(self, calls: Sequence[ChatCall],
                   on_done: Callable[[ChatResult], None] | None = None) -> list[ChatResult]:
        _check_params(calls)
        results: list[ChatResult | None] = [None] * len(calls)
        keys = [self.key(c) for c in calls]
        hits = self.cache.get_many(set(keys)) if self.cache is not None else {}
        todo: dict[str, list[int]] = {}
        for i, (call, key) in enumerate(zip(calls, keys)):
            if key in hits:
                results[i] = self._from_cache(call, key, hits[key])
                if on_done:
                    on_done(results[i])
            else:
                todo.setdefault(key, []).append(i)  # identical calls in one run are asked once
        if todo:
            await self._call_all(calls, todo, results, on_done)
        return results  # type: ignore[return-value]

    def _from_cache(self, call: ChatCall, key: str, value: dict) -> ChatResult:
        self.ledger.record_cached(float(value.get("cost_usd", 0.0)))
        return ChatResult(call, key, list(value["texts"]), list(value.get("finish_reasons", [])),
                          int(value.get("prompt_tokens", 0)), int(value.get("completion_tokens", 0)),
                          float(value.get("cost_usd", 0.0)), cached=True, attempts=0)

    async def _call_all(self, calls, todo, results, on_done) -> None:
        from aiolimiter import AsyncLimiter

        s = self.settings
        client = _ClientPool(self._api_key(), s.base_url, s.timeout_s, s.concurrency, s.transport)
        self.transport = client.transport
        rpm = AsyncLimiter(s.requests_per_minute, 60) if s.requests_per_minute else None
        tpm = AsyncLimiter(s.tokens_per_minute, 60) if s.tokens_per_minute else None

        async def one(key: str, idxs: list[int]) -> None:
            call = calls[idxs[0]]
            try:
                res = await self._call_with_retries(client, rpm, tpm, call, key)
            except (LLMError, BudgetExceeded) as err:
                self.errors_by_kind[type(err).__name__] = self.errors_by_kind.get(type(err).__name__, 0) + 1
                res = ChatResult(call, key, error=err)
            for j, i in enumerate(idxs):
                results[i] = res if j == 0 else ChatResult(calls[i], key, res.texts, res.finish_reasons,
                                                           res.prompt_tokens, res.completion_tokens, 0.0,
                                                           True, 0, res.error)
                if on_done:
                    on_done(results[i])

        try:
            await asyncio.gather(*(one(k, idxs) for k, idxs in todo.items()))
        finally:
            await client.close()

    # ------------------------------------------------------------------------------------------ one call
    def _wait_seconds(self, attempt: int, err: LLMError) -> float:
        s = self.settings
        if isinstance(err, RateLimited) and err.retry_after is not None:
            return err.retry_after + random.uniform(0, 0.1 * err.retry_after + 0.01)
        cap = min(s.backoff_max_s, s.backoff_initial_s * (2 ** (attempt - 1)))
        return random.uniform(cap / 2, cap)  # "equal jitter": never zero, never synchronised

    async def _call_with_retries(self, client, rpm, tpm, call: ChatCall, key: str) -> ChatResult:
        """Up to `max_retries` more attempts after a retryable LLMError, each after `_wait_seconds`; anything
        else (a rejected request, BudgetExceeded) is raised at once, and the last error once retries run out."""
        attempts = 0
        while True:
            attempts += 1
            try:
                result = await self._attempt(client, rpm, tpm, call, key)
            except LLMError as err:
                if not err.retryable or attempts > self.settings.max_retries:
                    raise
                self.retries += 1
                await self._sleep(self._wait_seconds(attempts, err))
                continue
            result.attempts = attempts
            return result

    async def _attempt(self, client, rpm, tpm, call: ChatCall, key: str) -> ChatResult:
        import openai

        s = self.settings
        max_tokens = int(call.params.get("max_tokens") or 1024) * int(call.params.get("n") or 1)
        prompt_estimate = sum(len(str(m.get("content") or "")) for m in call.messages) // 4 + 8
        reserved = 0.0
        shard = await client.acquire()
        try:
            api = client.clients[shard]
            reserved = self.ledger.estimate(s.model, prompt_estimate, max_tokens)
            self.ledger.reserve(reserved)  # raises BudgetExceeded before any spend
            while (delay := self._pause_until - time.monotonic()) > 0:  # a 429 asked everyone to wait
                await self._sleep(delay)
            if rpm is not None:
                await rpm.acquire()
            if tpm is not None:
                await tpm.acquire(min(prompt_estimate + max_tokens, s.tokens_per_minute))
            try:
                # the client's own POST: the same request, headers, time-out and typed status errors as
                # `chat.completions.create`, without re-walking the messages through its TypedDict transform
                # (a third of the client's CPU per request); parameter names were checked in `arun`
                response = await api.post("/chat/completions", cast_to=client.response_type,
                                          body=_request_body(s.model, call))
                body = response.content
            except openai.APITimeoutError as err:
                if _dropped_connection(err):
                    raise ConnectionFailed(self.redact(f"connection failed: {err.__cause__ or err}")) from err
                raise Timeout(f"no answer within {s.timeout_s:g}s") from err
            except openai.APIConnectionError as err:
                raise ConnectionFailed(self.redact(f"connection failed: {err}")) from err
            except openai.RateLimitError as err:
                wait = _retry_after(err.response.headers)
                if wait:
                    self._pause_until = max(self._pause_until, time.monotonic() + wait)
                raise RateLimited(self.redact(f"429 rate limited: {err.message}"), wait) from err
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                raise AuthError(self.redact(f"{err.status_code} not authorised: {err.message}")) from err
            except openai.APIStatusError as err:
                if err.status_code >= 500 or err.status_code in (408, 409):
                    raise ServerError(self.redact(f"{err.status_code}: {err.message}")) from err
                raise RequestRejected(self.redact(f"{err.status_code}: {err.message}")) from err
        except BaseException:
            self.ledger.release(reserved)
            raise
        finally:
            client.release(shard)
        try:
            data = json.loads(body)
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            texts = [c["message"]["content"] or "" for c in choices]
            finish = [c.get("finish_reason") or "" for c in choices]
            usage = data.get("usage") or {}
            p_tok, c_tok = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, TypeError, IndexError) as err:
            self.ledger.release(reserved)
            raise BadResponse(f"not a chat completion ({type(err).__name__}: {str(err)[:120]}): "
                              f"{body[:200]!r}") from err
        if not texts:
            self.ledger.release(reserved)
            raise BadResponse("a chat completion with no choices")
        cost = self.ledger.settle(reserved, s.model, p_tok, c_tok)
        if self.cache is not None:  # durable before the result is used
            self.cache.put(key, {"texts": texts, "finish_reasons": finish, "prompt_tokens": p_tok,
                                 "completion_tokens": c_tok, "cost_usd": cost, "model": s.model,
                                 "created": time.time()}, namespace="chat")
        return ChatResult(call, key, texts, finish, p_tok, c_tok, cost, cached=False)
