#!/usr/bin/env bash
# Sets up the lab and runs every test: unit tests, smoke runs of every experiment, and every page executed
# as Quarto's Jupyter engine would, from the committed run store (read-only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> running the tests"
exec .venv/bin/python -m pytest -q -ra "$@"
