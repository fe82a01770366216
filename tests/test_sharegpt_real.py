"""The readers and the SFT ops on real public files in ../shared/data: LLaMA-Factory ShareGPT/Alpaca/OpenAI
demos, FastChat's dummy_conversation.json, the axolotl conversation, and MT-bench questions joined with model
answers into two-turn conversations that record their answering model (for the provenance filter)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import xwin_data

MT_MODELS = ["gpt-4", "llama-13b", "claude-v1"]

RECIPE = """\
name: real
stages:
  - id: fastchat
    op: read_conversations
    params: {{path: "{d}/lm-sys_FastChat/data/dummy_conversation.json"}}
  - id: glaive
    op: read_conversations
    params: {{path: "{d}/hiyouga_LLaMA-Factory/data/glaive_toolcall_en_demo.json"}}
  - id: axolotl
    op: read_conversations
    params: {{path: "{d}/axolotl-ai-cloud_axolotl/tests/fixtures/conversation.json"}}
  - id: lf_messages
    op: read_conversations
    params: {{path: "{d}/hiyouga_LLaMA-Factory/data/v1_sft_demo.jsonl"}}
  - id: alpaca
    op: read_conversations
    params: {{path: "{d}/hiyouga_LLaMA-Factory/data/alpaca_en_demo.json", format: alpaca}}
  - id: mtbench
    op: read_conversations
    params: {{path: "{mt}"}}
  - id: all_sources
    op: sql
    inputs: [fastchat, glaive, axolotl, lf_messages, alpaca, mtbench]
    schema: conversations
    params:
      query: >-
        SELECT * FROM fastchat UNION ALL BY NAME SELECT * FROM glaive UNION ALL BY NAME SELECT * FROM axolotl
        UNION ALL BY NAME SELECT * FROM lf_messages UNION ALL BY NAME SELECT * FROM alpaca
        UNION ALL BY NAME SELECT * FROM mtbench
  - id: cleaned
    op: clean_conversations
    inputs: [all_sources]
  - id: stats
    op: conversation_stats
    inputs: [cleaned]
  - id: kept
    op: filter_conversations
    inputs: [stats]
    params:
      languages: [en]
      exclude_models: [llama-13b]
      where: {{too_few_turns: "n_turns >= 1"}}
  - id: deduped
    op: dedup_exact
    inputs: [kept]
  - id: sft_real_subsets
    op: nested_subsets
    inputs: [deduped]
    params: {{sizes: [200, 400, 800]}}
"""


def mt_bench_conversations(data: Path, out: Path) -> int:
    """Join MT-bench's two-turn questions with each model's two answers into ShareGPT records."""
    questions = {}
    for line in (data / "lm-sys_FastChat/fastchat/llm_judge/data/mt_bench/question.jsonl").read_text().splitlines():
        q = json.loads(line)
        questions[q["question_id"]] = q["turns"]
    n = 0
    with out.open("w") as fh:
        for model in MT_MODELS:
            path = data / f"ku-nlp_ja-vicuna-qa-benchmark/fastchat/llm_judge/data/mt_bench/model_answer/{model}.jsonl"
            for line in path.read_text().splitlines():
                ans = json.loads(line)
                turns = questions[ans["question_id"]]
                conv = []
                for q, a in zip(turns, ans["choices"][0]["turns"]):
                    conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
                fh.write(json.dumps({"id": f"{model}-{ans['question_id']}", "model": ans["model_id"],
                                     "conversations": conv}) + "\n")
                n += 1
    return n


@pytest.fixture(scope="module")
def real(shared_data: Path, tmp_path_factory) -> object:
    work = tmp_path_factory.mktemp("real")
    mt = work / "mt_bench_conversations.jsonl"
    assert mt_bench_conversations(shared_data, mt) == 240
    (work / "r.yaml").write_text(RECIPE.format(d=shared_data, mt=mt))
    xwin_data.build(work / "r.yaml", work / "cat", show_progress=False)
    return xwin_data.connect(work / "cat")


def test_real_files_read(real) -> None:
    con = real
    count = lambda t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: E731
    assert count("fastchat") == 500 and count("lf_messages") == 500 and count("alpaca") == 999
    assert con.execute("SELECT count(*) FROM drops WHERE stage IN ('fastchat', 'lf_messages', 'alpaca', 'axolotl')"
                       ).fetchone()[0] == 0
    # One real MT-bench answer of llama-13b is empty: a drop, not a crash.
    assert con.execute("SELECT source_id, reason FROM drops WHERE stage = 'mtbench'").fetchall() == [
        ("llama-13b-127", "empty_content")]
    # The tool-calling demo: conversations with function_call/observation turns are not plain chat.
    glaive = dict(con.execute("SELECT reason, count(*) FROM drops WHERE stage = 'glaive' GROUP BY 1").fetchall())
    assert glaive == {"unknown_role": 300 - count("glaive")} and count("glaive") > 100
    assert con.execute("SELECT bool_and(detail SIMILAR TO '.*(function_call|observation).*') FROM drops "
                       "WHERE stage = 'glaive'").fetchone()[0]
    assert con.execute("SELECT len(messages), n_turns FROM stats WHERE source = 'conversation.json'").fetchone() == (12, 6)
    assert con.execute("SELECT messages[1].content FROM fastchat WHERE id = 'identity_0'").fetchone()[0] == "Who are you?"


def test_provenance_language_and_dedup(real) -> None:
    con = real
    models = dict(con.execute("SELECT model, count(*) FROM mtbench GROUP BY 1").fetchall())
    assert models == {"gpt-4": 80, "llama-13b": 79, "claude-v1": 80}
    excluded = con.execute("SELECT count(*), bool_and(source_id LIKE 'llama-13b-%') FROM drops "
                           "WHERE stage = 'kept' AND reason = 'excluded_model'").fetchone()
    assert excluded == (79, True)
    assert con.execute("SELECT count(*) FROM kept WHERE model = 'llama-13b'").fetchone()[0] == 0
    # LLaMA-Factory's v1 demo mixes English and Chinese; the language filter keeps English only.
    langs = dict(con.execute("SELECT language, count(*) FROM stats WHERE source = 'v1_sft_demo.jsonl' GROUP BY 1").fetchall())
    han = con.execute("SELECT count(*) FROM stats WHERE source = 'v1_sft_demo.jsonl' "
                      "AND regexp_matches(messages[1].content, '\\p{Han}')").fetchone()[0]
    assert han > 20 and langs["zh"] == han and langs["en"] > 400
    assert con.execute("SELECT count(*) FROM kept WHERE language <> 'en'").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM deduped").fetchone()[0] == \
        con.execute("SELECT count(DISTINCT lower(regexp_replace(messages::VARCHAR, '\\s+', ' ', 'g'))) FROM deduped").fetchone()[0]
    manifest = con.execute("SELECT size, assistant_turns, complete FROM sft_real_subsets ORDER BY size").fetchall()
    assert all(c and t >= s for s, t, c in manifest)
    assert con.execute("SELECT count(*) FROM sft_real_200 WHERE id NOT IN (SELECT id FROM sft_real_400)").fetchone()[0] == 0
