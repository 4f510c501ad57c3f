#!/usr/bin/env bash
# Refreshes requirements.lock: resolves pyproject.toml's dependencies (with the test extras) from scratch in a
# throw-away virtualenv, torch pinned to 2.13.0 first, and writes the exact version of every package installed.
# setup.sh installs from the lock, so every machine runs the versions the pages were checked with.
#   bash scripts/lock.sh        # then review `git diff requirements.lock`, run the tests, commit
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
PIP=("$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" ".[test]" "torch==2.13.0"
{
  echo "# Exact versions of everything scripts/setup.sh installs (Python $("$tmp/venv/bin/python" -c 'import platform; print(platform.python_version())'), Linux x86_64)."
  echo "# Refresh with: bash scripts/lock.sh   (resolves pyproject.toml from scratch, torch pinned to 2.13.0)"
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v -i '^labpy\b' | LC_ALL=C sort -f
} > requirements.lock
echo "requirements.lock: $(grep -vc '^#' requirements.lock) packages"
