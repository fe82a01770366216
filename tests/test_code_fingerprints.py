"""Fingerprints cover the code a stage runs: its op module and the in-package modules that imports, transitively;
comments and docstrings are not code."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from xwin_data.core.catalog import Catalog
from xwin_data.core.fingerprint import code_fingerprint, module_closure

RECIPE = """\
name: fp
stages:
  - id: raw
    op: sql
    params:
      query: "SELECT id, messages::STRUCT(role VARCHAR, content VARCHAR)[] AS messages FROM read_json('conv.jsonl')"
  - id: cleaned
    op: clean_conversations
    inputs: [raw]
  - id: kept
    op: filter
    inputs: [raw]
    params:
      where:
        too_short: "len(messages) >= 2"
"""

ROWS = [{"id": f"c{i}", "messages": [{"role": "user", "content": f"question {i}  "},
                                      {"role": "assistant", "content": f"<p>answer {i}</p>\r\n"}]} for i in range(5)]


def test_closure_follows_imports_not_docs() -> None:
    clean = module_closure("xwin_data.ops.text.clean")
    assert "xwin_data.text.cleaning" in clean  # imported inside a function
    sql = module_closure("xwin_data.ops.readers.sql")
    assert "xwin_data.text.cleaning" not in sql
    judge = module_closure("xwin_data.ops.pairs.judge")
    assert {"xwin_data.llm.client", "xwin_data.llm.judge", "xwin_data.llm.judging"} <= set(judge)
    # Backends are found through the model registry, not imported by the op: a spec adds its backend's code.
    from xwin_data.llm.judging import JudgeSpec

    spec = JudgeSpec(backend="openai")
    assert spec.code_fingerprint() == code_fingerprint("xwin_data.llm.backends.openai_backend")
    assert JudgeSpec(backend="reward_model").code_fingerprint() != spec.code_fingerprint()
    # The package's own `build` helper imports the engine inside a function: an op that only lives under the
    # package does not run it.
    assert "xwin_data.core.engine" not in clean


@pytest.fixture
def pkg_copy(tmp_path: Path, project_dir: Path) -> Path:
    """A copy of the package that the test may edit; the CLI runs from it through PYTHONPATH."""
    root = tmp_path / "pkg"
    shutil.copytree(project_dir / "xwin_data", root / "xwin_data", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(project_dir / "schemas", root / "schemas")
    work = tmp_path / "work"
    work.mkdir()
    (work / "conv.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (work / "r.yaml").write_text(RECIPE)
    return root


def versions(cat: Catalog) -> dict[str, int]:
    return {t: cat.current(t).version for t in ("raw", "cleaned", "kept")}


def test_helper_edit_rebuilds_exactly_its_users(pkg_copy: Path, cli) -> None:
    work = pkg_copy.parent / "work"
    env = {"PYTHONPATH": str(pkg_copy)}
    helper = pkg_copy / "xwin_data" / "text" / "cleaning.py"
    cli("build", "r.yaml", cwd=work, env=env)
    cat = Catalog(work / "xwin-catalog")
    first = versions(cat)

    # Comments, docstrings and blank lines are not code: nothing rebuilds.
    src = helper.read_text()
    edited = src.replace('"""Clean one message value', '"""Clean one message value, reworded;', 1)
    edited = edited.replace("\ndef normalise_whitespace", "\n# a new comment\n\n\ndef normalise_whitespace", 1)
    assert edited != src
    helper.write_text(edited)
    out = cli("build", "r.yaml", cwd=work, env=env)
    assert "nothing to do" in out.stderr
    assert versions(cat) == first

    # A code change in the helper rebuilds the stage whose op imports it, and only that one.
    helper.write_text(edited.replace("return text.strip()", "return text.strip(' \\n\\t')", 1))
    cli("build", "r.yaml", cwd=work, env=env)
    assert versions(cat) == {**first, "cleaned": first["cleaned"] + 1}

    # An edit to the op module of the filter rebuilds the filter stage only.
    filt = pkg_copy / "xwin_data" / "ops" / "readers" / "sql.py"
    filt.write_text(filt.read_text() + "\n_UNUSED_MARKER = 1\n")
    cli("build", "r.yaml", cwd=work, env=env)
    assert versions(cat) == {"raw": first["raw"] + 1, "cleaned": first["cleaned"] + 2, "kept": first["kept"] + 1}


def test_module_summaries_are_kept_on_disk_by_content(tmp_path: Path, monkeypatch) -> None:
    from xwin_data.core import fingerprint

    monkeypatch.setenv("XWIN_DATA_HOME", str(tmp_path / "home"))
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom xwin_data.text import cleaning\nx = 1\n")

    def summary():
        st = module.stat()
        fingerprint._module_summary.cache_clear()  # as a new process would: only the disk remembers
        return fingerprint._module_summary(str(module), st.st_size, st.st_mtime_ns, "xwin_data.m")

    first = summary()
    assert "xwin_data.text.cleaning" in first[1]
    stored = list((tmp_path / "home" / "derived" / "code").rglob("*.json"))
    assert len(stored) == 1

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed again")

    with monkeypatch.context() as m:
        m.setattr(fingerprint.ast, "parse", no_parsing)
        assert summary() == first  # read back, not parsed
    module.write_text("import os\nfrom xwin_data.text import tokens\nx = 2\n")
    changed = summary()  # other bytes: parsed, and kept beside the first
    assert changed[0] != first[0] and "xwin_data.text.tokens" in changed[1]
    assert len(list((tmp_path / "home" / "derived" / "code").rglob("*.json"))) == 2
