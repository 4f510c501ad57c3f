#!/usr/bin/env bash
# Creates .venv (if missing) and installs the lab: torch pinned first (2.13.0), then labpy with its tests.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
echo "==> installing torch==2.13.0 (pinned first: any other version pulls gigabytes of CUDA packages here)"
"${PIP[@]}" "torch==2.13.0" 2> >(grep -v "is ignored: it is neither" >&2)
echo "==> installing labpy and its dependencies"
"${PIP[@]}" -e ".[test]" "torch==2.13.0" 2> >(grep -v "is ignored: it is neither" >&2)
.venv/bin/python -c "import labpy, torch, transformer_lens; print(f'labpy {labpy.__version__}, torch {torch.__version__}')"
