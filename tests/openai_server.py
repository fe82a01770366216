"""A small, real, scriptable OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks enough of the API for the real `openai` client: POST /v1/chat/completions (with `n` choices and usage
token counts), GET /v1/models and GET /v1/stats (request and 429 counts, for a client in another process). A
test scripts it per request: latency, 429 bursts with Retry-After, 500s, a per-minute limit enforced as a
provider does, hangs (client time-outs), malformed JSON, dropped connections, and reply texts computed from the
request (a judge that answers [[A]]/[[B]]/[[C]], unparseable verdicts, a position-biased judge). It counts every request,
in total, per rendered prompt and per exact request body, so a test can assert that nothing was asked twice.

It is a minimal asyncio HTTP/1.1 server (keep-alive, Content-Length bodies) running on its own event loop in a
background thread: light enough to serve thousands of requests per second, and stopped cleanly by the fixture.
Run it standalone (`python tests/openai_server.py --latency 0.02`) to serve another process; it prints its port.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           408: "Request Timeout", 409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error"}


@dataclass
class Fault:
    """What to do to one request instead of answering it normally.

    kind: "429" (with optional Retry-After seconds), "500", "401" (an error that quotes the caller's API key,
    as OpenAI's does), any other status code such as "403", "408", "409" or "400" (an OpenAI-style error body
    whose message names the code), "hang" (never answer; the client must time out),
    "malformed" (200 with a body that is not JSON), "drop" (close the connection without a reply)."""

    kind: str
    retry_after: float | None = None
    hang_seconds: float = 3600.0


@dataclass
class ChatRequest:
    """One chat-completions request as the reply function sees it."""

    body: dict
    index: int = 0  # the choice index being produced (0..n-1)

    @property
    def messages(self) -> list[dict]:
        return self.body.get("messages", [])

    @property
    def prompt(self) -> str:
        """The last user message's text."""
        users = [m.get("content") or "" for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""

    @property
    def text(self) -> str:
        """All message contents joined: what the model was shown."""
        return "\n".join(str(m.get("content") or "") for m in self.messages)


def rendered_prompt(body: dict) -> str:
    """The identity of a prompt: its messages, exactly."""
    return json.dumps(body.get("messages", []), sort_keys=True, ensure_ascii=False)


def body_key(body: dict) -> str:
    """The identity of a whole request (messages and every parameter)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]


def count_tokens(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------------------------------------- reply scripts
def echo_reply(req: ChatRequest) -> str:
    """Default: a deterministic answer derived from the prompt (and the choice index for n > 1)."""
    suffix = f" #{req.index}" if req.index else ""
    return f"Answer to: {req.prompt[:200]}{suffix}"


_ANSWER = re.compile(r"(?:\[|<\|)The Start of Assistant ([AB])'s (?:Answer|Conversation with User)(?:\]|\|>)\n?(.*?)\n?"
                     r"(?:\[|<\|)The End of Assistant \1's (?:Answer|Conversation with User)(?:\]|\|>)", re.S)


def judge_answers(text: str) -> dict[str, str]:
    """The two answers in an MT-bench-style pairwise prompt, by their position label."""
    return {m.group(1): m.group(2).strip() for m in _ANSWER.finditer(text)}


def pairwise_judge(decide: Callable[[str, str], str], explanation: str = "Both answers were compared.") -> Callable:
    """A judge whose verdict is `decide(answer_a, answer_b)` -> one of "A", "B", "C" (or any verdict string)."""

    def reply(req: ChatRequest) -> str:
        ans = judge_answers(req.text)
        verdict = decide(ans.get("A", ""), ans.get("B", ""))
        return f"{explanation}\n\nFinal verdict: [[{verdict}]]"

    return reply


def prefer_longer(a: str, b: str) -> str:
    """A content-based judge: the longer answer wins, equal lengths tie; consistent across orders."""
    return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "C"


def prefer_first(a: str, b: str) -> str:
    """A position-biased judge: always prefers whatever is shown first."""
    return "A"


def unparseable(req: ChatRequest) -> str:
    return "Both responses have merits; it is hard to say which one is better overall."


# ---------------------------------------------------------------------------------------------- the server
@dataclass
class OpenAIServer:
    """A scriptable server; attributes may be changed by a test at any time (read on each request)."""

    host: str = "127.0.0.1"
    port: int = 0
    latency: float = 0.0  # seconds before each answer
    reply: Callable[[ChatRequest], str] | str = echo_reply
    models: list[str] = field(default_factory=lambda: ["test-judge", "gpt-4o"])
    fault_fn: Callable[[dict, int], Fault | None] | None = None  # (body, request number) -> a fault or None
    usage_fn: Callable[[ChatRequest, list[str]], tuple[int, int]] | None = None
    faults: collections.deque = field(default_factory=collections.deque)  # consumed one per request, first
    rpm_limit: float | None = None  # enforce a requests-per-minute limit as a provider does: 429 past it

    def __post_init__(self) -> None:
        self.total = 0  # every chat request received
        self.served = 0  # chat requests answered with a 200 and valid JSON
        self.prompt_counts: collections.Counter = collections.Counter()  # per rendered prompt, every request
        self.served_counts: collections.Counter = collections.Counter()  # per exact body, served requests
        self.requests: list[dict] = []
        self.request_headers: list[dict] = []  # each chat request's headers (lower-case names), as received
        self.in_flight = 0
        self.max_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._stopping: asyncio.Event | None = None
        self._lock = threading.Lock()
        self.keep_requests = True
        self.rate_limited = 0  # requests refused with 429 by `rpm_limit`
        self._bucket = (0.0, 0.0)  # (tokens, time) of the rpm_limit token bucket

    # ------------------------------------------------------------------------------------------ scripting
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def fail_next(self, count: int, kind: str, retry_after: float | None = None, hang_seconds: float = 3600) -> None:
        """Answer the next `count` chat requests with a fault (429 / 500 / hang / malformed / drop)."""
        for _ in range(count):
            self.faults.append(Fault(kind, retry_after, hang_seconds))

    def reset(self, **script: Any) -> None:
        """Forget counts and faults and restore the default script, then apply `script` (latency=..., reply=...)."""
        self.latency, self.reply, self.fault_fn, self.usage_fn = 0.0, echo_reply, None, None
        self.rpm_limit = None
        self.faults.clear()
        if self._loop is not None and not self._loop.is_closed() and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._release_hangs(), self._loop).result(10)
        self._clear_counts()
        for k, v in script.items():
            if not hasattr(self, k):
                raise AttributeError(f"OpenAIServer has no setting {k!r}")
            setattr(self, k, v)

    async def _release_hangs(self) -> None:
        """End requests that are still hanging from an earlier script, and wait until none is in flight."""
        self._release.set()
        for _ in range(1000):
            if self.in_flight <= 0:
                break
            await asyncio.sleep(0.001)
        self._release = asyncio.Event()

    def _clear_counts(self) -> None:
        self.total = self.served = 0
        self.prompt_counts.clear()
        self.served_counts.clear()
        self.requests.clear()
        self.request_headers.clear()
        self.max_in_flight = 0
        self.rate_limited = 0
        self._bucket = (0.0, 0.0)

    def _over_rpm_limit(self) -> float | None:
        """A token bucket holding one second of the limit, refilled at limit/60 per second: a client that sends
        at the limit's pace passes, one that bursts the minute's allowance is refused. Returns the seconds to
        wait when the request is refused."""
        if not self.rpm_limit:
            return None
        rate = self.rpm_limit / 60.0
        capacity = max(1.0, rate)
        now = time.monotonic()
        tokens, last = self._bucket
        tokens = capacity if last == 0.0 else min(capacity, tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._bucket = (tokens - 1.0, now)
            return None
        self._bucket = (tokens, now)
        self.rate_limited += 1
        return (1.0 - tokens) / rate

    @property
    def repeated(self) -> int:
        """How many served requests repeated an earlier served request exactly."""
        return sum(c - 1 for c in self.served_counts.values() if c > 1)

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> "OpenAIServer":
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._stopping = asyncio.Event()
                self._release = asyncio.Event()
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.host, self.port, backlog=1024))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as err:  # reported to the starting thread
                errors.append(err)
                ready.set()
                return
            ready.set()
            loop.run_until_complete(self._stopping.wait())
            self._server.close()
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="openai-test-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ HTTP
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length") or 0)
                raw = await reader.readexactly(length) if length else b""
                keep = await self._dispatch(method, path.split("?")[0], raw, writer, headers)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            try:
                writer.close()
            except Exception:  # the peer may already be gone
                pass

    @staticmethod
    def _send(writer: asyncio.StreamWriter, status: int, payload: bytes, headers: dict | None = None) -> None:
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", "Content-Type: application/json",
                f"Content-Length: {len(payload)}", "Connection: keep-alive"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)

    @staticmethod
    def _error(message: str, kind: str, code: str | None = None) -> bytes:
        return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()

    async def _dispatch(self, method: str, path: str, raw: bytes, writer: asyncio.StreamWriter,
                        headers: dict | None = None) -> bool:
        if method == "GET" and path.rstrip("/") == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.models]
            self._send(writer, 200, json.dumps({"object": "list", "data": data}).encode())
            await writer.drain()
            return True
        if method == "GET" and path.rstrip("/") == "/v1/stats":  # for a client in another process
            stats = {"total": self.total, "served": self.served, "rate_limited": self.rate_limited}
            self._send(writer, 200, json.dumps(stats).encode())
            await writer.drain()
            return True
        if method != "POST" or path.rstrip("/") != "/v1/chat/completions":
            self._send(writer, 404, self._error(f"no route {method} {path}", "invalid_request_error"))
            await writer.drain()
            return True
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send(writer, 400, self._error("request body is not JSON", "invalid_request_error"))
            await writer.drain()
            return True

        with self._lock:
            self.total += 1
            number = self.total
            self.prompt_counts[rendered_prompt(body)] += 1
            if self.keep_requests:
                self.requests.append(body)
                self.request_headers.append(dict(headers or {}))
        fault = self.faults.popleft() if self.faults else None
        if fault is None and self.fault_fn is not None:
            fault = self.fault_fn(body, number)
        if fault is None:
            wait = self._over_rpm_limit()
            if wait is not None:
                fault = Fault("429", retry_after=round(wait, 3))
        self.in_flight += 1  # until its answer is written (not drained: the client may already be reading it)
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        done = False
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if fault is not None:
                if fault.kind != "hang":
                    self.in_flight -= 1
                    done = True
                return await self._apply_fault(fault, writer, headers or {})
            payload = self._completion(body)
            self.served += 1
            self.served_counts[body_key(body)] += 1
            self.in_flight -= 1
            done = True
            self._send(writer, 200, payload)
            await writer.drain()
            return True
        finally:
            if not done:
                self.in_flight -= 1

    async def _apply_fault(self, fault: Fault, writer: asyncio.StreamWriter, headers: dict) -> bool:
        if fault.kind == "429":
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}",
                                                            "retry-after-ms": str(int(fault.retry_after * 1000))}
            self._send(writer, 429, self._error("Rate limit reached", "rate_limit_error", "rate_limit_exceeded"),
                       headers)
        elif fault.kind == "401":  # like OpenAI's "Incorrect API key provided: sk-...", but unmasked
            key = headers.get("authorization", "").removeprefix("Bearer ")
            self._send(writer, 401, self._error(f"Incorrect API key provided: {key}.", "invalid_request_error",
                                                "invalid_api_key"))
        elif fault.kind == "500":
            self._send(writer, 500, self._error("The server had an error", "server_error"))
        elif fault.kind == "malformed":
            self._send(writer, 200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "message": {"role": "ass')
        elif fault.kind == "hang":
            waits = [asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(self._release.wait())]
            await asyncio.wait(waits, timeout=fault.hang_seconds, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            return False
        elif fault.kind == "drop":
            return False
        elif fault.kind.isdigit():
            status = int(fault.kind)
            self._send(writer, status, self._error(f"The server answered {status}", "invalid_request_error"))
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        await writer.drain()
        return True

    def _completion(self, body: dict) -> bytes:
        n = int(body.get("n") or 1)
        texts = []
        for i in range(n):
            req = ChatRequest(body, i)
            texts.append(self.reply if isinstance(self.reply, str) else self.reply(req))
        if self.usage_fn is not None:
            prompt_tokens, completion_tokens = self.usage_fn(ChatRequest(body), texts)
        else:
            prompt_tokens = sum(count_tokens(str(m.get("content") or "")) for m in body.get("messages", []))
            completion_tokens = sum(count_tokens(t) for t in texts)
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop",
                    "logprobs": None} for i, t in enumerate(texts)]
        return json.dumps({
            "id": f"chatcmpl-{self.total}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "unknown"), "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }, ensure_ascii=False).encode()


REPLIES = {"echo": echo_reply, "judge-longer": pairwise_judge(prefer_longer),
           "judge-first": pairwise_judge(prefer_first), "unparseable": unparseable}


def main() -> None:
    """Serve from a separate process (benchmarks, builds run by hand): prints `PORT <n>` once listening."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--reply", choices=sorted(REPLIES), default="echo")
    ap.add_argument("--rpm-limit", type=float, default=None, help="refuse requests past this per-minute pace (429)")
    args = ap.parse_args()
    server = OpenAIServer(port=args.port, latency=args.latency, reply=REPLIES[args.reply], rpm_limit=args.rpm_limit)
    server.keep_requests = False
    server.start()
    print(f"PORT {server.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
