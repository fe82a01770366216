"""Small decisions a newcomer meets: the bf16 default shared by every training stage (WIND included), sizes of
the scaling study past the data, progress lines where stderr is not a terminal, and a build waiting on the lock."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def test_every_stage_takes_the_same_bf16_default(monkeypatch) -> None:
    import xwin_data.training.config as config
    from xwin_data.training.config import XwinDPOConfig, XwinRewardConfig, XwinSFTConfig
    from xwin_data.training.wind import WindConfig

    for cls in (XwinSFTConfig, XwinRewardConfig, XwinDPOConfig, WindConfig):  # "decide by the device"
        assert cls.__dataclass_fields__["bf16"].default is None, cls
    assert WindConfig(output_dir="unused").bf16 is config.bf16_default() is False  # this CPU machine

    monkeypatch.setattr(config, "gpu_supports_bf16", lambda: True)  # a bf16-capable GPU, as torch reports it
    for cfg in (SimpleNamespace(bf16=None, use_cpu=False), SimpleNamespace(bf16=None, use_cpu=True),
                SimpleNamespace(bf16=False, use_cpu=False)):
        config._cpu_friendly_defaults(cfg)
    assert config.bf16_default() is True and config.bf16_default(use_cpu=True) is False
    with pytest.raises(ValueError, match="bf16"):  # WIND now asks for bf16 there; this CPU build refuses it
        WindConfig(output_dir="unused")
    assert WindConfig(output_dir="unused", use_cpu=True).bf16 is False
    assert WindConfig(output_dir="unused", bf16=False).bf16 is False  # an explicit setting wins


def test_scaling_keeps_one_of_the_sizes_past_the_data() -> None:
    from xwin_data.studies.scaling import _distinct_sizes

    rows = [{"size": s, "table": f"t{s}", "conversations": c, "complete": k}
            for s, c, k in ((2000, 700, True), (4000, 1400, True), (8000, 2184, False), (16000, 2184, False),
                            (64000, 2184, False))]
    said = []
    kept = _distinct_sizes(rows, "sft_sharegpt_subsets", said.append)
    assert [r["size"] for r in kept] == [2000, 4000, 8000]
    assert said == ["sizes [16000, 64000] are larger than the data (sft_sharegpt_subsets: t8000 already holds all "
                    "2,184 conversations); kept sizes [2000, 4000, 8000]"]
    assert _distinct_sizes(rows[:2], "m", said.append) == rows[:2] and len(said) == 1


def test_line_progress_reports_rate_and_eta_while_a_task_sits_still(monkeypatch) -> None:
    from rich.console import Console

    import xwin_data.core.progress as progress

    buf = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=buf, width=80))
    with progress.LineProgress(every=0.1) as bar:
        task = bar.add_task("xwin_responses: sampling", total=64, unit="samples")
        bar.advance(task, 16)
        deadline = time.monotonic() + 10
        while buf.getvalue().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # no advance: the timer alone must print
        bar.advance(task, 48)
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 3
    assert "xwin_responses: sampling: 16/64 samples" in lines[0] and "samples/s" in lines[0] and "ETA" in lines[0]
    assert "64/64 samples" in lines[-1] and lines[-1].endswith("done")
    assert all(line.startswith("[") and ": sampling: " in line for line in lines)  # one line per report, unwrapped


def test_a_build_waiting_on_the_lock_says_whose_and_how_long(tmp_path: Path, cli) -> None:
    from xwin_data.core.catalog import Catalog

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: tiny\nstages:\n  - id: t\n    op: sql\n    params:\n      query: SELECT 1 AS x\n")
    cat = Catalog(tmp_path / "cat")
    cat.init()
    with cat.build_lock(info={"build_id": "20990101-000000-abcdef", "recipe": "other.yaml"}):
        proc = cli("build", str(recipe), "-c", str(cat.root), "--wait", "0.5", "--quiet", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("waiting up to 0.5 s: catalog") and "by build 20990101-000000-abcdef" in lines[0]
    assert lines[-1].startswith("error: ") and "still locked by build 20990101-000000-abcdef" in lines[-1]
    assert "after waiting 0.5 s" in lines[-1]
    assert json.loads((cat.root / ".build.lock.json").read_text() if (cat.root / ".build.lock.json").exists()
                      else "null") is None  # released with its holder's note
