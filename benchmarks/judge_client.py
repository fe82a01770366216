"""Judge-client throughput against the local OpenAI-compatible server with a fixed latency, side by side:

- sequential: one request at a time through the same client (what a plain loop gets: 1 / latency);
- concurrent: `--concurrency` requests in flight through ChatClient (cache writes included);
- ideal: concurrency / latency, the most any client could do against that server;
- ceiling: the raw AsyncOpenAI client with the same concurrency against a zero-latency server, i.e. how many
  requests per second the openai + httpx stack itself can push on this CPU (no cache, no limits, no retries);
- cache lookups per second on the request cache (single `get` and batched `get_many`).

The server runs in its own process (tests/openai_server.py) so it does not share the client's GIL.
    python benchmarks/judge_client.py [--latency 0.02] [--concurrency 64] [--requests 3000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from xwin_data.llm.cache import RequestCache  # noqa: E402
from xwin_data.llm.client import ChatCall, ChatClient, ClientSettings  # noqa: E402


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(PROJECT / "tests" / "openai_server.py"), "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().split()[1])
    return proc, f"http://127.0.0.1:{port}/v1"


def calls(n: int, tag: str) -> list[ChatCall]:
    return [ChatCall([{"role": "user", "content": f"{tag} question {i}"}], {"temperature": 0, "max_tokens": 64})
            for i in range(n)]


def client_rate(url: str, concurrency: int, n: int, cache_path: Path | None, tag: str) -> float:
    cache = RequestCache(cache_path) if cache_path else None
    client = ChatClient(ClientSettings(model="bench", base_url=url, concurrency=concurrency), cache)
    client.run(calls(min(n, 200), tag + "-warm"))
    start = time.perf_counter()
    results = client.run(calls(n, tag))
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), [str(r.error) for r in results if not r.ok][:3]
    return n / elapsed


async def _raw_rate(url: str, concurrency: int, n: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await client.chat.completions.with_raw_response.create(
                model="bench", messages=[{"role": "user", "content": f"raw {i}"}])

    await asyncio.gather(*(one(i) for i in range(200)))
    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - start
    await client.close()
    return n / elapsed


def cache_rates(folder: Path, n: int = 20_000) -> dict:
    cache = RequestCache(folder / "lookup.sqlite")
    value = {"texts": ["Final verdict: [[A]] " * 20], "prompt_tokens": 700, "completion_tokens": 200, "cost_usd": 0.0}
    keys = [f"key-{i:08d}" for i in range(n)]
    start = time.perf_counter()
    for k in keys:
        cache.put(k, value)
    put_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for k in keys:
        assert cache.get(k) is not None
    get_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    assert len(cache.get_many(keys)) == n
    many_rate = n / (time.perf_counter() - start)
    cache.close()
    return {"put_per_s": round(put_rate), "get_per_s": round(get_rate), "get_many_per_s": round(many_rate)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--sequential-requests", type=int, default=100)
    args = ap.parse_args()

    server, url = start_server(args.latency)
    zero, zero_url = start_server(0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            sequential = client_rate(url, 1, args.sequential_requests, tmp / "seq.sqlite", "seq")
            concurrent = client_rate(url, args.concurrency, args.requests, tmp / "conc.sqlite", "conc")
            no_cache = client_rate(url, args.concurrency, args.requests, None, "nocache")
            ceiling = asyncio.run(_raw_rate(zero_url, args.concurrency, args.requests))
            ours_at_zero = client_rate(zero_url, args.concurrency, args.requests, tmp / "zero.sqlite", "zero")
            # a fully cached re-run: every answer comes from the request cache, no request is made
            cached_client = ChatClient(ClientSettings(model="bench", base_url=url, concurrency=args.concurrency),
                                       RequestCache(tmp / "conc.sqlite"))
            start = time.perf_counter()
            again = cached_client.run(calls(args.requests, "conc"))
            cached_run = args.requests / (time.perf_counter() - start)
            assert all(r.cached for r in again)
            lookups = cache_rates(tmp)
    finally:
        server.kill()
        zero.kill()
    ideal = args.concurrency / args.latency
    report = {
        "latency_s": args.latency, "concurrency": args.concurrency, "requests": args.requests,
        "sequential_req_per_s": round(sequential, 1),
        "concurrent_req_per_s": round(concurrent, 1),
        "concurrent_no_cache_req_per_s": round(no_cache, 1),
        "ideal_req_per_s": round(ideal, 1),
        "share_of_ideal": round(concurrent / ideal, 3),
        "speedup_vs_sequential": round(concurrent / sequential, 1),
        "openai_stack_ceiling_req_per_s (raw AsyncOpenAI, 0 latency)": round(ceiling, 1),
        "ours_at_0_latency_req_per_s": round(ours_at_zero, 1),
        "cached_rerun_calls_per_s": round(cached_run),
        **{f"cache_{k}": v for k, v in lookups.items()},
    }
    print(json.dumps(report, indent=2))
    print(f"\nconcurrency {args.concurrency} at {args.latency * 1000:g} ms: {concurrent:.0f} req/s = "
          f"{100 * concurrent / ideal:.0f}% of the ideal {ideal:.0f} req/s (target >= 90%), "
          f"{concurrent / sequential:.0f}x the sequential loop ({sequential:.0f} req/s); "
          f"cache get {lookups['get_per_s']}/s (target >= 10,000/s)")


if __name__ == "__main__":
    main()
