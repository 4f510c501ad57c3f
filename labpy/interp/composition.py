"""Composition scores between attention heads (Elhage et al. 2021, "A Mathematical Framework for Transformer
Circuits"), read from a TransformerLens-named model's weights with each block's LayerNorm folded in.

For an earlier head A and a later head B the score is ‖M‖_F / (‖X‖_F ‖Y‖_F) for the product M = XY of the two
matrices involved: W_QK^B W_OV^A for K-composition (B's key reads A's write), (W_OV^A)ᵀ W_QK^B for Q-composition,
W_OV^B W_OV^A for V-composition, with W_QK = W_Qᵀ W_K and W_OV = W_O W_V acting on column vectors. LayerNorm's
centring and per-dimension scale are linear and are folded into the reading weights; its division by the norm is
a scalar and cancels in the ratio.
"""

from __future__ import annotations

import pandas as pd
import torch

MODES = ("Q", "K", "V")


def head_circuits(model, block: int) -> dict[str, torch.Tensor]:
    """Per-head W_QK (H, d, d) and W_OV (H, d, d) of one block, in float64, its LayerNorm folded in."""
    state = {k: v.detach().double() for k, v in model.state_dict().items()}
    p, d_head = f"blocks.{block}.", model.cfg.d_head
    d = state[p + "ln1.weight"].shape[0]
    read = torch.diag(state[p + "ln1.weight"]) @ (torch.eye(d, dtype=torch.float64) - 1 / d)      # (d, d)
    split = lambda w: w.unflatten(0, (-1, d_head))                                                # (H*h, d) -> (H, h, d)
    w_q, w_k, w_v = (split(state[p + f"attn.{m}.weight"]) @ read for m in "qkv")                  # (H, h, d)
    w_o = state[p + "attn.o.weight"].unflatten(1, (-1, d_head)).permute(1, 0, 2)                  # (H, d, h)
    return {"qk": w_q.transpose(1, 2) @ w_k, "ov": w_o @ w_v}                                     # (H, d, d) each


def composition_score(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x @ y).norm() / (x.norm() * y.norm()))


def pair_scores(earlier: dict[str, torch.Tensor], later: dict[str, torch.Tensor], a: int, b: int) -> dict[str, float]:
    """Q-, K- and V-composition of head `a` of the earlier block into head `b` of the later one."""
    return {"Q": composition_score(earlier["ov"][a].T, later["qk"][b]),
            "K": composition_score(later["qk"][b], earlier["ov"][a]),
            "V": composition_score(later["ov"][b], earlier["ov"][a])}


def composition_table(model) -> pd.DataFrame:
    """Every (earlier head → later head) pair of the model and its three scores: one row per pair and mode."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    circuits = [head_circuits(model, block) for block in range(n_layers)]
    rows = []
    for la in range(n_layers):
        for lb in range(la + 1, n_layers):
            for a in range(n_heads):
                for b in range(n_heads):
                    for mode, score in pair_scores(circuits[la], circuits[lb], a, b).items():
                        rows.append({"mode": mode, "from": f"L{la}H{a}", "to": f"L{lb}H{b}", "layer_from": la,
                                     "layer_to": lb, "score": score})
    return pd.DataFrame(rows)


def composition_against_initial(model, initial) -> pd.DataFrame:
    """`composition_table(model)` with each pair's score in the same model at initialisation (`initial`) and their
    ratio (`over_initial`): training made a pair compose only where the ratio is well above 1."""
    final = composition_table(model)
    return final.assign(initial=composition_table(initial).score.to_numpy(),
                        over_initial=lambda f: f.score / f.initial)


def random_baseline(d_model: int, d_head: int, samples: int = 200, seed: int = 0) -> float:
    """Mean score of two random rank-`d_head` d×d matrices: what composition looks like by chance."""
    g = torch.Generator().manual_seed(seed)

    def rank_r() -> torch.Tensor:
        return (torch.randn(d_model, d_head, generator=g, dtype=torch.float64)
                @ torch.randn(d_head, d_model, generator=g, dtype=torch.float64))

    return sum(composition_score(rank_r(), rank_r()) for _ in range(samples)) / samples
