"""An interactive attention explorer that works offline: pick a layer and head, hover (or click to pin) a token
to see where it looks — or, reversed, which tokens look at it.

What bertviz and CircuitsVis give, without their CDN scripts (both draw nothing offline): one self-contained
HTML block with inline script and data. Weights travel as one byte each (0-255, base64), so a 30-layer,
9-head model on 28 tokens costs about 280 kB of page. Emitted as a Markdown raw-HTML block, like the lab's
charts, so Quarto adds no require.js/jQuery from a CDN. `tests/test_site_browser.py` drives it in Chromium.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
from collections.abc import Sequence

import numpy as np
from IPython.display import Markdown

_ids = itertools.count()

_SCRIPT = r"""
(function () {
  const root = document.getElementById(ROOT_ID);
  const d = DATA;
  const raw = atob(d.weights);
  const w = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) w[i] = raw.charCodeAt(i);
  const T = d.tokens.length, H = d.n_heads;
  const layer = root.querySelector(".lab-explorer-layer"), head = root.querySelector(".lab-explorer-head");
  const mode = root.querySelector(".lab-explorer-mode"), status = root.querySelector(".lab-explorer-status");
  const spans = Array.from(root.querySelectorAll(".lab-explorer-token"));
  let pinned = null, hovered = null;
  const at = (l, h, q, k) => w[((l * H + h) * T + q) * T + k] / 255;
  function show(i) {
    const l = +layer.value, h = +head.value, out = mode.value === "out";
    let best = -1, bestW = -1;
    spans.forEach((s, j) => {
      const v = i === null ? 0 : (out ? at(l, h, i, j) : at(l, h, j, i));
      s.style.backgroundColor = v > 0 ? `rgba(33, 102, 172, ${Math.min(1, v * 1.5).toFixed(3)})` : "";
      s.style.color = v > 0.45 ? "white" : "";
      s.style.outline = j === i ? "2px solid #d6604d" : "";
      s.dataset.weight = v.toFixed(3);
      if (v > bestW && j !== i) { bestW = v; best = j; }
    });
    const kv = d.kv_head_of ? ` (key/value head ${d.kv_head_of[h]})` : "";
    if (i === null) { status.textContent = `L${l}H${h}${kv}: hover a token, click to pin it.`; return; }
    const tok = j => JSON.stringify(d.tokens[j]);
    const pct = v => `${(v * 100).toFixed(0)}%`;
    const self = out ? at(l, h, i, i) : 0;
    status.textContent = out
      ? (bestW > 0
          ? `L${l}H${h}${kv}: token ${i} ${tok(i)} puts ${pct(bestW)} on token ${best} ${tok(best)} and ${pct(self)} on itself.`
          : `L${l}H${h}${kv}: token ${i} ${tok(i)} looks only at itself (${pct(self)}).`)
      : (bestW > 0
          ? `L${l}H${h}${kv}: token ${i} ${tok(i)} gets most attention from token ${best} ${tok(best)} (${pct(bestW)}).`
          : `L${l}H${h}${kv}: token ${i} ${tok(i)} gets most attention from no other token (none looks at it).`);
  }
  spans.forEach((s, i) => {
    s.addEventListener("mouseenter", () => { hovered = i; if (pinned === null) show(i); });
    s.addEventListener("click", () => { pinned = pinned === i ? null : i; show(pinned === null ? i : pinned); });
  });
  root.querySelector(".lab-explorer-tokens").addEventListener("mouseleave", () => { hovered = null; show(pinned); });
  // a new layer, head or direction redraws what is pinned, or else what was last hovered
  [layer, head, mode].forEach(el => el.addEventListener("change", () => show(pinned !== null ? pinned : hovered)));
  show(null);
})();
"""


def attention_explorer(patterns: np.ndarray, tokens: Sequence[str], kv_head_of: Sequence[int] | None = None,
                       title: str = "", start: tuple[int, int] = (0, 0)) -> Markdown:
    """patterns (n_layers, n_heads, T, T) -> the explorer, as Markdown holding raw HTML (display it last in a cell).

    `tokens` are the T token strings; `kv_head_of` names the key/value head each query head reads (GQA);
    `start` is the (layer, head) shown first.
    """
    patterns = np.asarray(patterns, dtype=np.float32)
    if patterns.ndim != 4 or patterns.shape[2] != patterns.shape[3] or patterns.shape[2] != len(tokens):
        raise ValueError(f"patterns must be (layers, heads, T, T) with T = {len(tokens)} tokens; got {patterns.shape}")
    n_layers, n_heads = patterns.shape[:2]
    weights = np.clip(np.rint(patterns * 255), 0, 255).astype(np.uint8)
    root_id = f"lab-explorer-{next(_ids)}"
    data = {"tokens": list(tokens), "n_heads": n_heads, "weights": base64.b64encode(weights.tobytes()).decode(),
            "kv_head_of": [int(k) for k in kv_head_of] if kv_head_of is not None else None}

    def options(n: int, chosen: int) -> str:
        return "".join(f'<option value="{i}"{" selected" if i == chosen else ""}>{i}</option>' for i in range(n))

    token_spans = "".join(
        f'<span class="lab-explorer-token" data-i="{i}" title="token {i}">{html.escape(_visible(t))}</span>'
        for i, t in enumerate(tokens))
    block = (
        f'<div class="lab-explorer" id="{root_id}">'
        + (f'<div class="lab-explorer-title">{html.escape(title)}</div>' if title else "")
        + '<div class="lab-explorer-controls">'
        f'<label>layer <select class="lab-explorer-layer">{options(n_layers, start[0])}</select></label> '
        f'<label>head <select class="lab-explorer-head">{options(n_heads, start[1])}</select></label> '
        '<label>show <select class="lab-explorer-mode"><option value="out">where the token looks</option>'
        '<option value="in">which tokens look at it</option></select></label></div>'
        f'<div class="lab-explorer-tokens">{token_spans}</div>'
        '<div class="lab-explorer-status"></div></div>'
        f'<script>{_SCRIPT.replace("ROOT_ID", json.dumps(root_id)).replace("DATA", script_json(data))}</script>'
    )
    return Markdown(f"\n```{{=html}}\n{block}\n```\n")


def script_json(value: object) -> str:
    """JSON safe inside an HTML <script>: a token such as `</script>` or `<!--` cannot end or derail it."""
    text = json.dumps(value)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _visible(token: str) -> str:
    """Whitespace a reader can see: newlines as ↵, tabs as →, an all-space token as ·."""
    shown = token.replace("\n", "↵").replace("\t", "→")
    return shown if shown.strip() else (shown.replace(" ", "·") or "∅")
