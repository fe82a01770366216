"""A conversation's pieces stay together: split long conversations, nested subsets take all pieces of a
conversation or none, and held-out evaluation prompts exclude every conversation with a piece in a subset."""
from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest

import xwin_data
from xwin_data.core.catalog import Catalog
from xwin_data.studies.scaling_eval import holdout_items

SIZES = [150, 400, 900, 1500]
RECIPE = f"""\
name: pieces
stages:
  - id: raw
    op: read_conversations
    params: {{path: "${{recipe_dir}}/long.jsonl"}}
  - id: stats
    op: conversation_stats
    inputs: [raw]
    params: {{language: false}}
  - id: pieces
    op: split_long_conversations
    inputs: [stats]
    params: {{max_tokens: 250}}
  - id: sft_subsets
    op: nested_subsets
    inputs: [pieces]
    params: {{sizes: {SIZES}, seed: 3}}
"""


def long_conversations(n: int = 400, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    out = []
    for i in range(n):
        turns = []
        for k in range(rng.randint(1, 14)):
            turns.append({"from": "human", "value": f"question {i}.{k} " + " ".join(rng.choices(words, k=rng.randint(3, 30)))})
            turns.append({"from": "gpt", "value": f"answer {i}.{k} " + " ".join(rng.choices(words, k=rng.randint(5, 90)))})
        out.append({"id": f"conv{i}", "conversations": turns})
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("pieces")
    (d / "long.jsonl").write_text("".join(json.dumps(c) + "\n" for c in long_conversations()))
    (d / "r.yaml").write_text(RECIPE)
    xwin_data.build(d / "r.yaml", d / "catalog", show_progress=False)
    return Catalog(d / "catalog"), xwin_data.connect(d / "catalog")


def pieces_by_conversation(con, table: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for conv_id, piece_id in con.execute(f"SELECT conversation_id, id FROM {table}").fetchall():
        out[conv_id].add(piece_id)
    return out


def test_subsets_take_every_piece_or_none(built) -> None:
    _, con = built
    everything = pieces_by_conversation(con, "pieces")
    split = [c for c, p in everything.items() if len(p) > 1]
    assert len(split) > 100  # the file really has many conversations cut into several pieces
    previous: dict[str, set[str]] = {}
    for size in SIZES:
        subset = pieces_by_conversation(con, f"sft_{size}")
        assert subset, size
        for conv_id, pieces in subset.items():
            assert pieces == everything[conv_id], (size, conv_id)
        assert set(previous) <= set(subset)  # nested
        previous = subset
    manifest = con.execute("SELECT size, conversations, rows FROM sft_subsets ORDER BY size").fetchall()
    for size, convs, rows in manifest:
        subset = pieces_by_conversation(con, f"sft_{size}")
        assert (convs, rows) == (len(subset), sum(len(p) for p in subset.values()))


@pytest.mark.parametrize("source", ["pieces", "stats"])
def test_held_out_prompts_never_share_a_conversation_with_training(built, source: str) -> None:
    catalog, con = built
    training = [f"sft_{SIZES[1]}", f"sft_{SIZES[2]}"]
    in_training = set().union(*(pieces_by_conversation(con, t) for t in training))
    items = holdout_items(catalog, source, training, limit=100_000)
    held_out = {i["id"].split("#")[0] for i in items}
    assert held_out and not held_out & in_training
    assert len(held_out) == len(items)  # one prompt per conversation
    all_convs = {r[0] for r in con.execute("SELECT id FROM stats").fetchall()}
    assert held_out == all_convs - in_training
