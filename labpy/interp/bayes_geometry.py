"""Geometry of a wind-tunnel transformer: the diagnostics of arXiv 2512.22471, on TransformerLens hook names.

- key orthogonality: are layer-0 keys of the hypothesis tokens closer to orthogonal than chance?
- QK alignment and attention sharpness per layer: where each layer's queries look, and how focused they are
- the value manifold: PCA of final-layer representations at prediction positions against posterior entropy
- elimination attention: does attention over the revealed values match the uniform "already used" set?
- ablations: a head (its `hook_z` zeroed) or a whole block (its output replaced by its input)
- dissociation over training: attention-map change (Jensen–Shannon) vs representation change (1 − linear CKA)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import cross_val_score

from ..tasks.posterior_math import LN2
from .heads import ablate_head_hook
from .compare import linear_cka  # noqa: F401  (geo.linear_cka: the wind-tunnel report reads it from here)


# --- keys ---------------------------------------------------------------------------------------------------
def _mean_off_diagonal_cosine(vectors: torch.Tensor) -> tuple[float, float]:
    """vectors (N, d) -> (mean |cos|, mean cos) over the N(N-1) ordered pairs i != j."""
    unit = torch.nn.functional.normalize(vectors.double(), dim=-1)
    cos = unit @ unit.T                                                      # (N, N)
    off = cos[~torch.eye(len(cos), dtype=torch.bool)]
    return float(off.abs().mean()), float(off.mean())


def key_orthogonality(state: dict[str, torch.Tensor], n_heads: int, token_ids: Sequence[int], layer: int = 0) -> pd.DataFrame:
    """Mean off-diagonal |cosine| between the keys of the hypothesis tokens, per head of one layer.

    As in the authors' `qkv_analysis.py`, keys come straight from the token embeddings (no position embedding),
    K = (E[ids] ⊙ g) W_Kᵀ — except that we keep the RMSNorm gain g, which is part of the map (cosines ignore the
    per-token RMS scale). Biases are left out: they shift every key alike and would inflate every cosine.
    """
    E = state["embed.weight"][list(token_ids)]                               # (N, d)
    g = state[f"blocks.{layer}.ln1.weight"]                                  # (d,)
    W = state[f"blocks.{layer}.attn.k.weight"]                               # (d_out, d_in): nn.Linear layout
    keys = (E * g) @ W.T                                                     # (N, d)
    d_head = keys.shape[1] // n_heads
    rows = []
    for head in range(n_heads):
        abs_cos, cos = _mean_off_diagonal_cosine(keys[:, head * d_head:(head + 1) * d_head])
        rows.append({"layer": layer, "head": head, "mean_abs_cos": abs_cos, "mean_cos": cos})
    return pd.DataFrame(rows)


def random_key_baseline(n: int, d_head: int, trials: int = 2000, seed: int = 0) -> float:
    """Mean off-diagonal |cosine| of n i.i.d. Gaussian vectors in d_head dims (≈ sqrt(2/(π d)) for large d)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(trials, n, d_head, generator=g, dtype=torch.float64)
    unit = torch.nn.functional.normalize(x, dim=-1)
    cos = unit @ unit.transpose(1, 2)                                        # (trials, n, n)
    off = cos[:, ~torch.eye(n, dtype=torch.bool)]
    return float(off.abs().mean())


# --- what each layer attends to ----------------------------------------------------------------------------
@torch.no_grad()
def attention_and_qk(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """patterns (L, B, H, T, T), q and k (L, B, T, H, d_head) from one forward pass."""
    names = ("attn.hook_pattern", "attn.hook_q", "attn.hook_k")
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(names))
    n_layers = model.cfg.n_layers
    return {key: torch.stack([cache[f"blocks.{layer}.attn.hook_{key}"] for layer in range(n_layers)])
            for key in ("pattern", "q", "k")}


def qk_alignment(q: torch.Tensor, k: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor:
    """Cosine of q at each query position with k at every position, averaged over batch and heads.

    q, k (L, B, T, H, d) -> (L, P, T); entries for key positions after the query (masked by causality) are NaN.
    """
    qn = torch.nn.functional.normalize(q[:, :, query_positions].double(), dim=-1)   # (L, B, P, H, d)
    kn = torch.nn.functional.normalize(k.double(), dim=-1)                          # (L, B, T, H, d)
    cos = torch.einsum("lbphd,lbthd->lpt", qn, kn) / (q.shape[1] * q.shape[3])      # (L, P, T)
    future = torch.arange(k.shape[2])[None, :] > query_positions[:, None]           # (P, T)
    return cos.masked_fill(future[None], float("nan"))


def attention_entropy(patterns: torch.Tensor, query_positions: torch.Tensor) -> pd.DataFrame:
    """Per layer: the entropy (bits) of attention at the prediction positions, as a fraction of the uniform
    entropy over the positions it may see — 1 is diffuse, 0 is one position. patterns (L, B, H, T, T)."""
    rows = []
    visible = (query_positions + 1).double()                                        # (P,)
    for layer in range(patterns.shape[0]):
        p = patterns[layer][:, :, query_positions].double()                         # (B, H, P, T)
        h = -torch.special.xlogy(p, p).sum(-1) / LN2                                # (B, H, P)
        frac = h / torch.log2(visible).clamp(min=1e-9)                              # first position: 0/0 guarded
        keep = visible > 1
        rows.append({"layer": layer, "attention_entropy_fraction": float(frac[..., keep].mean())})
    return pd.DataFrame(rows)


def elimination_attention(patterns: torch.Tensor, n_pairs: int) -> pd.DataFrame:
    """Bijection: at the prediction of v_t (query at k_t, token 2(t−1)), how attention treats revealed values.

    Exact elimination needs every revealed value v_1..v_{t−1} (tokens 1, 3, ..., 2t−3) and nothing else, so our
    yardstick is the uniform distribution over them. Per layer and head: the attention mass on value tokens, and
    KL(uniform over revealed values ‖ attention renormalised over value tokens), in bits, averaged over t ≥ 2.
    """
    L, B, H, T, _ = patterns.shape
    rows = []
    for layer in range(L):
        for head in range(H):
            masses, kls = [], []
            for t in range(2, n_pairs + 1):
                query = 2 * (t - 1)
                values = torch.arange(1, query, 2)                                  # revealed value tokens
                a = patterns[layer, :, head, query].double()                        # (B, T)
                on_values = a[:, values]                                            # (B, t−1)
                mass = on_values.sum(-1)                                            # (B,)
                renorm = on_values / mass.clamp(min=1e-12)[:, None]
                u = 1.0 / len(values)
                kl = (u * (math.log(u) - torch.log(renorm.clamp(min=1e-12)))).sum(-1) / LN2
                masses.append(mass.mean())
                kls.append(kl.mean())
            rows.append({"layer": layer, "head": head, "mass_on_values": float(torch.stack(masses).mean()),
                         "kl_to_uniform_revealed": float(torch.stack(kls).mean())})
    return pd.DataFrame(rows)


# --- the value manifold -------------------------------------------------------------------------------------
@torch.no_grad()
def final_representations(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The last residual stream after the final norm (what the unembedding reads), (B, P, d)."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == "ln_final.hook_normalized")
    return cache["ln_final.hook_normalized"][:, positions]


def value_manifold(reps: torch.Tensor, entropy: torch.Tensor, groups: torch.Tensor | None = None) -> dict[str, float]:
    """PCA of representations (N, d) against posterior entropy (N,).

    Returns the PC1 (and PC2) variance ratio, |Pearson| and |Spearman| correlation of PC1 with entropy, the
    5-fold cross-validated R² of a linear probe for entropy, and — if `groups` (e.g. the position) is given —
    the Pearson correlation *within* groups (PC1 and entropy each minus their group mean), which separates
    "the manifold encodes entropy" from "it encodes position" where the two are tied.
    """
    x = reps.double().numpy()
    h = entropy.double().numpy()
    pca = PCA(n_components=2).fit(x)
    pc1 = pca.transform(x)[:, 0]
    out = {"pc1_ratio": float(pca.explained_variance_ratio_[0]), "pc2_ratio": float(pca.explained_variance_ratio_[1]),
           "pc1_pearson": abs(float(stats.pearsonr(pc1, h)[0])), "pc1_spearman": abs(float(stats.spearmanr(pc1, h)[0])),
           "probe_r2": float(cross_val_score(LinearRegression(), x, h, cv=5, scoring="r2").mean())}
    if groups is not None:
        g = pd.Series(groups.numpy())
        pc1_w = pc1 - pd.Series(pc1).groupby(g).transform("mean").to_numpy()
        h_w = h - pd.Series(h).groupby(g).transform("mean").to_numpy()
        out["pc1_pearson_within"] = abs(float(stats.pearsonr(pc1_w, h_w)[0]))
    return out


def pca_points(reps: torch.Tensor, n_components: int = 2) -> np.ndarray:
    return PCA(n_components=n_components).fit_transform(reps.double().numpy())


# --- ablations ----------------------------------------------------------------------------------------------
def _bypass_block(layer: int) -> list[tuple[str, Callable]]:
    """Hooks that make block `layer` an identity: its output is replaced by its input."""
    saved: dict[str, torch.Tensor] = {}

    def keep(resid: torch.Tensor, hook=None) -> None:
        saved["x"] = resid.clone()

    def restore(resid: torch.Tensor, hook=None) -> torch.Tensor:
        return saved["x"]

    return [(f"blocks.{layer}.hook_resid_pre", keep), (f"blocks.{layer}.hook_resid_post", restore)]


def ablation_hooks(head: tuple[int, int] | None = None, layer: int | None = None,
                   attention_layers: Sequence[int] = ()) -> list[tuple[str, Callable]]:
    """Hooks for one ablation: a head zeroed, a block bypassed, or every head of some layers zeroed."""
    hooks: list[tuple[str, Callable]] = []
    if head is not None:
        hooks.append((f"blocks.{head[0]}.attn.hook_z", ablate_head_hook(head[1])))
    if layer is not None:
        hooks += _bypass_block(layer)
    for l in attention_layers:
        hooks.append((f"blocks.{l}.attn.hook_z", lambda z, hook=None: torch.zeros_like(z)))
    return hooks


@torch.no_grad()
def logits_with_hooks(model: nn.Module, tokens: torch.Tensor, hooks: list[tuple[str, Callable]],
                      chunk: int = 500) -> torch.Tensor:
    """Logits (B, T, C) under the given hooks, in chunks to bound memory."""
    parts = [model.run_with_hooks(tokens[i:i + chunk], fwd_hooks=hooks) for i in range(0, len(tokens), chunk)]
    return torch.cat(parts)


# --- dissociation over training -----------------------------------------------------------------------------
def js_divergence_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence (bits) along the last dim: symmetric, 0 iff p = q, at most 1."""
    p, q = p.double(), q.double()
    m = (p + q) / 2
    kl = lambda a, b: (torch.special.xlogy(a, a) - torch.special.xlogy(a, b)).sum(-1)  # noqa: E731
    return (kl(p, m) + kl(q, m)) / (2 * LN2)


