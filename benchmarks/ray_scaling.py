"""The same stages on the local executor and on a Ray cluster of 1 and 2 one-CPU nodes, as ratios from one run.

    python benchmarks/ray_scaling.py                                   # 200K conversations; 64 prompts x 16 samples
    python benchmarks/ray_scaling.py --n 20000 --prompts 8 --rounds 1  # a short version

Two workloads: cleaning + stats (`clean_conversations`, `conversation_stats`) over N ShareGPT-form conversations
(real conversations replicated with perturbations, as in `benchmarks/sft_build.py`), and generation of distinct
responses (`sample_unique`) with the toolkit's tiny local policy on the transformers backend. Each configuration
builds the same recipe in its own copy of a catalog in which the input table is already built, in its own driver
process, and the seconds of the measured stages are taken from the build report; the tables of every
configuration are checked to be identical to the local build's. The configurations alternate within each round
(local, ray-1, ray-2, then the reverse order), `--rounds` times, so a change in the machine's load hits all of
them; the load average is printed with every result.

Reported per round: Ray at 2 workers over local at equal cores (the local executor forks one worker per core; its
model stage runs one model on one thread), and the speedup from 1 to 2 Ray workers, for the stage time and for the
time after start-up (the stage time less the executor's `startup_seconds`: connecting, starting worker processes,
loading the model in each replica, before the first unit began).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
TEXT_RECIPE = """\
name: scaling_text
vars: {input: x}
stages:
  - {id: raw, op: read_conversations, schema: conversations, params: {path: "${input}"}}
  - {id: clean, op: clean_conversations, inputs: [raw]}
  - {id: stats, op: conversation_stats, inputs: [clean]}
"""
GEN_RECIPE = """\
name: scaling_generation
vars: {prompts: x, n: 16, chunk: 3}
stages:
  - {id: prompts, op: read_prompts, params: {path: "${prompts}"}}
  - id: responses
    op: sample_unique
    inputs: [prompts]
    params: {policy: {backend: transformers, model: tiny-policy}, sampling: {max_new_tokens: 24},
             n_unique: "${n}", prompts_per_chunk: "${chunk}"}
"""


def build_once(recipe: Path, catalog: Path, sets: list[str], executor: str, address: str | None) -> dict:
    """One build in its own driver process: each built stage's seconds and executor stats, and the wall time."""
    code = ("import json, sys, xwin_data; r = xwin_data.build(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), "
            "show_progress=False, executor=sys.argv[4], ray_address=sys.argv[5] or None); "
            "print(json.dumps({s.stage_id: [s.seconds, s.stats.get('executor', {})] for s in r.stages "
            "if s.status == 'built'}))")
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "RAY_AUTH_MODE": "disabled"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, str(recipe), str(catalog), json.dumps(sets), executor,
                           address or ""], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"build failed ({executor}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {"stages": json.loads(proc.stdout.strip().splitlines()[-1]), "wall": round(time.monotonic() - start, 2)}


def table_rows(catalog: Path, table: str) -> list:
    import duckdb

    from xwin_data.core.catalog import Catalog

    cat = Catalog(catalog)
    return duckdb.sql(f"SELECT * FROM read_parquet('{cat.data_glob(cat.current(table))}') ORDER BY ALL").fetchall()


def start_cluster(nodes: int, temp: Path):
    from ray.cluster_utils import Cluster

    node = dict(num_cpus=1, object_store_memory=300 * 2**20)
    cluster = Cluster(initialize_head=True, head_node_args=dict(**node, include_dashboard=False, temp_dir=str(temp)))
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    cluster.wait_for_nodes(timeout=120)
    return cluster


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def measure(workload: str, recipe: Path, base: Path, sets: list[str], stages: list[str], table: str,
            work: Path, rounds: int) -> dict:
    """Local, Ray with 1 and with 2 nodes, alternating in order round by round; each from a fresh copy of the base
    catalog."""
    import ray

    configs = [("local", 0), ("ray-1", 1), ("ray-2", 2)]
    out: dict = {"rounds": []}
    reference = None
    for r in range(rounds):
        got: dict = {}
        for name, nodes in configs if r % 2 == 0 else configs[::-1]:
            catalog = work / f"{workload}-{name}-{r}"
            shutil.copytree(base, catalog)
            temp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # Ray's socket paths must stay short
            cluster = start_cluster(nodes, temp) if nodes else None
            try:
                res = build_once(recipe, catalog, sets, "ray" if nodes else "local",
                                 cluster.address if cluster else None)
            finally:
                if cluster is not None:
                    ray.shutdown()
                    cluster.shutdown()
                shutil.rmtree(temp, ignore_errors=True)
            seconds = round(sum(res["stages"].get(s, [0.0, {}])[0] for s in stages), 2)
            startup = round(sum(res["stages"].get(s, [0.0, {}])[1].get("startup_seconds", 0.0) for s in stages), 2)
            busy = round(sum(res["stages"].get(s, [0.0, {}])[1].get("unit_seconds", 0.0) for s in stages), 2)
            rows = table_rows(catalog, table)
            reference = rows if reference is None else reference
            shutil.rmtree(catalog, ignore_errors=True)
            got[name] = {"seconds": seconds, "startup": startup, "unit_seconds": busy, "wall": res["wall"],
                         "same_table": rows == reference, "rows": len(rows), "load": os.getloadavg()[0]}
            print(f"  round {r + 1} {workload:<10} {name:<6} {seconds:8.2f} s (start-up {startup:.1f} s, "
                  f"in units {busy:.1f} s; driver process {res['wall']:.1f} s), {len(rows):,} rows, same table as "
                  f"local: {rows == reference}; {load()}", flush=True)
        after = {k: max(0.01, v["seconds"] - v["startup"]) for k, v in got.items()}
        for k, v in got.items():  # units in flight on average after start-up: ~2 when both workers stay busy
            v["concurrency"] = round(v["unit_seconds"] / after[k], 2)
        got["ray2_over_local"] = round(got["ray-2"]["seconds"] / got["local"]["seconds"], 2)
        got["speedup_1_to_2"] = round(got["ray-1"]["seconds"] / got["ray-2"]["seconds"], 2)
        got["ray2_over_local_after_startup"] = round(after["ray-2"] / after["local"], 2)
        got["speedup_1_to_2_after_startup"] = round(after["ray-1"] / after["ray-2"], 2)
        # The same units took this much longer each on two workers than on one: the cores were not all there
        # (speedup after start-up = concurrency at 2 / concurrency at 1 / slowdown).
        got["unit_slowdown_1_to_2"] = round(got["ray-2"]["unit_seconds"] / max(0.01, got["ray-1"]["unit_seconds"]), 2)
        print(f"  round {r + 1} {workload}: ray 2 / local {got['ray2_over_local']}x "
              f"(after start-up {got['ray2_over_local_after_startup']}x), ray 1 -> 2 speedup "
              f"{got['speedup_1_to_2']}x (after start-up {got['speedup_1_to_2_after_startup']}x; units in flight "
              f"{got['ray-1']['concurrency']} -> {got['ray-2']['concurrency']}, each unit "
              f"{got['unit_slowdown_1_to_2']}x slower on two workers); {load()}",
              flush=True)
        out["rounds"].append(got)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="conversations for cleaning + stats")
    parser.add_argument("--prompts", type=int, default=64, help="prompts for generation")
    parser.add_argument("--samples", type=int, default=16, help="distinct responses per prompt")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three configurations, alternating")
    parser.add_argument("--only", choices=["clean_stats", "generation"], default=None, help="one workload only")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    os.environ.update(RAY_AUTH_MODE="disabled", PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    sys.path.insert(0, str(PROJECT))
    import xwin_data

    spec = importlib.util.spec_from_file_location("sft_build", PROJECT / "benchmarks" / "sft_build.py")
    sft_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sft_build)  # type: ignore[union-attr]

    results: dict = {"n": args.n, "prompts": args.prompts, "samples": args.samples, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as tmp:
        work = Path(tmp)
        # cleaning + stats: the input table built once, then each configuration runs the two stages
        data = work / "conversations.jsonl"
        sft_build.write_input(data, args.n)
        text_recipe = work / "text.yaml"
        text_recipe.write_text(TEXT_RECIPE)
        base = work / "text-base"
        only_raw = work / "raw.yaml"
        only_raw.write_text(TEXT_RECIPE.split("  - {id: clean")[0])
        xwin_data.build(only_raw, base, [f"input={data}"], show_progress=False)
        print(f"cleaning + stats over {args.n:,} conversations", flush=True)
        if args.only != "generation":
            results["clean_stats"] = measure("text", text_recipe, base, [f"input={data}"], ["clean", "stats"],
                                             "stats", work, args.rounds)

        # generation: the prompts table built once; units of `chunk` prompts
        prompts = work / "prompts.jsonl"
        with prompts.open("w") as fh:
            for i in range(args.prompts):
                fh.write(json.dumps({"id": f"p{i:04d}", "prompt": f"Tell me something about topic {i}."}) + "\n")
        gen_recipe = work / "gen.yaml"
        gen_recipe.write_text(GEN_RECIPE)
        chunk = max(1, args.prompts // 8)
        sets = [f"prompts={prompts}", f"n={args.samples}", f"chunk={chunk}"]
        gen_base = work / "gen-base"
        only_prompts = work / "prompts.yaml"
        only_prompts.write_text(GEN_RECIPE.split("  - id: responses")[0])
        xwin_data.build(only_prompts, gen_base, [f"prompts={prompts}"], show_progress=False)
        print(f"generation: {args.prompts} prompts x {args.samples} distinct responses (tiny policy)", flush=True)
        if args.only != "clean_stats":
            results["generation"] = measure("generation", gen_recipe, gen_base, sets, ["responses"], "responses",
                                            work, args.rounds)

    for key in ("clean_stats", "generation"):
        for i, r in enumerate(results.get(key, {}).get("rounds", []), 1):
            print(f"{key} round {i}: ray 2 workers / local = {r['ray2_over_local']}x (target <= 1.5; after start-up "
                  f"{r['ray2_over_local_after_startup']}x), ray 1 -> 2 workers speedup = {r['speedup_1_to_2']}x "
                  f"(target >= 1.6; after start-up {r['speedup_1_to_2_after_startup']}x)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
