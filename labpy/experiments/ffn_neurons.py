"""Inside SmolLM2's MLPs and value vectors: how often the gates open, what single neurons respond to (a small
offline Neuroscope), whether knocking a neuron out hurts where it fires, and what the value vectors hold.

Run (SmolLM2-135M, and the lab LM for the same statistics on a small LM trained here; the smoke scale uses the
smoke lab LM) over windows of prose (pydoc topics) and Python source (held-out stdlib files), position 0 (the
attention-sink token) left out of every statistic:

- **gates**, every layer: the share of gate pre-activations above 0 (SwiGLU's gate silu(g) passes most of u
  only there), and the shares of neurons that open on under 1% or over 99% of tokens;
- **neurons**, in the chosen layers: each neuron's mean activation on code and on prose, and their gap in
  pooled standard deviations (Cohen's d). The most code-selective and the most prose-selective neuron of each
  layer get a Neuroscope entry — their top-activating tokens with the text before them — and an ablation: the
  neuron's activation set to 0 everywhere, the change in next-token loss on its top-activating tokens, on the
  rest, on code and on prose, against a random neuron of the same layer;
- **value vectors**, in the chosen layers (the v_proj output, all key/value heads): how alike two occurrences of
  the same token are against two different tokens (cosine), a linear probe for the token's class (word,
  capitalised word, digit, punctuation, whitespace) with a control task (Hewitt & Liang 2019) beside the same
  probe on the residual stream the values are read from, and a 2-D PCA of a sample for the page to draw.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from tqdm.auto import tqdm

from ..interp.hf_hooks import HookInfo, decoder_parts, run_with_cache, run_with_hooks
from ..interp.probes import control_labels, majority_accuracy, probe_accuracy
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.source_code import prose_and_code_windows
from ..validation import NONNEG_INT, check_ranges, number_between, one_of
from .registry import Experiment, RunContext, register

MODELS = ("smollm2-135m", "lab-lm", "lab-lm:smoke")
KINDS = ("prose", "code")
TOKEN_CLASSES = ("lowercase word", "capitalised word", "digit", "punctuation", "whitespace", "other")


@dataclass(frozen=True)
class NeuronConfig:
    model: str = "smollm2-135m"
    n_windows: int = 48                             # windows per kind of text
    seq_len: int = 64
    layers: tuple[int, ...] = (3, 10, 17, 24)       # layers whose neurons and value vectors are characterised
    top_k: int = 8                                  # Neuroscope snippets per neuron
    context: int = 12                               # tokens of text shown before the activating token
    top_share: float = 0.01                         # a neuron's "top" tokens: this share of all, by activation
    pca_sample: int = 600                           # tokens drawn per layer for the PCA chart
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows", "seq_len", "top_k", "context", "pca_sample"),
                     nonneg_int=("seed",), positive=("top_share",),
                     rules={"model": one_of(*MODELS), "layers": NONNEG_INT,
                            "top_share": number_between(0, 1, high_open=True)})


def token_class(text: str) -> str:
    """One of TOKEN_CLASSES for a decoded token (leading spaces ignored, except a token of only whitespace)."""
    word = text.strip()
    if not word:
        return "whitespace"
    if word.isdigit():
        return "digit"
    if all(not ch.isalnum() for ch in word):
        return "punctuation"
    if word.isalpha():
        return "capitalised word" if word[0].isupper() else "lowercase word"
    return "other"


@contextlib.contextmanager
def value_capture(model, layers: list[int], store: dict[int, torch.Tensor]) -> Iterator[None]:
    """Keep each listed layer's v_proj output (B, T, kv_heads * head_dim) in `store` during a forward pass."""
    _, blocks, _ = decoder_parts(model)
    handles = [blocks[layer].self_attn.v_proj.register_forward_hook(
        lambda _m, _i, out, layer=layer: store.__setitem__(layer, out.detach())) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def zero_neuron(index: int):
    """A `mlp.hook_post` function that silences one neuron at every position."""
    def hook(post: torch.Tensor, info: HookInfo) -> torch.Tensor:
        post = post.clone()
        post[..., index] = 0
        return post
    return hook


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, V), (B, T) -> (B, T) next-token losses."""
    return F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")


RARELY_OPEN = 0.01        # a neuron open on fewer than this share of tokens counts as dead


def gate_rows(pre: torch.Tensor, layer: int, kind: str) -> dict:
    """Gate statistics of one layer on one kind of text; pre (N, f) gate pre-activations."""
    open_share = (pre > 0).float().mean(0)                                              # (f,) per neuron
    return {"layer": layer, "kind": kind, "open_share": float((pre > 0).float().mean()),
            "rarely_open": float((open_share < RARELY_OPEN).float().mean()),
            "mostly_open": float((open_share > 0.99).float().mean())}


def cohens_d(code: torch.Tensor, prose: torch.Tensor) -> torch.Tensor:
    """(N1, f), (N2, f) -> (f,): gap of the means in pooled standard deviations."""
    pooled = ((code.var(0) + prose.var(0)) / 2).sqrt().clamp_min(1e-8)
    return (code.mean(0) - prose.mean(0)) / pooled


def snippet(tokenizer, ids: torch.Tensor, position: int, context: int) -> tuple[str, str]:
    """(text before the token, the token) for the Neuroscope."""
    before = tokenizer.decode(ids[max(1, position - context):position].tolist())
    return before, tokenizer.decode([int(ids[position])])


def value_rows(values: np.ndarray, ids: np.ndarray, classes: np.ndarray, train: np.ndarray, resid: np.ndarray,
               layer: int, seed: int) -> dict:
    """Same-token vs different-token cosine of value vectors, and token-class probes on values and stream,
    trained on the `train` tokens (whole windows) and tested on the rest. values (N, d_v), resid (N, d),
    ids/classes/train (N,)."""
    rng = np.random.default_rng(seed)
    unit = values / np.linalg.norm(values, axis=1, keepdims=True).clip(1e-8)
    same, different = [], []
    by_token = pd.Series(np.arange(len(ids))).groupby(ids)
    for _, rows in by_token:
        if len(rows) >= 2:
            a, b = rng.choice(rows.to_numpy(), 2, replace=False)
            same.append(float(unit[a] @ unit[b]))
    pairs = rng.integers(0, len(ids), (2 * max(len(same), 1), 2))
    for a, b in pairs:
        if ids[a] != ids[b]:
            different.append(float(unit[a] @ unit[b]))
    control = control_labels(ids, classes, seed)
    row = {"layer": layer, "same_token_cos": float(np.mean(same)), "different_token_cos": float(np.mean(different)),
           "n_same_pairs": len(same), "majority": majority_accuracy(classes[train], classes[~train])}
    for name, x in (("values", values), ("stream", resid)):
        row[f"{name}_accuracy"] = probe_accuracy(x[train], classes[train], x[~train], classes[~train], seed=seed)
        row[f"{name}_control"] = probe_accuracy(x[train], control[train], x[~train], control[~train], seed=seed)
    return row


@dataclass
class Captures:
    """What one forward pass per kind of text leaves behind, positions 1.. flattened to rows: (N_kind, width)."""
    texts: dict[str, torch.Tensor]                      # {kind: (B, T + 1)} windows
    gates: list[dict]                                   # gate statistics, every layer and kind
    posts: dict[tuple[str, int], torch.Tensor]          # neurons' activations, (kind, layer) -> (N, f)
    values: dict[tuple[str, int], torch.Tensor]         # v_proj outputs -> (N, kv_heads * head_dim)
    resid: dict[tuple[str, int], torch.Tensor]          # the stream entering the block -> (N, d)
    losses: dict[str, torch.Tensor]                     # next-token losses, kind -> (N,)


def flat(x: torch.Tensor) -> torch.Tensor:
    """(B, T, width) -> (B * (T - 1), width): position 0 (the attention sink) left out."""
    return x[:, 1:].reshape(-1, x.shape[-1])


def capture(model, texts: dict[str, torch.Tensor], layers: list[int]) -> Captures:
    n_layers = model.config.num_hidden_layers
    names = ({f"blocks.{l}.mlp.hook_pre" for l in range(n_layers)} | {f"blocks.{l}.mlp.hook_post" for l in layers}
             | {f"blocks.{l}.hook_resid_pre" for l in layers})
    out = Captures(texts, [], {}, {}, {}, {})
    for kind, tokens in texts.items():
        captured: dict[int, torch.Tensor] = {}
        with torch.no_grad(), value_capture(model, layers, captured):
            logits, cache = run_with_cache(model, tokens[:, :-1], lambda n: n in names)
        out.losses[kind] = token_losses(logits, tokens[:, 1:])[:, 1:].flatten()
        out.gates += [gate_rows(flat(cache[f"blocks.{l}.mlp.hook_pre"]), l, kind) for l in range(n_layers)]
        for l in layers:
            out.posts[kind, l] = flat(cache[f"blocks.{l}.mlp.hook_post"])
            out.values[kind, l], out.resid[kind, l] = flat(captured[l]), flat(cache[f"blocks.{l}.hook_resid_pre"])
    return out


def neuron_tables(model, tokenizer, c: Captures, layers: list[int], config: NeuronConfig,
                  progress: bool | None) -> tuple[list[dict], list[dict], list[dict]]:
    """Per characterised layer: the most code- and prose-selective neuron and a random one, each knocked out;
    the selective ones' top activations as Neuroscope rows. Returns (neurons, neuroscope, ablations) rows."""
    neuron_rows, scope_rows, ablation_rows = [], [], []
    generator = torch.Generator().manual_seed(config.seed)
    for l in tqdm(layers, desc="neurons", disable=None if progress is None else not progress):
        d = cohens_d(c.posts["code", l], c.posts["prose", l])                           # (f,)
        chosen = {"code neuron": int(d.argmax()), "prose neuron": int(d.argmin()),
                  "random neuron": int(torch.randint(0, len(d), (1,), generator=generator))}
        for role, index in chosen.items():
            act = torch.cat([c.posts[kind, l][:, index] for kind in KINDS])             # (N,) prose, then code
            neuron_rows.append({"layer": l, "neuron": index, "role": role, "cohens_d": float(d[index]),
                                "mean_prose": float(c.posts["prose", l][:, index].mean()),
                                "mean_code": float(c.posts["code", l][:, index].mean()),
                                "max_activation": float(act.max())})
            knocked = {kind: token_losses(run_with_hooks(model, c.texts[kind][:, :-1],
                                                         [(f"blocks.{l}.mlp.hook_post", zero_neuron(index))]),
                                          c.texts[kind][:, 1:])[:, 1:].flatten() - c.losses[kind] for kind in KINDS}
            delta = torch.cat([knocked[kind] for kind in KINDS])                        # (N,)
            top = act >= torch.quantile(act, 1 - config.top_share)
            ablation_rows.append({"layer": l, "neuron": index, "role": role,
                                  "delta_top": float(delta[top].mean()), "delta_rest": float(delta[~top].mean()),
                                  **{f"delta_{kind}": float(knocked[kind].mean()) for kind in KINDS},
                                  "n_top": int(top.sum())})
            if role == "random neuron":
                continue
            n_first = len(c.posts[KINDS[0], l])
            for rank, flat_index in enumerate(act.topk(config.top_k).indices.tolist()):
                kind = KINDS[0] if flat_index < n_first else KINDS[1]
                window, position = divmod(flat_index - (0 if kind == KINDS[0] else n_first), config.seq_len - 1)
                before, token = snippet(tokenizer, c.texts[kind][window], position + 1, config.context)
                scope_rows.append({"layer": l, "neuron": index, "role": role, "rank": rank + 1, "kind": kind,
                                   "activation": float(act[flat_index]), "before": before, "token": token})
    return neuron_rows, scope_rows, ablation_rows


def value_tables(tokenizer, c: Captures, layers: list[int], config: NeuronConfig
                 ) -> tuple[list[dict], list[dict], list[dict]]:
    """Per characterised layer: token identity and class probes on the values (`value_rows`), the PCA spectrum
    and a sample's first two PC coordinates. Returns (values, pca sample, spectrum) rows."""
    per_window = config.seq_len - 1                                                     # scored positions
    ids = np.concatenate([c.texts[kind][:, 1:-1].reshape(-1).numpy() for kind in KINDS])  # the scored tokens
    decoded = {int(t): tokenizer.decode([int(t)]) for t in np.unique(ids)}
    classes = np.array([token_class(decoded[int(t)]) for t in ids])
    n_windows = {kind: c.texts[kind].shape[0] for kind in KINDS}
    train = np.concatenate([np.arange(n_windows[kind] * per_window) // per_window < 0.75 * n_windows[kind]
                            for kind in KINDS])                     # the first 3/4 of each kind's windows
    kinds = np.repeat(np.array(KINDS), [n_windows[kind] * per_window for kind in KINDS])
    sample = np.random.default_rng(config.seed).choice(len(ids), min(config.pca_sample, len(ids)), replace=False)
    value_table, pca_rows, spectrum = [], [], []
    for l in layers:
        v = torch.cat([c.values[kind, l] for kind in KINDS]).numpy()
        r = torch.cat([c.resid[kind, l] for kind in KINDS]).numpy()
        value_table.append(value_rows(v, ids, classes, train, r, l, config.seed))
        pca = PCA(n_components=min(10, v.shape[1]), random_state=config.seed).fit(v)
        spectrum += [{"layer": l, "component": i + 1, "explained": float(e)}
                     for i, e in enumerate(pca.explained_variance_ratio_)]
        xy = pca.transform(v[sample])[:, :2]
        pca_rows += [{"layer": l, "pc1": float(x), "pc2": float(y), "class": classes[i], "kind": kinds[i],
                      "token": decoded[int(ids[i])]} for (x, y), i in zip(xy, sample)]
    return value_table, pca_rows, spectrum


def run(config: NeuronConfig, ctx: RunContext) -> RunResult:
    torch.manual_seed(config.seed)
    model, tokenizer = load_lm(config.model)
    layers = [layer for layer in config.layers if layer < model.config.num_hidden_layers]
    texts = prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1)     # {kind: (B, T + 1)}
    c = capture(model, texts, layers)
    neurons, scope, ablations = neuron_tables(model, tokenizer, c, layers, config, ctx.progress)
    values, pca, spectrum = value_tables(tokenizer, c, layers, config)
    summary = {"n_layers": model.config.num_hidden_layers, "d_mlp": model.config.intermediate_size,
               "layers": layers, "d_value": int(c.values[KINDS[0], layers[0]].shape[1]) if layers else 0,
               "tokens": {kind: int(c.losses[kind].numel()) for kind in KINDS}}
    return RunResult(tables={"gates": pd.DataFrame(c.gates), "neurons": pd.DataFrame(neurons),
                             "neuroscope": pd.DataFrame(scope), "ablations": pd.DataFrame(ablations),
                             "values": pd.DataFrame(values), "value_pca": pd.DataFrame(pca),
                             "value_spectrum": pd.DataFrame(spectrum)},
                     summary=summary, seed=config.seed)


register(Experiment(
    name="ffn_neurons",
    title="Inside SmolLM2's MLPs and value vectors: gates, single neurons, ablations, what values hold",
    track="Representations",
    page="experiments/neurons-and-values.qmd",
    version=1,
    config_type=NeuronConfig,
    scales={"smoke": {"lab-lm": NeuronConfig(model="lab-lm:smoke", n_windows=4, seq_len=16, layers=(0, 1), top_k=3,
                                             context=4, top_share=0.1, pca_sample=20)},
            # the lab LM (4 layers, 384 neurons): whether AdamW left dead gates in a small LM (all its layers)
            "cpu": {"smollm2": NeuronConfig(), "lab-lm": NeuronConfig(model="lab-lm", layers=(0, 1, 2, 3))}},
    run=run,
    description="Gate open rates per layer, code- and prose-selective neurons with their top-activating snippets and "
                "ablations, and value vectors (token identity, class probes, PCA) in SmolLM2-135M.",
))
