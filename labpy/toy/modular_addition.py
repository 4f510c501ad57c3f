"""The grokking model of Nanda et al. (2023), "Progress measures for grokking via mechanistic interpretability".

One file, top to bottom: the data (every pair a, b of Z_p as the tokens `a b =`), the one-layer transformer
(embedding + position, one attention layer, a ReLU MLP, an unembedding; no LayerNorm, no attention biases, as in
the paper's code), and the Fourier tools that read its algorithm (the embedding in the Fourier basis of Z_p, and
the logits split into the cos/sin(w_k (a + b)) directions the paper calls key frequencies).

Every activation passes a TransformerLens `HookPoint` named as TransformerLens names it
(`blocks.0.attn.hook_pattern`, `blocks.0.mlp.hook_post`, ...), so `run_with_cache` and hooks work unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint


@dataclass(frozen=True)
class ModularAdditionSpec:
    p: int = 113
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512

    @property
    def n_ctx(self) -> int:
        return 3                      # a, b, "="

    @property
    def d_vocab(self) -> int:
        return self.p + 1             # the residues and "="


# ---- data ----------------------------------------------------------------------------------------------------

def all_pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every input `a b =` (p², 3) in the order a * p + b, and its label (a + b) mod p (p²,)."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T                   # (p²,) each
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)                       # (p², 3)
    return tokens, (a + b) % p


def train_split(p: int, train_fraction: float, seed: int) -> torch.Tensor:
    """A boolean mask over the p² pairs: the training set, a fixed random `train_fraction` of them."""
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(p * p, dtype=torch.bool)
    mask[order[:round(train_fraction * p * p)]] = True
    return mask


# ---- the model -----------------------------------------------------------------------------------------------

def _normal(*shape: int, scale: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * scale)


def _heads(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """x (B, T, d) through per-head weights W (H, d, e) -> (B, T, H, e), as one matrix product."""
    H, d, e = W.shape
    return (x @ W.permute(1, 0, 2).reshape(d, H * e)).unflatten(-1, (H, e))


class Attention(nn.Module):
    """Multi-head attention in which only the last position ("=") queries: nothing reads the outputs at a and b
    in a one-layer model trained on the answer alone, so computing them would triple the cost for nothing."""

    def __init__(self, spec: ModularAdditionSpec) -> None:
        super().__init__()
        s = 1 / math.sqrt(spec.d_model)
        self.W_Q = _normal(spec.n_heads, spec.d_model, spec.d_head, scale=s)
        self.W_K = _normal(spec.n_heads, spec.d_model, spec.d_head, scale=s)
        self.W_V = _normal(spec.n_heads, spec.d_model, spec.d_head, scale=s)
        self.W_O = _normal(spec.n_heads, spec.d_head, spec.d_model, scale=s)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:                                # x (B, T, d)
        q = self.hook_q(_heads(x[:, -1:], self.W_Q))                                   # (B, 1, H, e)
        k = self.hook_k(_heads(x, self.W_K))                                           # (B, T, H, e)
        v = self.hook_v(_heads(x, self.W_V))
        # products and sums rather than einsum: with one query, einsum's many 1×e by e×T matrix products cost more
        scores = (q * k).sum(-1).transpose(1, 2)[:, :, None] / math.sqrt(q.shape[-1])  # (B, H, 1, T)
        pattern = self.hook_pattern(self.hook_attn_scores(scores).softmax(dim=-1))  # "=" sees all: no mask needed
        z = self.hook_z((pattern[:, :, 0, :, None] * v.transpose(1, 2)).sum(2)[:, None])  # (B, 1, H, e)
        return z.flatten(-2) @ self.W_O.flatten(0, 1)                                  # (B, 1, d)


class MLP(nn.Module):
    def __init__(self, spec: ModularAdditionSpec) -> None:
        super().__init__()
        self.W_in = _normal(spec.d_model, spec.d_mlp, scale=1 / math.sqrt(spec.d_model))
        self.b_in = nn.Parameter(torch.zeros(spec.d_mlp))
        self.W_out = _normal(spec.d_mlp, spec.d_model, scale=1 / math.sqrt(spec.d_model))
        self.b_out = nn.Parameter(torch.zeros(spec.d_model))
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:                                # x (B, 1, d)
        pre = self.hook_pre(x @ self.W_in + self.b_in)                                 # (B, 1, d_mlp)
        return self.hook_post(F.relu(pre)) @ self.W_out + self.b_out


class Block(nn.Module):
    """Attention, then the MLP, each adding to the residual stream; from attention on, the stream is the last
    position's alone (B, 1, d)."""

    def __init__(self, spec: ModularAdditionSpec) -> None:
        super().__init__()
        self.attn, self.mlp = Attention(spec), MLP(spec)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint(), HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:                                # x (B, T, d)
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x[:, -1:] + self.hook_attn_out(self.attn(x)))          # (B, 1, d)
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(x)))


class ModularAdditionTransformer(HookedRootModule):
    """Logits (B, p) at "=" for tokens (B, 3) `a b =`."""

    def __init__(self, spec: ModularAdditionSpec, seed: int = 0) -> None:
        super().__init__()
        self.spec = spec
        torch.manual_seed(seed)
        self.W_E = _normal(spec.d_vocab, spec.d_model, scale=1 / math.sqrt(spec.d_model))
        self.W_pos = _normal(spec.n_ctx, spec.d_model, scale=1 / math.sqrt(spec.d_model))
        self.blocks = nn.ModuleList([Block(spec)])
        self.W_U = _normal(spec.d_model, spec.p, scale=1 / math.sqrt(spec.d_vocab))
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.setup()                                   # names every HookPoint by its module path

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.hook_embed(self.W_E[tokens]) + self.hook_pos_embed(self.W_pos[: tokens.shape[1]])  # (B, 3, d)
        for block in self.blocks:
            x = block(x)
        return (x @ self.W_U)[:, -1]                                                   # (B, p)


def fast_logits(model: ModularAdditionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """(B, p): the same logits as `model(tokens)`, computed the way training can afford (tests hold them equal).

    In a one-layer model the stream entering attention at position t is W_E[token] + W_pos[t]: one of only
    p + 1 vectors per position. So queries, keys and values are projected once per (position, token) and
    gathered, instead of once per example: a third of the training step's arithmetic goes away. It bypasses
    the hook points; analyses that hook or patch use `model(tokens)`.
    """
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    table = model.W_E[None] + model.W_pos[:, None]                                     # (3, V, d)
    position = torch.arange(tokens.shape[1], device=tokens.device)
    q = _heads(table, attn.W_Q)[2, tokens[:, 2]][:, None]                              # (B, 1, H, e)
    k = _heads(table, attn.W_K)[position, tokens]                                      # (B, 3, H, e)
    v = _heads(table, attn.W_V)[position, tokens]
    pattern = ((q * k).sum(-1) / math.sqrt(q.shape[-1])).softmax(dim=1)                # (B, 3, H)
    z = (pattern[..., None] * v).sum(1)                                                # (B, H, e)
    resid = table[2, tokens[:, 2]] + z.flatten(-2) @ attn.W_O.flatten(0, 1)            # (B, d)
    resid = resid + F.relu(resid @ mlp.W_in + mlp.b_in) @ mlp.W_out + mlp.b_out
    return resid @ model.W_U


# ---- Fourier analysis --------------------------------------------------------------------------------------

def fourier_basis(p: int) -> torch.Tensor:
    """(p, p) orthonormal rows over Z_p: the constant, then cos(w_k x) and sin(w_k x) for k = 1 .. (p-1)/2,
    w_k = 2πk/p. Row 2k-1 is cos of frequency k, row 2k its sin."""
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    return (basis / basis.norm(dim=1, keepdim=True)).float()


def embedding_frequency_norms(W_E: torch.Tensor, p: int) -> torch.Tensor:
    """(p-1)/2 squared norms: how much of the residues' embeddings (W_E rows 0..p-1) lies in frequency k
    (its cos and sin rows of the Fourier basis together), k = 1 .. (p-1)/2."""
    in_basis = fourier_basis(p).to(W_E.device) @ W_E[:p].float()                         # (p, d)
    per_row = (in_basis ** 2).sum(dim=1)                                               # (p,)
    return per_row[1::2] + per_row[2::2]


def neuron_frequency_fve(acts: torch.Tensor, p: int) -> torch.Tensor:
    """(K, n): the fraction of each neuron's variance over the p² pairs in the terms of frequency k = 1 .. K,
    K = (p-1)/2 — cos and sin of w_k a, of w_k b, and their four products across a and b. `acts` is (p², n), pairs
    in `all_pairs` order. The paper's neurons each compute a product of one frequency's waves; this measures "one".
    A neuron that never varies (dead under ReLU) gets 0 everywhere."""
    basis = fourier_basis(p).double()                                                  # (p, p) rows: const, cos, sin
    grid = acts.double().reshape(p, p, -1)                                             # (a, b, n)
    power = torch.einsum("ia,abn,jb->ijn", basis, grid, basis) ** 2                    # (p, p, n) per 2-D component
    constant = power[0, 0]
    total = power.sum(dim=(0, 1)) - constant                                           # (n,) variance × p²
    shares = []
    for k in range(1, (p - 1) // 2 + 1):
        rows = [0, 2 * k - 1, 2 * k]                                                   # constant, cos k, sin k
        shares.append(power[rows][:, rows].sum(dim=(0, 1)) - constant)
    fve = torch.stack(shares) / total.clamp_min(1e-30)
    return torch.where(total > 1e-12 * total.max(), fve, torch.zeros_like(fve)).float()


def sum_directions(p: int) -> torch.Tensor:
    """(K, 2, p²) unit vectors over the input grid: cos(w_k (a + b)) and sin(w_k (a + b)) for k = 1 .. K.

    For a logit of output c, the algorithm the paper found writes cos(w_k (a + b - c)) = cos(w_k (a+b)) cos(w_k c)
    + sin(w_k (a+b)) sin(w_k c): as a function of the input it lies in the span of these two directions."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T.double()
    k = torch.arange(1, (p - 1) // 2 + 1, dtype=torch.float64)[:, None]                 # (K, 1)
    angle = 2 * math.pi * k * (a + b)[None] / p                                        # (K, p²)
    directions = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)              # (K, 2, p²)
    return (directions / directions.norm(dim=-1, keepdim=True)).float()


def logit_frequency_norms(logits: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(K,) squared norm of the all-pairs logits (p², p) in the cos/sin(w_k (a + b)) directions of each k."""
    coefficients = torch.einsum("ksn,nc->ksc", directions, logits)                     # (K, 2, p)
    return (coefficients ** 2).sum(dim=(1, 2))


def frequency_component(logits: torch.Tensor, directions: torch.Tensor, freqs: list[int]) -> torch.Tensor:
    """(p², p): the part of the logits lying in the key frequencies' directions (k as 1-based frequencies)."""
    chosen = directions[[k - 1 for k in freqs]].reshape(-1, directions.shape[-1])      # (2F, p²)
    return chosen.T @ (chosen @ logits)


def restricted_logits(logits: torch.Tensor, directions: torch.Tensor, freqs: list[int]) -> torch.Tensor:
    """Only the key frequencies (plus each output's mean over inputs, a bias the algorithm may use): the paper's
    restricted loss asks whether these alone do the task."""
    return frequency_component(logits, directions, freqs) + logits.mean(dim=0, keepdim=True)


def excluded_logits(logits: torch.Tensor, directions: torch.Tensor, freqs: list[int]) -> torch.Tensor:
    """Everything but the key frequencies: the paper's excluded loss asks whether the model can still fit the
    training set without them (memorisation) or not (the circuit does the work)."""
    return logits - frequency_component(logits, directions, freqs)


def top_frequencies(norms: torch.Tensor, n: int) -> list[int]:
    """The `n` frequencies (1-based) with the largest norms, in descending order."""
    return [int(i) + 1 for i in torch.argsort(norms, descending=True)[:n]]
