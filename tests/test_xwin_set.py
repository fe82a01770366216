"""The Xwin-Set recipe end to end on the toolkit's tiny local policy and reward model: 64 distinct responses per
prompt, reward scores equal to scoring each conversation alone, ranks, derived tables, resumption from the cache,
the shortfall record when a setting cannot produce enough distinct responses, and the vLLM pooling reward path."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import xwin_data
from xwin_data.core.catalog import Catalog
from xwin_data.ops.sets.sample_rounds import PromptState, normalise

PROJECT = Path(__file__).resolve().parents[1]
RECIPE = PROJECT / "recipes" / "xwin_set.yaml"
# Small but real: 64 distinct responses for 3 prompts, short generations.
SMALL = ["max_prompts=3", "sampling.max_new_tokens=12", "rs_ns=[1,4,64]"]


def query(catalog: Path, sql: str) -> list[dict]:
    con = xwin_data.connect(catalog)
    try:
        return con.sql(sql).to_arrow_table().to_pylist()
    finally:
        con.close()


def stats_of(catalog: Path, table: str) -> dict:
    return Catalog(catalog).current(table).stats


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("xwin_set")
    xwin_data.build(RECIPE, root / "cat", sets=SMALL, show_progress=False)
    return root / "cat"


def trimmed_recipe(folder: Path) -> Path:
    """The recipe up to the xwin_set stage, reading the shipped prompt file."""
    text = RECIPE.read_text().split("  - id: rs_best_of")[0]
    path = folder / "xwin_set_only.yaml"
    path.write_text(text.replace("${recipe_dir}/data/", f"{RECIPE.parent}/data/"))
    return path


def test_sixty_four_distinct_scored_ranked_responses_per_prompt(built: Path) -> None:
    rows = query(built, "SELECT * FROM xwin_set ORDER BY prompt_id, sample_index")
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    assert len(by_prompt) == 3
    for pid, group in by_prompt.items():
        assert [r["sample_index"] for r in group] == list(range(64))
        assert len({normalise(r["response"]) for r in group}) == 64
        assert all(normalise(r["response"]) for r in group)
        ranked = sorted(group, key=lambda r: (-r["score"], r["sample_index"]))
        assert [r["rank"] for r in ranked] == list(range(1, 65))
        assert {r["group_size"] for r in group} == {64}
        assert all(r["finish_reason"] in ("stop", "length") and 0 < r["tokens"] <= 12 for r in group)
        assert [r["attempt"] for r in group] == sorted(r["attempt"] for r in group)
    assert {r["policy"].split("@")[0] for r in rows} == {"policy"} and {r["rm"].split("@")[0] for r in rows} == {"reward"}
    assert query(built, "SELECT count(*) AS n FROM xwin_responses_shortfall") == [{"n": 0}]
    st = stats_of(built, "xwin_responses")
    assert st["responses"] == 192 and st["samples_drawn"] == 192 + st["duplicates"] + st["blank"]


def test_scores_equal_scoring_each_conversation_alone(built: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from xwin_data.llm.tiny import resolve_model

    path = resolve_model("tiny-reward")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    rows = query(built, "SELECT prompt, response, score FROM xwin_set ORDER BY response_id LIMIT 12")
    for r in rows:
        conv = list(r["prompt"]) + [{"role": "assistant", "content": r["response"]}]
        ids = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            alone = model(**ids).logits[0, 0].item()
        assert r["score"] == pytest.approx(alone, abs=1e-5)


def test_derived_tables_are_built_from_the_set(built: Path) -> None:
    tables = {r["name"]: r["rows"] for r in query(built, "SELECT name, rows FROM tables")}
    for name in ("rs_best_of_1", "rs_best_of_4", "rs_best_of_64", "wind_groups", "bon_curve", "bon_curve_per_prompt",
                 *(f"dpo_pairs_{s}" for s in ("worst", "random_lower", "rank_k", "mean_minus_2sd", "margin"))):
        assert name in tables, name
    assert tables["rs_best_of_64"] == 3 and tables["wind_groups"] == 192 and tables["bon_curve"] == 64
    best = query(built, "SELECT r.response_id FROM rs_best_of_64 r JOIN xwin_set s USING (response_id) WHERE s.rank = 1")
    assert len(best) == 3
    curve = query(built, "SELECT n, mean_best_score FROM bon_curve ORDER BY n")
    assert all(a["mean_best_score"] <= b["mean_best_score"] + 1e-12 for a, b in zip(curve, curve[1:]))
    top = query(built, "SELECT avg(score) AS s FROM xwin_set WHERE rank = 1")[0]["s"]
    assert curve[-1]["mean_best_score"] == pytest.approx(top)


def test_rebuild_resumes_from_the_cache_and_reproduces_the_table(built: Path, tmp_path: Path) -> None:
    before = query(built, "SELECT response_id, response, score, rank FROM xwin_set ORDER BY response_id")
    drawn = stats_of(built, "xwin_responses")["samples_drawn"]
    xwin_data.build(RECIPE, built, sets=SMALL, force=["xwin_responses", "xwin_set"], show_progress=False)
    gen, scored = stats_of(built, "xwin_responses"), stats_of(built, "xwin_set")
    assert (gen["samples_generated"], gen["samples_cached"]) == (0, drawn)
    assert (scored["scores_computed"], scored["scores_cached"]) == (0, 192)
    assert query(built, "SELECT response_id, response, score, rank FROM xwin_set ORDER BY response_id") == before


def test_a_killed_build_resumes_without_resampling(built: Path, tmp_path: Path) -> None:
    """Kill the build while it samples (SIGKILL), then build again: the finished samples come from the cache and the
    table equals the uninterrupted build's."""
    import sqlite3
    import time

    cat = tmp_path / "cat"
    recipe = trimmed_recipe(tmp_path)
    sets = [s for s in SMALL if not s.startswith("rs_ns")]
    args = [sys.executable, "-m", "xwin_data.cli", "build", str(recipe), "--catalog", str(cat),
            *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = cat / "cache" / "generation.sqlite"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    with sqlite3.connect(db) as con:
                        if con.execute("SELECT count(*) FROM requests").fetchone()[0] >= 64:
                            break
                except sqlite3.Error:
                    pass
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    with sqlite3.connect(db) as con:
        stored = con.execute("SELECT count(*) FROM requests").fetchone()[0]
    assert stored >= 64
    assert Catalog(cat).current("xwin_set") is None  # nothing half-made was published
    xwin_data.build(recipe, cat, sets=sets, show_progress=False)
    st = stats_of(cat, "xwin_responses")
    assert st["samples_cached"] >= min(stored, st["samples_drawn"]) and st["samples_generated"] < st["samples_drawn"]
    same = "SELECT response_id, response, score FROM xwin_set ORDER BY response_id"
    assert query(cat, same) == query(built, same)


def test_shortfall_is_recorded_when_distinct_responses_run_out(tmp_path: Path) -> None:
    """Two tokens from the two likeliest choices allow a handful of distinct responses, far from 64: the cap stops
    sampling and the shortfall is a table, not a silent gap. Prompts come from a conversation table here; one
    without a user turn and one longer than the context window are drops with their reason."""
    convs = [
        {"id": "c1", "messages": [{"role": "user", "content": "Say something about tea."},
                                  {"role": "assistant", "content": "Tea is nice."},
                                  {"role": "user", "content": "And coffee?"},
                                  {"role": "assistant", "content": "Also nice."}]},
        {"id": "c2", "messages": [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Name a colour."},
                                  {"role": "assistant", "content": "Blue."}]},
        {"id": "c3", "messages": [{"role": "assistant", "content": "No user turn here."}]},
        {"id": "c4", "messages": [{"role": "user", "content": "Far too long for the context window. " * 200}]},
    ]
    (tmp_path / "conv.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    recipe = RECIPE.read_text().split("  - id: dpo_pairs")[0]  # up to rs_best_of
    recipe = recipe.replace("  - id: xwin_set_prompts\n    op: read_prompts\n    params:\n      path: ${prompts}\n",
                            "  - id: xwin_set_prompts\n    op: sql\n    params:\n      query: \"SELECT id, messages::"
                            "STRUCT(role VARCHAR, content VARCHAR)[] AS messages FROM read_json('${recipe_dir}/conv.jsonl')\"\n")
    (tmp_path / "r.yaml").write_text(recipe)
    sets = ["sampling.top_k=2", "sampling.max_new_tokens=2", "max_samples=40", "rs_ns=[1,64]",
            "policy.max_model_len=128", f"eval_prompts={RECIPE.parent / 'data' / 'xwin_eval_prompts.jsonl'}"]
    xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", sets=sets, show_progress=False)
    cat = tmp_path / "cat"
    prompts = {r["prompt_id"]: r["prompt"] for r in query(cat, "SELECT DISTINCT prompt_id, prompt FROM xwin_set")}
    assert prompts == {"c1": [{"role": "user", "content": "Say something about tea."}],
                       "c2": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]}
    assert query(cat, "SELECT source_id, reason FROM drops WHERE stage = 'xwin_responses' ORDER BY 1") == [
        {"source_id": "c3", "reason": "no_user_turn"}, {"source_id": "c4", "reason": "prompt_too_long"}]
    short = {r["prompt_id"]: r for r in query(cat, "SELECT * FROM xwin_responses_shortfall")}
    got = {r["prompt_id"]: r["n"] for r in query(cat, "SELECT prompt_id, count(*) AS n FROM xwin_set GROUP BY 1")}
    assert set(short) == {"c1", "c2"}
    for pid, row in short.items():
        assert row["samples_drawn"] == 40 and row["unique_responses"] == got[pid] <= 6
        assert row["shortfall"] == 64 - got[pid] and row["duplicates"] + row["blank"] == 40 - got[pid]
        assert "max_samples" in row["reason"]
    n = query(cat, "SELECT n_available FROM rs_best_of_64 ORDER BY prompt_id")
    assert [r["n_available"] for r in n] == [got["c1"], got["c2"]]

    # Greedy decoding has one answer per prompt: one draw, and the shortfall says why.
    xwin_data.build(tmp_path / "r.yaml", cat, sets=sets + ["sampling.temperature=0"], show_progress=False)
    short = query(cat, "SELECT prompt_id, unique_responses, samples_drawn, reason FROM xwin_responses_shortfall "
                       "ORDER BY 1")
    assert [(r["unique_responses"], r["samples_drawn"]) for r in short] == [(1, 1), (1, 1)]
    assert all("greedy" in r["reason"] for r in short)


def test_normalisation_makes_case_and_whitespace_variants_duplicates() -> None:
    from xwin_data.llm.generation import Completion

    st = PromptState("p", [{"role": "user", "content": "q"}])
    texts = ["Hello  world", "hello world", " HELLO\nworld ", "   ", "Hello, world", "x"]
    st.take([Completion(t, 3, "stop") for t in texts], 0, wanted=2)
    assert [a for a, _ in st.kept] == [0, 4]  # 'x' arrives after two distinct were kept
    assert (st.duplicates, st.blank, st.drawn) == (2, 1, 6)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_pooling_reward_matches_transformers(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from vllm_env import VLLMEnvUnavailable, ensure_vllm_python, vllm_env

    from xwin_data.llm.reward import RewardSpec, make_scorer

    try:
        python, _ = ensure_vllm_python()
    except VLLMEnvUnavailable as err:
        pytest.skip(str(err))
    convs = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "answer " * (i + 1)}]
             for i in range(6)]
    script = tmp_path / "score.py"
    script.write_text(
        "import json, sys\nfrom xwin_data.llm.reward import RewardSpec, make_scorer\n"
        "if __name__ == '__main__':\n"
        "    convs = json.load(open(sys.argv[1]))\n"
        "    with make_scorer(RewardSpec(backend='vllm', model='tiny-reward', max_length=256, batch_size=4,\n"
        "                                extra={'dtype': 'float32'})) as rm:\n"
        "        print(json.dumps({'scores': rm.score(convs), 'id': rm.model_id}))\n")
    (tmp_path / "convs.json").write_text(json.dumps(convs))
    proc = subprocess.run([str(python), str(script), str(tmp_path / "convs.json")], capture_output=True, text=True,
                          env=vllm_env(VLLM_CPU_OMP_THREADS_BIND="0-1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    with make_scorer(RewardSpec(model="tiny-reward", max_length=256, batch_size=4)) as rm:
        want, ident = rm.score(convs), rm.model_id
    assert got["id"] == ident
    assert got["scores"] == pytest.approx(want, abs=1e-5)
