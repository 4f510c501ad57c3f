#!/usr/bin/env bash
# Sets up the lab and builds the site with `quarto render`.
# Without Quarto it does everything else first — installs, checks the run store, executes every page the way
# Quarto would and writes an HTML preview to _preview/ — then stops with a message saying how to get Quarto.
#   bash scripts/site.sh                  # build
#   bash scripts/site.sh --install-quarto # also `pip install quarto-cli` into .venv (needs GitHub access)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" QUARTO_PYTHON="$PWD/.venv/bin/python"

echo "==> the run store"
lab status
echo "==> executing every page from the store, as Quarto's Jupyter engine would (preview in _preview/)"
LAB_STORE_READONLY=1 lab pages --preview

if [ "${1:-}" = "--install-quarto" ] && ! command -v quarto >/dev/null; then
  echo "==> installing Quarto from PyPI (quarto-cli downloads it from GitHub)"
  .venv/bin/python -m pip install --quiet quarto-cli || echo "quarto-cli could not be installed (no access to GitHub?)"
fi
if ! command -v quarto >/dev/null; then
  cat >&2 <<'MSG'

Quarto is not installed, so the site was not rendered. Everything else is done: the pages executed cleanly
from the run store, and an HTML preview is in _preview/ (open _preview/index.html).
To build the site, install Quarto (https://quarto.org/docs/get-started/, or `bash scripts/site.sh
--install-quarto` on a machine that can reach GitHub), then run this command again.
MSG
  exit 3
fi
echo "==> quarto render"
quarto render
echo "==> the site is in _site/ (open _site/index.html, or run: quarto preview)"
