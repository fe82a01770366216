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


def run_here(*args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    """`run_cli` without starting Python again: the console script's `main` in this process, in folder `cwd`, with
    `env` set for the call. For builds and trainings, where a new interpreter would import DuckDB, validation and
    TRL again (seconds a call). Output is caught at the file descriptors, as a subprocess's would be: what C
    libraries and forked workers write is in it too; warnings and log records reach stderr as in a new process."""
    import io
    import logging
    import tempfile
    import traceback
    import warnings

    from xwin_data.cli import main

    full_env = {"COLUMNS": "200", **(env or {})}
    saved_env = {k: os.environ.get(k) for k in full_env}
    old_cwd, old_streams = os.getcwd(), (sys.stdout, sys.stderr)
    root, root_handlers = logging.getLogger(), logging.getLogger().handlers[:]
    code: int | str | None = 0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        for stream in old_streams:
            stream.flush()
        saved_fds = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True)
        try:
            os.environ.update(full_env)
            root.handlers = []  # as in a new process: records of warning and up reach stderr (logging.lastResort)
            if cwd is not None:
                os.chdir(cwd)
            with warnings.catch_warnings():
                warnings.resetwarnings()  # the interpreter's own defaults, not pytest's: what a user would see
                warnings.showwarning = _print_warning  # printed, where pytest would record them
                for action, category in (("default", DeprecationWarning), ("ignore", DeprecationWarning),
                                         ("ignore", PendingDeprecationWarning), ("ignore", ImportWarning),
                                         ("ignore", ResourceWarning)):
                    warnings.filterwarnings(action, category=category, append=True,
                                            module="__main__" if action == "default" else "")
                try:
                    main(list(args))
                except SystemExit as exc:
                    code = exc.code
                except Exception:  # noqa: BLE001 - as an uncaught error ends a process: traceback, exit 1
                    traceback.print_exc()
                    code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            sys.stdout, sys.stderr = old_streams
            root.handlers = root_handlers
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            os.chdir(old_cwd)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if isinstance(code, str):  # sys.exit("message"): printed, exit status 1
            err.write((code + "\n").encode())
            code = 1
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess(["xwin-data", *args], int(code or 0), out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))
    if check and proc.returncode != 0:
        raise AssertionError(f"xwin-data {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    import warnings

    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


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
