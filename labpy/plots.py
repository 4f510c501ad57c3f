"""Altair chart builders for every page, and a renderer whose charts display with no network.

Altair's default HTML pulls Vega from a CDN when the page is viewed, so offline readers see blank charts. The
`lab` renderer instead loads the Vega libraries vendored in `assets/vega/` (see scripts/vendor_vega.sh) by a
path relative to the page — valid in Quarto's `_site/` and in the `_preview/` export, which keep the project's
layout. The scripts are emitted once per page (one kernel per page) and loaded with AMD's `define` hidden,
because require.js on a page (nbconvert's template, Quarto widget pages) otherwise swallows the UMD globals.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Sequence

# Altair imports jsonschema, which imports the optional rfc3987-syntax (installed with Jupyter) if it can; that
# package compiles Earley parsers on import, ~2 s of every page's kernel, for the "iri" and "iri-reference"
# format checks, which no Vega-Lite schema uses. A None entry makes that import fail, and jsonschema then skips
# those two formats only.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

import altair as alt  # noqa: E402
import pandas as pd  # noqa: E402
import vl_convert as vlc  # noqa: E402

from .paths import project_root, relative_to_cwd  # noqa: E402

VEGA_FILES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
_counter = itertools.count()
_scripts_emitted = False


def _script_tags() -> str:
    base = relative_to_cwd(project_root() / "assets" / "vega")
    tags = "".join(f'<script src="{base}/{name}"></script>' for name in VEGA_FILES)
    return ("<script>window.__labDefine = window.define; window.define = undefined;</script>" + tags
            + "<script>window.define = window.__labDefine;</script>")


def lab_renderer(spec: dict, **_: object) -> dict[str, str]:
    """Altair renderer: a div and a `vegaEmbed` call, SVG output, no actions menu, no CDN.

    Emitted as Markdown holding a raw HTML block, not as `text/html`: Quarto adds require.js and jQuery from
    cdnjs to any page with a `text/html` output (its "JavaScript widget" rule), which offline readers lack.
    """
    global _scripts_emitted
    div_id = f"lab-chart-{next(_counter)}"
    head = "" if _scripts_emitted else _script_tags()
    _scripts_emitted = True
    html = (f'{head}<div id="{div_id}" class="lab-chart"></div>'
            f'<script>vegaEmbed("#{div_id}", {json.dumps(spec)}, {{"renderer": "svg", "actions": false}})'
            f'.catch(e => {{document.getElementById("{div_id}").innerText = "chart error: " + e;}});</script>')
    return {"text/markdown": f"\n```{{=html}}\n{html}\n```\n"}


alt.renderers.register("lab", lab_renderer)
alt.renderers.enable("lab")


def to_svg(chart: alt.TopLevelMixin) -> str:
    """Static SVG of a chart (vl-convert, offline): for tests and for looking at a chart outside a browser."""
    return vlc.vegalite_to_svg(chart.to_json(), vl_version=alt.SCHEMA_VERSION.split(".")[0] + "_" +
                               alt.SCHEMA_VERSION.split(".")[1])


def human(name: str) -> str:
    """Axis and legend titles for people: `final_val_loss` -> `final val loss`."""
    return name.replace("_", " ")


def check_log_axis(data: pd.DataFrame, column: str, axis: str = "y") -> None:
    """Refuse non-positive values on a log axis: Vega silently draws nothing for the whole chart."""
    values = pd.to_numeric(data[column], errors="coerce")
    bad = values[~(values > 0)].dropna()
    if len(bad):
        raise ValueError(f"log {axis} axis of {column!r} gets {len(bad)} non-positive value(s) (min {bad.min():g}); "
                         f"filter them out, clip them to a floor, or use a linear/symlog axis")


def color_encoding(data: pd.DataFrame, column: str, title: str | None = None) -> alt.Color:
    """A palette that tells every series apart: ordered numbers (learning rates, ranks) on a sequential
    scheme, up to 10 categories on tableau10 and up to 20 on tableau20 (the default repeated after 10)."""
    values = data[column]
    n = values.nunique()
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) and n > 2:
        order = sorted(values.unique())
        return alt.Color(f"{column}:O", title=title or human(column), sort=order,
                         scale=alt.Scale(scheme="viridis" if n <= 24 else "turbo"))
    if n > 20:
        raise ValueError(f"{n} series in {column!r} cannot be told apart by colour; facet or group them")
    scheme = "tableau10" if n <= 10 else "tableau20"
    return alt.Color(f"{column}:N", title=title or human(column), scale=alt.Scale(scheme=scheme), sort=None)


def line_chart(data: pd.DataFrame, x: str, y: str, color: str | None = None, title: str = "",
               x_title: str | None = None, y_title: str | None = None, log_x: bool = False,
               log_y: bool = False, width: int = 520, height: int = 260, color_title: str | None = None) -> alt.Chart:
    """Curves over steps (or any x), one line per `color` group, with a tooltip on every point."""
    if log_x:
        check_log_axis(data, x, "x")
    if log_y:
        check_log_axis(data, y, "y")
    x_enc = alt.X(f"{x}:Q", title=x_title or human(x), scale=alt.Scale(type="log" if log_x else "linear"))
    y_enc = alt.Y(f"{y}:Q", title=y_title or human(y), scale=alt.Scale(type="log" if log_y else "linear", zero=False))
    enc = {"x": x_enc, "y": y_enc, "tooltip": [alt.Tooltip(x, title=human(x)), alt.Tooltip(f"{y}:Q", format=".4g", title=human(y))]}
    if color:
        enc["color"] = color_encoding(data, color, color_title)
        enc["tooltip"] = [alt.Tooltip(color, title=color_title or human(color)), *enc["tooltip"]]
    return alt.Chart(data, title=title).mark_line().encode(**enc).properties(width=width, height=height)


def vertical_rules(steps: Sequence[float], labels: Sequence[str], x: str = "step") -> alt.LayerChart:
    """Dashed markers at chosen x positions (e.g. the start and end of a phase change), with labels."""
    frame = pd.DataFrame({x: list(steps), "marker": list(labels)})
    rule = alt.Chart(frame).mark_rule(strokeDash=[4, 4], color="gray").encode(x=f"{x}:Q", tooltip=["marker", x])
    text = alt.Chart(frame).mark_text(align="left", dx=3, dy=-4, color="gray", baseline="top").encode(
        x=f"{x}:Q", y=alt.value(0), text="marker")
    return rule + text


def heatmap(data: pd.DataFrame, x: str, y: str, value: str, title: str = "", x_title: str | None = None,
            y_title: str | None = None, size: int = 320, scheme: str = "blues",
            domain: tuple[float, float] | None = None) -> alt.Chart:
    """A matrix as colored cells (attention patterns, score grids); axes keep the data's order."""
    scale = alt.Scale(scheme=scheme, domain=list(domain)) if domain else alt.Scale(scheme=scheme)
    return alt.Chart(data, title=title).mark_rect().encode(
        x=alt.X(f"{x}:O", title=x_title or human(x), sort=None),
        y=alt.Y(f"{y}:O", title=y_title or human(y), sort=None),
        color=alt.Color(f"{value}:Q", title=human(value), scale=scale),
        tooltip=[x, y, alt.Tooltip(f"{value}:Q", format=".3f")],
    ).properties(width=size, height=size)


def bar_chart(data: pd.DataFrame, x: str, y: str, color: str | None = None, title: str = "",
              x_title: str | None = None, y_title: str | None = None, width: int = 420, height: int = 240) -> alt.Chart:
    enc = {"x": alt.X(f"{x}:N", title=x_title or human(x), sort=None), "y": alt.Y(f"{y}:Q", title=y_title or human(y)),
           "tooltip": [x, alt.Tooltip(f"{y}:Q", format=".4g")]}
    if color:
        enc["color"] = color_encoding(data, color)
    return alt.Chart(data, title=title).mark_bar().encode(**enc).properties(width=width, height=height)


def scatter_chart(data: pd.DataFrame, x: str, y: str, color: str, title: str = "", color_title: str | None = None,
                  tooltip: Sequence[str] = (), max_points: int = 1500, width: int = 300, height: int = 260) -> alt.Chart:
    """Points coloured by a quantity (e.g. PCA of representations by posterior entropy); at most `max_points`
    points, sampled reproducibly, because charts embed their data in the page."""
    sample = data.sample(min(len(data), max_points), random_state=0)
    return alt.Chart(sample, title=title).mark_circle(size=14).encode(
        x=alt.X(f"{x}:Q", title=human(x)), y=alt.Y(f"{y}:Q", title=human(y)),
        color=alt.Color(f"{color}:Q", scale=alt.Scale(scheme="viridis"), title=color_title or human(color)),
        tooltip=[*tooltip, alt.Tooltip(f"{color}:Q", format=".2f")],
    ).properties(width=width, height=height)


def thin(frame: pd.DataFrame, max_points: int = 600, by: str | None = None) -> pd.DataFrame:
    """Keep at most `max_points` evenly spaced rows (per `by` group): charts embed their data in the page."""
    def pick(group: pd.DataFrame) -> pd.DataFrame:
        stride = max(1, -(-len(group) // max_points))
        return group.iloc[::stride]
    if by is None:
        return pick(frame)
    return pd.concat([pick(g) for _, g in frame.groupby(by, sort=False)], ignore_index=True)
