"""The short version of scripts/chaos.py: a build SIGKILLed (with its workers) at random moments and resumed ends
with the same tables and drops as an uninterrupted build, no build left `running`, and no staging, tmp or work
folder of the killed builds left behind. `python scripts/chaos.py --recipes sft sets --trials 10` is the sweep."""
from __future__ import annotations

import json
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "scripts"))

import chaos  # noqa: E402


def test_killed_builds_resume_to_the_same_tables(tmp_path, capsys) -> None:
    code = chaos.main(["--recipes", "small", "--trials", "1", "--kills-per-trial", "2", "--seed", "3",
                       "--work", str(tmp_path), "--json"])
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])[0]
    assert code == 0 and not result["problems"], out
    assert result["kills"] >= 1 and result["survived"] == result["kills"], out
    reference = chaos.digests(tmp_path / "small" / "reference")
    assert {"raw", "clean", "stats", "exact", "near"} <= set(reference) and reference["raw"][0] > 2_000
