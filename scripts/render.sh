#!/usr/bin/env bash
# Renders the whole site with the real `quarto render`, read-only from the run store, and fails on any render
# error or any WARNING Quarto prints for a page. Installs Quarto first when it is missing:
#   - on our machines (no GitHub), from the installer in shared/tools/quarto (QUARTO_INSTALLER overrides);
#   - elsewhere, from PyPI's quarto-cli (which downloads the official release), with --install-quarto.
# Writes _site/ and the render log with per-page timings to _site_build/render.log.
#   bash scripts/render.sh [--install-quarto] [quarto render args...]
set -euo pipefail
cd "$(dirname "$0")/.."
INSTALL_FROM_PYPI=0
if [ "${1:-}" = "--install-quarto" ]; then INSTALL_FROM_PYPI=1; shift; fi
QUARTO_PREFIX=${QUARTO_PREFIX:-$PWD/.quarto-cli}
export PATH="$QUARTO_PREFIX/bin:$PWD/.venv/bin:$PATH" QUARTO_PYTHON="$PWD/.venv/bin/python"
if ! command -v quarto >/dev/null; then
  INSTALLER=${QUARTO_INSTALLER:-../shared/tools/quarto/install.sh}
  if [ -f "$INSTALLER" ]; then
    echo "==> installing Quarto with $INSTALLER into $QUARTO_PREFIX"
    command -v npm >/dev/null || { apt-get install -y -q npm >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q npm >/dev/null; }; }
    bash "$INSTALLER" "$QUARTO_PREFIX" | tail -n 1
  elif [ "$INSTALL_FROM_PYPI" = 1 ]; then
    echo "==> installing Quarto from PyPI (quarto-cli downloads the official release)"
    .venv/bin/python -m pip install --quiet quarto-cli
  else
    cat >&2 <<'MSG'
Quarto is not installed, so the site cannot be rendered. Install it (https://quarto.org/docs/get-started/),
or run `bash scripts/site.sh --install-quarto` on a machine that can reach GitHub, or set QUARTO_INSTALLER to
the offline installer (shared/tools/quarto/install.sh), then run this command again.
MSG
    exit 3
  fi
fi
# Every build executes every page: freeze (a cache keyed by each page's source alone) cannot see a changed run
# store or labpy, so a frozen page could show stale numbers. `quarto preview` still uses it while editing.
rm -rf _freeze
mkdir -p _site_build
LOG=_site_build/render.log
echo "==> quarto render ($(quarto --version)), pages read-only from the run store"
set +e
LAB_STORE_READONLY=1 .venv/bin/python -m labpy.render_log quarto render "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
if [ "$status" != 0 ]; then
  echo "render failed (exit $status); the log is in $LOG" >&2
  exit "$status"
fi
