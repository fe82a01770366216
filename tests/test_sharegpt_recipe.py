"""The ShareGPT SFT recipe end to end through the CLI, on the project's default sample: the funnel, every
malformed-record kind in drops, nested subsets, a no-op rebuild, a build killed mid-way, HF export."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_here

import xwin_data

PROJECT = Path(__file__).resolve().parents[1]
RECIPE = PROJECT / "recipes" / "sharegpt_sft.yaml"
SMALL = ["--set", "subset_sizes=[500,1000,2000,4000,100000]"]
MALFORMED = {"broken_json", "invalid_utf8", "missing_field", "unknown_role", "non_alternating_roles", "empty_content",
             "non_string_content", "first_turn_not_user", "misplaced_system", "no_assistant_turn",
             "empty_conversation", "not_an_object"}
TABLES = ["sharegpt_raw", "sharegpt_clean", "sharegpt_filtered", "sharegpt_dedup",
          "sharegpt_neardedup", "sft_sharegpt", "sft_sharegpt_500", "sft_sharegpt_1k", "sft_sharegpt_2k",
          "sft_sharegpt_4k", "sft_sharegpt_100k"]


def table_digest(catalog: Path) -> dict[str, tuple]:
    con = xwin_data.connect(catalog)
    try:
        return {t: con.execute(f"SELECT count(*), sum(hash(id, messages::VARCHAR)) FROM {t}").fetchone() for t in TABLES}
    finally:
        con.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One uninterrupted build of the default recipe (small subset sizes added so several are real)."""
    work = tmp_path_factory.mktemp("sft")
    run_here("build", str(RECIPE), *SMALL, "--quiet", cwd=work)
    return work


def test_funnel_and_drops(built: Path) -> None:
    con = xwin_data.connect(built / "xwin-catalog")
    by_stage = {}
    for stage, reason, n in con.execute("SELECT stage, reason, count(*) FROM drops GROUP BY ALL").fetchall():
        by_stage.setdefault(stage, {})[reason] = n
    assert by_stage["sharegpt_raw"] == {r: 1 for r in MALFORMED}  # one planted line of each kind
    bad = dict(con.execute("SELECT reason, source_id FROM drops WHERE stage = 'sharegpt_raw'").fetchall())
    assert bad["unknown_role"] == "bad_role" and bad["non_alternating_roles"] == "bad_alternation"
    assert bad["broken_json"].startswith("sharegpt_sample:")  # no id to read: the line number stands in
    rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES[:6]}
    # Every stage's rows out = rows in - drops (split adds pieces instead).
    chain = TABLES[:5]
    for prev, cur in zip(chain, chain[1:]):
        assert rows[prev] - sum(by_stage.get(cur, {}).values()) == rows[cur], cur
    assert by_stage["sharegpt_filtered"]["refusal_boilerplate"] == 15
    assert by_stage["sharegpt_filtered"]["language_not_allowed"] >= 40
    assert con.execute("SELECT count(*) FROM sharegpt_filtered WHERE regexp_matches(id, '^(fr|es|de|zh)[0-9]')").fetchone()[0] == 0
    assert by_stage["sharegpt_dedup"]["exact_duplicate"] >= 20
    assert by_stage["sharegpt_neardedup"]["near_duplicate"] >= 40
    # Exact dedup left no two conversations with the same normalised text; the kept one came first in the input.
    assert con.execute("SELECT count(*) - count(DISTINCT lower(regexp_replace(messages::VARCHAR, '\\s+', ' ', 'g'))) "
                       "FROM sharegpt_dedup").fetchone()[0] == 0
    position = {r[0]: i for i, r in enumerate(con.execute("SELECT id FROM sharegpt_filtered").fetchall())}
    exact = con.execute("SELECT source_id, replace(detail, 'duplicate of ', '') FROM drops "
                        "WHERE reason = 'exact_duplicate'").fetchall()
    assert exact and all(position[kept] < position[gone] for gone, kept in exact)
    # Cleaning: no HTML, mojibake or CRLF left; the long conversations were split at turn boundaries.
    dirty = con.execute("SELECT count(*) FROM sft_sharegpt, unnest(messages) u(m) WHERE m.content LIKE '%<div%' "
                        "OR m.content LIKE '%Ã©%' OR m.content LIKE '%â€%' OR m.content LIKE '%\r%'").fetchone()[0]
    assert dirty == 0
    pieces = con.execute("SELECT id, n_tokens, messages[1].role FROM sft_sharegpt WHERE id LIKE 'long000#%' ORDER BY id").fetchall()
    assert len(pieces) >= 2 and all(n <= 2048 and first == "system" for _, n, first in pieces)
    assert con.execute("SELECT max(n_tokens) FROM sft_sharegpt").fetchone()[0] <= 2048


def test_nested_subsets(built: Path) -> None:
    con = xwin_data.connect(built / "xwin-catalog")
    manifest = con.execute("SELECT size, table_name, assistant_turns, complete FROM sft_sharegpt_subsets ORDER BY size").fetchall()
    total = con.execute("SELECT sum(n_turns) FROM sft_sharegpt_train").fetchone()[0]  # the held-out set is cut first
    held = {i for (i,) in con.execute("SELECT id FROM sft_sharegpt_heldout").fetchall()}
    assert len({i.split("#")[0] for i in held}) == 64  # `heldout` source conversations, every piece of each
    assert con.execute("SELECT count(*) FROM sft_sharegpt").fetchone()[0] == len(held) + con.execute(
        "SELECT count(*) FROM sft_sharegpt_train").fetchone()[0]
    assert [m[1] for m in manifest] == ["sft_sharegpt_500", "sft_sharegpt_1k", "sft_sharegpt_2k", "sft_sharegpt_4k",
                                        "sft_sharegpt_100k"]
    for size, table, turns, complete in manifest:
        assert con.execute(f"SELECT sum(n_turns) FROM {table}").fetchone()[0] == turns
        assert complete == (size <= total)
        if complete:  # the shortest prefix that reaches the size: dropping its last conversation falls short
            assert turns >= size
            last = con.execute(f"SELECT n_turns FROM {table} ORDER BY md5_number('42:' || id) DESC, id DESC LIMIT 1").fetchone()[0]
            assert turns - last < size
        else:
            assert turns == total  # not padded: all the data, marked incomplete
    names = [m[1] for m in manifest]
    assert not held & {i for (i,) in con.execute(f"SELECT id FROM {names[-1]}").fetchall()}
    for small, large in zip(names, names[1:]):
        assert con.execute(f"SELECT count(*) FROM {small} WHERE id NOT IN (SELECT id FROM {large})").fetchone()[0] == 0
        assert con.execute(f"SELECT count(*) FROM {small}").fetchone()[0] < con.execute(f"SELECT count(*) FROM {large}").fetchone()[0]
    # a subset's rows are the validated training set's, unchanged: its row checks carry over, with a note
    for name in names:
        ok, checks = con.execute(f"SELECT success, results FROM validations WHERE table_name = '{name}'").fetchone()
        assert ok and "rows_of_validated_input" in checks and "sft_sharegpt_train" in checks, name


def test_noop_rebuild_and_export(built: Path, tmp_path: Path) -> None:
    out = run_here("build", str(RECIPE), *SMALL, "--quiet", cwd=built)
    assert "nothing to do" in out.stderr
    run_here("export", "sft_sharegpt_2k", str(tmp_path / "hf"), "--format", "hf", cwd=built)
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    con = xwin_data.connect(built / "xwin-catalog")
    assert len(ds) == con.execute("SELECT count(*) FROM sft_sharegpt_2k").fetchone()[0]
    assert ds[0]["messages"][0]["role"] in ("system", "user") and ds[0]["messages"][-1]["role"] == "assistant"
    assert set(ds.column_names) >= {"id", "messages", "n_turns", "language", "turn_tokens"}


def test_killed_build_then_clean_rebuild(built: Path, tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "xwin_data.cli", "build", str(RECIPE), *SMALL, "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "xwin-catalog" / "tables" / "sharegpt_clean"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the build did not reach the second stage before the kill"
    assert not (tmp_path / "xwin-catalog" / "tables" / "sft_sharegpt").exists()
    run_here("build", str(RECIPE), *SMALL, "--quiet", cwd=tmp_path)
    assert table_digest(tmp_path / "xwin-catalog") == table_digest(built / "xwin-catalog")
