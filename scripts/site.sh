#!/usr/bin/env bash
# Sets up the lab, checks the run store, and builds the site with the real `quarto render` into _site/.
# Pages execute once, read-only from the committed run store: a page whose run is missing fails with the
# `lab run ...` command that produces it; nothing trains during a build.
#   bash scripts/site.sh                   # Quarto on PATH, or installed offline from shared/tools/quarto
#   bash scripts/site.sh --install-quarto  # elsewhere: `pip install quarto-cli` (downloads the official release)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> the run store (every entry verified against its manifest)"
.venv/bin/lab status --verify | tail -n 3
bash scripts/render.sh "$@"
echo "==> the site is in _site/ (open _site/index.html, or run: quarto preview)"
