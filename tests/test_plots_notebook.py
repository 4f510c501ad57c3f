import altair as alt
import pandas as pd
import pytest
import torch

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


def test_table_escapes_pipes_humanizes_headers_and_formats_numbers():
    frame = pd.DataFrame({"final_val_loss": [3.14159, 2.0], "lr": [3e-4, 1e-2], "note": ["|cosine|", "a|b"],
                          "steps": [1000, 20000]})
    text = notebook.table(frame).data
    header, rule, *rows = text.strip().splitlines()
    assert header == "| final val loss | lr | note | steps |"
    assert rows[0] == "| 3.142 | 0.0003 | \\|cosine\\| | 1000 |"
    assert rows[1] == "| 2 | 0.010 | a\\|b | 20,000 |"
    assert all(line.count("|") - line.count("\\|") == 5 for line in [header, rule, *rows])  # 4 cells each
    assert notebook.table(frame, columns={"lr": "learning rate"}).data.startswith("| final val loss | learning rate |")


def test_verdict_cells_escape_pipes():
    notebook.clear_predictions()
    notebook.predict("cos", "|cosine| < 0.2 for every pair", check=lambda r: True, measure=lambda r: "|r| = 0.1")
    markdown = notebook.verdicts({})._repr_markdown_()
    row = markdown.splitlines()[2]
    assert "\\|cosine\\|" in row and "\\|r\\|" in row and row.count("|") - row.count("\\|") == 5
    notebook.clear_predictions()


def test_claim_shows_when_it_holds_and_fails_the_page_when_it_does_not(capsys):
    notebook.claim("the loss fell", check=True, measured="4.1 → 2.0")
    with pytest.raises(notebook.ClaimContradicted, match="the data contradict this learning: 'warm-up helps'"):
        notebook.claim("warm-up helps", check=lambda: -0.35 > 0, measured="-0.35 nats")
    assert [c.holds for c in notebook.claims()[-2:]] == [True, False]


def test_log_axis_refuses_non_positive_values_and_palettes_tell_series_apart(curve):
    zero = curve.assign(loss=[4, 3, 2, 0, 4, 4, 4, 4])
    with pytest.raises(ValueError, match="log y axis of 'loss' gets 1 non-positive value"):
        plots.line_chart(zero, "step", "loss", log_y=True)
    many = pd.DataFrame({"step": list(range(4)) * 16, "loss": range(64), "run": [f"r{i // 4}" for i in range(64)]})
    spec = plots.line_chart(many, "step", "loss", color="run").to_dict()
    assert spec["encoding"]["color"]["scale"]["scheme"] == "tableau20"
    lrs = many.assign(lr=[10 ** -(i // 4) for i in range(64)])
    spec = plots.line_chart(lrs, "step", "loss", color="lr").to_dict()
    assert spec["encoding"]["color"]["type"] == "ordinal" and spec["encoding"]["color"]["scale"]["scheme"] == "viridis"
    assert spec["encoding"]["x"]["title"] == "step" and plots.human("final_val_loss") == "final val loss"


def test_a_page_kernel_skips_the_slow_optional_imports_and_altair_still_validates():
    """Every page starts with `import labpy` and reads experiments; imports it does not need cost about 7 s per
    page: rfc3987-syntax (pulled in by jsonschema for format checks Vega-Lite never asks for), transformers and its
    Qwen2 classes (a page reading a lab-LM experiment's stored tables builds no model or tokenizer), TransformerLens
    (the toy model's hook points) and sklearn (imported by other experiments' modules, which looking one experiment
    up no longer imports). None may come back unnoticed."""
    import subprocess
    import sys

    slow = ("rfc3987_syntax", "transformers", "transformer_lens", "sklearn")
    code = ("import sys, labpy, altair as alt, pandas as pd\n"
            "from labpy.experiments import get_experiment, lr_sweep_analysis\n"
            "get_experiment('lr_sweep')\n"
            f"print([m for m in {slow!r} if sys.modules.get(m) is not None])\n"
            "try:\n"
            "    alt.Chart(pd.DataFrame({'a': [1]})).mark_point().encode(x=alt.X('a:Q', bin='yes')).to_dict()\n"
            "except Exception as error:\n"
            "    print(type(error).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "SchemaValidationError"   # jsonschema still checks every chart against Vega-Lite's schema


def test_building_a_lab_lm_imports_the_model_class_where_needed():
    from labpy.models import lab_lm

    model = lab_lm.build_lab_lm(lab_lm.lab_lm_config(vocab_size=32, hidden_size=16, intermediate_size=32,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     num_key_value_heads=1), seed=0)
    copy = lab_lm.model_from_state(model.config, lab_lm.storable_state(model))
    assert type(model).__name__ == type(copy).__name__ == "Qwen2ForCausalLM"
    tokens = torch.randint(0, 32, (2, 5))
    assert torch.equal(model(input_ids=tokens).logits, copy(input_ids=tokens).logits)
