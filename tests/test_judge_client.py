"""The chat client through the real `openai` client against the scripted server on 127.0.0.1."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from xwin_data.llm.cache import RequestCache
from xwin_data.llm.client import (BadResponse, BudgetExceeded, ChatCall, ChatClient, ClientSettings, MissingKey,
                                  RequestRejected, ServerError, Timeout)
from xwin_data.llm.costs import PriceTable


def make_client(server, tmp_path: Path, **overrides) -> ChatClient:
    settings = {"model": "test-judge", "base_url": server.base_url, "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05, "timeout_s": 5, **overrides}
    return ChatClient(ClientSettings(**settings), RequestCache(tmp_path / "cache.sqlite"))


def calls(count: int, **params) -> list[ChatCall]:
    return [ChatCall([{"role": "user", "content": f"question {i}"}], {"temperature": 0, **params}) for i in range(count)]


def test_results_are_cached_durably_and_never_asked_twice(openai_server, tmp_path: Path) -> None:
    client = make_client(openai_server, tmp_path)
    first = client.run(calls(10))
    assert [r.text for r in first] == [f"Answer to: question {i}" for i in range(10)]
    assert all(r.ok and not r.cached and r.prompt_tokens == 2 for r in first)
    assert openai_server.served == 10

    again = make_client(openai_server, tmp_path).run(calls(10))  # a new process would see the same file
    assert [r.text for r in again] == [r.text for r in first]
    assert all(r.cached for r in again) and openai_server.total == 10

    # identical calls within one run are asked once; a different parameter is a different key
    dup = client.run(calls(1, max_tokens=7) * 3)
    assert openai_server.total == 11 and len({r.key for r in dup}) == 1
    assert openai_server.repeated == 0


def test_n_choices_and_usage(openai_server, tmp_path: Path) -> None:
    [res] = make_client(openai_server, tmp_path).run(calls(1, n=3))
    assert res.texts == ["Answer to: question 0", "Answer to: question 0 #1", "Answer to: question 0 #2"]
    assert res.completion_tokens == sum(len(t.split()) for t in res.texts)


def test_429_burst_honours_retry_after(openai_server, tmp_path: Path) -> None:
    openai_server.fail_next(4, "429", retry_after=0.3)
    client = make_client(openai_server, tmp_path, concurrency=4)
    start = time.monotonic()
    results = client.run(calls(4))
    elapsed = time.monotonic() - start
    assert all(r.ok for r in results), [str(r.error) for r in results]
    assert elapsed >= 0.3  # backoff alone (<= 0.05 s) would have retried sooner
    assert openai_server.total == 8 and openai_server.served == 4 and client.retries == 4


def test_500s_are_retried_then_surface_as_typed_errors(openai_server, tmp_path: Path) -> None:
    openai_server.fail_next(2, "500")
    [ok] = make_client(openai_server, tmp_path).run(calls(1))
    assert ok.ok and ok.attempts == 3

    openai_server.fail_next(10, "500")
    [bad] = make_client(openai_server, tmp_path / "b", max_retries=2).run(calls(1))
    assert isinstance(bad.error, ServerError) and openai_server.total == 3 + 3


def test_timeout_and_malformed_json(openai_server, tmp_path: Path) -> None:
    openai_server.fail_next(1, "hang")
    openai_server.fail_next(1, "malformed")
    [res] = make_client(openai_server, tmp_path, timeout_s=0.3).run(calls(1))
    assert res.ok and res.attempts == 3  # hang -> time-out, malformed -> bad response, then fine

    openai_server.fail_next(3, "hang")
    [res] = make_client(openai_server, tmp_path / "t", timeout_s=0.2, max_retries=1).run(calls(1, seed=1))
    assert isinstance(res.error, Timeout)
    openai_server.fail_next(3, "malformed")
    [res] = make_client(openai_server, tmp_path / "m", max_retries=1).run(calls(1, seed=2))
    assert isinstance(res.error, BadResponse) and "not a chat completion" in str(res.error)


def test_client_errors_are_not_retried(openai_server, tmp_path: Path) -> None:
    [res] = make_client(openai_server, tmp_path, base_url=openai_server.base_url + "/nowhere").run(calls(1))
    assert isinstance(res.error, RequestRejected) and "404" in str(res.error) and res.attempts == 0


def test_concurrency_is_bounded(openai_server, tmp_path: Path) -> None:
    openai_server.latency = 0.05
    results = make_client(openai_server, tmp_path, concurrency=5).run(calls(30))
    assert all(r.ok for r in results)
    assert openai_server.max_in_flight == 5, openai_server.max_in_flight


def test_requests_per_minute_are_paced_not_burst(openai_server, tmp_path: Path) -> None:
    """A 600 RPM limit sends about 10 requests a second from the start, not 600 in the first instant."""
    arrivals: list[float] = []
    openai_server.fault_fn = lambda body, number: arrivals.append(time.monotonic())
    results = make_client(openai_server, tmp_path, requests_per_minute=600, concurrency=16).run(calls(16))
    assert all(r.ok for r in results) and len(arrivals) == 16
    arrivals.sort()
    in_any_second = max(sum(1 for t in arrivals if a <= t < a + 1.0) for a in arrivals)
    assert in_any_second <= 11, in_any_second  # 10 a second, plus the one that opens the window
    assert sum(1 for t in arrivals if t < arrivals[0] + 0.25) <= 3


def test_budget_stops_cleanly_and_keeps_finished_calls(openai_server, tmp_path: Path) -> None:
    openai_server.latency = 0.01
    openai_server.usage_fn = lambda req, texts: (1000, 1000)  # $0.09 a call at gpt-4's $30/$60 per 1M
    client = make_client(openai_server, tmp_path, model="gpt-4", budget_usd=0.2, concurrency=2,
                         prices={"gpt-4": [30.0, 60.0]})
    results = client.run(calls(20, max_tokens=100))
    done = [r for r in results if r.ok]
    stopped = [r for r in results if isinstance(r.error, BudgetExceeded)]
    assert done and stopped and len(done) + len(stopped) == 20
    assert openai_server.served == len(done) and client.ledger.stopped
    assert client.ledger.spent_usd == pytest.approx(0.09 * len(done))
    assert client.ledger.spent_usd <= 0.2 + 2 * 0.09  # at most the calls in flight when it stopped
    assert "budget of $0.2000 reached" in str(stopped[0].error)
    # finished calls were kept: a second run with a larger budget only asks for the rest
    more = make_client(openai_server, tmp_path, model="gpt-4", budget_usd=5.0)
    assert all(r.ok for r in more.run(calls(20, max_tokens=100)))
    assert openai_server.served == 20 and more.ledger.cached_calls == len(done)


def test_price_table() -> None:
    prices = PriceTable.with_overrides({"my-model": [1.0, 2.0]})
    assert prices.cost("gpt-4o-2024-08-06", 1_000_000, 0) == pytest.approx(2.5)
    assert prices.cost("gpt-4o-mini", 0, 1_000_000) == pytest.approx(0.6)
    assert prices.cost("my-model", 500_000, 500_000) == pytest.approx(1.5)
    assert prices.cost("/models/tiny-policy", 10**6, 10**6) == 0.0
    with pytest.raises(ValueError):
        PriceTable.with_overrides({"x": [1.0]})


def test_missing_key_for_openai_is_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XWIN_TEST_KEY", raising=False)
    client = ChatClient(ClientSettings(model="gpt-4o", base_url="https://api.openai.com/v1", api_key_env="XWIN_TEST_KEY"))
    with pytest.raises(MissingKey, match="XWIN_TEST_KEY"):
        client.run(calls(1))


def test_collector_thresholds_are_restored_after_a_run(openai_server, tmp_path: Path) -> None:
    """A run collects garbage less often (thousands of live tasks), and leaves the process as it found it, also
    when the run fails."""
    import gc

    before = gc.get_threshold()
    seen: list[tuple] = []
    results = make_client(openai_server, tmp_path).run(calls(3), on_done=lambda r: seen.append(gc.get_threshold()))
    assert all(r.ok for r in results) and gc.get_threshold() == before
    assert seen and all(t[0] >= 20_000 for t in seen)
    with pytest.raises(TypeError):
        make_client(openai_server, tmp_path).run([ChatCall([{"role": "user", "content": "q"}], {"bad_param": 1})])
    assert gc.get_threshold() == before
