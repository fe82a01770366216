"""The one model layer through its public surface: a backend added from outside the package and used by a recipe
(exactly the README's example), served models identified by where they are served, and one reward score for a
long conversation whichever path computes it (the Xwin-Set op, the reward-model judge, WIND, evaluation)."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from openai_server import ChatRequest, OpenAIServer

import xwin_data
from xwin_data.core.connection import connect
from xwin_data.llm.cache import RequestCache
from xwin_data.llm.client import ChatCall, ChatClient, ClientSettings
from xwin_data.llm.generation import GeneratorSpec

PROJECT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is 2 + 2?", "Name a colour.", "Say hi."]


def readme_section(title: str) -> str:
    text = (PROJECT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def rows(catalog: Path, sql: str) -> list[dict]:
    con = connect(catalog)
    try:
        return con.sql(sql).to_arrow_table().to_pylist()
    finally:
        con.close()


# ------------------------------------------------------------------------------------------------ a new backend
def test_readme_backend_example_builds_end_to_end(tmp_path, monkeypatch):
    section = readme_section("Adding a backend")
    python_blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    yaml_blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(python_blocks) == 2 and len(yaml_blocks) == 1
    backend_code, build_code = python_blocks
    (tmp_path / "shout_backend.py").write_text(backend_code)
    (tmp_path / "shout.yaml").write_text(yaml_blocks[0])
    (tmp_path / "questions.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("shout_backend", None)

    exec(compile(build_code, "README: Adding a backend", "exec"), {})

    out = rows(tmp_path / "catalog", "SELECT prompt, response, policy, tokens FROM answers ORDER BY prompt_id, "
                                      "sample_index")
    assert len(out) == 3 * len(QUESTIONS)
    for i, q in enumerate(QUESTIONS):
        mine = out[3 * i:3 * i + 3]
        assert all(r["prompt"][-1]["content"] == q for r in mine)
        assert all(re.fullmatch(rf"{re.escape(q.upper())} \(\d+\)", r["response"]) for r in mine)
        assert len({r["response"] for r in mine}) == 3
    assert {r["policy"] for r in out} == {"shout-1"}

    # The registry now knows it; a spec naming a backend nobody registered fails with the registered names.
    from xwin_data.llm.registry import names
    assert "shout" in names("generator")
    with pytest.raises(ValueError, match=r"unknown generator backend 'whisper' \(registered: .*shout"):
        GeneratorSpec(backend="whisper", model="x")


# ------------------------------------------------------------------------------------------------ identity
RESPONSES_RECIPE = """\
name: served
vars:
  url: null
stages:
  - id: questions
    op: read_prompts
    params: {path: "${recipe_dir}/questions.jsonl"}
  - id: answers
    op: sample_unique
    inputs: [questions]
    params:
      policy: {backend: openai, model: same-name, base_url: "${url}"}
      n_unique: 2
      sampling: {max_new_tokens: 16}
"""


def tagged(tag: str):
    def reply(req: ChatRequest) -> str:
        return f"{tag} answers {req.prompt} with seed {int(req.body.get('seed', 0)) + req.index}"
    return reply


def test_two_servers_serving_one_model_name_share_no_samples(tmp_path):
    (tmp_path / "questions.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    recipe = tmp_path / "served.yaml"
    recipe.write_text(RESPONSES_RECIPE)
    catalog = tmp_path / "catalog"
    with OpenAIServer(reply=tagged("server-A")) as a, OpenAIServer(reply=tagged("server-B")) as b:
        a_spec = GeneratorSpec(backend="openai", model="same-name", base_url=a.base_url)
        b_spec = GeneratorSpec(backend="openai", model="same-name", base_url=b.base_url)
        assert a_spec.identity() != b_spec.identity()
        pinned = GeneratorSpec(backend="openai", model="same-name", base_url=a.base_url, extra={"revision": "r1"})
        assert pinned.revision == "r1" and pinned.identity() == a_spec.identity() + "@r1"

        def build(server) -> list[dict]:
            xwin_data.build(recipe, catalog, sets=[f"url={server.base_url}"],
                            show_progress=False)
            return rows(catalog, "SELECT response, policy FROM answers ORDER BY prompt_id, sample_index")

        from_a = build(a)
        assert a.total == len(QUESTIONS) and b.total == 0
        assert len(from_a) == 2 * len(QUESTIONS) and all(r["response"].startswith("server-A") for r in from_a)
        assert {r["policy"] for r in from_a} == {a_spec.identity()}

        # The same model name on another server: the stage rebuilds (its fingerprint names the endpoint) and
        # every sample comes from that server, none from the cache of the first.
        from_b = build(b)
        assert b.total == len(QUESTIONS) and all(r["response"].startswith("server-B") for r in from_b)
        assert a.total == len(QUESTIONS)

        # Back to the first: everything is cached, nothing is asked again.
        assert build(a) == from_a and a.total == len(QUESTIONS) and b.total == len(QUESTIONS)

        # The judge's client keys its cache by endpoint too.
        with RequestCache(tmp_path / "judge.sqlite") as cache:
            call = ChatCall([{"role": "user", "content": "Which is better?"}], {"max_tokens": 8})
            texts = [ChatClient(ClientSettings(model="same-name", base_url=s.base_url), cache).run([call])[0].text
                     for s in (a, b, a)]
        assert texts[0].startswith("server-A") and texts[1].startswith("server-B") and texts[2] == texts[0]
        assert a.total == len(QUESTIONS) + 1 and b.total == len(QUESTIONS) + 1


# ------------------------------------------------------------------------------------------------ one scorer
@pytest.fixture(scope="module")
def short_rm(tmp_path_factory) -> Path:
    """The tiny reward model with a 96-token position limit: its own maximum length."""
    from xwin_data.llm.tiny import ensure_tiny_models

    path = tmp_path_factory.mktemp("rm") / "short-reward"
    shutil.copytree(ensure_tiny_models().reward, path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 96
    (path / "config.json").write_text(json.dumps(config))
    return path


PROMPT = [{"role": "system", "content": "Answer in detail."},
          {"role": "user", "content": "Tell me everything about tables, rows and columns."}]
LONG = " ".join(f"Row {i} of the table holds a value and the column names it." for i in range(40))
SHORT = "Tables hold rows."

SCORING_RECIPE = """\
name: scoring
stages:
  - id: responses
    op: sql
    params:
      query: >-
        SELECT prompt_id, prompt::STRUCT(role VARCHAR, content VARCHAR)[] AS prompt, response_id,
               sample_index::INTEGER AS sample_index, sample_index::INTEGER AS attempt, response,
               length(response)::INTEGER AS tokens, 'stop' AS finish_reason, 'given' AS policy
        FROM read_json('${recipe_dir}/responses.jsonl')
  - id: scored
    op: score_responses
    inputs: [responses]
    params:
      rm: {model: "RM"}
  - id: pairs
    op: sql
    params:
      query: >-
        SELECT pair_id, prompt_id, prompt::STRUCT(role VARCHAR, content VARCHAR)[] AS prompt, first_id,
               first_policy, "first", second_id, second_policy, "second"
        FROM read_json('${recipe_dir}/pairs.jsonl')
  - id: judged
    op: judge_pairs
    inputs: [pairs]
    params:
      judge: {kind: reward_model, reward_model: "RM"}
"""


def test_one_score_for_a_long_conversation_from_every_path(short_rm, tmp_path):
    import torch

    from xwin_data.llm.backends.transformers_backend import TransformersScorer
    from xwin_data.llm.reward import with_response
    from xwin_data.studies.scaling_eval import EvaluatorSpec, RewardModelEvaluator
    from xwin_data.training.evaluate import BonEvalSettings, reward_scorer, score_samples
    from xwin_data.training.models import load_reward, load_tokenizer

    model, tok = load_reward(str(short_rm)), load_tokenizer(str(short_rm))
    ids = tok.apply_chat_template(with_response(PROMPT, LONG), tokenize=True, return_dict=True)["input_ids"]
    assert len(ids) > 2 * 96  # far longer than the RM's own limit
    with torch.no_grad():  # the rule: the last 96 tokens, one unpadded forward pass
        expected = [float(model(input_ids=torch.tensor([x])).logits[0, 0]) for x in (
            ids[-96:], tok.apply_chat_template(with_response(PROMPT, SHORT), tokenize=True,
                                               return_dict=True)["input_ids"])]

    # The Xwin-Set op and the reward-model judge, built by a recipe.
    (tmp_path / "responses.jsonl").write_text("".join(json.dumps(
        {"prompt_id": "p", "prompt": PROMPT, "response_id": f"p#{i}", "sample_index": i, "response": r}) + "\n"
        for i, r in enumerate((LONG, SHORT))))
    (tmp_path / "pairs.jsonl").write_text(json.dumps(
        {"pair_id": "pair", "prompt_id": "p", "prompt": PROMPT, "first_id": "p#0", "first_policy": "x",
         "first": LONG, "second_id": "p#1", "second_policy": "y", "second": SHORT}) + "\n")
    recipe = tmp_path / "scoring.yaml"
    recipe.write_text(SCORING_RECIPE.replace("RM", str(short_rm)))
    xwin_data.build(recipe, tmp_path / "catalog", show_progress=False)
    stored = [r["score"] for r in rows(tmp_path / "catalog", "SELECT score FROM scored ORDER BY sample_index")]
    raw = rows(tmp_path / "catalog", "SELECT raw_text FROM judged_calls WHERE \"order\" = 'ab'")[0]["raw_text"]
    judged = [float(x) for x in re.findall(r"reward\([AB]\)=(-?[\d.]+)", raw)]

    # WIND's scorer over the model in memory; the training evaluation's; the scaling study's.
    wind = TransformersScorer.from_model(model, tok, batch_size=2).score_responses([PROMPT] * 2, [LONG, SHORT])
    with reward_scorer(BonEvalSettings(prompts_table="unused", reward_model=str(short_rm))) as scorer:
        evaluated = score_samples(scorer, [{"prompt_id": "p", "prompt": PROMPT}], [[LONG, SHORT]])["p"]
    with RequestCache(tmp_path / "study.sqlite") as cache:
        study = RewardModelEvaluator(EvaluatorSpec(reward_model=str(short_rm)), cache)
        studied = study._scores([{"prompt": PROMPT}] * 2, [LONG, SHORT])
        study.scorer.close()

    for path_scores in (stored, wind, evaluated, studied):
        assert path_scores == pytest.approx(expected, abs=1e-5)
    assert judged == pytest.approx(expected, abs=1e-5)  # the judge prints 6 decimals
    assert abs(expected[0] - expected[1]) > 1e-3  # two different scores, so equality means something


# ------------------------------------------------------------------------------------------------ models that are not there
def test_a_model_that_is_missing_or_does_not_load_is_one_line_naming_it(tmp_path):
    import subprocess

    from xwin_data.core.errors import ModelLoadError, XwinError
    from xwin_data.llm.generation import make_generator
    from xwin_data.llm.reward import ScorerSpec, make_scorer

    missing = subprocess.run([sys.executable, "-m", "xwin_data.cli", "build", str(PROJECT / "recipes" / "xwin_set.yaml"),
                              "-q", "-c", str(tmp_path / "a"), "--set", f"policy.model={tmp_path}/no-such-model"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert missing.stderr.strip().splitlines()[-1].startswith(f"error: model folder {tmp_path}/no-such-model does not exist")
    assert "Traceback" not in missing.stderr and "╭" not in missing.stderr
    empty = tmp_path / "empty-model"  # there, but not a model: the backend that loads it says so, naming it
    empty.mkdir()
    for make, spec in ((make_generator, GeneratorSpec(model=str(empty))), (make_scorer, ScorerSpec(model=str(empty)))):
        with pytest.raises(ModelLoadError, match=f"^model {re.escape(str(empty))}: cannot load it: ") as err:
            make(spec)
        assert isinstance(err.value, XwinError) and "\n" not in str(err.value)
