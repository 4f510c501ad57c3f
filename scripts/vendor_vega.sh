#!/usr/bin/env bash
# Vendors the Vega libraries that Altair's charts need, so every chart on the site displays with no network.
# Run once (or after upgrading Altair); the files are committed under assets/vega/.
# Versions follow the installed Altair: alt.VEGA_VERSION, alt.VEGALITE_VERSION, alt.VEGAEMBED_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
read -r VEGA VL EMBED < <("$PY" -c 'import altair as a; print(a.VEGA_VERSION.lstrip("v"), a.VEGALITE_VERSION.lstrip("v"), a.VEGAEMBED_VERSION.lstrip("v"))')
tmp=$(mktemp -d)
(cd "$tmp" && npm pack --silent "vega@$VEGA" "vega-lite@$VL" "vega-embed@$EMBED" >/dev/null)
mkdir -p assets/vega
for pkg in vega vega-lite vega-embed; do
  d="$tmp/$pkg"; mkdir -p "$d"; tar xzf "$tmp/$pkg"-[0-9]*.tgz -C "$d"
  cp "$d/package/build/$pkg.min.js" assets/vega/
  cp "$d/package/LICENSE" "assets/vega/LICENSE-$pkg"
  ver=$(python3 -c "import json,sys; print(json.load(open('$d/package/package.json'))['version'])")
  echo "$pkg $ver" >> "$tmp/versions.txt"
done
sort "$tmp/versions.txt" > assets/vega/VERSIONS.txt
rm -rf "$tmp"
cat assets/vega/VERSIONS.txt
