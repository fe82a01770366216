"""The training stages' scripts (sft, rm, rs, dpo, wind), each a `main(argv)` over TRL.

They live in the package so an installed toolkit can train; `train/<stage>.py` in the project are thin entries
to them for `accelerate launch`, and `xwin-data train <stage>` runs them in-process.
"""
from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path

STAGES = ("sft", "rm", "rs", "dpo", "wind")


def default_config(stage: str) -> Path:
    """The shipped config of a stage (`train/configs/<stage>.yaml` in the project links to the same files)."""
    return Path(str(resources.files("xwin_data.training") / "configs" / f"{stage}.yaml"))


def run_script(stage: str, argv: list[str]) -> dict:
    """Run a training stage's `main(argv)` in this process and return its run record: `./train/<stage>.py`
    when the current folder has one, else the package's script."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r} (one of {', '.join(STAGES)})")
    local = Path.cwd() / "train" / f"{stage}.py"
    if local.is_file():
        import runpy

        return runpy.run_path(str(local), run_name=f"xwin_train_{stage}")["main"](argv)
    return importlib.import_module(f"xwin_data.training.scripts.{stage}").main(argv)
