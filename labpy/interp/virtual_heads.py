"""The path expansion of a 2-layer attention-only transformer (Elhage et al. 2021, § "Two-layer attention-only
transformers"): its logits as a sum of direct paths, paths through one head and **virtual heads** — a layer-1
head moving, through its value, what a layer-0 head wrote (V-composition).

Why frozen: LayerNorm's division by the norm is the model's only non-linear step besides the softmax. With every
norm's scale fixed at the clean run's, per position, and the attention patterns kept (this expands the OV
circuits, not the QK circuits), each layer is linear in what it reads, so the terms sum to the logits exactly and
one path can be removed by editing only its own term. The paper freezes LayerNorm the same way.

Beside it, what the papers/circuits-framework.qmd page asks of the same model: what each path costs when
mean-ablated (`ablation_costs`, `path_table`); where each layer-0 head looks and what it writes (`head_profiles`,
`attention_by_offset`); what layer 1's queries and keys read (`where_layer1_looks_costs`); and what a whole head
does through the norms' divisors (`head_removal_costs`, norms free or pinned).

Shapes: B batch, T positions, d d_model, H heads, h d_head, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

EMBED = "embed"          # token and position embeddings
BIAS = "biases"          # every bias and LayerNorm shift, lumped: the same vector wherever it enters


@dataclass
class PathExpansion:
    """`terms[name]` (B, T, V) is one path's logit contribution; the terms sum to `logits`. `kind[name]` is
    "direct" (a component straight to the logits), "virtual" (a layer-0 head read by a layer-1 head's value),
    "layer 1 from embed" (a layer-1 head moving the embeddings) or "bias"."""
    terms: dict[str, torch.Tensor]
    kind: dict[str, str]
    logits: torch.Tensor                      # (B, T, V) the model's own, float64

    def names(self, kind: str) -> list[str]:
        return [name for name, k in self.kind.items() if k == kind]


def path_name(source: str, head: int | None = None) -> str:
    """"L0H2 → logits" for a direct path, "L0H2 → L1H1" for a virtual head, "embed → L1H1" through a head."""
    return f"{source} → logits" if head is None else f"{source} → L1H{head}"


def _clean_run(model, tokens: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The clean run's activations and the model's parameters, in float64, after checking the model is one the
    expansion covers."""
    cfg = model.cfg
    if cfg.n_layers != 2 or not cfg.attn_only or cfg.normalization != "LN":
        raise ValueError(f"the path expansion here is for 2-layer attention-only LayerNorm models; got n_layers="
                         f"{cfg.n_layers}, attn_only={cfg.attn_only}, normalization={cfg.normalization!r}")
    _, cache = model.run_with_cache(tokens)
    return ({name: value.double() for name, value in cache.items()},
            {name: value.detach().double() for name, value in model.named_parameters()})


def _frozen_norm(c: dict[str, torch.Tensor], p: dict[str, torch.Tensor], x: torch.Tensor, norm: str) -> torch.Tensor:
    """LayerNorm `norm` with its divisor frozen at the clean run's (`c`), its shift left out: linear in x. (B, T, d)"""
    return (x - x.mean(-1, keepdim=True)) / c[f"{norm}.hook_scale"] * p[f"{norm}.weight"]


def head_writes(model, cache, block: int = 0) -> torch.Tensor:
    """What each head of `block` wrote into the stream, from a `run_with_cache` cache: its z through its slice of
    W_O (the output bias left out), float64. (B, H, T, d)"""
    H, h = model.cfg.n_heads, model.cfg.d_head
    w_o = model.blocks[block].attn.o.weight.detach().double().view(-1, H, h)               # (d, H, h)
    return torch.einsum("bthe,dhe->bhtd", cache[f"blocks.{block}.attn.hook_z"].double(), w_o)


def mean_head_hook(head: int):
    """A hook on `hook_z` (B, T, H, h) that replaces one head's z, so its write, by its mean over every sequence and
    position."""
    def to_mean(z: torch.Tensor, hook) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = z[:, :, head].mean((0, 1))
        return z
    return to_mean


@torch.no_grad()
def expand_paths(model, tokens: torch.Tensor) -> PathExpansion:
    """Every path's logit contribution on `tokens` (B, T), in float64."""
    c, p = _clean_run(model, tokens)
    H, h = model.cfg.n_heads, model.cfg.d_head

    def norm_linear(x: torch.Tensor, norm: str) -> torch.Tensor:          # (B, T, d) -> (B, T, d), shift left out
        return _frozen_norm(c, p, x, norm)

    def per_head_writes(block: int, read: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, d)
        a = f"blocks.{block}.attn."
        w_v = p[a + "v.weight"].view(H, h, -1)                              # (H, h, d)
        w_o = p[a + "o.weight"].view(-1, H, h)                              # (d, H, h)
        values = torch.einsum("btd,Hed->bHte", read, w_v)                   # (B, H, T, h)
        return torch.einsum("bHte,dHe->bHtd", c[a + "hook_pattern"] @ values, w_o)

    def to_logits(x: torch.Tensor) -> torch.Tensor:                        # (B, T, d) -> (B, T, V)
        return norm_linear(x, "ln_final") @ p["unembed.weight"].T

    ones = torch.ones_like(c["hook_embed"][..., :1])                       # (B, T, 1)
    # layer 0: each head's write, and the constant its value bias and the norm's shift add
    v0_bias = p["blocks.0.ln1.bias"] @ p["blocks.0.attn.v.weight"].T + p["blocks.0.attn.v.bias"]        # (H*h,)
    bias0 = v0_bias @ p["blocks.0.attn.o.weight"].T + p["blocks.0.attn.o.bias"]                          # (d,)
    writes0 = per_head_writes(0, norm_linear(c["blocks.0.hook_resid_pre"], "blocks.0.ln1"))            # (B, H, T, d)
    sources = {EMBED: c["hook_embed"] + c["hook_pos_embed"], BIAS: ones * bias0,
               **{f"L0H{i}": writes0[:, i] for i in range(H)}}                                          # (B, T, d) each
    # layer 1: each head moves each source through its value; its own constant likewise
    v1_bias = p["blocks.1.ln1.bias"] @ p["blocks.1.attn.v.weight"].T + p["blocks.1.attn.v.bias"]
    bias1 = v1_bias @ p["blocks.1.attn.o.weight"].T + p["blocks.1.attn.o.bias"]                          # (d,)
    terms, kind = {}, {}
    for source, x in sources.items():
        terms[path_name(source)] = to_logits(x)
        kind[path_name(source)] = "bias" if source == BIAS else "direct"
        moved = per_head_writes(1, norm_linear(x, "blocks.1.ln1"))                                      # (B, H, T, d)
        for j in range(H):
            terms[path_name(source, j)] = to_logits(moved[:, j])
            kind[path_name(source, j)] = {EMBED: "layer 1 from embed", BIAS: "bias"}.get(source, "virtual")
    terms["layer-1 and final biases"] = to_logits(ones * bias1) + p["ln_final.bias"] @ p["unembed.weight"].T
    kind["layer-1 and final biases"] = "bias"
    return PathExpansion(terms, kind, c["hook_unembed"])


def mean_ablated_logits(expansion: PathExpansion, names: list[str]) -> torch.Tensor:
    """The logits with each named term replaced by its mean over the batch, position by position: what the
    path carries about this input is removed, what it adds on average is kept. (B, T, V)"""
    logits = expansion.logits.clone()
    for name in names:
        term = expansion.terms[name]
        logits -= term - term.mean(0, keepdim=True)
    return logits


def target_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token loss (B, T-1): position t predicts token t+1."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")


def centred_target_logit(term: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """How much a term pushes the correct next token above the average token: (B, T-1)."""
    centred = term[:, :-1] - term[:, :-1].mean(-1, keepdim=True)                                        # (B, T-1, V)
    return centred.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def ablation_costs(expansion: PathExpansion, tokens: torch.Tensor, mask: torch.Tensor,
                   groups: dict[str, list[str]]) -> pd.DataFrame:
    """For each group of paths, the mean loss over the masked targets (B, T-1) with the group mean-ablated, and
    what that adds to the intact model's."""
    intact = target_losses(expansion.logits, tokens)[mask].mean().item()
    rows = []
    for name, names in groups.items():
        loss = target_losses(mean_ablated_logits(expansion, names), tokens)[mask].mean().item()
        rows.append({"ablated": name, "paths": len(names), "loss": loss, "added loss": loss - intact})
    return pd.DataFrame(rows).assign(intact=intact)


def path_table(expansion: PathExpansion, tokens: torch.Tensor, mask: torch.Tensor) -> pd.DataFrame:
    """One row per path that is not a bias: its kind, where it starts and which layer-1 head carries it (none
    for a direct path), the loss it adds over the masked targets when it alone is mean-ablated, and how far it
    pushes the correct next token above the average token there (its mean centred logit)."""
    rows = []
    for name, kind in expansion.kind.items():
        if kind == "bias":
            continue
        source, carrier = name.split(" → ")
        cost = ablation_costs(expansion, tokens, mask, {name: [name]})["added loss"].iloc[0]
        push = centred_target_logit(expansion.terms[name], tokens)[mask].mean().item()
        rows.append({"path": name, "kind": kind, "source": source, "layer-1 head": None if carrier == "logits"
                     else carrier, "added loss": cost, "push on the answer": push})
    return pd.DataFrame(rows)


def write_shares(writes: torch.Tensor) -> dict[str, float]:
    """How a write's squared size (B, T, d) splits into three orthogonal parts that sum to 1: the vector it
    writes everywhere ("constant"), what depends on the position alone ("positional": the batch mean at each
    position, less the constant), and what differs between the sequences of the batch ("varying"). A head with
    no varying part carries nothing about the input, however strongly another head composes with it."""
    by_position = writes.mean(0)                                          # (T, d)
    constant = by_position.mean(0)                                        # (d,)
    total = writes.pow(2).sum()
    B, T, _ = writes.shape
    return {"constant": float(constant.pow(2).sum() * B * T / total),
            "positional": float((by_position - constant).pow(2).sum() * B / total),
            "varying": float((writes - by_position).pow(2).sum() / total)}


@torch.no_grad()
def head_profiles(model, cache, block: int = 0) -> pd.DataFrame:
    """Where each head of `block` looks and what it writes, from a `run_with_cache` cache: its mean attention on
    its own position and on the one before (every position but the first), its attention entropy over that of
    uniform attention to the prefix, the mean size of its write over the embeddings', and how the write splits into
    its constant, positional and varying shares (`write_shares`)."""
    H = model.cfg.n_heads
    pattern = cache[f"blocks.{block}.attn.hook_pattern"].double()[:, :, 1:]                # (B, H, T-1, T)
    T = pattern.shape[-1]
    own = pattern.diagonal(offset=1, dim1=-2, dim2=-1)                                    # (B, H, T-1)
    previous = pattern.diagonal(offset=0, dim1=-2, dim2=-1)
    entropy = -(pattern * pattern.clamp_min(1e-30).log()).sum(-1)                          # (B, H, T-1)
    uniform = torch.arange(2, T + 1, dtype=torch.float64).log()                            # (T-1,) ln(t+1)
    writes = head_writes(model, cache, block)                                              # (B, H, T, d)
    embed = (cache["hook_embed"] + cache["hook_pos_embed"]).double().norm(dim=-1).mean()
    return pd.DataFrame([{"head": f"L{block}H{i}", "own position": own[:, i].mean().item(),
                          "previous position": previous[:, i].mean().item(),
                          "entropy / uniform": (entropy[:, i] / uniform).mean().item(),
                          "write / embeddings": (writes[:, i].norm(dim=-1).mean() / embed).item(),
                          **{f"{part} share": share for part, share in write_shares(writes[:, i]).items()}}
                         for i in range(H)])


SIDES = ("queries", "keys", "both")


@torch.no_grad()
def where_layer1_looks_costs(model, tokens: torch.Tensor, mask: torch.Tensor) -> pd.DataFrame:
    """What layer 1's QK circuits read: for the embeddings and each layer-0 head, and for each side of layer 1's
    attention (`SIDES`), the loss over the masked targets (B, T-1) when that part of the stream is replaced, on
    that side only, by its mean over every sequence and position, so that neither the input nor the position
    reaches the side through it. Layer 1's values and both norms' scales stay at the clean run's: only where
    layer 1 looks changes, not what it moves."""
    c, p = _clean_run(model, tokens)
    H, h = model.cfg.n_heads, model.cfg.d_head
    a = "blocks.1.attn."
    resid = c["blocks.1.hook_resid_pre"]                                                   # (B, T, d)
    writes0 = head_writes(model, c, 0)                                                     # (B, H, T, d)
    parts = {EMBED: c["hook_embed"] + c["hook_pos_embed"], **{f"L0H{i}": writes0[:, i] for i in range(H)}}

    def read(x: torch.Tensor, side: str) -> torch.Tensor:                  # (B, T, d) -> (B, H, T, h)
        m = side[0]                                                         # "q" or "k"
        normed = _frozen_norm(c, p, x, "blocks.1.ln1") + p["blocks.1.ln1.bias"]
        out = normed @ p[a + f"{m}.weight"].T + p[a + f"{m}.bias"]
        return out.view(*x.shape[:2], H, h).transpose(1, 2)

    def logits_when_looking(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:            # -> (B, T, V)
        T = q.shape[2]
        scores = (q @ k.transpose(-1, -2)) / h ** 0.5                                       # (B, H, T, T)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        z = scores.softmax(-1) @ c[a + "hook_v"].transpose(1, 2)                            # (B, H, T, h)
        out = z.transpose(1, 2).flatten(2) @ p[a + "o.weight"].T + p[a + "o.bias"]         # (B, T, d)
        return (_frozen_norm(c, p, resid + out, "ln_final") + p["ln_final.bias"]) @ p["unembed.weight"].T

    def loss(logits: torch.Tensor) -> float:
        return target_losses(logits, tokens)[mask].mean().item()

    q_clean, k_clean = read(resid, "q"), read(resid, "k")
    intact = loss(logits_when_looking(q_clean, k_clean))
    rows = []
    for name, part in parts.items():
        without = resid - part + part.mean((0, 1))                          # the part's code of input and position gone
        q_off, k_off = read(without, "q"), read(without, "k")
        for side, (q, k) in zip(SIDES, ((q_off, k_clean), (q_clean, k_off), (q_off, k_off))):
            rows.append({"part": name, "side": side, "added loss": loss(logits_when_looking(q, k)) - intact})
    return pd.DataFrame(rows).assign(intact=intact)


def attention_by_offset(cache, block: int = 0, offsets: int = 4) -> pd.DataFrame:
    """Each head's mean attention `offsets` positions back or less (0: its own position), over the query positions
    that can reach that far: a previous-token head shows at 1, a head two back at 2. One row per head."""
    pattern = cache[f"blocks.{block}.attn.hook_pattern"].double()                         # (B, H, T, T)
    rows = []
    for i in range(pattern.shape[1]):
        row = {"head": f"L{block}H{i}"}
        for back in range(offsets + 1):
            row[f"{back} back"] = pattern[:, i].diagonal(offset=-back, dim1=-2, dim2=-1)[:, offsets - back:].mean().item()
        rows.append(row)
    return pd.DataFrame(rows)


PINNED = {"nothing": (), "layer 1's norm": ("blocks.1.ln1.hook_scale",),
          "both norms": ("blocks.1.ln1.hook_scale", "ln_final.hook_scale")}


@torch.no_grad()
def head_removal_costs(model, tokens: torch.Tensor, mask: torch.Tensor, block: int = 0) -> pd.DataFrame:
    """The loss each head of `block` adds over the masked targets (B, T-1) when its write is replaced by its mean
    over every sequence and position, in the model's own forward pass, with the norms' scales free or pinned at the
    clean run's (`PINNED`): what a head does through the norms' divisors is the difference."""
    logits, cache = model.run_with_cache(tokens)
    intact = target_losses(logits.double(), tokens)[mask].mean().item()
    rows = []
    for i in range(model.cfg.n_heads):
        for pinned, names in PINNED.items():
            hooks = [(f"blocks.{block}.attn.hook_z", mean_head_hook(i))]
            hooks += [(n, lambda v, hook: cache[hook.name]) for n in names]
            ablated = model.run_with_hooks(tokens, fwd_hooks=hooks)
            rows.append({"head": f"L{block}H{i}", "scales pinned": pinned,
                         "added loss": target_losses(ablated.double(), tokens)[mask].mean().item() - intact})
    return pd.DataFrame(rows).assign(intact=intact)
