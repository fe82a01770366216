"""Exports to TRL, LLaMA-Factory, OpenRLHF and HF datasets, each read back the way the target reads it, and the
dataset card, on a real catalog built from a recipe."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import run_here

import xwin_data
from xwin_data.core.catalog import Catalog
from xwin_data.exports.base import export_table
from xwin_data.ops.base import register
from xwin_data.ops.readers.sql import SqlOp

import xwin_data.exports  # noqa: F401  registers the formats


@register
class PlantedCostOp(SqlOp):
    """A SQL stage that records judge cost in its stats, as model-calling ops do."""

    name = "test_planted_cost"

    def run(self, ctx, params) -> None:
        ctx.write_sql(params.query)
        ctx.stats.update({"judge_cost_usd": 0.125, "prompt_tokens": 1200, "completion_tokens": 300, "calls": 8})


MSG = "STRUCT(role VARCHAR, content VARCHAR)[]"
RECIPE = f"""\
name: export_smoke
vars:
  license: apache-2.0
  license_details: "test fixtures written by the test"
  sources: ["tests/test_exports.py"]
stages:
  - id: conv_raw
    op: sql
    params:
      query: "SELECT id, messages::{MSG} AS messages FROM read_json('${{recipe_dir}}/conv.jsonl')"
  - id: conv
    op: filter
    inputs: [conv_raw]
    params:
      where:
        too_few_turns: "len(messages) >= 2"
  - id: pairs
    op: test_planted_cost
    inputs: [conv]
    params:
      query: "SELECT p.pair_id, p.prompt::{MSG} AS prompt, p.chosen, p.rejected, p.strength, p.consistent
              FROM read_json('${{recipe_dir}}/pairs.jsonl') p"
  - id: pairs_full
    op: sql
    params:
      query: "SELECT pair_id, chosen::{MSG} AS chosen, rejected::{MSG} AS rejected
              FROM read_json('${{recipe_dir}}/pairs_full.jsonl')"
  - id: set
    op: sql
    params:
      query: "SELECT prompt_id, prompt::{MSG} AS prompt, response_id, response, score, rank
              FROM read_json('${{recipe_dir}}/set.jsonl')"
"""

SYS = {"role": "system", "content": "You are terse."}
CONV = [
    {"id": "c1", "messages": [SYS, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
    {"id": "c2", "messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red"},
                              {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Blue"}]},
    {"id": "c3", "messages": [{"role": "user", "content": "dangling"}]},
]
PAIRS = [
    {"pair_id": "p1", "prompt": [{"role": "user", "content": "Capital of France?"}], "chosen": "Paris.",
     "rejected": "Lyon.", "strength": 2.0, "consistent": True},
    {"pair_id": "p2", "prompt": [SYS, {"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"},
                                 {"role": "user", "content": "Louder"}], "chosen": "HI!", "rejected": "hi",
     "strength": 1.0, "consistent": False},
    {"pair_id": "p3", "prompt": [{"role": "user", "content": "Empty?"}], "chosen": "Yes", "rejected": "  ",
     "strength": 1.0, "consistent": True},
]
PAIRS_FULL = [
    {"pair_id": "f1", "chosen": [{"role": "user", "content": "2*3?"}, {"role": "assistant", "content": "6"}],
     "rejected": [{"role": "user", "content": "2*3?"}, {"role": "assistant", "content": "5"}]},
]
SET = [{"prompt_id": "q1", "prompt": [{"role": "user", "content": "Pick a number"}], "response_id": f"q1-{i}",
        "response": f"Number {i}", "score": float(i), "rank": 3 - i} for i in range(3)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Catalog:
    d = tmp_path_factory.mktemp("exports")
    for name, rows in (("conv", CONV), ("pairs", PAIRS), ("pairs_full", PAIRS_FULL), ("set", SET)):
        _write_jsonl(d / f"{name}.jsonl", rows)
    (d / "r.yaml").write_text(RECIPE)
    xwin_data.build(d / "r.yaml", d / "catalog", show_progress=False)
    return Catalog(d / "catalog")


def tiny_tokenizer():
    """A word-level tokenizer with a ChatML-like template: enough for chat-template rendering checks."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", chat_template=template)


def _load_json(path: str):
    import datasets

    return datasets.load_dataset("json", data_files=path, split="train")


def test_trl_formats_load_and_render(built: Catalog, tmp_path: Path) -> None:
    from trl.data_utils import apply_chat_template, is_conversational

    tok = tiny_tokenizer()
    res = export_table(built, "conv", "trl", tmp_path / "conv")
    ds = _load_json(res["path"])
    assert ds.column_names == ["messages"] and len(ds) == 2
    assert all(is_conversational(ex) for ex in ds)
    assert ds[1]["messages"][-1] == {"role": "assistant", "content": "Blue"}
    assert "<|assistant|>4<eos>" in apply_chat_template(ds[0], tok)["text"]

    res = export_table(built, "pairs", "trl", tmp_path / "pairs")
    ds = _load_json(res["path"])
    assert set(ds.column_names) == {"prompt", "chosen", "rejected", "margin"}
    assert len(ds) == 2 and res["skipped"] == {"empty_response": 1}
    assert json.loads((tmp_path / "pairs" / "skipped.json").read_text()) == {"empty_response": 1}
    ex = ds[1]
    assert is_conversational(ex) and ex["chosen"] == [{"role": "assistant", "content": "HI!"}]
    assert ex["prompt"][0] == SYS and ex["margin"] == 1.0
    rendered = apply_chat_template(ex, tok)
    assert rendered["prompt"].endswith("<|user|>Louder<eos><|assistant|>")
    assert rendered["chosen"].startswith("HI!") and rendered["rejected"].startswith("hi")

    # chosen/rejected as whole conversations: the shared prompt is split off (TRL's explicit-prompt form)
    ds = _load_json(export_table(built, "pairs_full", "trl", tmp_path / "full")["path"])
    assert ds[0]["prompt"] == [{"role": "user", "content": "2*3?"}]
    assert (ds[0]["chosen"][0]["content"], ds[0]["rejected"][0]["content"]) == ("6", "5")

    ds = _load_json(export_table(built, "set", "trl", tmp_path / "set")["path"])
    assert set(ds.column_names) == {"prompt", "completion", "score", "rank"}
    assert ds[2]["completion"] == [{"role": "assistant", "content": "Number 2"}] and ds[2]["score"] == 2.0
    assert apply_chat_template(ds[0], tok)["completion"].startswith("Number 0")


def _lf_demo(shared: Path, name: str):
    folder = shared / "hiyouga_LLaMA-Factory" / "data"
    info = json.loads((folder / "dataset_info.json").read_text())
    path = folder / info[name]["file_name"]
    if not path.exists():
        path = path.with_name(path.name + ".gz")
    with (gzip.open(path, "rt") if path.suffix == ".gz" else path.open()) as fh:
        return info[name], json.load(fh)


def _lf_read_back(out: Path, name: str) -> list[list[dict]]:
    """Read an export the way LLaMA-Factory's sharegpt converter does: dataset_info columns and tags, odd
    positions human, even positions gpt, optional system column."""
    info = json.loads((out / "dataset_info.json").read_text())[name]
    assert info["formatting"] == "sharegpt"
    cols = info["columns"]
    tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
            **info.get("tags", {})}
    ds = _load_json(str(out / info["file_name"]))
    convs = []
    for ex in ds:
        turns = ex[cols["messages"]]
        for i, t in enumerate(turns):
            assert t[tags["role_tag"]] == (tags["user_tag"] if i % 2 == 0 else tags["assistant_tag"])
        msgs = ([{"role": "system", "content": ex[cols["system"]]}] if ex.get(cols.get("system", "")) else [])
        msgs += [{"role": "user" if t[tags["role_tag"]] == tags["user_tag"] else "assistant",
                  "content": t[tags["content_tag"]]} for t in turns]
        if info.get("ranking"):
            assert len(turns) % 2 == 1  # the prompt ends with a human turn
            msgs = (msgs, ex[cols["chosen"]][tags["content_tag"]], ex[cols["rejected"]][tags["content_tag"]])
        convs.append(msgs)
    return convs


def test_llama_factory_matches_demo_files(built: Catalog, tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "lf"
    export_table(built, "conv", "llama-factory", out)
    export_table(built, "pairs", "llama-factory", out)
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"conv", "pairs"}  # the second export added its entry, kept the first

    demo_info, demo_rows = _lf_demo(shared_data, "dpo_en_demo")
    mine = info["pairs"]
    assert (mine["formatting"], mine["ranking"]) == (demo_info["formatting"], demo_info["ranking"]) == ("sharegpt", True)
    assert demo_info["columns"].items() <= mine["columns"].items()
    row = json.loads((out / "pairs.jsonl").read_text().splitlines()[0])
    assert set(demo_rows[0]) <= set(row) and set(row["chosen"]) == set(demo_rows[0]["chosen"]) == {"from", "value"}

    glaive_info, glaive_rows = _lf_demo(shared_data, "glaive_toolcall_en_demo")
    assert mine["columns"]["messages"] == glaive_info["columns"]["messages"]
    assert set(glaive_rows[0]["conversations"][0]) == set(row["conversations"][0])

    convs = _lf_read_back(out, "conv")
    assert convs == [c["messages"] for c in CONV[:2]]
    pairs = _lf_read_back(out, "pairs")
    assert pairs == [(p["prompt"], p["chosen"], p["rejected"]) for p in PAIRS[:2]]


def test_openrlhf_keys_render_with_chat_template(built: Catalog, tmp_path: Path) -> None:
    """OpenRLHF builds its text with tokenizer.apply_chat_template(data[prompt_key] + data[chosen_key]) and
    slices off the rendered prompt; the exported keys must make that work."""
    tok = tiny_tokenizer()
    out = tmp_path / "orl"
    res = export_table(built, "pairs", "openrlhf", out)
    assert "--prompt_key prompt --chosen_key chosen --rejected_key rejected" in (out / "openrlhf_args.txt").read_text()
    ds = _load_json(res["path"])
    ex = ds[0]
    prompt = tok.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True)
    chosen = tok.apply_chat_template(ex["prompt"] + ex["chosen"], tokenize=False)[len(prompt):]
    rejected = tok.apply_chat_template(ex["prompt"] + ex["rejected"], tokenize=False)[len(prompt):]
    assert prompt.startswith("<|user|>Capital of France?") and (chosen, rejected) == ("Paris.<eos>", "Lyon.<eos>")
    assert ex["margin"] == 2.0

    res = export_table(built, "conv", "openrlhf", tmp_path / "orl_sft")
    ds = _load_json(res["path"])
    last = ds[1]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant"]
    res = export_table(built, "set", "openrlhf", tmp_path / "orl_set")
    ds = _load_json(res["path"])
    assert set(ds.column_names) == {"input", "output"} and ds[1]["output"][0]["content"] == "Number 1"


def test_hf_export_and_card_through_cli(built: Catalog, tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "hf"
    run_here("export", "pairs", str(out), "--format", "hf", "--card", "--catalog", str(built.root))
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 3 and ds[0]["chosen"] == "Paris."
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "license: apache-2.0" in front and "pretty_name: pairs" in front
    assert "test fixtures written by the test" in card
    # funnel and lineage: pairs was built from conv (filter with 1 drop) built from conv_raw
    assert "| conv | conv | filter | rows | 3 | 2 | 1 | too_few_turns: 1 |" in card
    lineage = card.split("## Lineage")[1].split("##")[0]
    assert [ln.split("`")[1] for ln in lineage.strip().splitlines()] == ["conv_raw", "conv", "pairs"]
    assert "| pairs | judge_cost_usd | 0.1250 |" in card and "Total recorded model cost: $0.1250." in card
    assert '"where"' in card  # the recipe parameters of the stages

    bad = run_here("export", "pairs", str(tmp_path / "x"), "--format", "nope", "--catalog", str(built.root),
                   check=False)
    assert bad.returncode != 0 and "unknown export format" in bad.stdout + bad.stderr
