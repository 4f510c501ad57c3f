import altair as alt
import pandas as pd
import pytest

from labpy import notebook, plots


@pytest.fixture
def curve():
    return pd.DataFrame({"step": [0, 1, 2, 3] * 2, "loss": [4, 3, 2, 1, 4, 4, 4, 4], "model": ["a"] * 4 + ["b"] * 4})


def test_every_builder_exports_to_svg(curve):
    grid = pd.DataFrame([{"q": q, "k": k, "w": float(k <= q)} for q in range(3) for k in range(3)])
    charts = [plots.line_chart(curve, "step", "loss", color="model", log_y=True),
              plots.line_chart(curve, "step", "loss") + plots.vertical_rules([1.5], ["here"]),
              plots.heatmap(grid, "k", "q", "w", domain=(0, 1)),
              plots.bar_chart(curve, "model", "loss")]
    for chart in charts:
        svg = plots.to_svg(chart)
        assert svg.startswith("<svg") and "<path" in svg


def test_renderer_loads_vendored_vega_once_per_page_and_no_cdn(root, monkeypatch):
    monkeypatch.chdir(root / "experiments")
    monkeypatch.setattr(plots, "_scripts_emitted", False)
    bundle = plots.lab_renderer({"mark": "bar"})
    assert list(bundle) == ["text/markdown"], "a text/html output makes Quarto load require.js from a CDN"
    first, second = bundle["text/markdown"], plots.lab_renderer({"mark": "bar"})["text/markdown"]
    assert first.strip().startswith("```{=html}") and first.strip().endswith("```")
    assert first.count("<script src=") == 3 and second.count("<script src=") == 0
    assert '"../assets/vega/vega.min.js"' in first
    assert "http" not in first + second
    for name in plots.VEGA_FILES:
        assert (root / "assets" / "vega" / name).stat().st_size > 50_000
    assert alt.renderers.active == "lab"


def test_thin_keeps_ends_and_caps_points():
    frame = pd.DataFrame({"step": range(1000), "g": ["a", "b"] * 500})
    thinned = plots.thin(frame, 100, by="g")
    assert thinned.groupby("g").size().max() <= 100 and thinned.step.iloc[0] == 0


def test_predictions_decide_held_and_failed():
    notebook.clear_predictions()
    notebook.predict("big", "x is big", check=lambda r: r["x"] > 10, measure=lambda r: f"x = {r['x']}")
    notebook.predict("small", "x is small", check=lambda r: r["x"] < 1)
    verdicts = notebook.verdicts({"x": 12})
    assert verdicts.held("big") and not verdicts.held("small")
    assert verdicts.frame.measured.tolist() == ["x = 12", ""]
    assert verdicts.summary() == "1 of 2 predictions held"
    markdown = verdicts._repr_markdown_()
    assert "✔ held" in markdown and "✘ failed" in markdown
    with pytest.raises(KeyError, match="no prediction 'nope'"):
        verdicts.held("nope")
    notebook.clear_predictions()


def test_prediction_errors_are_clear():
    notebook.clear_predictions()
    with pytest.raises(RuntimeError, match="call lab.predict"):
        notebook.verdicts({})
    with pytest.raises(TypeError, match="check must be a function"):
        notebook.predict("p", "s", check=True)
