"""The core in-process and fast: `plan`, fingerprints and column wiring against a catalog in a temporary folder,
the one override reader and the error family. No models are built; the one build here is pure SQL."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from xwin_data.core.catalog import Catalog
from xwin_data.core.engine import build, plan
from xwin_data.core.errors import BuildError, CatalogBusy, OverrideError, RecipeError, SchemaError, XwinError
from xwin_data.core.overrides import apply_overrides, load_yaml, parse_override
from xwin_data.core.recipe import load_recipe

RECIPE = """\
name: core
vars:
  min_len: 3
stages:
  - id: raw
    op: sql
    params:
      query: "SELECT id, messages::STRUCT(role VARCHAR, content VARCHAR)[] AS messages FROM read_json('conv.jsonl')"
  - id: kept
    op: filter
    inputs: [raw]
    params:
      where:
        short_content: "length(messages[1].content) >= ${min_len}"
  - id: stats
    op: conversation_stats
    inputs: [kept]
    params:
      language: false
"""

ROWS = [
    {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"id": "b", "messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hey"}]},
]


@pytest.fixture
def work(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conv.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (tmp_path / "r.yaml").write_text(RECIPE)
    return tmp_path


def _plan(work: Path, sets: list[str] | None = None, text: str | None = None):
    path = work / "r.yaml"
    if text is not None:
        path = work / "other.yaml"
        path.write_text(text)
    return {ps.stage_id: ps for ps in plan(load_recipe(path, sets), Catalog(work / "cat"))}


def test_fingerprints_are_stable_and_follow_the_dag(work: Path) -> None:
    first, again = _plan(work), _plan(work)
    assert {s: p.fingerprint for s, p in first.items()} == {s: p.fingerprint for s, p in again.items()}
    assert [p.status for p in first.values()] == ["run"] * 3
    assert [p.reason for p in first.values()] == ["not built yet", "an input changed", "an input changed"]

    changed = _plan(work, ["min_len=1"])
    assert changed["raw"].fingerprint == first["raw"].fingerprint
    assert changed["kept"].fingerprint != first["kept"].fingerprint
    assert changed["stats"].fingerprint != first["stats"].fingerprint  # through its input's fingerprint
    assert changed["stats"].params == first["stats"].params


def test_plan_after_a_build_skips_reruns_and_restores(work: Path) -> None:
    cat = Catalog(work / "cat")
    build(load_recipe(work / "r.yaml"), cat, show_progress=False)
    assert cat.current("stats").rows == 1
    assert {s: p.status for s, p in _plan(work).items()} == {"raw": "built", "kept": "built", "stats": "built"}

    changed = _plan(work, ["min_len=1"])
    assert (changed["raw"].status, changed["kept"].reason, changed["stats"].reason) == (
        "built", "config or code changed", "an input changed")
    build(load_recipe(work / "r.yaml", ["min_len=1"]), cat, show_progress=False)
    back = _plan(work)
    assert back["kept"].status == back["stats"].status == "restore"


def test_plan_knows_the_columns_of_each_stage(work: Path) -> None:
    stages = _plan(work)
    assert stages["raw"].columns == {"raw": None}  # an sql stage does not say
    assert stages["kept"].columns == {"kept": None}  # a filter keeps what it is given: unknown here too
    cat = Catalog(work / "cat")
    build(load_recipe(work / "r.yaml"), cat, show_progress=False)
    # once built, a catalog table's columns are known, and what an op keeps and adds follows from them
    downstream = _plan(work, text="name: more\nstages:\n  - {id: again, op: filter, inputs: [stats], "
                                  "params: {where: {long: 'n_tokens > 0'}}}\n")
    assert downstream["again"].columns["again"] == {"id", "messages", "n_turns", "n_chars", "turn_tokens",
                                                    "n_tokens", "language", "language_raw"}


MISWIRED = """\
name: miswired
stages:
  - id: prompts
    op: read_prompts
    params: {path: prompts.jsonl}
  - id: pairs
    op: make_pairs
    inputs:
      - prompts
"""


def test_a_miswired_recipe_fails_at_plan_time_on_its_input_line(work: Path) -> None:
    with pytest.raises(RecipeError) as err:
        _plan(work, text=MISWIRED)
    assert err.value.line == 9 and err.value.key == "pairs.inputs"
    message = str(err.value)
    assert "other.yaml:9" in message and "make_pairs needs column(s) candidate_id, policy, prompt, prompt_id, " \
        "response in input 'prompts', which has: id, messages" in message
    assert not (work / "cat" / "tables").exists()


def test_alternatives_are_named_and_catalog_columns_are_checked(work: Path) -> None:
    cat = Catalog(work / "cat")
    build(load_recipe(work / "r.yaml"), cat, show_progress=False)
    text = ("name: set\nstages:\n  - id: samples\n    op: sample_unique\n    inputs: [stats]\n"
            "    params: {policy: {model: tiny-policy}}\n")
    plan_ok = _plan(work, text=text)  # `stats` has `id` and `messages`: one of each alternative
    assert plan_ok["samples"].status == "run"
    text = text.replace("[stats]", "[core_bad]")
    (work / "bad.yaml").write_text("name: bad\nstages:\n"
                                   "  - {id: core_bad, op: sql, params: {query: 'SELECT 1 AS x'}}\n")
    build(load_recipe(work / "bad.yaml"), cat, show_progress=False)
    with pytest.raises(RecipeError, match=r"needs column\(s\) id or prompt_id, prompt or messages in input "
                                          r"'core_bad', which has: x"):
        _plan(work, text=text)


def test_a_stage_writing_other_columns_than_it_declares_is_not_published(work: Path, monkeypatch) -> None:
    from xwin_data.ops.text.stats import ConversationStats

    monkeypatch.setattr(ConversationStats, "adds", ConversationStats.adds | {"n_words"})
    with pytest.raises(BuildError, match="declares the columns"):
        build(load_recipe(work / "r.yaml"), Catalog(work / "cat"), show_progress=False)
    assert Catalog(work / "cat").current("stats") is None


@pytest.mark.parametrize("expr, parts, value", [
    ("a.b=no", ["a", "b"], "no"),  # a word, not False (YAML 1.1 would say False)
    ("save_strategy=off", ["save_strategy"], "off"),
    ("flag=true", ["flag"], True),
    ("lr=1e-3", ["lr"], 0.001),  # a number, not the text YAML 1.1 makes of it
    ("sizes=[1, 2]", ["sizes"], [1, 2]),
    ("x=", ["x"], ""),
    ("x=~", ["x"], None),
    ("q=SELECT a, b FROM t", ["q"], "SELECT a, b FROM t"),
])
def test_one_override_reader(expr: str, parts: list[str], value) -> None:
    assert parse_override(expr) == (parts, value)


def test_recipes_studies_and_training_configs_read_overrides_alike(work: Path) -> None:
    from xwin_data.studies.scaling import load_scaling_config
    from xwin_data.training.config import parse_overrides

    recipe = load_recipe(work / "r.yaml", ["stages.kept.params.where.short_content=no"])
    assert recipe.stages[1].params["where"]["short_content"] == "no"
    assert parse_overrides(["--save-strategy=no", "learning_rate=1e-3"]) == {"save_strategy": "no",
                                                                             "learning_rate": 0.001}
    (work / "study.yaml").write_text("name: s\ntrain:\n  overrides: {save_strategy: steps}\n")
    cfg = load_scaling_config(work / "study.yaml", ["train.overrides.save_strategy=no",
                                                   "train.overrides.learning_rate=1e-3"])
    assert cfg.train.overrides == {"save_strategy": "no", "learning_rate": 0.001}
    assert load_yaml("a: no\nb: 1e-3\nc: True") == {"a": "no", "b": 0.001, "c": True}
    with pytest.raises(OverrideError, match="cannot set inside 'a'"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_every_error_of_the_toolkit_is_an_xwin_error(work: Path) -> None:
    for cls in (RecipeError, BuildError, SchemaError, CatalogBusy, OverrideError):
        assert issubclass(cls, XwinError)
    with pytest.raises(XwinError, match="unknown key 'min_lenn'"):
        load_recipe(work / "r.yaml", ["min_lenn=2"])
    with pytest.raises(ValueError):  # still the built-in base it always had
        load_recipe(work / "r.yaml", ["novalue"])
