"""The executor layer without a cluster: `xwin-data plan` says per stage where it would run and with which
resources, recipe `executor:` / `resources:` are validated before any work, and the local executor commits each
unit so that a rebuild after a failure repeats none of the finished ones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_here

import xwin_data
from xwin_data.core.catalog import Catalog

PROJECT = Path(__file__).resolve().parents[1]


def test_plan_shows_where_each_stage_runs(tmp_path) -> None:
    recipe = PROJECT / "recipes" / "xwin_set.yaml"
    proc = run_here("plan", str(recipe), "-c", str(tmp_path / "cat"), "--json", "--executor", "ray",
                    "--ray-address", "auto", "--set", "xwin_responses.resources.replicas=8",
                    "--set", "xwin_responses.resources.gpus=1")
    rows = {r["stage"]: r["runs_on"] for r in json.loads(proc.stdout)}
    assert rows["xwin_responses"] == "ray (auto): actors holding one model each, replicas 8, 1 cpu, 1 gpu each"
    assert rows["xwin_set"].startswith("ray (auto): actors holding one model each, replicas auto")
    assert rows["dpo_pairs"] == rows["bon_curve"] == "driver: DuckDB (set-oriented SQL)"
    local = {r["stage"]: r["runs_on"] for r in json.loads(
        run_here("plan", str(recipe), "-c", str(tmp_path / "cat"), "--json").stdout)}
    assert local["xwin_responses"] == "local: this process (model loaded once)"
    from_recipe = {r["stage"]: r["runs_on"] for r in json.loads(
        run_here("plan", str(recipe), "-c", str(tmp_path / "cat"), "--json", "--set", "executor.name=ray").stdout)}
    assert from_recipe["xwin_set"].startswith("ray (started for the build): actors holding one model each")



def test_plan_shows_vllm_models_on_a_ray_data_llm_processor(tmp_path, cli) -> None:
    """On Ray a vLLM policy and a vLLM reward model run as `ray.data.llm` engine replicas (tensor_parallel GPUs
    each), not on the executor's actors: `plan` says so, with the replicas the spec sets or `auto`."""
    recipe = PROJECT / "recipes" / "xwin_set.yaml"
    proc = cli("plan", str(recipe), "-c", str(tmp_path / "cat"), "--json", "--executor", "ray", "--ray-address",
               "auto", "--set", "policy.backend=vllm", "--set", "policy.replicas=4", "--set",
               "policy.tensor_parallel=2", "--set", "rm.backend=vllm")
    rows = {r["stage"]: r["runs_on"] for r in json.loads(proc.stdout)}
    assert rows["xwin_responses"] == ("ray (auto): ray.data.llm vLLM processor (generate), replicas 4, "
                                      "tensor_parallel 2, 2 gpu each (2 cpu on a cluster without GPUs)")
    assert rows["xwin_set"] == ("ray (auto): ray.data.llm vLLM processor (classify), replicas auto (the cluster's "
                                "GPUs / tensor_parallel), tensor_parallel 1, 1 gpu each (1 cpu on a cluster without "
                                "GPUs)")
    assert rows["dpo_pairs"] == "driver: DuckDB (set-oriented SQL)"

def test_executor_and_resources_are_checked_before_any_work(tmp_path, cli) -> None:
    recipe = PROJECT / "recipes" / "sharegpt_sft.yaml"
    bad = cli("build", str(recipe), "-c", str(tmp_path / "cat"), "--executor", "spark", check=False)
    assert bad.returncode == 2 and "unknown executor 'spark'" in bad.stdout + bad.stderr
    bad = cli("plan", str(recipe), "-c", str(tmp_path / "cat"), "--set", "sharegpt_clean.resources.tpus=1",
              check=False)
    assert bad.returncode == 2 and "tpus" in bad.stdout + bad.stderr
    assert not (tmp_path / "cat" / "work").exists() or not any((tmp_path / "cat" / "work").iterdir())


def test_local_rebuild_after_a_failure_repeats_no_finished_unit(tmp_path, monkeypatch) -> None:
    """Stats fail on their third unit: the units finished by then stay committed and the rebuild resumes them."""
    from xwin_data.ops.text import stats as stats_op

    recipe = tmp_path / "r.yaml"
    recipe.write_text("""\
name: resume
vars: {input: x}
stages:
  - {id: raw, op: read_conversations, schema: conversations, params: {path: "${input}", block_bytes: 30000}}
  - {id: stats, op: conversation_stats, inputs: [raw]}
""")
    data = PROJECT / "recipes" / "data" / "sharegpt_sample.jsonl.gz"
    from xwin_data.core import workers

    if workers.available_workers() < 2:
        pytest.skip("needs fork and two cores (the reader splits the file into blocks)")
    only_raw = tmp_path / "raw.yaml"
    only_raw.write_text(recipe.read_text().split("  - {id: stats")[0])
    xwin_data.build(only_raw, tmp_path / "cat", [f"input={data}"], show_progress=False)
    assert Catalog(tmp_path / "cat").current("raw").stats["executor"]["batches"] >= 4
    monkeypatch.setattr(workers, "available_workers", lambda: 0)  # stats units run on one thread, in order
    monkeypatch.setattr("xwin_data.core.executors.local.default_threads", lambda: 1)

    real, calls = stats_op.stats_batch, []

    def failing(batch, params):
        calls.append(batch.num_rows)
        if len(calls) == 3:
            raise RuntimeError("worker lost")
        return real(batch, params)

    monkeypatch.setattr(stats_op, "stats_batch", failing)
    with pytest.raises(RuntimeError, match="worker lost"):
        xwin_data.build(recipe, tmp_path / "cat", [f"input={data}"], show_progress=False)
    committed = len(list((tmp_path / "cat" / "work").glob("stats-*/batches/*.done")))
    assert committed >= 2  # the two before the failure, and any unit already in flight
    part = sorted((tmp_path / "cat" / "work").glob("stats-*/batches/*.stats.parquet"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # as a machine crash may leave an unsynced part
    committed -= 1
    calls.clear()
    monkeypatch.setattr(stats_op, "stats_batch", lambda batch, params: (calls.append(1), real(batch, params))[1])
    xwin_data.build(recipe, tmp_path / "cat", [f"input={data}"], show_progress=False)
    cat = Catalog(tmp_path / "cat")
    stats = cat.current("stats").stats["executor"]
    assert stats["batches_resumed"] == committed and stats["batches_run"] == stats["batches"] - committed
    assert len(calls) == stats["batches"] - committed  # counted at the batch function: nothing ran twice
    assert cat.current("stats").rows == cat.current("raw").rows
