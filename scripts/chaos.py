"""Kill builds at random moments and check that resuming gives the same tables.

For each recipe: one uninterrupted reference build; then trials, each on a fresh catalog: `xwin-data build` is
started as a user starts it, SIGKILLed (with its worker processes) at a random moment, possibly again while it
resumes, and finally built to completion. A trial survives when every current table and the drops have the same
digest as the reference, no build is left `running`, and no staging, tmp or work folder is left behind.

    python scripts/chaos.py --recipes sft sets --trials 10 --kills-per-trial 2
    python scripts/chaos.py --recipes small --trials 3          # the short version the test suite runs
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ recipes
SMALL_RECIPE = """\
name: chaos_small
vars: {input: x}
stages:
  - {id: raw, op: read_conversations, params: {path: "${input}"}}
  - {id: clean, op: clean_conversations, inputs: [raw], params: {batch_size: 500}}
  - {id: stats, op: conversation_stats, inputs: [clean], params: {batch_size: 500}}
  - {id: exact, op: dedup_exact, inputs: [stats]}
  - {id: near, op: dedup_near, inputs: [exact], params: {threshold: 0.8}}
"""
SETS_STAGES = """\
  - {id: bon_curve, op: bon_curve, inputs: [xwin_set], params: {max_m: 16}}
  - {id: dpo_pairs, op: dpo_pairs, inputs: [xwin_set], params: {strategies: [mean_minus_2sd, worst, rank_k], k: 3}}
  - {id: wind_groups, op: wind_groups, inputs: [xwin_set]}
  - {id: rs_best_of, op: rs_best_of_n, inputs: [xwin_set], params: {ns: [1, 4, 16]}}
"""


def _small_input(folder: Path, n: int = 3_000) -> Path:
    rng = random.Random(5)
    words = ["data", "model", "answer", "question", "table", "build", "kill", "resume", "python", "sql"]
    path = folder / "in.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            q = " ".join(rng.choice(words) for _ in range(12))
            a = " ".join(rng.choice(words) for _ in range(rng.randint(20, 80)))
            fh.write(json.dumps({"id": f"c{i % (n - 50)}", "conversations": [{"from": "human", "value": q},
                                                                             {"from": "gpt", "value": a}]}) + "\n")
    return path


def prepare(name: str, folder: Path) -> tuple[Path, list[str]]:
    """(recipe, --set values) of a named chaos recipe, its input written under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "small":
        recipe = folder / "small.yaml"
        recipe.write_text(SMALL_RECIPE)
        return recipe, [f"input={_small_input(folder)}"]
    if name == "sft":
        return PROJECT / "recipes" / "sharegpt_sft.yaml", []
    if name == "sets":
        import duckdb

        sys.path.insert(0, str(PROJECT / "tests"))
        from scored_sets import SET_FROM_JSONL_STAGE

        con = duckdb.connect()
        con.execute("SELECT setseed(0.5)")
        con.execute(f"""COPY (SELECT 'p' || p AS prompt_id, [{{'role': 'user', 'content': 'q' || p}}] AS prompt,
                                     'p' || p || '-' || j AS response_id, j AS sample_index, 'a' || j AS response,
                                     round((random() - 0.5) * 10 ** (floor(random() * 5) - 2), 3) AS score
                              FROM range(40000) a(p), range(16) b(j))
                        TO '{folder / "set.jsonl"}' (FORMAT json)""")
        con.close()
        recipe = folder / "sets.yaml"
        recipe.write_text("name: chaos_sets\nstages:\n" + SET_FROM_JSONL_STAGE + SETS_STAGES)
        return recipe, []
    raise SystemExit(f"unknown recipe {name!r} (small, sft, sets)")


# ------------------------------------------------------------------------------------------------ checks
def digests(catalog: Path) -> dict[str, list]:
    """Per current table: rows and an md5 over its sorted rows' text (floats as round-trip text); and the drops
    without their build ids."""
    sys.path.insert(0, str(PROJECT))
    import xwin_data
    from xwin_data.core.catalog import Catalog

    names = sorted(tv.name for tv in Catalog(catalog).current_tables())
    con = xwin_data.connect(catalog)
    try:
        out = {t: list(con.execute(f'SELECT count(*), md5(string_agg(r::VARCHAR, chr(10) ORDER BY r::VARCHAR)) '
                                   f'FROM (SELECT x AS r FROM "{t}" x)').fetchone()) for t in names}
        out["(drops)"] = list(con.execute(
            "SELECT count(*), md5(string_agg(r::VARCHAR, chr(10) ORDER BY r::VARCHAR)) FROM "
            "(SELECT (table_name, source_id, reason, detail) AS r FROM drops)").fetchone())
    finally:
        con.close()
    return out


def leftovers(catalog: Path) -> list[str]:
    """What a finished build must not leave: builds marked running, staging, tmp and work folders."""
    import duckdb

    problems = []
    con = duckdb.connect(str(catalog / "catalog.duckdb"), read_only=True)
    try:
        running = con.execute("SELECT count(*) FROM builds WHERE status = 'running'").fetchone()[0]
    finally:
        con.close()
    if running:
        problems.append(f"{running} build(s) left 'running'")
    for sub in ("staging", "tmp", "work"):
        folder = catalog / sub
        left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        if left:
            problems.append(f"{sub}/ holds {left[:3]}")
    return problems


# ------------------------------------------------------------------------------------------------ running
def _command(recipe: Path, sets: list[str], catalog: Path) -> list[str]:
    return [sys.executable, "-m", "xwin_data.cli", "build", str(recipe), "-c", str(catalog), "-q",
            *[a for s in sets for a in ("--set", s)]]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(PROJECT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def build_to_end(recipe: Path, sets: list[str], catalog: Path) -> float:
    start = time.monotonic()
    proc = subprocess.run(_command(recipe, sets, catalog), env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"build failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.monotonic() - start


def build_and_kill(recipe: Path, sets: list[str], catalog: Path, after: float) -> tuple[bool, float]:
    """Start a build and SIGKILL it (and its workers) `after` seconds in: (killed, seconds it ran); not killed when
    it finished first."""
    start = time.monotonic()
    proc = subprocess.Popen(_command(recipe, sets, catalog), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=after)
        return False, time.monotonic() - start
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True, time.monotonic() - start


@dataclass
class Result:
    recipe: str
    kills: int = 0
    trials: int = 0
    survived: int = 0
    problems: list[str] = field(default_factory=list)


def sweep(name: str, work: Path, trials: int, kills_per_trial: int, rng: random.Random) -> Result:
    recipe, sets = prepare(name, work / "input")
    reference = work / "reference"
    seconds = build_to_end(recipe, sets, reference)
    want = digests(reference)
    result = Result(name)
    for trial in range(trials):
        catalog = work / f"trial-{trial}"
        killed = 0
        for k in range(kills_per_trial):
            hit, ran = build_and_kill(recipe, sets, catalog, rng.uniform(0.1, 0.9) * seconds)
            killed += hit
            if not hit and k == 0:  # a whole build ran faster than the reference: aim within its time next
                seconds = min(seconds, ran)
        build_to_end(recipe, sets, catalog)
        got = digests(catalog)
        problems = [f"{t}: {got.get(t)} != {want[t]}" for t in want if got.get(t) != want[t]]
        problems += [f"extra table {t}" for t in got if t not in want]
        problems += leftovers(catalog)
        result.trials += 1
        result.kills += killed
        if problems:
            result.problems.append(f"trial {trial} ({killed} kills): " + "; ".join(problems))
        else:
            result.survived += killed
        print(f"{name} trial {trial}: {killed} kill(s), {'ok' if not problems else 'FAILED: ' + problems[0]}",
              flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["small"], help="small, sft, sets")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--kills-per-trial", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="xwin-chaos-") as tmp:
        work = args.work or Path(tmp)
        for name in args.recipes:
            results.append(sweep(name, work / name, args.trials, args.kills_per_trial, rng))
    for r in results:
        print(f"{r.recipe}: {r.survived} of {r.kills} kills survived over {r.trials} trials"
              + (f"; {len(r.problems)} trial(s) failed" if r.problems else ""))
        for p in r.problems:
            print("  " + p)
    if args.json:
        print(json.dumps([r.__dict__ for r in results]))
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
