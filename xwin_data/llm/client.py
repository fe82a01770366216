"""An async chat-completions client for any OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, ...).

Every call goes through the request cache first (keyed by the endpoint's model id, the rendered messages, the
sampling parameters and whatever the caller adds, such as a template version and an attempt index) and is
written to it durably as soon as it completes, so a killed run pays for nothing twice. New calls run with
bounded concurrency under request-per-minute and token-per-minute limits paced evenly (no first-second burst),
retried with jittered exponential backoff that honours `Retry-After` up to `retry_after_max_s`, and are
charged to a cost ledger whose budget is a hard cap. SIGINT/SIGTERM stop new calls; calls in flight finish and
are cached (for at most `drain_timeout_s`) before the run raises KeyboardInterrupt, so stopping a run never pays
for a call twice. Failures surface as typed errors. Requests go out over aiohttp directly where it imports, or
through the openai client (`transport: openai`); see transport.py. Every connection pool is closed when a run
ends.

The API key is read from the environment variable named by `api_key_env` at call time; it is never part of a
cache key, a cached value, a log line or an error message (errors are redacted).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import os
import random
import re
import signal
import threading
import time
from typing import Any, Callable, Sequence

from xwin_data.llm.cache import RequestCache, request_key
from xwin_data.llm.calls import ChatCall, ChatResult, ClientSettings
from xwin_data.llm.costs import BudgetExceeded, CostLedger, PriceTable
from xwin_data.llm.errors import (AuthError, BadResponse, ConnectionFailed, LLMError, MissingKey, RateLimited, RequestRejected,
                     ServerError, Timeout)
from xwin_data.llm.spec import endpoint
from xwin_data.llm.transport import Pacer, StatusFailure, aiohttp_available, make_transport, status_error

__all__ = ["ClientSettings", "ChatCall", "ChatResult", "ChatClient", "LLMError", "RateLimited", "ServerError",
           "Timeout", "BadResponse", "ConnectionFailed", "RequestRejected", "AuthError", "MissingKey",
           "BudgetExceeded", "Stopped", "aiohttp_available"]

LOCAL_PLACEHOLDER_KEY = "sk-local-no-key"


_NOT_PARAMS = {"model", "messages", "stream", "stream_options", "extra_headers", "extra_query", "timeout"}


@functools.lru_cache(maxsize=None)
def _chat_param_names() -> frozenset:
    """Keyword arguments of `chat.completions.create` a call may set (plus `extra_body`, merged into the body)."""
    import inspect

    from openai.resources.chat.completions import AsyncCompletions

    names = set(inspect.signature(AsyncCompletions.create).parameters) - {"self"} - _NOT_PARAMS
    return frozenset(names)


# long-standing `create` parameters: a run using only these need not import openai (half a second) to check them
COMMON_PARAMS = frozenset({"temperature", "top_p", "max_tokens", "n", "seed", "stop", "frequency_penalty",
                           "presence_penalty", "logprobs", "top_logprobs", "logit_bias", "extra_body"})


def _check_params(calls: Sequence[ChatCall]) -> None:
    """Unknown or reserved parameter names fail before any request, as `create(**params)` would."""
    names = set().union(*(c.params.keys() for c in calls)) if calls else set()
    if names <= COMMON_PARAMS:
        return
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


_gc_lock = threading.Lock()
_gc_runs = [0, None]  # runs inside `fewer_collections` now, and the thresholds to restore when none is


@contextlib.contextmanager
def fewer_collections(young: int = 20_000):
    """Run the cyclic garbage collector less often during a run: at its default (every 700 new objects) it
    walks the thousands of live tasks, futures and connections again and again, a quarter of the client's CPU at
    hundreds of calls a second, in pauses long enough to delay answers. The thresholds are restored when the
    last of any overlapping runs ends."""
    with _gc_lock:
        if _gc_runs[0] == 0:
            _gc_runs[1] = old = gc.get_threshold()
            if old[0] > 0:  # 0: the process turned automatic collection off; leave it so
                gc.set_threshold(max(old[0], young), *old[1:])
        _gc_runs[0] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_runs[0] -= 1
            if _gc_runs[0] == 0:
                gc.set_threshold(*_gc_runs[1])


def _wake(waker: asyncio.Future) -> None:
    if not waker.done():
        waker.set_result(None)


class Stopped(LLMError):
    """The run was asked to stop (SIGINT/SIGTERM) before this call started; nothing was sent or paid."""


_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*.]{4,})")


class ChatClient:
    """Cached, rate-limited, retried chat calls. `run(calls)` is the synchronous entry point ops use."""

    START_CHUNK = 32  # calls started per event-loop turn at the start of a run

    def __init__(self, settings: ClientSettings, cache: RequestCache | None = None,
                 ledger: CostLedger | None = None, *, sleep: Callable[[float], Any] = asyncio.sleep):
        self.settings = settings
        self.cache = cache
        self.ledger = ledger or CostLedger(PriceTable.with_overrides(settings.prices), settings.budget_usd)
        self._sleep = sleep
        self._pause_until = 0.0
        self.retries = 0  # retried attempts, all causes
        self.errors_by_kind: dict[str, int] = {}
        self.transport = ""  # the HTTP transport of the last run that made calls (aiohttp or openai)
        self.stop_signal: int | None = None  # the signal that stopped the last run, if one did
        self._stop: asyncio.Event | None = None
        self._naps: set[asyncio.Future] = set()  # futures of calls sleeping in `_nap`, woken by a stop signal
        self._budget_moved: asyncio.Event | None = None

    # ------------------------------------------------------------------------------------------ keys
    def key(self, call: ChatCall) -> str:
        """Endpoint and served model name (two servers serving one name are two models), messages, parameters
        and the caller's parts."""
        return request_key(kind="chat", endpoint=endpoint(self.settings.base_url), model=self.settings.model,
                           messages=call.messages, params=dict(sorted(call.params.items())), **call.key_parts)

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
        with fewer_collections():
            return await self._arun(calls, on_done)

    async def _arun(self, calls: Sequence[ChatCall], on_done) -> list[ChatResult]:
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
                          float(value.get("cost_usd", 0.0)), cached=True, attempts=0,
                          choice_tokens=value.get("choice_tokens"))

    async def _call_all(self, calls, todo, results, on_done) -> None:
        s = self.settings
        client = make_transport(self._api_key(), s.base_url, s.timeout_s, s.concurrency, s.transport, s.headers)
        self.transport = client.name
        rpm = Pacer(s.requests_per_minute) if s.requests_per_minute else None
        tpm = Pacer(s.tokens_per_minute) if s.tokens_per_minute else None
        self._stop, self._budget_moved, self.stop_signal = asyncio.Event(), asyncio.Event(), None

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
                                                           True, 0, res.error, res.choice_tokens)
                if on_done:
                    on_done(results[i])

        async def start_all() -> None:
            """Start the calls a chunk per loop turn, so the first requests are on the wire while the rest are
            prepared (one turn over every call would build the whole first wave before sending any)."""
            started: list[asyncio.Future] = []
            items = list(todo.items())
            try:
                for at in range(0, len(items), self.START_CHUNK):
                    started.extend(asyncio.ensure_future(one(k, idxs)) for k, idxs in items[at:at + self.START_CHUNK])
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                for task in started:
                    task.cancel()
                await asyncio.gather(*started, return_exceptions=True)
                raise
            await asyncio.gather(*started)

        main = asyncio.ensure_future(start_all())
        installed, timers = self._on_stop_signals(main)
        try:
            await main
        except asyncio.CancelledError:
            if self.stop_signal is None:
                raise
        finally:
            loop = asyncio.get_running_loop()
            for sig in installed:
                loop.remove_signal_handler(sig)
            for timer in timers:
                timer.cancel()
            await client.close()
        if self.stop_signal is not None:
            raise KeyboardInterrupt(f"stopped by signal {self.stop_signal}: finished calls are cached")

    def _on_stop_signals(self, main: asyncio.Future) -> tuple[list[int], list[asyncio.TimerHandle]]:
        """SIGINT/SIGTERM: no new call starts, calls in flight get `drain_timeout_s` to finish and be cached; a
        second signal (or the time-out) cancels them. Only where the loop runs in the main thread."""
        loop = asyncio.get_running_loop()
        timers: list[asyncio.TimerHandle] = []

        def on_signal(signum: int) -> None:
            if self.stop_signal is None:
                self.stop_signal = signum
                self._stop.set()  # type: ignore[union-attr]
                for waker in list(self._naps):  # sleeping calls wake up and stop
                    _wake(waker)
                self._budget_moved.set()  # type: ignore[union-attr]  # wake calls waiting for budget: they stop
                timers.append(loop.call_later(self.settings.drain_timeout_s, main.cancel))
            else:
                main.cancel()

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
                pass
        return installed, timers

    async def _nap(self, seconds: float) -> None:
        """Sleep, waking early when the run is asked to stop (a plain timer per nap: at 2,000 paced starts a
        second, a task per nap would cost more than the request)."""
        if seconds <= 0:
            return
        if self._stop is None or self._sleep is not asyncio.sleep:
            await self._sleep(seconds)
            return
        if self._stop.is_set():
            return
        loop = asyncio.get_running_loop()
        waker = loop.create_future()
        timer = loop.call_later(seconds, _wake, waker)
        self._naps.add(waker)
        try:
            await waker
        finally:
            timer.cancel()
            self._naps.discard(waker)

    def _check_stop(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise Stopped("the run was asked to stop before this call started")

    async def _reserve(self, estimate: Callable[[], float]) -> float:
        """Hold the expected cost of a call; wait while in-flight calls may still free room."""
        while True:
            self._check_stop()
            usd = estimate()
            if self.ledger.try_reserve(usd):
                return usd
            moved = self._budget_moved
            if moved is None:  # pragma: no cover - only inside a run
                raise BudgetExceeded("budget reached")
            moved.clear()
            await moved.wait()

    def _budget_changed(self) -> None:
        if self._budget_moved is not None:
            self._budget_moved.set()

    # ------------------------------------------------------------------------------------------ one call
    def _wait_seconds(self, attempt: int, err: LLMError) -> float:
        s = self.settings
        if isinstance(err, RateLimited) and err.retry_after is not None and err.retry_after <= s.retry_after_max_s:
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
                await self._nap(self._wait_seconds(attempts, err))
                continue
            result.attempts = attempts
            return result

    async def _attempt(self, client, rpm, tpm, call: ChatCall, key: str) -> ChatResult:
        s = self.settings
        max_tokens = int(call.params.get("max_tokens") or 1024)
        n = int(call.params.get("n") or 1)
        prompt_guess = sum(len(str(m.get("content") or "")) for m in call.messages) // 4 + 8
        reserved = 0.0
        slot = await client.acquire()
        try:
            self._check_stop()
            reserved = await self._reserve(lambda: self.ledger.estimate(
                s.model, self.ledger.expected_prompt_tokens(prompt_guess),
                self.ledger.expected_completion_tokens(max_tokens, n)))  # BudgetExceeded before any spend
            while (delay := self._pause_until - time.monotonic()) > 0:  # a 429 asked everyone to wait
                await self._nap(delay)
                self._check_stop()
            if tpm is not None:
                await self._nap(tpm.delay(min(prompt_guess + max_tokens * n, s.tokens_per_minute)))
            if rpm is not None:
                await self._nap(rpm.delay())
            self._check_stop()
            try:  # parameter names were checked in `arun`
                body = await client.post_chat(slot, _request_body(s.model, call))
            except (ConnectionFailed, Timeout) as err:
                raise type(err)(self.redact(str(err))) from err
            except StatusFailure as err:
                typed, pause = status_error(err, s.retry_after_max_s, self.redact)
                if pause:  # a 429 asked everyone to wait
                    self._pause_until = max(self._pause_until, time.monotonic() + pause)
                raise typed from err
        except BaseException:
            self.ledger.release(reserved)
            self._budget_changed()
            raise
        finally:
            client.release(slot)
        try:
            data = json.loads(body)
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            texts = [c["message"]["content"] or "" for c in choices]
            finish = [c.get("finish_reason") or "" for c in choices]
            usage = data.get("usage") or {}
            ids = [c.get("token_ids") for c in choices]  # vLLM servers, when asked with return_token_ids
            choice_tokens = [len(x) for x in ids] if all(isinstance(x, list) for x in ids) else None
            p_tok, c_tok = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, TypeError, IndexError) as err:
            self.ledger.release(reserved)
            self._budget_changed()
            raise BadResponse(f"not a chat completion ({type(err).__name__}: {str(err)[:120]}): "
                              f"{body[:200]!r}") from err
        if not texts:
            self.ledger.release(reserved)
            self._budget_changed()
            raise BadResponse("a chat completion with no choices")
        self.ledger.observe(prompt_guess, p_tok, c_tok, len(texts))
        cost = self.ledger.settle(reserved, s.model, p_tok, c_tok)
        self._budget_changed()
        if self.cache is not None:  # durable before the result is used
            self.cache.put(key, {"texts": texts, "finish_reasons": finish, "prompt_tokens": p_tok,
                                 "completion_tokens": c_tok, "cost_usd": cost, "model": s.model,
                                 "choice_tokens": choice_tokens, "created": time.time()}, namespace="chat")
        return ChatResult(call, key, texts, finish, p_tok, c_tok, cost, cached=False, choice_tokens=choice_tokens)
