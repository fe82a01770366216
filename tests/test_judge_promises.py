"""The judge client keeps its promises against a real server on 127.0.0.1: Retry-After honoured only up to
`retry_after_max_s`, the budget a hard cap reached to >= 90% with short answers, and SIGINT/SIGTERM letting
in-flight calls finish and be cached so a stopped run pays for nothing twice."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xwin_data.llm.cache import RequestCache
from xwin_data.llm.client import BudgetExceeded, ChatCall, ChatClient, ClientSettings, RateLimited

TESTS = Path(__file__).resolve().parent


def make_client(server, tmp_path: Path, **overrides) -> ChatClient:
    settings = {"model": "test-judge", "base_url": server.base_url, "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05, "timeout_s": 5, **overrides}
    return ChatClient(ClientSettings(**settings), RequestCache(tmp_path / "cache.sqlite"))


def calls(count: int, **params) -> list[ChatCall]:
    return [ChatCall([{"role": "user", "content": f"question {i}"}], {"temperature": 0, **params}) for i in range(count)]


def test_retry_after_beyond_the_cap_does_not_stall_the_run(openai_server, tmp_path: Path) -> None:
    openai_server.fail_next(1, "429", retry_after=3600)
    client = make_client(openai_server, tmp_path, retry_after_max_s=1.0, concurrency=4)
    results = client.run(calls(8))
    assert all(r.ok for r in results), [str(r.error) for r in results]
    assert client.retries == 1 and openai_server.total == 9
    assert client._pause_until < time.monotonic() + 1.0  # the hour was never applied to the other calls

    openai_server.fail_next(5, "429", retry_after=3600)
    [res] = make_client(openai_server, tmp_path / "f", retry_after_max_s=1.0, max_retries=2).run(calls(1, seed=3))
    assert isinstance(res.error, RateLimited) and "more than retry_after_max_s=1" in str(res.error)


def test_retry_after_within_the_cap_is_honoured(openai_server, tmp_path: Path) -> None:
    openai_server.fail_next(1, "429", retry_after=0.4)
    client = make_client(openai_server, tmp_path, retry_after_max_s=1.0)
    start = time.monotonic()
    [res] = client.run(calls(1))
    assert res.ok and res.attempts == 2 and time.monotonic() - start >= 0.4


@pytest.mark.parametrize("concurrency", [1, 8])
def test_budget_is_a_hard_cap_reached_to_90_percent(openai_server, tmp_path: Path, concurrency: int) -> None:
    """Answers far shorter than max_tokens: reserving max_tokens would stop near 1/5 of the budget."""
    openai_server.usage_fn = lambda req, texts: (1000, 100)  # $0.036 a call at $30 / $60 per 1M tokens
    per_call = (1000 * 30 + 100 * 60) / 1e6
    client = make_client(openai_server, tmp_path, model="gpt-4", budget_usd=1.0, concurrency=concurrency,
                         prices={"gpt-4": [30.0, 60.0]})
    results = client.run(calls(60, max_tokens=2000))
    done = [r for r in results if r.ok]
    assert all(isinstance(r.error, BudgetExceeded) for r in results if not r.ok)
    spent = client.ledger.spent_usd
    assert spent == pytest.approx(per_call * len(done)) and openai_server.served == len(done)
    assert 0.9 <= spent <= 1.0 + concurrency * per_call, (spent, len(done))
    assert client.ledger.stopped


SCRIPT = """
import json, os, signal, sys, threading
sys.path.insert(0, {tests!r})
from openai_server import OpenAIServer
from xwin_data.llm.cache import RequestCache
from xwin_data.llm.client import ChatCall, ChatClient, ClientSettings

server = OpenAIServer(latency=0.6).start()
def stop_soon(body, number):
    if number == 1:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.{sig})).start()
calls = [ChatCall([{{"role": "user", "content": f"q {{i}}"}}]) for i in range(20)]
def client():
    return ChatClient(ClientSettings(model="test-judge", base_url=server.base_url, concurrency=4, drain_timeout_s=10),
                      RequestCache({cache!r}))
server.fault_fn = stop_soon
first = client()
try:
    first.run(calls)
    outcome = "finished"
except KeyboardInterrupt:
    outcome = "interrupted"
asked_first = server.total
server.fault_fn = None
results = client().run(calls)
print(json.dumps({{"outcome": outcome, "signal": first.stop_signal, "asked_first": asked_first,
                  "served_first": asked_first, "cached_second": sum(r.cached for r in results),
                  "total": server.total, "repeated": server.repeated, "ok": all(r.ok for r in results)}}))
server.stop()
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_stop_signal_lets_in_flight_calls_finish_and_be_cached(tmp_path: Path, sig: str) -> None:
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(TESTS), sig=sig, cache=str(tmp_path / "c.sqlite"))))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["outcome"] == "interrupted" and out["signal"] == getattr(signal, sig)
    assert out["asked_first"] == 4  # the four in flight when the signal came; nothing started after it
    assert out["cached_second"] == 4  # ...and all four were kept: the second run did not ask them again
    assert out["total"] == 20 and out["repeated"] == 0 and out["ok"]


def test_paced_client_meets_a_server_enforced_limit_without_429(openai_server, tmp_path: Path) -> None:
    openai_server.rpm_limit = 1200  # 20 a second, enforced with 429s
    unpaced = make_client(openai_server, tmp_path / "u", concurrency=32, max_retries=500)
    first = unpaced.run(calls(60, seed=1))
    assert all(r.ok for r in first), [r.error for r in first if not r.ok][:3]
    assert openai_server.rate_limited > 0  # the server does enforce it: a burst is refused (then retried)

    openai_server.reset(rpm_limit=1200)
    paced = make_client(openai_server, tmp_path / "p", concurrency=32, requests_per_minute=1200)
    results = paced.run(calls(60, seed=2))
    assert all(r.ok for r in results) and openai_server.rate_limited == 0 and paced.retries == 0
