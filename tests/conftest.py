"""Shared test setup: offline, single-threaded math libraries, real data from ../shared/data where present."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def project_dir() -> Path:
    return PROJECT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data beside the project; tests that need it skip with a reason where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (a fresh clone without ../shared)")
    return SHARED_DATA


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    return tmp_path / "catalog"


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess, as a user would."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "xwin_data.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"xwin-data {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def invoke_in(d: Path, *args: str):
    """The real command run in this process, in folder `d` (for tests making many calls, each well under a second);
    `.text` is the output without the console's line wraps (long paths wrap)."""
    from typer.testing import CliRunner

    from xwin_data.cli import app

    old = os.getcwd()
    os.chdir(d)
    try:
        res = CliRunner().invoke(app, list(args))
    finally:
        os.chdir(old)
    res.text = res.output.replace("\n", "")
    return res


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def _openai_server_session():
    from openai_server import OpenAIServer  # tests/openai_server.py

    with OpenAIServer() as server:
        yield server


@pytest.fixture
def openai_server(_openai_server_session):
    """A real OpenAI-compatible HTTP server on 127.0.0.1 (see tests/openai_server.py), reset for each test:
    script it with `openai_server.latency = 0.02`, `.reply = fn`, `.fail_next(3, "429", retry_after=0.1)`."""
    _openai_server_session.reset()
    yield _openai_server_session
    _openai_server_session.reset()
