"""The Xwin-LM pipeline on tiny models, judged by a separately trained "gold" reward model.

    python benchmarks/pipeline_tiny.py                      # about 10-15 minutes on 2 CPU cores
    python benchmarks/pipeline_tiny.py --scale 0.3          # a quicker smoke run

SFT (HH-RLHF helpful-base conversations) -> proxy RM (helpful-base pairs) and gold RM (helpful-rejection-sampled
pairs, a different split) -> Xwin-Set (64 distinct samples per training prompt from the SFT policy, proxy-RM
scored; derived tables by the toolkit's own ops: rs_best_of_64, dpo_pairs_worst, wind_groups) -> RS (SFT on
rs_best_of_64) -> DPO (from RS, on dpo_pairs_worst) -> WIND (from SFT, proxy RM online).

After each stage, on held-out prompts (helpful-online): 64 samples per prompt, the paper's protocol of picking the
best of n by the proxy RM and judging the pick with the gold RM: E[gold(best-of-n by proxy)], exact over the
samples (order statistics by proxy score). Prints a table, writes `evals` rows and a PNG.
The Xwin-Set step is `recipes/xwin_set.yaml` (prompts: the first user turn of the SFT conversations); where that
recipe's ops are missing, the script samples 64 distinct responses per prompt itself and derives the tables with
the same ops.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COMMON = ["logging_steps=50", "lr_scheduler_type=constant", "report_to=[]", "save_strategy=no",
          "dataloader_num_workers=0", "seed=0", "bon_eval_prompts_table=null"]

DERIVED = """name: bench_set
stages:
  - id: xwin_set
    op: sql
    schema: xwin_set
    params:
      query: |
        SELECT prompt_id, prompt, response_id, CAST(sample_index AS INTEGER) AS sample_index,
               CAST(attempt AS INTEGER) AS attempt, response, CAST(tokens AS INTEGER) AS tokens, finish_reason,
               score, CAST(row_number() OVER (PARTITION BY prompt_id ORDER BY score DESC, sample_index) AS INTEGER)
                 AS rank,
               CAST(count(*) OVER (PARTITION BY prompt_id) AS INTEGER) AS group_size, policy, rm
        FROM read_parquet('SET_PATH')
  - id: rs_best_of
    op: rs_best_of_n
    inputs: [xwin_set]
    params: {ns: [1, 4, 16, 64]}
  - id: dpo_pairs
    op: dpo_pairs
    inputs: [xwin_set]
    params: {strategies: [worst, random_lower]}
  - id: wind_groups
    op: wind_groups
    inputs: [xwin_set]
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sample(policy: str, prompts: list[list[dict]], n: int, max_new_tokens: int, seed: int):
    from xwin_data.llm.generation import GeneratorSpec, SamplingConfig, make_generator

    gen = make_generator(GeneratorSpec(backend="transformers", model=policy, batch_size=128))
    try:
        return gen.generate(prompts, n=n, sampling=SamplingConfig(temperature=1.0, max_new_tokens=max_new_tokens,
                                                                  seed=seed))
    finally:
        gen.close()


def build_set(cat: Path, policy: str, proxy, prompts: list[dict], args, work: Path) -> None:
    """64 distinct responses per prompt (drawing up to 2x), proxy-scored, as an xwin_set-shaped table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import xwin_data

    draws = sample(policy, [p["prompt"] for p in prompts], 2 * args.set_n, args.max_new_tokens, seed=11)
    rows = []
    for p, comps in zip(prompts, draws):
        seen, kept = set(), []
        for attempt, c in enumerate(comps):
            key = " ".join(c.text.lower().split())
            if key and key not in seen:
                seen.add(key)
                kept.append((attempt, c))
            if len(kept) == args.set_n:
                break
        for i, (attempt, c) in enumerate(kept):
            rows.append({"prompt_id": p["prompt_id"], "prompt": p["prompt"], "response_id": f"{p['prompt_id']}-{i}",
                         "sample_index": i, "attempt": attempt, "response": c.text, "tokens": max(1, c.tokens),
                         "finish_reason": c.finish_reason, "policy": policy, "rm": "proxy"})
    scores = proxy.score_responses([r["prompt"] for r in rows], [r["response"] for r in rows])
    for r, s in zip(rows, scores):
        r["score"] = s
    path = work / "xwin_set.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    recipe = work / "bench_set.yaml"
    recipe.write_text(DERIVED.replace("SET_PATH", str(path)))
    report = xwin_data.build(recipe, cat, show_progress=False)
    short = sum(1 for p in prompts if sum(r["prompt_id"] == p["prompt_id"] for r in rows) < args.set_n)
    log(f"xwin_set: {len(rows)} responses for {len(prompts)} prompts ({short} short of {args.set_n}); "
        f"build {report.status}")


def set_recipe_available() -> bool:
    from xwin_data.ops import get_op, load_all

    if not (ROOT / "recipes" / "xwin_set.yaml").is_file():
        return False
    load_all()
    try:
        for op in ("read_prompts", "sample_unique", "score_responses"):
            get_op(op)
    except Exception:  # noqa: BLE001 - an op that is not registered
        return False
    return True


def judge(policy: str, prompts: list[dict], proxy, gold, args) -> dict:
    """E[gold reward of the proxy's best of n] and E[proxy's best of n], exact over 64 samples per prompt."""
    from xwin_data.bon import best_of_weights

    comps = sample(policy, [p["prompt"] for p in prompts], 64, args.max_new_tokens, seed=12345)
    flat_p = [p["prompt"] for p, cs in zip(prompts, comps) for _ in cs]
    flat_t = [c.text for cs in comps for c in cs]
    px = proxy.score_responses(flat_p, flat_t)
    gd = gold.score_responses(flat_p, flat_t)
    out = {}
    for n in (1, 16, 64):
        gold_sel, proxy_sel = [], []
        for i in range(len(prompts)):
            pairs = sorted(zip(px[i * 64:(i + 1) * 64], gd[i * 64:(i + 1) * 64]))
            w = best_of_weights(64, n)
            gold_sel.append(sum(wk * g for wk, (_, g) in zip(w, pairs)))
            proxy_sel.append(sum(wk * p for wk, (p, _) in zip(w, pairs)))
        out[f"gold_bo{n}"] = sum(gold_sel) / len(gold_sel)
        out[f"proxy_bo{n}"] = sum(proxy_sel) / len(proxy_sel)
    out["mean_tokens"] = sum(c.tokens for cs in comps for c in cs) / len(flat_t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "pipeline_tiny"))
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the training steps")
    ap.add_argument("--set-prompts", type=int, default=128)
    ap.add_argument("--set-n", type=int, default=64)
    ap.add_argument("--eval-prompts", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    s = lambda x: max(1, int(x * args.scale))  # noqa: E731

    import xwin_data
    from xwin_data.training.scripts import run_script
    from xwin_data.training.data import prompt_rows, read_rows
    from xwin_data.llm.reward import RewardSpec, make_scorer
    from xwin_data.training.records import EvalRecord, record_eval, table_identity

    out = Path(args.out)
    cat, runs = out / "catalog", out / "runs"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    hh = ROOT.parent / "shared" / "data" / "anthropics_hh-rlhf"
    xwin_data.build(ROOT / "train/recipes/hh_rlhf.yaml", cat, show_progress=False,
                    sets=[f"hh_dir={hh}", "gold_split=helpful-rejection-sampled"])
    cfg = lambda name: str(ROOT / "train" / "configs" / f"{name}.yaml")  # noqa: E731
    timings = {}

    def stage(kind, *extra):
        start = time.perf_counter()
        length = [] if kind == "wind" else ["max_length=128"]
        rec = run_script(kind, [cfg(kind), f"catalog={cat}", *COMMON, *length, *extra])
        timings[kind if kind != "rm" else extra[0].split("=", 1)[1]] = time.perf_counter() - start
        m = rec["metrics"]
        log(f"{kind}: fixed-batch loss {m['fixed_batch_loss_before']:.4f} -> {m['fixed_batch_loss_after']:.4f} "
            f"({time.perf_counter() - start:.0f}s)")
        return rec

    log("SFT")
    stage("sft", "table=hh_sft", f"output_dir={runs / 'sft'}", f"max_steps={s(400)}", "per_device_train_batch_size=8",
          "learning_rate=3e-3")
    log("proxy and gold reward models")
    stage("rm", "stage_name=rm_proxy", "table=hh_pairs", f"output_dir={runs / 'rm'}", f"max_steps={s(400)}",
          "per_device_train_batch_size=8", "learning_rate=1e-3")
    stage("rm", "stage_name=rm_gold", "table=hh_gold_pairs", f"output_dir={runs / 'rm_gold'}",
          f"max_steps={s(400)}", "per_device_train_batch_size=8", "learning_rate=1e-3")
    proxy = make_scorer(RewardSpec(model=str(runs / "rm"), batch_size=128))
    gold = make_scorer(RewardSpec(model=str(runs / "rm_gold"), batch_size=128))

    log("Xwin-Set from the SFT policy")
    start = time.perf_counter()
    if set_recipe_available():
        report = xwin_data.build(ROOT / "recipes" / "xwin_set.yaml", cat, show_progress=False, sets=[
            f"policy.model={runs / 'sft'}", f"rm.model={runs / 'rm'}", "xwin_responses.inputs=[hh_sft]",
            f"max_prompts={args.set_prompts}", f"n_unique={args.set_n}", f"max_samples={3 * args.set_n}",
            f"sampling.max_new_tokens={args.max_new_tokens}", "rs_ns=[1,4,16,64]",
            "dpo.strategies=[worst,random_lower]"])
        con = xwin_data.connect(cat)
        n, p = con.sql("SELECT count(*), count(DISTINCT prompt_id) FROM xwin_set").fetchall()[0]
        log(f"xwin_set (recipes/xwin_set.yaml): {n} responses for {p} prompts; build {report.status}")
    else:
        log("recipes/xwin_set.yaml or its ops are missing: building the set here")
        set_prompts = prompt_rows(read_rows(cat, "hh_sft"), "hh_sft", args.set_prompts)
        build_set(cat, str(runs / "sft"), proxy, set_prompts, args, out)
    timings["xwin_set"] = time.perf_counter() - start

    log("RS, DPO, WIND")
    stage("rs", "table=rs_best_of_64", f"model_name_or_path={runs / 'sft'}", f"output_dir={runs / 'rs'}",
          "num_train_epochs=3", "max_steps=-1", "per_device_train_batch_size=8", "learning_rate=1e-3")
    stage("dpo", "table=dpo_pairs_worst", f"model_name_or_path={runs / 'rs'}", f"output_dir={runs / 'dpo'}",
          "num_train_epochs=3", "max_steps=-1", "per_device_train_batch_size=8", "learning_rate=5e-4")
    stage("wind", "table=wind_groups", f"model_name_or_path={runs / 'sft'}", f"reward_model={runs / 'rm'}",
          f"output_dir={runs / 'wind'}", f"max_steps={s(48)}", "steps_per_iteration=4", "group_size=8",
          "per_device_train_batch_size=8", "learning_rate=3e-5", "max_completion_length=32")

    log("gold evaluation on held-out prompts")
    eval_prompts = prompt_rows(read_rows(cat, "hh_prompts"), "hh_prompts", args.eval_prompts)
    results = []
    for name in ("sft", "rs", "dpo", "wind"):
        start = time.perf_counter()
        r = judge(str(runs / name), eval_prompts, proxy, gold, args)
        results.append({"stage": name, **r})
        for judge_name, key in (("gold (best of n by proxy)", "gold"), ("proxy", "proxy")):
            record_eval(cat, EvalRecord(
                stage=f"pipeline_{name}", model_path=str(runs / name), reward_model=judge_name,
                prompts_table="hh_prompts", prompts_fingerprint=table_identity(cat, "hh_prompts")["table_fingerprint"],
                n_prompts=len(eval_prompts), samples_per_prompt=64,
                best_of={n: r[f"{key}_bo{n}"] for n in (1, 16, 64)}, mean_tokens=r["mean_tokens"],
                seconds=time.perf_counter() - start))
        log(f"{name}: gold bo1 {r['gold_bo1']:.4f} bo64 {r['gold_bo64']:.4f}")

    print("\nstage   gold bo1   gold bo16  gold bo64 | proxy bo1  proxy bo64 | tokens")
    for r in results:
        print(f"{r['stage']:<6} {r['gold_bo1']:>9.4f} {r['gold_bo16']:>10.4f} {r['gold_bo64']:>10.4f} | "
              f"{r['proxy_bo1']:>9.4f} {r['proxy_bo64']:>10.4f} | {r['mean_tokens']:.1f}")
    total = time.perf_counter() - t0
    print(f"\ntotal {total:.0f}s; stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    (out / "results.json").write_text(json.dumps({"results": results, "timings": timings, "total_s": total,
                                                  "args": vars(args)}, indent=1))
    plot(results, out / "pipeline_tiny.png")
    log(f"wrote {out / 'results.json'} and {out / 'pipeline_tiny.png'}")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["stage"].upper() for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(names, [r["gold_bo1"] for r in results], "o-", label="best-of-1 (gold RM)")
    ax.plot(names, [r["gold_bo64"] for r in results], "s-", label="best-of-64 by proxy RM (gold RM)")
    ax.set_ylabel("gold reward")
    ax.set_title("Tiny-model pipeline on HH-RLHF: gold reward by stage")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
