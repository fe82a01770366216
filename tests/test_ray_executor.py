"""Recipes on a real two-node Ray cluster (`ray.cluster_utils.Cluster`, started and stopped here): the same tables
as the local executor, the same fingerprints, a killed Ray worker that costs nothing but time, and a killed driver
whose next build repeats no finished batch (model calls counted at the model: an OpenAI-compatible server). The
readers of Parquet, JSON and saved HF datasets and the reward-model judge run as units on the cluster too."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from conftest import run_here

import xwin_data
from xwin_data.core.catalog import Catalog

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

PROJECT = Path(__file__).resolve().parents[1]
SFT = PROJECT / "recipes" / "sharegpt_sft.yaml"
XWIN_SET = PROJECT / "recipes" / "xwin_set.yaml"
XWIN_PAIR = PROJECT / "recipes" / "xwin_pair.yaml"
READERS = """\
name: readers
vars: {folder: x, bb: 16777216}
stages:
  - {id: from_parquet, op: read_conversations, schema: conversations, params: {path: "${folder}/c.parquet", block_bytes: "${bb}"}}
  - {id: from_json, op: read_conversations, schema: conversations, params: {path: "${folder}/json", block_bytes: "${bb}"}}
  - {id: from_hf, op: read_conversations, schema: conversations, params: {path: "${folder}/saved", block_bytes: "${bb}"}}
  - {id: hf_clean, op: clean_conversations, inputs: [from_hf]}
"""
# Small but real: 3 prompts x 8 distinct responses, one prompt per unit so both replicas get work.
SMALL_SET = ["max_prompts=3", "n_unique=8", "sampling.max_new_tokens=12", "rs_ns=[1,2,8]",
             "xwin_responses.params.prompts_per_chunk=1"]

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two Ray nodes of one CPU each on this machine, for every test of this module."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT), *filter(None, [os.environ.get("PYTHONPATH")])])
    temp = tmp_path_factory.mktemp("ray")
    node = dict(num_cpus=1, object_store_memory=200 * 2**20)
    c = Cluster(initialize_head=True, head_node_args=dict(**node, include_dashboard=False, temp_dir=str(temp)))
    try:
        c.add_node(**node)
        c.wait_for_nodes(timeout=120)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def build(recipe: Path, catalog: Path, sets: list[str], *extra: str, timeout: float = 300,
          env: dict | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "xwin_data.cli", "build", str(recipe), "-c", str(catalog), "-q", *extra]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def tables(catalog: Path) -> dict[str, tuple[str, list]]:
    """Every current table: its fingerprint and its rows, sorted."""
    cat = Catalog(catalog)
    out = {}
    for tv in cat.current_tables():
        rows = duckdb.sql(f"SELECT * FROM read_parquet('{cat.data_glob(tv)}') ORDER BY ALL").fetchall()
        out[tv.name] = (tv.fingerprint, rows)
    drops = duckdb.sql(f"SELECT stage, source_id, reason, detail FROM read_parquet('{catalog}/**/drops/*.parquet') "
                       "ORDER BY ALL").fetchall() if list(catalog.glob("**/drops/*.parquet")) else []
    out["<drops>"] = ("", drops)
    return out


def ray_processes(fragment: str) -> list[int]:
    """Ray worker processes whose title names `fragment` (Ray titles a worker `ray::<what it runs>`)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if title.startswith("ray::") and fragment in title:
            pids.append(int(pid))
    return pids


def done_units(catalog: Path, stage: str) -> list[Path]:
    return sorted((catalog / "work").glob(f"{stage}-*/batches/*.done"))


def test_sharegpt_sft_on_ray_equals_local(cluster, tmp_path) -> None:
    # Blocks of ~64 KB: the sample file becomes several units, spread over both nodes.
    sets = ["sharegpt_raw.params.block_bytes=65536"]
    xwin_data.build(SFT, tmp_path / "local", sets, show_progress=False)  # the reference, in this process
    proc = build(SFT, tmp_path / "ray", sets, "--executor", "ray", "--ray-address", cluster.address)
    local, on_ray = tables(tmp_path / "local"), tables(tmp_path / "ray")
    assert local.keys() == on_ray.keys() and len(local) > 10
    for name in local:
        assert local[name] == on_ray[name], name  # same rows, same fingerprint: the executor is not in it
    stats = Catalog(tmp_path / "ray").current("sharegpt_clean").stats["executor"]
    assert stats["name"] == "ray" and stats["workers"] == 2 and stats["batches"] > 1
    assert stats["batches_run"] == stats["batches"]
    assert "Dataset" not in proc.stderr  # Ray's own progress lines stay out of the build's display
    # built on Ray is built: the local executor has nothing to do
    again = run_here("build", str(SFT), "-c", str(tmp_path / "ray"), "-q", *[a for s in sets for a in ("--set", s)])
    assert "nothing to do" in again.stdout + again.stderr


def test_xwin_set_on_ray_equals_local_with_a_worker_killed(cluster, tmp_path) -> None:
    xwin_data.build(XWIN_SET, tmp_path / "local", SMALL_SET, show_progress=False)  # the reference, in this process
    catalog = tmp_path / "ray"
    args = [sys.executable, "-m", "xwin_data.cli", "build", str(XWIN_SET), "-c", str(catalog), "-q",
            "--executor", "ray", "--ray-address", cluster.address]
    for s in SMALL_SET:
        args += ["--set", s]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.monotonic() + 300
    try:
        # Kill a policy replica in the middle of a unit (Ray titles it `ray::ModelReplica.run` while it runs one).
        # Waiting for a first committed unit instead would race the others: with two units per replica submitted
        # at once, the rest can finish before the next look.
        while proc.poll() is None and time.monotonic() < deadline and killed is None:
            replicas = ray_processes("ModelReplica.run")
            if replicas:
                killed = replicas[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no replica was seen running a unit"
    assert proc.returncode == 0, out[-4000:]
    local, on_ray = tables(tmp_path / "local"), tables(catalog)
    for name in local:
        assert local[name] == on_ray[name], name
    stats = Catalog(catalog).current("xwin_responses").stats
    assert stats["executor"]["name"] == "ray" and stats["executor"]["batches"] == 3
    assert stats["responses"] == 24 and stats["tokens_generated"] > 0


def test_driver_killed_mid_stage_repeats_no_finished_batch(cluster, tmp_path) -> None:
    sys.path.insert(0, str(PROJECT / "tests"))
    from openai_server import OpenAIServer

    recipe = tmp_path / "responses.yaml"  # prompts and sampling only, from the shipped prompt file
    recipe.write_text(XWIN_SET.read_text().split("  - id: xwin_set\n")[0]
                      .replace("${recipe_dir}/data/", f"{XWIN_SET.parent}/data/"))
    catalog = tmp_path / "cat"

    def reply(req) -> str:  # a distinct answer per sample: the seed decides it, as with a real sampler
        return f"answer {req.body.get('seed')} {req.index} to {req.prompt[:40]}"

    with OpenAIServer(latency=1.0, reply=reply) as server:
        sets = ["max_prompts=8", "n_unique=2", "policy.backend=openai", "policy.model=test-policy",
                f"policy.base_url={server.base_url}", "xwin_responses.params.prompts_per_chunk=1"]
        args = [sys.executable, "-m", "xwin_data.cli", "build", str(recipe), "-c", str(catalog), "-q",
                "--executor", "ray", "--ray-address", cluster.address]
        for s in sets:
            args += ["--set", s]
        env = {**os.environ, "OPENAI_API_KEY": "test"}
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 120
        while proc.poll() is None and len(done_units(catalog, "xwin_responses")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the build ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # The driver's replicas die with it; wait until no unit is committed any more.
        settled, count = time.monotonic(), -1
        while time.monotonic() - settled < 4:
            now = len(done_units(catalog, "xwin_responses"))
            if now != count:
                count, settled = now, time.monotonic()
            time.sleep(0.2)
        finished = done_units(catalog, "xwin_responses")
        assert 2 <= len(finished) < 8
        parts = [str(p) for p in catalog.glob("work/xwin_responses-*/batches/*.xwin_responses.parquet")]
        finished_prompts = set(duckdb.sql(f"SELECT DISTINCT prompt_id FROM read_parquet({parts})").fetchall())
        assert len(finished_prompts) == len(finished)
        before = len(server.requests)

        build(recipe, catalog, sets, "--executor", "ray", "--ray-address", cluster.address, env=env)
        asked_again = server.requests[before:]
    stats = Catalog(catalog).current("xwin_responses").stats
    assert stats["executor"]["batches_resumed"] == len(finished)
    assert stats["executor"]["batches_run"] == 8 - len(finished)
    # At the model: no request of the rebuild is for a prompt whose unit was committed before the kill.
    table = f"read_parquet('{Catalog(catalog).data_glob(Catalog(catalog).current('xwin_responses'))}')"
    texts = duckdb.sql(f"SELECT prompt_id, prompt[-1].content FROM {table}").fetchall()
    finished_texts = {text for pid, text in texts if (pid,) in finished_prompts}
    assert asked_again and not [r for r in asked_again if r["messages"][-1]["content"] in finished_texts]
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT prompt_id) FROM {table}").fetchall() == [(16, 8)]


def reader_inputs(folder: Path) -> int:
    """The shipped sample's first 600 conversations with bad records planted (an empty answer, an unknown role, a
    repeated id, no id), as one Parquet file of several row groups, a folder of JSON array shards (one of them cut
    short) and a saved HF dataset of three Arrow files."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    with gzip.open(PROJECT / "recipes" / "data" / "sharegpt_sample.jsonl.gz") as fh:
        for line in fh:  # the sample's well-formed records (it has malformed ones of its own)
            try:
                r = json.loads(line)
                turns = [{"from": str(t["from"]), "value": str(t["value"])} for t in r["conversations"]]
            except (ValueError, KeyError, TypeError):
                continue
            rows.append({"id": str(r.get("id")), "conversations": turns})
            if len(rows) == 600:
                break
    rows[3]["conversations"][1]["value"] = " "
    rows[7]["conversations"][0]["from"] = "robot"
    rows[11]["id"] = rows[10]["id"]
    rows[13]["id"] = None
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "c.parquet", row_group_size=150)
    (folder / "json").mkdir()
    for k in range(3):
        (folder / "json" / f"part-{k}.json").write_text(json.dumps(rows[k * 200:(k + 1) * 200], indent=1))
    (folder / "json" / "part-3.json").write_text(json.dumps(rows[:5])[:-300])
    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "saved"), num_shards=3)
    return len(rows)


def test_parquet_json_and_hf_inputs_on_ray_equal_local(cluster, tmp_path) -> None:
    n = reader_inputs(tmp_path / "in")
    recipe = tmp_path / "readers.yaml"
    recipe.write_text(READERS)
    folder = f"folder={tmp_path / 'in'}"
    # Read on the driver (each input is below the size that pays for splitting it), then as units on the cluster.
    xwin_data.build(recipe, tmp_path / "here", [folder], show_progress=False)
    build(recipe, tmp_path / "ray", [folder], "--executor", "ray", "--ray-address", cluster.address)
    here, on_ray = tables(tmp_path / "here"), tables(tmp_path / "ray")
    assert here.keys() == on_ray.keys() and len(here) == 5
    for name in here:
        assert here[name] == on_ray[name], name
    drops = {(stage, reason) for stage, _, reason, _ in here["<drops>"][1]}
    assert {("from_parquet", "unknown_role"), ("from_json", "broken_json"), ("from_hf", "unknown_role")} <= drops
    assert len(here["from_hf"][1]) == len(here["from_parquet"][1]) < n
    batches = {s: Catalog(tmp_path / "ray").current(s).stats["executor"]["batches"]
               for s in ("from_parquet", "from_json", "from_hf")}
    assert batches == {"from_parquet": 4, "from_json": 4, "from_hf": 3}  # row groups, files, Arrow data files


def test_reward_model_judge_on_ray_equals_local(cluster, tmp_path) -> None:
    import shutil

    sets = ["max_prompts=4", "k=2", "sampling.max_new_tokens=8", "xwin_pair.params.pairs_per_unit=2"]
    xwin_data.build(XWIN_PAIR, tmp_path / "local", sets, show_progress=False)
    # The candidates are built; the judge stage runs again on the cluster.
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    build(XWIN_PAIR, tmp_path / "ray", sets, "--force", "xwin_pair", "--executor", "ray", "--ray-address",
          cluster.address)
    local, on_ray = tables(tmp_path / "local"), tables(tmp_path / "ray")
    for name in local:
        assert local[name] == on_ray[name], name
    assert len(local["xwin_pair_judgments"][1]) == 4
    stats = Catalog(tmp_path / "ray").current("xwin_pair").stats
    assert stats["executor"]["name"] == "ray" and stats["executor"]["batches"] == 2
    assert stats["executor"]["workers"] == 2  # two replicas, one reward model each
    assert stats["judge_model_calls"]["scored"] + stats["judge_model_calls"]["cached"] == 8
    local_stats = Catalog(tmp_path / "local").current("xwin_pair").stats
    assert local_stats["executor"]["name"] == "local" and local_stats["judge_model_calls"]["scored"] == 8


def test_a_unit_that_fails_on_the_cluster_is_reported_in_one_line(cluster, tmp_path) -> None:
    # The policy folder is there (so the plan takes it) but holds no model: every replica fails to load it, on the
    # cluster, and the build says so as it would locally, not with Ray's wrapper and remote traceback.
    empty = tmp_path / "empty-model"
    empty.mkdir()
    args = [sys.executable, "-m", "xwin_data.cli", "build", str(XWIN_SET), "-c", str(tmp_path / "cat"), "-q",
            "--executor", "ray", "--ray-address", cluster.address, "--set", f"policy.model={empty}"]
    for s in SMALL_SET:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: model {empty}: cannot load it: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "RayTaskError" not in proc.stderr and "ActorDiedError" not in proc.stderr
    assert not done_units(tmp_path / "cat", "xwin_responses")
