"""What `experiments/two-hop.qmd` computes from the stored `two_hop` models: the circuit behind two hops.

- where each head looks from the query tokens: its attention to the slot of f(q) (the first hop's answer), to
  the slot of f(f(q)) (the second's), and, inside the dictionary, from each value to the key before it
  (the previous-token score);
- per-head ablations (the head's `hook_z` zeroed): accuracy on one- and two-hop queries without it; and every
  subset of one layer's heads zeroed together, to see how many heads carry a hop;
- each layer-2 head's direct logit attribution to the right two-hop answer, intact and with another head zeroed
  (the final norm's rescaling is the only way a last-layer head can take over another's work);
- Q- and K-composition (`labpy.interp.composition`) into the head that carries the second hop, against the
  same model at initialisation: does its query read the first hop's head, its key the previous-token head?
All of it is forward passes of stored models on the fixed evaluation batch (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, combinations

import pandas as pd
import torch

from ..interp.heads import ablate_head_hook, attention_patterns
from ..store import RunEntry
from .induction_analysis import load_model
from .registry import StoredRuns
from ..tasks.two_hop import TwoHopTask
from .two_hop import TwoHopConfig, answer_logits, eval_batch, hop_metrics

SLOTS = ("hop-1 answer", "hop-2 answer")   # the two-hop page's columns of `query_attention`


@dataclass(frozen=True)
class HopModel:
    name: str        # "3 layers, seed 1"
    n_layers: int
    seed: int
    entry: RunEntry

    @property
    def config(self) -> TwoHopConfig:
        return self.entry.config

    def model(self, step: int | None = None):
        """The stored model at a training step (default: the end of training)."""
        return load_model(self.entry, step)


def hop_models(runs: StoredRuns) -> list[HopModel]:
    """Every stored run, named for tables, by depth then seed."""
    models = [HopModel(f"{e.config.n_layers} layer{'s' if e.config.n_layers > 1 else ''}, seed {e.config.seed}",
                       e.config.n_layers, e.config.seed, e) for e in runs.entries.values()]
    return sorted(models, key=lambda m: (m.n_layers, m.seed))


def final_table(models: list[HopModel]) -> pd.DataFrame:
    """Loss and accuracy by hop at the end of training (the stored last evaluation)."""
    return pd.DataFrame([{"model": m.name, "layers": m.n_layers, "seed": m.seed,
                          **{k: m.entry.summary[f"final_{k}"] for k in ("acc_hop1", "acc_hop2", "loss_hop1", "loss_hop2")}}
                         for m in models])


QUERY_KINDS = {1: "one-hop", 2: "two-hop", 3: "three-hop"}


def query_kind(hops: int) -> str:
    """The `queries` label of `query_attention` rows: "one-hop", "two-hop", ... ("5-hop" past three)."""
    return QUERY_KINDS.get(hops, f"{hops}-hop")


def slot_name(hop: int) -> str:
    """The column of `query_attention` holding attention to f^hop(q)'s slot."""
    return f"hop-{hop} answer"


@torch.no_grad()
def query_attention(model, batch, task: TwoHopTask) -> pd.DataFrame:
    """One row per head and query kind (one-hop, two-hop, ...): mean attention from the query tokens to the slot of
    each hop's answer f^j(q), and the head's previous-token score inside the dictionary (value slots attending to
    their key)."""
    patterns = attention_patterns(model, batch.tokens)                             # (L, B, H, T, T)
    from_query = patterns[:, :, :, task.query_positions()]                         # (L, B, H, Q, T)

    def on(slots: torch.Tensor) -> torch.Tensor:                                   # (B, Q) -> (L, B, H, Q)
        index = slots[None, :, None, :, None].expand(*from_query.shape[:-1], 1)
        return from_query.gather(-1, index).squeeze(-1)

    to_slot = {slot_name(j): on(batch.hop_slots[..., j - 1]) for j in range(1, task.max_hops + 1)}
    values = torch.arange(1, 2 * task.n_pairs, 2)                                  # the dictionary's value slots
    prev = patterns[..., values, values - 1].mean(dim=(1, -1))                     # (L, H)
    rows = []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            for hops in range(1, task.max_hops + 1):
                mask = batch.hops == hops
                rows.append({"layer": layer, "head": head, "label": f"L{layer}H{head}", "queries": query_kind(hops),
                             "previous_token": float(prev[layer, head]),
                             **{slot: float(w[layer, :, head][mask].mean()) for slot, w in to_slot.items()}})
    return pd.DataFrame(rows)


def carriers(attention: pd.DataFrame) -> dict[str, str]:
    """The heads that carry the circuit, read from where they look: the previous-token head (layer 0), and from
    the queries with the most hops, the head most on each hop's answer ("hop 1", "hop 2", ...)."""
    n_hops = sum(column.endswith(" answer") for column in attention.columns)
    top = attention[attention.queries == query_kind(n_hops)]
    return {"previous-token": top[top.layer == 0].sort_values("previous_token").iloc[-1].label,
            **{f"hop {j}": top.sort_values(slot_name(j)).iloc[-1].label for j in range(1, n_hops + 1)}}


def first_hop_heads(attention: pd.DataFrame, hops: int, level: float = 0.5) -> list[str]:
    """The layer-1 heads whose mean attention from `hops`-hop queries to f(q)'s slot is at least `level`: the heads
    doing those queries' first hop (`attention` from `query_attention`)."""
    rows = attention[(attention.layer == 1) & (attention.queries == query_kind(hops))]
    return rows[rows[slot_name(1)] >= level].label.tolist()


def zeroing(layer: int, heads) -> list[tuple[str, object]]:
    """Forward hooks that zero the outputs (`hook_z`) of `heads` of one layer together."""
    return [(f"blocks.{layer}.attn.hook_z", ablate_head_hook(h)) for h in heads]


@torch.no_grad()
def ablation_table(model, batch, task: TwoHopTask) -> pd.DataFrame:
    """Accuracy and loss by hop with each head zeroed in turn (and none: `label` "none")."""
    rows = [{"label": "none", "layer": -1, "head": -1, **hop_metrics(model, batch, task)}]
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            with model.hooks(fwd_hooks=zeroing(layer, [head])):
                rows.append({"label": f"L{layer}H{head}", "layer": layer, "head": head,
                             **hop_metrics(model, batch, task)})
    return pd.DataFrame(rows)


@torch.no_grad()
def layer_ablation_table(model, batch, task: TwoHopTask, layer: int) -> pd.DataFrame:
    """Accuracy and loss by hop with every subset of one layer's heads zeroed together (2^H rows, from none to
    all): one head zeroed at a time cannot tell a redundant circuit from an unused head; subsets can."""
    heads = range(model.cfg.n_heads)
    rows = []
    for zeroed in chain.from_iterable(combinations(heads, k) for k in range(len(heads) + 1)):
        with model.hooks(fwd_hooks=zeroing(layer, zeroed)):
            rows.append({"zeroed": "+".join(f"L{layer}H{h}" for h in zeroed) or "none", "n_zeroed": len(zeroed),
                         "kept": "+".join(f"L{layer}H{h}" for h in heads if h not in zeroed) or "none",
                         **hop_metrics(model, batch, task)})
    return pd.DataFrame(rows)


@torch.no_grad()
def answers_without_layer(model, batch, task: TwoHopTask, layer: int, hops: int, answered: int) -> float:
    """Share of `hops`-hop queries answered with f^answered(q) when all of `layer`'s heads are zeroed: accuracy
    below chance can mean the model still does the earlier hops and stops there."""
    with model.hooks(fwd_hooks=zeroing(layer, range(model.cfg.n_heads))):
        predicted = answer_logits(model, batch, task).argmax(-1)                   # (B, Q)
    earlier = batch.tokens.gather(1, batch.hop_slots[..., answered - 1])           # (B, Q) the token f^answered(q)
    return float((predicted == earlier)[batch.hops == hops].float().mean())


@torch.no_grad()
def direct_attribution(model, batch, task: TwoHopTask, layer: int, zeroed: tuple[int, ...] = (),
                       hops: int = 2) -> pd.Series:
    """{head label: mean over `hops`-hop queries of what the head writes straight to the right answer's logit, less
    the mean logit} through the final norm at the scale the run actually had. With `zeroed` heads of the same layer
    zeroed first, the others' values change only through that scale: heads of one layer cannot read each other."""
    cache: dict[str, torch.Tensor] = {}

    def keep(t: torch.Tensor, hook) -> None:
        cache[hook.name] = t

    z_name = f"blocks.{layer}.attn.hook_z"
    hooks = zeroing(layer, zeroed) + [(z_name, keep)]                             # zero first, then record
    norm = model.ln_final
    if hasattr(norm, "hook_scale"):
        hooks.append(("ln_final.hook_scale", keep))
    with model.hooks(fwd_hooks=hooks):
        model(batch.tokens)
    q = task.query_positions()
    writes = torch.einsum("bqhk,hkd->bqhd", cache[z_name][:, q], model.W_O[layer])    # (B, Q, H, d)
    if hasattr(norm, "hook_scale"):
        if norm.centre:
            writes = writes - writes.mean(-1, keepdim=True)
        writes = writes / cache["ln_final.hook_scale"][:, q, None] * norm.weight       # scale (B, Q, 1, 1)
    logits = writes @ model.W_U                                                        # (B, Q, H, V_out)
    right = logits.gather(-1, batch.answers[:, :, None, None].expand(*logits.shape[:3], 1)).squeeze(-1)
    attribution = (right - logits.mean(-1))[batch.hops == hops]                        # (n queries, H)
    return pd.Series(attribution.mean(0).numpy(), index=[f"L{layer}H{h}" for h in range(model.cfg.n_heads)])


@torch.no_grad()
def hop_metrics_with_frozen_norm(model, batch, task: TwoHopTask, layer: int, head: int) -> dict[str, float]:
    """`hop_metrics` with one head zeroed but the final norm's scale held at the intact model's: what the other
    heads' writes achieve without the norm scaling them up to make good the loss."""
    _, cache = model.run_with_cache(batch.tokens, names_filter="ln_final.hook_scale")
    intact_scale = cache["ln_final.hook_scale"]                                       # (B, T, 1)
    hooks = zeroing(layer, [head]) + [("ln_final.hook_scale", lambda scale, hook: intact_scale)]
    with model.hooks(fwd_hooks=hooks):
        return hop_metrics(model, batch, task)


@torch.no_grad()
def formation(m: HopModel, heads: dict[str, str], n: int = 200) -> pd.DataFrame:
    """At every stored checkpoint: where the named heads look (their score from `query_attention` on two-hop
    queries), beside the evaluation accuracy by hop — does the circuit form when the accuracy jumps?"""
    batch, evals = eval_batch(m.config, n), m.entry.table("evals").set_index("step")
    score_of = {"previous-token": "previous_token", "hop 1": "hop-1 answer", "hop 2": "hop-2 answer"}
    rows = []
    for step in m.entry.checkpoint_steps():
        attn = query_attention(m.model(step), batch, m.config.task())
        attn = attn[attn.queries == "two-hop"].set_index("label")
        rows.append({"step": step, **{f"{role} ({label})": float(attn.loc[label, score_of[role]])
                                      for role, label in heads.items()},
                     "acc_hop1": float(evals.acc_hop1.get(step, float("nan"))),
                     "acc_hop2": float(evals.acc_hop2.get(step, float("nan")))})
    return pd.DataFrame(rows)
