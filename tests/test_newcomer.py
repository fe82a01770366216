"""The README's newcomer path, end to end, through the console command in an empty folder with no `../shared`:
the recipes (SFT subsets, Xwin-Pair, the main job), the five training stages on their shipped configs in the
README's order, the scaling and best-of-n studies, recorded evaluations and exports; and every failure a
newcomer meets on the way is one line that names the fix. Small settings (`--set`, key=value) keep it short."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_here

import xwin_data

PROJECT = Path(__file__).resolve().parents[1]
RECIPES = PROJECT / "recipes"
SET_SMALL = ["--set", "max_prompts=8", "--set", "n_unique=8", "--set", "max_samples=16"]
EVAL_SMALL = ["bon_eval_max_prompts=2", "bon_eval_n=[1,4]", "bon_eval_max_new_tokens=6"]
TRAIN_SMALL = {"sft": ["max_steps=3", "max_rows=64", *EVAL_SMALL], "rm": ["max_steps=3"],
               "rs": ["max_steps=3", *EVAL_SMALL], "dpo": ["max_steps=3", *EVAL_SMALL],
               "wind": ["max_steps=2", "steps_per_iteration=1", "group_size=2", "per_device_train_batch_size=2",
                        "max_completion_length=6", *EVAL_SMALL]}


def one_line_error(proc, *needles: str) -> str:
    """The command failed with exit 2 and said so in exactly one line, without a traceback, naming the fix."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """An empty folder outside the checkout: no ../shared beside it, no train/ or recipes/ in it."""
    work = tmp_path_factory.mktemp("newcomer")
    assert not (work.parent / "shared").exists() and not (work / "train").exists()
    return work


@pytest.mark.slow
def test_newcomer_path_from_the_readme(home: Path, cli) -> None:
    # Each failure a newcomer meets runs as its own process (what a fresh interpreter prints is part of the one
    # line); the steps that work run the same command's `main` in this process (no TRL import per step).
    run = lambda *a, **k: cli(*a, cwd=home, **k)  # noqa: E731
    step = lambda *a, **k: run_here(*a, cwd=home, **k)  # noqa: E731
    catalog = home / "xwin-catalog"

    # Before anything is built, every next step says what to build (one line, exit 2, nothing generated).
    one_line_error(run("train", "sft", check=False), "no catalog", "xwin-data build recipes/xwin_set.yaml")
    one_line_error(run("show", check=False), "xwin-data build recipes/xwin_set.yaml")
    plan = step("plan", str(RECIPES / "xwin_set.yaml"), env={"COLUMNS": "120"})
    assert plan.stderr.count("not built yet") + plan.stdout.count("not built yet") == 8  # every stage

    # The main job and the recipes the training defaults read.
    step("build", str(RECIPES / "xwin_set.yaml"), *SET_SMALL, "--quiet")
    one_line_error(run("train", "sft", check=False), "sft_sharegpt_2k", "recipes/sharegpt_sft.yaml")
    step("build", str(RECIPES / "sharegpt_sft.yaml"), "--quiet")
    one_line_error(run("train", "rm", check=False), "xwin_pair", "xwin-data build recipes/xwin_pair.yaml")
    step("build", str(RECIPES / "xwin_pair.yaml"), "--set", "max_prompts=4", "--quiet")

    # Out of order: RS before SFT names the stage that makes its starting model.
    one_line_error(run("train", "rs", check=False), "runs/sft", "xwin-data train sft")

    # sft -> rm -> rs -> dpo, wind: the shipped configs (no config argument), small step counts.
    for stage in ("sft", "rm", "rs", "dpo", "wind"):
        step("train", stage, *TRAIN_SMALL[stage])
        assert (home / "runs" / stage / "config.json").is_file()
    con = xwin_data.connect(catalog)
    trained = con.sql("SELECT kind, table_name FROM runs ORDER BY created_at").fetchall()
    assert trained == [("sft", "sft_sharegpt_2k"), ("rm", "xwin_pair"), ("rs", "rs_best_of_16"),
                       ("dpo", "dpo_pairs_worst"), ("wind", "wind_groups")]
    evals = con.sql("SELECT stage, prompts_table, n_prompts FROM evals ORDER BY created_at").fetchall()
    assert evals == [(s, "xwin_eval_prompts", 2) for s in ("sft", "rs", "dpo", "wind")]
    held_out = {r[0] for r in con.sql("SELECT id FROM xwin_eval_prompts").fetchall()}
    assert held_out and not held_out & {r[0] for r in con.sql("SELECT prompt_id FROM xwin_set").fetchall()}
    wind_cfg = json.loads(con.sql("SELECT config FROM runs WHERE kind = 'wind'").fetchall()[0][0])
    assert wind_cfg["bf16"] is False  # CPU: the shared default (on only on a bf16-capable GPU)
    con.close()

    # The scaling study after the default builds: held-out prompts set aside before the cut; sizes past the
    # data are named and only one of them is trained.
    proc = step("study", "scaling", str(RECIPES / "scaling.yaml"), "--set", "sizes=[2000,16000,32000]",
                "--set", "train.overrides.max_steps=1", "--set", "train.overrides.max_rows=32",
                "--set", "evaluator.max_prompts=3",
                "--set", "evaluator.max_new_tokens=6", "--set", "evaluator.n_boot=50")
    out = proc.stdout + proc.stderr
    assert "sizes [32000] are larger than the data" in out and "kept sizes [2000, 16000]" in out
    assert "held-out prompts: 3 from sft_sharegpt_heldout" in out
    summary = json.loads((catalog / "studies" / "scaling" / "summary.json").read_text())
    assert summary["sizes"] == [2000, 16000] and summary["prompts"] == 3

    # study bon: the set's policy, by its model name, not the one-response rs tables.
    step("study", "bon", "--n-boot", "50")
    bon = json.loads((catalog / "studies" / "bon" / "summary.json").read_text())
    assert bon["tables"] == ["xwin_set"] and bon["policies"] == ["tiny-policy"]

    # Judged evaluation with no judge: one line, before any work; recorded annotations need none.
    env = {k: "" for k in ("OPENAI_API_KEY",)}
    line = one_line_error(run("eval", "alpaca", "--model", "runs/sft", "--reference", "xwin_eval_prompts",
                              check=False, env=env), "OPENAI_API_KEY", "--judge-base-url")
    assert not (catalog / "evals").exists(), line
    annotations = home / "annotations.json"
    annotations.write_text(json.dumps([
        {"instruction": f"q{i}", "output_1": "base answer", "output_2": "model answer" + "!" * i,
         "generator_1": "baseline", "generator_2": "runs/sft", "preference": 1 + (i % 3) / 2} for i in range(9)]))
    rec = json.loads(step("eval", "recorded", str(annotations), "--catalog", str(catalog)).stdout.splitlines()[-1])
    assert rec[0]["win_rate"] == pytest.approx(100 * sum((i % 3) / 2 for i in range(9)) / 9)

    # Exports of what was built.
    step("export", "dpo_pairs_worst", "out/trl", "--format", "trl", "--card")
    card = (home / "out" / "trl" / "README.md").read_text()
    assert "dpo_pairs_worst" in card
    step("export", "sft_sharegpt_2k", "out/hf", "--format", "hf")
    from datasets import load_from_disk

    assert len(load_from_disk(str(home / "out" / "hf"))) > 0

    # `show` at 80 columns: no line wider, every table name in full.
    proc = run("show", env={"COLUMNS": "80"})
    shown = proc.stdout + proc.stderr
    assert max(len(line) for line in shown.splitlines()) <= 80
    for name in ("sft_sharegpt_heldout", "dpo_pairs_mean_minus_2sd", "xwin_responses_shortfall", "xwin_pair_candidates"):
        assert name in shown


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path, cli) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstages:\n  - id: a\n    op: no_such_op\n")
    one_line_error(cli("build", str(bad), cwd=tmp_path, check=False), "bad.yaml:4", "no_such_op")
    proc = cli("--debug", "build", str(bad), cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "RecipeError" in proc.stderr
    one_line_error(cli("train", "dpo", "learnin_rate=1", cwd=tmp_path, check=False), "learnin_rate")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    proc = cli("eval", "mtbench", "--model", "tiny-policy", "--questions", "q.jsonl", "--judge-base-url",
               "http://127.0.0.1:9/v1", cwd=fresh, check=False, env={"OPENAI_API_KEY": "x"})
    one_line_error(proc, "http://127.0.0.1:9/v1", "not reachable")
    assert list(fresh.iterdir()) == []  # nothing generated, not even the catalog
    help_text = cli("--help", cwd=tmp_path).stdout
    assert "recipes/xwin_set.yaml" in help_text.split("Usage")[-1].split("Options")[0]


def test_non_editable_install_builds_and_trains_outside_the_checkout(tmp_path: Path) -> None:
    """`pip install --no-deps .` into a fresh venv that sees the suite's packages; from a folder outside the
    checkout, the installed command validates against the shipped schemas and trains with a shipped config."""
    import shutil
    import subprocess
    import venv

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    src = tmp_path / "src"  # what a build needs, copied, so the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT / name, src / name)
    shutil.copytree(PROJECT / "xwin_data", src / "xwin_data", ignore=shutil.ignore_patterns("__pycache__"))
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                              "--quiet", str(src)], capture_output=True, text=True, env=env, timeout=300,
                             cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(py), "-c", "import xwin_data; print(xwin_data.__file__)"], capture_output=True,
                           text=True, env=env, cwd=work, check=True).stdout.strip()
    assert where.startswith(str(env_dir)), where  # the installed copy, not the checkout
    exe = env_dir / "bin" / "xwin-data"

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=work, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    run("build", str(RECIPES / "xwin_set.yaml"), *SET_SMALL, "--set", "max_prompts=4", "--quiet")
    run("validate", "xwin_set")
    run("train", "rs", "model_name_or_path=tiny-policy", "bon_eval_reward_model=tiny-reward", "max_steps=2",
        *EVAL_SMALL)
    con = xwin_data.connect(work / "xwin-catalog")
    assert con.sql("SELECT kind, table_name FROM runs").fetchall() == [("rs", "rs_best_of_16")]
    assert (work / "runs" / "rs" / "config.json").is_file()
