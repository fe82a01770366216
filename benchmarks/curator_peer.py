"""Bespoke Curator as the peer of the judge client: the same server, latency, concurrency and number of calls.

Curator is installed into its own virtual environment (never into the project's), made here on first use under
`benchmarks/.venvs/curator`. It runs offline: telemetry off, its cache in a temporary folder, and tiktoken
pointed (`TIKTOKEN_CACHE_DIR`) at the encodings that litellm, one of its dependencies, bundles, since tiktoken
would otherwise download them. The run is a `curator.LLM` with `prompt(row)` and `parse(row, response)` over
rows `{id, prompt}`, on its OpenAI backend with `base_url` at the local server and limits that never bind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("XWIN_BENCH_CURATOR_VENV", HERE / ".venvs" / "curator"))  # or an existing venv
PACKAGE = "bespokelabs-curator"

RUNNER = r'''
import json, os, sys, time
from bespokelabs import curator

url, n, conc, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


class Judge(curator.LLM):
    def prompt(self, row):
        return [{"role": "user", "content": row["prompt"]}]

    def parse(self, row, response):
        return {"id": row["id"], "text": response}


def run(rows):
    llm = Judge(model_name="gpt-4o-mini", backend="openai",
                generation_params={"temperature": 0, "max_tokens": 64},
                backend_params={"base_url": url, "api_key": "bench", "max_requests_per_minute": 10_000_000,
                                "max_tokens_per_minute": 10_000_000_000, "max_concurrent_requests": conc,
                                "max_retries": 1, "require_all_responses": True})
    start, cpu = time.perf_counter(), time.process_time()
    out = llm(rows)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    data = out.dataset if hasattr(out, "dataset") else out
    assert len(data) == len(rows), (len(data), len(rows))
    return elapsed, cpu


run([{"id": i, "prompt": f"{tag} warm {i}"} for i in range(min(200, n))])
elapsed, cpu = run([{"id": i, "prompt": f"{tag} question {i}"} for i in range(n)])
print("RESULT " + json.dumps({"req_per_s": n / elapsed, "cpu_ms_per_req": 1000 * cpu / n}))
'''


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import bespokelabs.curator"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", PACKAGE], check=True)
    return python


def tiktoken_cache(python: Path) -> str | None:
    """The folder of tiktoken encodings bundled with litellm inside the venv, if any."""
    code = ("import importlib.util, pathlib; s = importlib.util.find_spec('litellm'); "
            "print(pathlib.Path(s.origin).parent / 'litellm_core_utils' / 'tokenizers')")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    folder = out.stdout.strip()
    return folder if out.returncode == 0 and folder and Path(folder).is_dir() else None


def curator_rate(python: Path, url: str, n: int, concurrency: int, tag: str, tmp: Path) -> dict:
    env = {**os.environ, "CURATOR_CACHE_DIR": str(tmp / f"curator-cache-{tag}"), "CURATOR_DISABLE_POSTHOG": "1",
           "TELEMETRY_ENABLED": "0", "POSTHOG_DISABLED": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "CURATOR_VIEWER": "0",
           "PYTHONPATH": ""}
    cache = tiktoken_cache(python)
    if cache:
        env["TIKTOKEN_CACHE_DIR"] = cache
    script = tmp / "curator_run.py"
    script.write_text(RUNNER)
    proc = subprocess.run([str(python), str(script), url, str(n), str(concurrency), tag], capture_output=True,
                          text=True, env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"curator run failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")


def curator_comparison(args, tmp: Path, start_server, client_rate) -> dict:
    """Alternating rounds of ours and Curator against one server at `--latency` and `--concurrency`."""
    python = ensure_venv()
    server, url = start_server(args.latency)
    best: dict[str, tuple[float, float]] = {}
    try:
        for r in range(args.rounds):
            rate, cpu = client_rate(url, args.concurrency, args.requests, tmp / f"ours{r}.sqlite", f"ours{r}")
            if rate > best.get("ours", (0, 0))[0]:
                best["ours"] = (rate, cpu)
            res = curator_rate(python, url, args.requests, args.concurrency, f"cur{r}", tmp)
            if res["req_per_s"] > best.get("curator", (0, 0))[0]:
                best["curator"] = (res["req_per_s"], res["cpu_ms_per_req"])
    finally:
        server.kill()
    ours, cur = best["ours"], best["curator"]
    return {"curator_latency_s": args.latency, "curator_concurrency": args.concurrency,
            "curator_requests": args.requests, "ours_req_per_s": round(ours[0], 1),
            "curator_req_per_s": round(cur[0], 1), "ours_cpu_ms_per_req": round(ours[1], 3),
            "curator_cpu_ms_per_req": round(cur[1], 3), "ours_over_curator": round(ours[0] / cur[0], 2)}


if __name__ == "__main__":  # a quick look: python benchmarks/curator_peer.py URL
    py = ensure_venv()
    print(curator_rate(py, sys.argv[1], 500, 64, f"t{int(time.time())}", Path("/tmp")))
