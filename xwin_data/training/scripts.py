"""Find and run the thin training scripts of `train/` in this process (the CLI and the scaling study both do).

The scripts are the same files `accelerate launch train/<stage>.py CONFIG` runs; they are looked up in
`./train/` or beside the installed package, so a checkout works from any folder.
"""
from __future__ import annotations

from pathlib import Path


def script_path(stage: str) -> Path:
    """train/<stage>.py in the current folder, else in the project checkout that holds this package."""
    candidates = [Path.cwd() / "train" / f"{stage}.py", Path(__file__).resolve().parents[2] / "train" / f"{stage}.py"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"training script for {stage!r} not found (looked in: "
                            f"{', '.join(str(c) for c in candidates)}); run from a checkout of the project")


def run_script(stage: str, argv: list[str]) -> dict:
    """Run train/<stage>.py's `main(argv)` in this process and return its run record."""
    import runpy

    namespace = runpy.run_path(str(script_path(stage)), run_name=f"xwin_train_{stage}")
    return namespace["main"](argv)
