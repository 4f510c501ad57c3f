"""A sparse autoencoder (SAE), written out by hand and batched over instances (one per L1 coefficient).

    f  = ReLU(W_enc (h − b_dec) + b_enc)      latents, L of them (L ≥ the number of true features)
    ĥ  = W_dec f + b_dec                      decoder rows kept at unit norm
    loss = ‖h − ĥ‖² + λ Σ_j f_j               reconstruction plus an L1 penalty on the latents

The classic recipe (Sharkey et al. 2022; Bricken et al. 2023): the L1 penalty makes the code sparse, and the
unit-norm decoder stops the model from shrinking f by growing W_dec. Why by hand: SAELens, the maintained
library, requires transformer-lens < 4, and the lab pins 4.3; the whole mechanism is the thirty lines below.

On a toy model the true features are known — h = Σ_i x_i W_i, the columns of the toy model's W — so whether the
SAE found them is a cosine similarity away (`mean_max_cosine`).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn


class SparseAutoencoder(nn.Module):
    """`n_instances` SAEs on the same m-dimensional activations, each with its own L1 coefficient."""

    def __init__(self, n_instances: int, d_in: int, n_latents: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        decoder = F.normalize(torch.randn(n_instances, n_latents, d_in, generator=generator), dim=-1)
        self.W_dec = nn.Parameter(decoder)                                   # (I, L, m): row j is latent j's direction
        self.W_enc = nn.Parameter(decoder.transpose(1, 2).clone())           # (I, m, L): tied at initialisation
        self.b_enc = nn.Parameter(torch.zeros(n_instances, n_latents))       # (I, L)
        self.b_dec = nn.Parameter(torch.zeros(n_instances, d_in))            # (I, m)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """(B, m) activations, shared by every instance -> (I, B, L) latents."""
        centred = h.unsqueeze(0) - self.b_dec.unsqueeze(1)                  # (I, B, m)
        return F.relu(torch.bmm(centred, self.W_enc) + self.b_enc.unsqueeze(1))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """(I, B, L) -> (I, B, m)."""
        return torch.bmm(f, self.W_dec) + self.b_dec.unsqueeze(1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(h)
        return self.decode(f), f

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.data = F.normalize(self.W_dec.data, dim=-1)


def sae_loss(sae: SparseAutoencoder, h: torch.Tensor,
             l1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per instance (I,): total loss, reconstruction ‖h − ĥ‖² and L1 Σ_j f_j, each a mean over the batch.
    `h` is (B, m), the same activations for every instance; `l1` is (I,)."""
    reconstruction, f = sae(h)                                           # (I, B, m), (I, B, L)
    mse = ((reconstruction - h) ** 2).sum(-1).mean(1)                   # (I,)
    sparsity = f.sum(-1).mean(1)                                         # (I,)  f ≥ 0, so Σ|f| = Σ f
    return mse + l1 * sparsity, mse, sparsity


def train_sae(sae: SparseAutoencoder, sample: Callable[[int], torch.Tensor], l1: torch.Tensor, steps: int,
              lr: float = 1e-3, probe: Callable[[SparseAutoencoder], list[dict]] | None = None) -> pd.DataFrame:
    """Adam on `sample(step) -> (B, m)` activations, renormalising decoder rows after every step.
    Returns the loss curve (step, instance, loss, mse, l1_norm: the mean Σ_j f_j) at 20 points of training, with
    the columns `probe(sae)` returns per instance (one dict each) at those points."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    rows, log_every = [], max(1, steps // 20)
    for step in range(steps):
        h = sample(step)                                                 # (B, m)
        total, mse, sparsity = sae_loss(sae, h, l1)
        optimizer.zero_grad(set_to_none=True)
        total.sum().backward()
        optimizer.step()
        sae.normalise_decoder()
        if step % log_every == 0 or step == steps - 1:
            extra = probe(sae) if probe else [{}] * len(l1)
            rows += [{"step": step, "instance": k, "loss": t, "mse": e, "l1_norm": s, **x}
                     for k, (t, e, s, x) in enumerate(zip(total.tolist(), mse.tolist(), sparsity.tolist(), extra))]
    return pd.DataFrame(rows)


def max_cosine(features: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
    """(n, m) true feature directions, (L, m) decoder directions -> (n,): each feature's best cosine with any latent."""
    return (F.normalize(features, dim=-1) @ F.normalize(decoder, dim=-1).T).max(dim=-1).values


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, h: torch.Tensor, true_features: torch.Tensor) -> pd.DataFrame:
    """One row per instance: fraction of variance explained, L0, dead latents, mean max cosine similarity.

    h: (N, m) held-out activations; true_features: (n, m), the represented columns of the toy model's W.
    Dead: a latent that fires on none of the N inputs. The cosine is taken over live latents only — a dead
    latent's direction reconstructs nothing.
    """
    n_instances = sae.W_dec.shape[0]
    reconstruction, f = sae(h)                                                # (I, N, m), (I, N, L)
    residual = ((reconstruction - h) ** 2).sum(-1).mean(1)                    # (I,)
    variance = ((h - h.mean(0)) ** 2).sum(-1).mean()
    active = f > 0                                                            # (I, N, L)
    alive = active.any(1)                                                     # (I, L)
    rows = []
    for k in range(n_instances):
        cosines = (max_cosine(true_features, sae.W_dec[k][alive[k]]) if alive[k].any()
                   else torch.zeros(len(true_features)))
        rows.append({"instance": k, "mse": residual[k].item(), "fve": 1 - (residual[k] / variance).item(),
                     "l0": active[k].sum(-1).float().mean().item(), "dead": int((~alive[k]).sum()),
                     "dead_share": (~alive[k]).float().mean().item(), "mmcs": cosines.mean().item(),
                     "recovered_09": int((cosines > 0.9).sum()), "recovered_099": int((cosines > 0.99).sum())})
    return pd.DataFrame(rows)
