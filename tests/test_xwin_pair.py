"""recipes/xwin_pair.yaml end to end, with policy and judge both served by the scripted OpenAI-compatible server
on 127.0.0.1 through the real openai client: plan estimates, tables, stats, export, re-parse without calls,
position bias and unparseable judges, a SIGKILLed build resumed without repeating a finished call, and an
API key that never reaches disk."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_here
from openai_server import ChatRequest, body_key, pairwise_judge, prefer_first, prefer_longer, unparseable

import xwin_data
from xwin_data.core.catalog import Catalog
from xwin_data.core.connection import connect

PROJECT = Path(__file__).resolve().parents[1]
RECIPE = PROJECT / "recipes" / "xwin_pair.yaml"
PROMPTS = ["Name a primary colour.", "Write a haiku about rain.", "What is 2 + 2?", "Give a tip for sleep.",
           "Say hello in French.", "Why is the sea salty?"]
JUDGE = "gpt-4o"  # the server answers any name; this one is priced, so costs are real numbers


def policy_reply(req: ChatRequest) -> str:
    """Deterministic, varied candidates: length depends on the seed and the choice index."""
    seed = int(req.body.get("seed") or 0)
    return f"Reply {req.index} to '{req.prompt}'" + " with more detail" * ((seed + req.index) % 4)


def serve(judge_reply):
    def reply(req: ChatRequest) -> str:
        return policy_reply(req) if req.body.get("model") == "test-policy" else judge_reply(req)
    return reply


def judge_bodies(server) -> list[dict]:
    return [b for b in server.requests if b.get("model") == JUDGE]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    return tmp_path


def sets_for(server, workdir: Path, **extra) -> list[str]:
    url = server.base_url
    sets = [f"prompts={workdir / 'prompts.jsonl'}", "k=3",
            f"policies=[{{name: pol, backend: openai, model: test-policy, base_url: '{url}'}}]",
            "judge.kind=openai", f"judge.base_url={url}", f"judge.model={JUDGE}", "judge.backoff_initial_s=0.01",
            "judge.backoff_max_s=0.05", "judge.timeout_s=10"]
    return sets + [f"{k}={v}" for k, v in extra.items()]


def rows(catalog: Path, sql: str) -> list[tuple]:
    con = connect(catalog)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_plan_build_show_reparse_and_export(openai_server, workdir: Path) -> None:
    openai_server.reply = serve(pairwise_judge(prefer_longer))
    cat = workdir / "cat"
    sets = sets_for(openai_server, workdir)
    setargs = [a for s in sets for a in ("--set", s)]
    plan = json.loads(run_here("plan", str(RECIPE), "--catalog", str(cat), "--json", *setargs).stdout)
    est = {p["stage"]: p["estimate"] for p in plan}
    assert est["xwin_pair"]["pairs"] == 18 and est["xwin_pair"]["calls"] == 36 and est["xwin_pair"]["usd"] > 0
    assert openai_server.total == 0  # planning spends nothing

    xwin_data.build(RECIPE, cat, sets, show_progress=False)
    judged = judge_bodies(openai_server)
    assert len(judged) == 36 and openai_server.repeated == 0
    kept = rows(cat, "SELECT chosen, rejected, strength, consistent, judge, template_version, cost_usd, "
                     "prompt_tokens, completion_tokens FROM xwin_pair")
    ties = rows(cat, "SELECT count(*) FROM xwin_pair_judgments WHERE outcome = 'tie'")[0][0]
    assert len(kept) + ties == 18 and len(kept) >= 12
    for chosen, rejected, strength, consistent, judge, tv, cost, p_tok, c_tok in kept:
        assert len(chosen) > len(rejected) and strength == 1.0 and consistent
        assert judge == JUDGE and tv.startswith("pairwise-abc@v1-")
        assert cost == pytest.approx((p_tok * 2.5 + c_tok * 10.0) / 1e6)
    assert rows(cat, "SELECT count(*), count(DISTINCT request_key) FROM xwin_pair_calls") == [(36, 36)]
    stats = Catalog(cat).current("xwin_pair").stats
    assert stats["flip_rate"] == 0.0 and stats["invalid_rate"] == 0.0 and stats["chosen_longer_share"] == 1.0
    assert stats["tie_rate"] == round(ties / 18, 4) and stats["cost_usd"] > 0
    assert stats["not_kept_by_reason"] == ({"tie": ties} if ties else {})

    proc = run_here("show", "xwin_pair", "--catalog", str(cat))
    show = proc.stdout + proc.stderr
    assert "flip_rate" in show and "chosen_longer_share" in show and "cost_usd" in show

    # rebuilding the judge stage re-parses the stored replies: no request, same table
    before = rows(cat, "SELECT * FROM xwin_pair ORDER BY pair_id")
    xwin_data.build(RECIPE, cat, sets, force=["xwin_pair"], show_progress=False)
    assert len(judge_bodies(openai_server)) == 36
    assert rows(cat, "SELECT * FROM xwin_pair ORDER BY pair_id") == before
    assert Catalog(cat).current("xwin_pair").stats["cached_calls"] == 36

    out = workdir / "export"
    run_here("export", "xwin_pair", str(out), "--format", "trl", "--catalog", str(cat))
    records = [json.loads(line) for line in (out / "xwin_pair.jsonl").read_text().splitlines()]
    assert len(records) == len(kept)
    assert records[0]["prompt"][-1]["role"] == "user" and records[0]["chosen"][0]["role"] == "assistant"


def test_position_biased_and_unparseable_judges(openai_server, workdir: Path) -> None:
    biased = pairwise_judge(prefer_first)
    openai_server.reply = serve(lambda req: unparseable(req) if "haiku" in req.text else biased(req))
    cat = workdir / "cat"
    sets = sets_for(openai_server, workdir, **{"judge.parse_retries": 1})
    xwin_data.build(RECIPE, cat, sets + ["judge.transport=openai"], show_progress=False)
    stats = Catalog(cat).current("xwin_pair").stats
    assert stats["transport"] == "openai"  # the openai client on httpx, chosen in the recipe
    # how requests are sent is not what they ask: with the default transport every stage is already built
    again = xwin_data.build(RECIPE, cat, sets, show_progress=False)
    assert {st.status for st in again.stages} == {"skipped"}
    assert rows(cat, "SELECT count(*) FROM xwin_pair") == [(0,)]
    assert stats["not_kept_by_reason"] == {"tie": 15, "judge_unparseable": 3}
    assert stats["flip_rate"] == 1.0 and stats["first_position_win_rate"] == 1.0
    assert stats["invalid_pair_rate"] == round(3 / 18, 4) and stats["parse_retries"] == 6
    # unparseable replies are kept with their raw text in the calls table and named in the drops
    assert rows(cat, "SELECT count(*) FROM xwin_pair_calls WHERE parse_status = 'unparseable' "
                     "AND raw_text LIKE 'Both responses have merits%'") == [(12,)]
    assert rows(cat, "SELECT count(*) FROM drops WHERE table_name = 'xwin_pair' AND reason = 'judge_unparseable'"
                ) == [(3,)]


def _cached_judge_keys(cat: Path) -> int:
    con = sqlite3.connect(cat / "cache" / "judge.sqlite") if (cat / "cache" / "judge.sqlite").exists() else None
    if con is None:
        return 0
    try:
        return con.execute("SELECT count(*) FROM requests").fetchone()[0]
    finally:
        con.close()


def test_sigkill_mid_judging_resumes_without_repeating_a_finished_call(openai_server, workdir: Path) -> None:
    openai_server.reply = serve(pairwise_judge(prefer_longer))
    sets = sets_for(openai_server, workdir, **{"judge.concurrency": 2})
    cat = workdir / "killed"
    args = [sys.executable, "-m", "xwin_data.cli", "build", str(RECIPE), "--catalog", str(cat)]
    args += [a for s in sets for a in ("--set", s)]
    openai_server.latency = 0.03
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while len(judge_bodies(openai_server)) < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the build ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    asked_before = {body_key(b) for b in judge_bodies(openai_server)}
    finished = _cached_judge_keys(cat)
    assert 10 <= len(asked_before) < 36 and finished >= len(asked_before) - 2  # at most 2 were in flight

    openai_server.latency = 0.0
    n_before = len(openai_server.requests)
    xwin_data.build(RECIPE, cat, sets, show_progress=False)
    asked_after = [body_key(b) for b in openai_server.requests[n_before:] if b.get("model") == JUDGE]
    assert len(asked_after) == 36 - finished  # every finished call came from the cache
    assert len(set(asked_after)) == len(asked_after)
    assert len(set(asked_after) & asked_before) <= len(asked_before) - finished  # only the lost in-flight ones
    assert not any(b.get("model") == "test-policy" for b in openai_server.requests[n_before:])

    fresh = workdir / "uninterrupted"
    xwin_data.build(RECIPE, fresh, sets, show_progress=False)
    query = "SELECT * FROM xwin_pair ORDER BY pair_id"
    assert rows(cat, query) == rows(fresh, query) and len(rows(fresh, query)) >= 12


def test_api_key_never_reaches_disk_or_logs(openai_server, workdir: Path, cli) -> None:
    secret = "sk-xwin-test-5f1e9c2d7b3a4e6f8091a2b3c4d5e6f7"
    judge = pairwise_judge(prefer_longer)
    openai_server.reply = serve(judge)
    # three judge calls get OpenAI's "Incorrect API key provided: <key>" error: it must be redacted on the way
    seen = {"n": 0}

    def fault(body, _n):
        from openai_server import Fault

        if body.get("model") == JUDGE and seen["n"] < 3:
            seen["n"] += 1
            return Fault("401")
        return None

    openai_server.fault_fn = fault
    cat = workdir / "cat"
    sets = sets_for(openai_server, workdir, **{"judge.max_failed_calls": 3})
    proc = cli("build", str(RECIPE), "--catalog", str(cat), *[a for s in sets for a in ("--set", s)],
               env={"OPENAI_API_KEY": secret, "XWIN_DATA_LOG_LEVEL": "DEBUG"})
    assert seen["n"] == 3
    assert rows(cat, "SELECT count(*) FROM xwin_pair_calls WHERE error LIKE 'AuthError%Incorrect API key%'") == [(3,)]
    assert secret not in proc.stdout + proc.stderr
    files = [p for p in workdir.rglob("*") if p.is_file()]
    assert any(p.name == "judge.sqlite" for p in files) and any(p.suffix == ".parquet" for p in files)
    assert any(p.name == "catalog.duckdb" for p in files)
    for p in files:
        data = p.read_bytes()
        assert secret.encode() not in data, p
        assert secret[len("sk-"):].encode() not in data, p


def test_budget_cap_stops_the_judge_cleanly_and_a_larger_budget_resumes(openai_server, workdir: Path) -> None:
    openai_server.reply = serve(pairwise_judge(prefer_longer))
    openai_server.usage_fn = lambda req, texts: (1000, 1000)  # $0.0125 a call at gpt-4o's $2.50 / $10 per 1M
    cat = workdir / "cat"
    sets = sets_for(openai_server, workdir, **{"judge.concurrency": 2, "judge.budget_usd": 0.1})
    # the cap fits 8 calls; a call starts only if its expected cost (prompt tokens guessed from its length,
    # corrected by the usage seen so far) still fits, so a longer prompt near the cap may stop it at 7 (87.5%)
    with pytest.raises(Exception, match=r"judge budget of \$0.1 reached: [78] of 36 calls answered") as err:
        xwin_data.build(RECIPE, cat, sets, show_progress=False)
    answered = int(str(err.value).split("reached: ")[1].split(" of")[0])
    assert len(judge_bodies(openai_server)) == answered and Catalog(cat).current("xwin_pair") is None
    sets[-1] = "judge.budget_usd=10"
    xwin_data.build(RECIPE, cat, sets, show_progress=False)
    assert len(judge_bodies(openai_server)) == 36 and openai_server.repeated == 0
    assert Catalog(cat).current("xwin_pair").stats["spend_this_build"]["cached_calls"] == answered


def test_an_openai_judge_without_a_key_fails_in_one_line_before_any_work(cli, tmp_path) -> None:
    """No key for OpenAI's API: the build says what to set and generates nothing (no candidate is sampled)."""
    cat = tmp_path / "cat"
    proc = cli("build", str(RECIPE), "--catalog", str(cat), "--set", "judge.kind=openai", check=False,
               env={"OPENAI_API_KEY": ""})
    err = proc.stderr.strip() or proc.stdout.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "OPENAI_API_KEY" in err, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (cat / "tables").exists() or not any((cat / "tables").iterdir())
