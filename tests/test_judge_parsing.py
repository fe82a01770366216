"""Judge templates, verdict parsing (on real GPT-4 reviews), both-order aggregation, and judging through the
real openai client against the scripted server: unparseable replies, parse retries, a position-biased judge."""
from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
from openai_server import judge_answers, pairwise_judge, prefer_first, prefer_longer

from xwin_data.llm.cache import RequestCache
from xwin_data.llm.client import ChatClient, ClientSettings
from xwin_data.llm.judge import (PairToJudge, aggregate, judge_pairs, list_templates, load_template, parse_verdict,
                                 render)

PROMPT = [{"role": "user", "content": "Name a primary colour."}]


def test_shipped_templates_load_render_and_carry_attribution() -> None:
    names = list_templates()
    assert {"pairwise-abc", "pairwise-graded", "pairwise-scores", "pairwise-abc-conversation",
            "pairwise-abc-last-turn"} <= set(names)
    for name in names:
        t = load_template(name)
        assert t.version_id.startswith(f"{name}@v{t.version}-") and t.source
        msgs = render(t, PROMPT, "Red {answer_b}.", "Blue.")
        assert [m["role"] for m in msgs] == ["system", "user"]
        assert judge_answers(msgs[1]["content"]) in ({"A": "Red {answer_b}.", "B": "Blue."},
                                                     {"A": "### User:\nName a primary colour.\n\n### Assistant A:\n"
                                                           "Red {answer_b}.",
                                                      "B": "### User:\nName a primary colour.\n\n### Assistant B:\n"
                                                           "Blue."})


def test_multi_turn_forms() -> None:
    convo = [{"role": "user", "content": "Hi, I run."}, {"role": "assistant", "content": "Great!"},
             {"role": "user", "content": "How far next week?"}]
    single = render(load_template("pairwise-abc"), convo, "5 km", "10 km")[1]["content"]
    assert "[Conversation so far]" in single and "[User Question]\nHow far next week?" in single
    whole = render(load_template("pairwise-abc-conversation"), convo, "5 km", "10 km")
    last = render(load_template("pairwise-abc-last-turn"), convo, "5 km", "10 km")
    assert "### Assistant A:\nGreat!" in whole[1]["content"] and "### Assistant B:\n10 km" in whole[1]["content"]
    assert "whole conversation" in whole[0]["content"] and "last user question" in last[0]["content"]


@pytest.mark.parametrize("kind,text,label,pref", [
    ("abc", "A is more precise.\n\nFinal verdict: [[A]]", "A", 1.0),
    ("abc", 'The format is "[[A]]" or "[[B]]". After comparing: [[B]]', "B", -1.0),
    ("abc", "Equally good. [[C]]", "C", 0.0),
    ("abc", "I cannot decide between them.", None, None),
    ("abc", "[A] is better", None, None),
    ("graded", "My final verdict is: [[A>>B]]", "A>>B", 2.0),
    ("graded", "[[B>A]]", "B>A", -1.0),
    ("graded", "[[A=B]]", "A=B", 0.0),
    ("graded", "[[A<B]]", "A<B", -1.0),
    ("graded", "[[A>A]]", None, None),
    ("scores", "8 9\nAssistant 2 was more detailed.", "8 9", -1.0),
    ("scores", "9, 8.5\nfine", "9 8.5", 0.5),
    ("scores", "Scores:\nAssistant A: 7/10\nAssistant B: 3/10", "7 3", 4.0),
    ("scores", "12 3\nout of range", None, None),
])
def test_parse_verdict(kind, text, label, pref) -> None:
    v = parse_verdict(kind, text)
    assert (v.label, v.preference, v.status) == (label, pref, "ok" if label else "unparseable")


def test_scores_parser_on_real_gpt4_reviews(shared_data: Path) -> None:
    """FastChat's 2023 Vicuna evaluation: 1040 GPT-4 pairwise reviews with the scores FastChat extracted."""
    files = glob.glob(str(shared_data / "lm-sys_FastChat_vicuna-eval-2023/fastchat/eval/table/review/**/*.jsonl"),
                      recursive=True)
    reviews = [json.loads(line) for f in files for line in open(f, encoding="utf-8")]
    assert len(reviews) == 1040
    agree, disagree = 0, []
    for r in reviews:
        v = parse_verdict("scores", r["text"])
        assert v.status == "ok", r["text"][:300]
        got = tuple(float(x) for x in v.label.split())
        if got == tuple(float(s) for s in r["score"]):
            agree += 1
        else:
            disagree.append((r, got))
    # where we disagree with the recorded score, the review's own text states our reading, not the record
    for r, (a, b) in disagree:
        assert f"Assistant 1: {a:g}" in r["text"] and f"Assistant 2: {b:g}" in r["text"]
        sa, sb = r["score"]
        assert f"Assistant 2: {sb:g}\n" not in r["text"]
    assert agree >= 1030, agree
    # verdict direction (win / tie / loss) from the parsed scores matches the record on every agreeing review
    assert agree + len(disagree) == 1040


def test_aggregate_two_orders() -> None:
    assert aggregate(1.0, -1.0).__dict__ == {"winner": "first", "strength": 1.0, "consistent": True, "n_valid": 2}
    biased = aggregate(1.0, 1.0)  # "A" both times: x first then y first
    assert (biased.winner, biased.strength, biased.consistent) == ("tie", 0.0, False)
    half = aggregate(1.0, 0.0)
    assert (half.winner, half.strength, half.consistent) == ("first", 0.5, False)
    assert aggregate(-2.0, 2.0).winner == "second" and aggregate(-2.0, 2.0).strength == 2.0
    assert aggregate(0.0, 0.0).__dict__ == {"winner": "tie", "strength": 0.0, "consistent": True, "n_valid": 2}
    one = aggregate(None, -1.0)
    assert (one.winner, one.consistent, one.n_valid) == ("first", None, 1)
    assert aggregate(None, None).winner is None


def _pairs(n: int) -> list[PairToJudge]:
    return [PairToJudge(f"p{i}", PROMPT, f"Red, as in fire truck number {i}.", "Blue.") for i in range(n)]


def _client(server, tmp_path: Path) -> ChatClient:
    return ChatClient(ClientSettings(model="test-judge", base_url=server.base_url, backoff_initial_s=0.01,
                                     backoff_max_s=0.02, timeout_s=5), RequestCache(tmp_path / "judge.sqlite"))


def test_judge_both_orders_through_the_server(openai_server, tmp_path: Path) -> None:
    openai_server.reply = pairwise_judge(prefer_longer)
    run = judge_pairs(_pairs(4), load_template("pairwise-abc"), _client(openai_server, tmp_path))
    assert openai_server.served == 8 and len(run.calls) == 8
    assert {c.order for c in run.calls} == {"ab", "ba"}
    assert all(o.winner == "first" and o.consistent and o.strength == 1.0 for o in run.outcomes.values())


def test_position_biased_judge_is_detected_as_flips(openai_server, tmp_path: Path) -> None:
    openai_server.reply = pairwise_judge(prefer_first)
    run = judge_pairs(_pairs(4), load_template("pairwise-abc"), _client(openai_server, tmp_path))
    assert all(o.winner == "tie" and o.consistent is False for o in run.outcomes.values())
    assert {c.verdict for c in run.calls} == {"A"}


def test_unparseable_replies_are_retried_with_new_keys_then_kept_as_invalid(openai_server, tmp_path: Path) -> None:
    # the judge answers without a verdict at temperature 0 and properly when asked again (retries run warmer)
    good = pairwise_judge(prefer_longer)
    openai_server.reply = lambda req: good(req) if req.body.get("temperature", 0) > 0 else "Hmm, both are fine."
    template = load_template("pairwise-abc")
    run = judge_pairs(_pairs(2), template, _client(openai_server, tmp_path), parse_retries=2)
    assert [(c.attempt, c.parse_status) for c in run.calls].count((0, "unparseable")) == 4
    assert [(c.attempt, c.parse_status) for c in run.calls].count((1, "ok")) == 4
    assert len({c.request_key for c in run.calls}) == 8
    assert all(c.raw_text for c in run.calls)  # the unparseable replies are kept, not dropped
    assert all(o.winner == "first" for o in run.outcomes.values())

    openai_server.reset(reply=lambda req: "No verdict from me.")
    run = judge_pairs(_pairs(1), template, _client(openai_server, tmp_path / "b"), parse_retries=2)
    assert [c.attempt for c in run.calls] == [0, 0, 1, 1, 2, 2] and openai_server.served == 6
    assert all(c.parse_status == "unparseable" and c.raw_text == "No verdict from me." for c in run.calls)
    assert run.outcomes["p0"].winner is None

    # offline re-parse: the same run again is answered from the cache, with no request
    again = judge_pairs(_pairs(1), template, _client(openai_server, tmp_path / "b"), parse_retries=2)
    assert openai_server.served == 6 and all(c.cached for c in again.calls)
