"""The chat client on both HTTP transports (aiohttp directly, and the openai client on httpx): the same typed
errors, Retry-After, key scrubbing, headers, and every connection pool closed when a run ends."""
from __future__ import annotations

import gc
import socket
import logging
import time
import warnings
from pathlib import Path

import pytest

from xwin_data.llm.cache import RequestCache
from xwin_data.llm.client import (COMMON_PARAMS, AuthError, ChatCall, ChatClient, ClientSettings, ConnectionFailed, RequestRejected,
                                  ServerError, Timeout, _chat_param_names, aiohttp_available)

TRANSPORTS = ["openai", pytest.param("aiohttp", marks=pytest.mark.skipif(
    not aiohttp_available(), reason="aiohttp is not installed"))]


def make_client(server, tmp_path: Path, transport: str, **overrides) -> ChatClient:
    settings = {"model": "test-judge", "base_url": server.base_url, "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05, "timeout_s": 5, "transport": transport, **overrides}
    return ChatClient(ClientSettings(**settings), RequestCache(tmp_path / "cache.sqlite"))


def calls(count: int, **params) -> list[ChatCall]:
    return [ChatCall([{"role": "user", "content": f"question {i}"}], {"temperature": 0, **params}) for i in range(count)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_typed_errors_on_each_transport(openai_server, tmp_path: Path, transport: str) -> None:
    openai_server.fail_next(2, "hang")
    [res] = make_client(openai_server, tmp_path / "t", transport, timeout_s=0.2, max_retries=1).run(calls(1))
    assert isinstance(res.error, Timeout), res.error

    openai_server.reset()
    openai_server.fail_next(2, "drop")  # the server closes the connection without an answer
    [res] = make_client(openai_server, tmp_path / "d", transport, max_retries=1).run(calls(1))
    assert isinstance(res.error, ConnectionFailed), repr(res.error)
    assert openai_server.total == 2

    openai_server.reset()
    openai_server.fail_next(1, "drop")  # ... and is retried
    [res] = make_client(openai_server, tmp_path / "d2", transport).run(calls(1))
    assert res.ok and res.attempts == 2

    with socket.socket() as closed:  # a port nobody listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    [res] = make_client(openai_server, tmp_path / "c", transport, base_url=f"http://127.0.0.1:{port}/v1",
                        max_retries=1).run(calls(1))
    assert isinstance(res.error, ConnectionFailed) and res.attempts == 0, repr(res.error)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_status_codes_map_to_typed_errors_on_each_transport(openai_server, tmp_path: Path, transport: str) -> None:
    """403 is an AuthError, 408/409/5xx are retried ServerErrors, other 4xx are RequestRejected with the
    server's own message; none but the retryable ones is asked twice."""
    for n, (code, kind, asked) in enumerate([("403", AuthError, 1), ("400", RequestRejected, 1),
                                             ("422", RequestRejected, 1), ("409", ServerError, 2),
                                             ("408", ServerError, 2), ("503", ServerError, 2)]):
        openai_server.reset()
        openai_server.fail_next(5, code)
        [res] = make_client(openai_server, tmp_path / str(n), transport, max_retries=1).run(calls(1))
        assert type(res.error) is kind, (code, repr(res.error))
        assert f"The server answered {code}" in str(res.error) and code in str(res.error)
        assert openai_server.total == asked, (code, openai_server.total)
    openai_server.reset()
    openai_server.fail_next(1, "409")  # a retryable status, then an answer
    [res] = make_client(openai_server, tmp_path / "ok", transport).run(calls(1))
    assert res.ok and res.attempts == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_headers_and_credentials_in_the_url(openai_server, tmp_path: Path, transport: str, monkeypatch) -> None:
    """The key from `api_key_env` travels as the bearer token with the settings' headers; a `user:password@`
    part of the base URL is taken out before the request and never sent."""
    monkeypatch.setenv("XWIN_HEADER_KEY", "sk-header-test-key-0123")
    url = openai_server.base_url.replace("http://", "http://judge-user:url-password-987@")
    client = make_client(openai_server, tmp_path, transport, base_url=url, api_key_env="XWIN_HEADER_KEY",
                         headers={"X-Project": "xwin-test"})
    [res] = client.run(calls(1))
    assert res.ok, res.error
    [headers] = openai_server.request_headers
    assert headers["authorization"] == "Bearer sk-header-test-key-0123"
    assert headers["x-project"] == "xwin-test" and headers["content-type"].startswith("application/json")
    assert "url-password-987" not in repr(headers)
    if transport == "aiohttp":
        assert headers["user-agent"].startswith("xwin-data/")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_retry_after_and_key_scrubbing_on_each_transport(openai_server, tmp_path: Path, transport: str,
                                                         monkeypatch) -> None:
    openai_server.fail_next(3, "429", retry_after=0.3)
    start = time.monotonic()
    results = make_client(openai_server, tmp_path / "r", transport, concurrency=3).run(calls(3))
    assert all(r.ok for r in results) and time.monotonic() - start >= 0.3

    secret = "sk-transport-test-0123456789abcdef"
    monkeypatch.setenv("XWIN_TRANSPORT_KEY", secret)
    openai_server.reset()
    openai_server.fail_next(1, "401")  # the server quotes the key back, as OpenAI does
    [res] = make_client(openai_server, tmp_path / "k", transport, api_key_env="XWIN_TRANSPORT_KEY").run(calls(1))
    assert isinstance(res.error, AuthError) and "Incorrect API key" in str(res.error)
    assert secret not in str(res.error) and secret[:12] not in str(res.error)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_connection_pool_is_closed(openai_server, tmp_path: Path, transport: str, caplog) -> None:
    openai_server.fail_next(1, "500")
    openai_server.fail_next(1, "hang")
    caplog.set_level(logging.ERROR, logger="asyncio")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        client = make_client(openai_server, tmp_path, transport, concurrency=8, timeout_s=0.3)
        assert all(r.ok for r in client.run(calls(20)))
        assert all(r.ok for r in client.run(calls(5, seed=1)))  # a second run opens and closes its own pool
        gc.collect()
    leaks = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()], caplog.text


def test_auto_transport_is_aiohttp_unless_a_proxy_is_set(openai_server, tmp_path: Path, monkeypatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    client = make_client(openai_server, tmp_path / "a", "auto")
    assert client.run(calls(1))[0].ok
    assert client.transport == ("aiohttp" if aiohttp_available() else "openai")

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # only https:// URLs would go through it
    client = make_client(openai_server, tmp_path / "p", "auto")
    assert client.run(calls(1))[0].ok and client.transport == "openai"


def test_parameters_reach_the_server_and_unknown_ones_fail_first(openai_server, tmp_path: Path) -> None:
    call = ChatCall([{"role": "user", "content": "q"}], {"temperature": 0.5, "max_tokens": 9, "stop": ["\n"],
                                                        "extra_body": {"top_k": 4}})
    [res] = make_client(openai_server, tmp_path, "auto").run([call])
    assert res.ok
    [body] = openai_server.requests
    assert body == {"model": "test-judge", "messages": [{"role": "user", "content": "q"}], "temperature": 0.5,
                    "max_tokens": 9, "stop": ["\n"], "top_k": 4}
    assert COMMON_PARAMS <= _chat_param_names()  # the names checked without openai are `create`'s own
    for bad in ({"max_token": 9}, {"model": "other"}, {"stream": True}, {"temperature": 0, "tempreature": 1}):
        with pytest.raises(TypeError, match="not chat-completion parameters"):
            make_client(openai_server, tmp_path, "auto").run([ChatCall([{"role": "user", "content": "q"}], bad)])
    assert openai_server.total == 1
