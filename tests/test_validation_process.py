"""A build validates its tables in a child process: the build process never loads great-expectations or pandas,
and results (passed and failed) are those of the suite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RECIPE = """\
name: validated
vars: {min_turns: 2}
stages:
  - id: raw
    op: sql
    params:
      query: "SELECT id, messages::STRUCT(role VARCHAR, content VARCHAR)[] AS messages FROM read_json('conv.jsonl')"
  - id: kept
    op: filter
    inputs: [raw]
    schema: conversations
    params:
      where: {too_short: "len(messages) >= ${min_turns}"}
"""

ROWS = [
    {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"id": "b", "messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hey"}]},
    {"id": "c", "messages": [{"role": "user", "content": "unanswered"}]},
]

SCRIPT = """\
import json, sys
import xwin_data
from xwin_data.core.errors import BuildError
xwin_data.build("r.yaml", "cat", show_progress=False)
try:
    xwin_data.build("r.yaml", "cat", ["min_turns=1"], show_progress=False)
    failed = None
except BuildError as err:
    failed = str(err)
con = xwin_data.connect("cat")
print(json.dumps({"loaded": sorted(m for m in ("great_expectations", "pandas") if m in sys.modules),
                  "failed": failed,
                  "validations": con.execute("SELECT table_name, success, results FROM validations "
                                             "ORDER BY success DESC").fetchall()}, default=str))
"""


def test_build_validates_in_a_child_process(tmp_path: Path) -> None:
    (tmp_path / "conv.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []  # neither library was imported by the build process
    (table, ok, checks), (bad_table, bad_ok, bad_checks) = result["validations"]
    assert (table, ok, bad_table, bad_ok) == ("kept", True, "kept", False)
    assert "expect_column_values_to_be_in_set" in checks  # the suite ran (in the child)
    # the failed suite blocked the second build and names the broken invariant with the offending row
    assert "validation failed" in result["failed"] and "last_turn_assistant" in result["failed"]
    assert "unanswered" in result["failed"]


DEFERRED = """\
import json, sys
from xwin_data.core import validate
validate._ge_context()
before = "scipy.stats._stats_py" in sys.modules
import scipy.stats
half = float(scipy.stats.norm.cdf(0.0))
print(json.dumps({"before": before, "after": "scipy.stats._stats_py" in sys.modules, "half": half}))
"""


def test_the_validation_library_loads_without_the_modules_no_contract_uses() -> None:
    out = subprocess.run([sys.executable, "-c", DEFERRED], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "GX_ANALYTICS_ENABLED": "False"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # scipy.stats was not run while great-expectations loaded, and runs whole on first use
    assert result == {"before": False, "after": True, "half": 0.5}


def test_only_contracts_of_per_row_checks_carry_over_to_a_subset_of_rows() -> None:
    from xwin_data.core.validate import holds_for_subsets, load_schema

    assert holds_for_subsets(load_schema("conversations"))  # per-row invariants and a unique key
    # windows over a prompt's rows (group sizes, ranks, a mean) can break when rows are left out
    assert not holds_for_subsets(load_schema("xwin_set"))
    assert not holds_for_subsets(load_schema("wind_groups"))
