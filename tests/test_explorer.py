"""The offline attention explorer: its payload is the patterns, one byte per weight, and bad shapes are refused.
(Its behaviour in a browser is checked on the rendered site by tests/test_site_browser.py.)"""

import base64
import json
import re

import numpy as np
import pytest

from labpy.explorer import attention_explorer


def _payload(markdown: str) -> dict:
    return json.loads(re.search(r"const d = (\{.*?\});\n", markdown.data).group(1))


def test_weights_round_trip_to_a_byte_and_tokens_are_escaped():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 4))
    logits[..., np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] = -np.inf
    patterns = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)            # causal rows summing to 1
    out = attention_explorer(patterns, ["<a>", " x", "\n", "y"], kv_head_of=[0, 0, 1], start=(1, 2))
    data = _payload(out)
    weights = np.frombuffer(base64.b64decode(data["weights"]), dtype=np.uint8).reshape(2, 3, 4, 4) / 255
    assert np.abs(weights - patterns).max() <= 0.5 / 255 + 1e-9
    assert data["kv_head_of"] == [0, 0, 1] and data["tokens"][0] == "<a>"
    assert "&lt;a&gt;" in out.data and "<a>" not in out.data.split("<script>")[0]   # escaped in the HTML
    assert "↵" in out.data and 'value="1" selected' in out.data                     # newline shown; layer 1 first
    assert out.data.lstrip().startswith("```{=html}")                               # raw HTML: no CDN widget rule


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(layers, heads, T, T\) with T = 3 tokens; got \(2, 4, 4\)"):
        attention_explorer(np.zeros((2, 4, 4)), ["a", "b", "c"])


def test_a_token_cannot_break_out_of_the_script():
    """Token strings reach the page twice: escaped in the HTML, and as JSON inside <script>, where `</script>`
    would end the script and run what follows."""
    hostile = ["</script><img src=x onerror=alert(1)>", "<!--", "a&b", "\u2028"]
    out = attention_explorer(np.full((1, 1, 4, 4), 0.25), hostile).data
    script = out.split("<script>", 1)[1].rsplit("</script>", 1)[0]
    assert "</script" not in script and "<!--" not in script and "<img" not in out
    assert _payload(attention_explorer(np.full((1, 1, 4, 4), 0.25), hostile))["tokens"] == hostile
