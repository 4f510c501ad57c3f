#!/usr/bin/env bash
# Sets up the lab and runs every test: renders the whole site with the real `quarto render` (pages read-only
# from the committed run store; any render error or page warning fails), then the unit tests, smoke runs of
# every experiment, and the browser check of the rendered `_site/` in headless Chromium.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> rendering the site"
bash scripts/render.sh
echo "==> running the tests"
LAB_REQUIRE_SITE=1 exec .venv/bin/python -m pytest -q -ra "$@"
