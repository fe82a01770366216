"""The README's "Adding an op" example, taken from the README itself: a project's own op module, found through
XWIN_DATA_OPS, listed by `xwin-data ops`, built by a recipe, and checked for its wiring at plan time."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_blocks(title: str) -> dict[str, str]:
    """The first code block of each language in a README section."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else None]
    blocks: dict[str, str] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        blocks.setdefault(lang, body)
    return blocks


CONVERSATIONS = [
    {"id": "short", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    {"id": "mid", "conversations": [{"from": "human", "value": "what is two"}, {"from": "gpt", "value": "two"}]},
    {"id": "long", "conversations": [{"from": "human", "value": "name three colours please"},
                                     {"from": "gpt", "value": "red, green and blue"}]},
]


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict]:
    blocks = _section_blocks("Adding an op")
    (tmp_path / "my_ops.py").write_text(blocks["python"])
    (tmp_path / "words.yaml").write_text(blocks["yaml"])
    (tmp_path / "conversations.jsonl").write_text("\n".join(json.dumps(c) for c in CONVERSATIONS) + "\n")
    env = {"XWIN_DATA_OPS": "my_ops",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return tmp_path, env


def test_the_readme_op_is_listed_and_built(project, cli) -> None:
    folder, env = project
    out = cli("ops", cwd=folder, env=env)
    listed = " ".join((out.stdout + out.stderr).split())
    assert "word_count — Count the words of each conversation" in listed
    assert "columns: needs id, messages; writes the input's columns plus n_words" in listed
    assert "min_words: conversations with fewer words are dropped (default 1)" in listed

    cli("build", "words.yaml", "--quiet", cwd=folder, env=env)
    import xwin_data

    con = xwin_data.connect(folder / "xwin-catalog")
    assert con.sql("SELECT id, n_words FROM counted ORDER BY id").fetchall() == [("long", 8), ("mid", 4)]
    assert con.sql("SELECT id FROM wordy").fetchall() == [("long",)]
    assert con.sql("SELECT stage, source_id, reason FROM drops ORDER BY stage").fetchall() == [
        ("counted", "short", "too_few_words"), ("wordy", "mid", "under_five_words")]
    assert con.sql("SELECT detail FROM drops WHERE stage = 'counted'").fetchall() == [("2",)]


def test_the_readme_op_wired_to_the_wrong_input_fails_at_plan_time(project, cli) -> None:
    folder, env = project
    text = (folder / "words.yaml").read_text()
    # the nested subsets' main table is their manifest: it has no messages
    wrong = text.replace("  - id: counted\n", "  - id: subsets\n    op: nested_subsets\n    inputs: [raw]\n"
                                               "    params: {sizes: [2]}\n  - id: counted\n")
    wrong = wrong.replace("inputs: [raw]\n    params: {min_words: 3}", "inputs: [subsets]\n    params: {min_words: 3}")
    (folder / "wrong.yaml").write_text(wrong)
    out = cli("build", "wrong.yaml", "--quiet", cwd=folder, env=env, check=False)
    assert out.returncode == 2
    line = wrong.splitlines().index("    inputs: [subsets]") + 1
    assert (f"wrong.yaml:{line}: counted.inputs: op word_count needs column(s) id, messages in input 'subsets', "
            "which has: assistant_turns, complete, conversations, rows, size, table_name") in " ".join(out.stderr.split())
    tables = folder / "xwin-catalog" / "tables"
    assert not tables.exists() or not any(tables.iterdir())
