"""One bad turn is not a lost conversation (`on_bad_turn`), and drops are filed under the table that lost them in
a stated unit, so `funnel` and `drops_by_reason` agree with the tables."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import xwin_data
from scored_sets import SET_FROM_JSONL_STAGE


def conv(cid: str, values: list[str]) -> dict:
    roles = ["human", "gpt"] * len(values)
    return {"id": cid, "conversations": [{"from": r, "value": v} for r, v in zip(roles, values)]}


CONVERSATIONS = [
    conv("ok", ["q1", "a1", "q2", "a2"]),
    conv("empty_reply_2", ["q1", "a1", "q2", "", "q3", "a3"]),        # turn 3 empty: keep q1/a1
    conv("zero_width_reply_3", ["q1", "a1", "q2", "a2", "q3", "\u200b\u200b"]),  # keep two pairs
    conv("empty_question_2", ["q1", "a1", " \n", "a2"]),               # a user turn: keep q1/a1
    conv("empty_first_reply", ["q1", "\ufeff", "q2", "a2"]),           # nothing usable before it: dropped
    conv("entity_reply_2", ["q1", "a1", "q2", "&nbsp;"]),              # empty only once cleaned
]

RECIPE = """\
name: bad_turns
stages:
  - id: truncated
    op: read_conversations
    params: {path: "${recipe_dir}/conv.jsonl"}
  - id: dropped
    op: read_conversations
    params: {path: "${recipe_dir}/conv.jsonl", on_bad_turn: drop_conversation}
  - id: truncated_clean
    op: clean_conversations
    inputs: [truncated]
  - id: dropped_clean
    op: clean_conversations
    inputs: [truncated]
    params: {on_bad_turn: drop_conversation}
"""


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_turns")
    (d / "conv.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    (d / "r.yaml").write_text(RECIPE)
    xwin_data.build(d / "r.yaml", d / "catalog", show_progress=False)
    return xwin_data.connect(d / "catalog")


def kept(con, table: str) -> dict[str, list[str]]:
    rows = con.execute(f"SELECT id, list_transform(messages, lambda m: m.content) FROM {table}").fetchall()
    return dict(rows)


def test_truncate_keeps_turns_before_the_bad_one(con) -> None:
    got = kept(con, "truncated")
    assert got == {"ok": ["q1", "a1", "q2", "a2"], "empty_reply_2": ["q1", "a1"],
                   "zero_width_reply_3": ["q1", "a1", "q2", "a2"], "empty_question_2": ["q1", "a1"],
                   "entity_reply_2": ["q1", "a1", "q2", "&nbsp;"]}
    drops = con.execute("SELECT source_id, reason, unit, detail FROM drops WHERE stage = 'truncated' "
                        "ORDER BY source_id").fetchall()
    assert [d[:3] for d in drops] == [("empty_first_reply", "empty_content", "conversations"),
                                      ("empty_question_2", "truncated_empty_content", "cuts"),
                                      ("empty_reply_2", "truncated_empty_content", "cuts"),
                                      ("zero_width_reply_3", "truncated_empty_content", "cuts")]
    assert drops[2][3] == "turn 3 (assistant) is empty; kept turns 0-1 of 6"
    # After cleaning, "&nbsp;" is empty: the conversation keeps its first pair.
    assert kept(con, "truncated_clean")["entity_reply_2"] == ["q1", "a1"]
    assert "entity_reply_2" not in kept(con, "dropped_clean")


def test_drop_conversation_policy(con) -> None:
    assert sorted(kept(con, "dropped")) == ["entity_reply_2", "ok"]
    reasons = con.execute("SELECT source_id, reason, unit FROM drops WHERE stage = 'dropped' ORDER BY 1").fetchall()
    assert reasons == [(c, "empty_content", "conversations") for c in
                       ("empty_first_reply", "empty_question_2", "empty_reply_2", "zero_width_reply_3")]


def test_funnel_counts_conversations_and_lists_cuts_apart(con) -> None:
    funnel = {r[0]: r[1:] for r in con.execute(
        "SELECT table_name, unit, rows_in, rows_out, dropped, other_drops FROM funnel").fetchall()}
    assert funnel["truncated"][:4] == ("conversations", 6, 5, 1)
    assert json.loads(funnel["truncated"][4]) == {"cuts": 3}
    assert funnel["dropped"][:5] == ("conversations", 6, 2, 4, None)
    assert funnel["truncated_clean"][:4] == ("conversations", 5, 5, 0)
    assert funnel["dropped_clean"][:4] == ("conversations", 5, 4, 1)
    for table, (unit, rows_in, rows_out, dropped, _) in funnel.items():
        assert rows_in == rows_out + dropped, table


# ------------------------------------------------------------------------------------------------ several outputs
SET_RECIPE = "name: set_drops\nstages:\n" + SET_FROM_JSONL_STAGE + """\
  - id: dpo
    op: dpo_pairs
    inputs: [xwin_set]
    params: {strategies: [worst, rank_k], k: 3}
  - id: rs
    op: rs_best_of_n
    inputs: [xwin_set]
    params: {ns: [1, 4]}
"""
SCORES = {"p_plain": [0.1, 0.9, 0.5, 0.3], "p_flat": [1.0, 1.0, 1.0], "p_two": [0.2, 0.7],
          "p_first_unscored": [None, 0.4, 0.6]}


@pytest.fixture(scope="module")
def set_con(tmp_path_factory):
    d = tmp_path_factory.mktemp("set_drops")
    rows = [{"prompt_id": p, "prompt": [{"role": "user", "content": p}], "response_id": f"{p}-{j}",
             "sample_index": j, "response": f"r{j}", "score": s}
            for p, scores in SCORES.items() for j, s in enumerate(scores)]
    (d / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "r.yaml").write_text(SET_RECIPE)
    xwin_data.build(d / "r.yaml", d / "catalog", show_progress=False)
    return xwin_data.connect(d / "catalog")


def test_each_output_files_its_own_drops(set_con) -> None:
    con = set_con
    by_table = con.execute("SELECT table_name, reason, unit, list_sort(list(source_id)) FROM drops "
                           "WHERE stage = 'dpo' GROUP BY ALL ORDER BY ALL").fetchall()
    assert by_table == [
        ("dpo_rank_k", "missing_score", "responses", ["p_first_unscored-0"]),
        ("dpo_rank_k", "no_pair_rank_k", "prompts", ["p_first_unscored", "p_flat", "p_two"]),
        ("dpo_worst", "missing_score", "responses", ["p_first_unscored-0"]),
        ("dpo_worst", "no_pair_worst", "prompts", ["p_flat"]),
    ]
    # drops_by_reason and the funnel agree with the drops each table holds.
    agg = {(r[0], r[1]): r[2] for r in con.execute("SELECT table_name, reason, dropped FROM drops_by_reason "
                                                    "WHERE stage = 'dpo'").fetchall()}
    assert agg == {(t, reason): len(ids) for t, reason, _, ids in by_table}
    funnel = {r[0]: r[1:] for r in con.execute(
        "SELECT table_name, unit, rows_in, rows_out, dropped, other_drops FROM funnel").fetchall()}
    assert funnel["dpo_worst"][:4] == ("pairs", None, 3, 0)
    assert json.loads(funnel["dpo_worst"][4]) == {"prompts": 1, "responses": 1}
    assert json.loads(funnel["dpo_rank_k"][4]) == {"prompts": 3, "responses": 1}
    # Best-of-n tables count prompts: every prompt is picked or dropped with its reason.
    assert funnel["rs_1"][:4] == ("prompts", 4, 3, 1)
    assert funnel["rs_4"][:4] == ("prompts", 4, 4, 0)
    assert con.execute("SELECT source_id, reason FROM drops WHERE table_name = 'rs_1' AND unit = 'prompts'"
                       ).fetchall() == [("p_first_unscored", "no_scored_response_in_first_n")]
