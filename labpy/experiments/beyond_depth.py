"""What an attention-only model knows about the hop one past its depth (the three-hop page's last section).

A model with L layers follows L - 1 hops through the in-context dictionary; on L-hop queries it should guess among
the values it can rule in. The stored 3-layer model beats that guess on three hops (0.27 against 0.20). Two
readings, each with a measurement here:

- *it rules out more*: where its probability goes along the cycle q, f(q), f²(q), ... (`answer_mass`);
- *it looks ahead inside the dictionary*: causal attention lets a dictionary token attend to earlier pairs too. A
  head that finds "the pair whose key is my token" (the hop-1 head does exactly that at the query) also works at a
  value slot: at the slot holding f²(q) it finds the pair (f²(q), f³(q)) — if that pair comes earlier — and writes
  f³(q) there, where the next layer's hop-2 lookup from the query reads. So the extra hop should depend on the
  order of the pairs (`accuracy_by_order`), show as a head attending from value slots to earlier value slots
  (`lookahead_scores`), and vanish when those heads are zeroed inside the dictionary only (`zeroing_in_dictionary`).
"""

from __future__ import annotations

import pandas as pd
import torch

from ..interp.capture import attention_patterns
from ..tasks.two_hop import TwoHopBatch, TwoHopTask
from .two_hop import answer_logits, hop_metrics


def _dictionary(batch: TwoHopBatch, task: TwoHopTask) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) keys and (B, K) values of each sequence's pairs, in dictionary order."""
    K = task.n_pairs
    return batch.tokens[:, 0:2 * K:2], batch.tokens[:, 1:2 * K:2]


def cycle_tokens(batch: TwoHopBatch, task: TwoHopTask) -> torch.Tensor:
    """(B, Q, K) the token f^j(q) for j = 0..K-1, read off each sequence's own dictionary (f is one K-cycle)."""
    K = task.n_pairs
    keys, values = _dictionary(batch, task)                                         # (B, K) each
    f = torch.full((batch.tokens.shape[0], task.n_tokens), -1, dtype=torch.long)
    f.scatter_(1, keys, values)                                                     # f[b, key] = value
    walk = [batch.tokens[:, 2 * K + 1::2]]                                          # (B, Q) the query tokens q
    for _ in range(K - 1):
        walk.append(f.gather(1, walk[-1]))
    return torch.stack(walk, dim=-1)


@torch.no_grad()
def answer_mass(model, batch: TwoHopBatch, task: TwoHopTask, hops: int) -> pd.DataFrame:
    """Mean probability the model puts on f^j(q) (j = 0..K-1) and on tokens outside the dictionary, over the
    `hops`-hop queries: a guess that rules out the walk so far spreads evenly over j ≥ hops."""
    probs = answer_logits(model, batch, task).softmax(-1)                           # (B, Q, V)
    on_cycle = probs.gather(-1, cycle_tokens(batch, task))[batch.hops == hops]      # (n, K)
    rows = [{"answer": "q" if j == 0 else f"f^{j}(q)", "steps along f": j, "probability": float(p)}
            for j, p in enumerate(on_cycle.mean(0))]
    rows.append({"answer": "not in the dictionary", "steps along f": -1,
                 "probability": float(1 - on_cycle.sum(-1).mean())})
    return pd.DataFrame(rows)


def pair_order(batch: TwoHopBatch, hops: int) -> list[str]:
    """For each query (flattened B·Q), the dictionary order of the pairs holding f^1(q)..f^hops(q), each pair named
    by its hop: "3·1·2" means the pair (f²(q), f³(q)) comes first, then (q, f(q)), then (f(q), f²(q))."""
    slots = batch.hop_slots[..., :hops].flatten(0, 1)                               # (B·Q, hops)
    return ["·".join(str(int(j) + 1) for j in row.argsort()) for row in slots]


@torch.no_grad()
def accuracy_by_order(model, batch: TwoHopBatch, task: TwoHopTask, hops: int, hooks=()) -> pd.DataFrame:
    """Accuracy on `hops`-hop queries for each order of the pairs on the walk (`pair_order`), and whether the pair
    holding the last hop's answer comes before the one holding the hop before it (the order a look-ahead needs).
    `hooks`: forward hooks to run with (an ablation)."""
    with model.hooks(fwd_hooks=list(hooks)):
        right = (answer_logits(model, batch, task).argmax(-1) == batch.answers).flatten()
    mask = (batch.hops == hops).flatten()
    slots = batch.hop_slots.flatten(0, 1)
    frame = pd.DataFrame({"order": pair_order(batch, hops), "correct": right.float().numpy(),
                          "last pair first": (slots[:, hops - 1] < slots[:, hops - 2]).numpy()})[mask.numpy()]
    return (frame.groupby(["order", "last pair first"]).correct.agg(queries="size", accuracy="mean")
            .reset_index().sort_values("order", ignore_index=True))


def order_gain(by_order: pd.DataFrame) -> float:
    """From `accuracy_by_order`: accuracy with the last hop's pair before the previous hop's, less accuracy with it
    after (each pooled over its orders, weighted by queries)."""
    right = (by_order.accuracy * by_order.queries).groupby(by_order["last pair first"]).sum()
    queries = by_order.queries.groupby(by_order["last pair first"]).sum()
    return float(right[True] / queries[True] - right[False] / queries[False])


def lookahead_slots(batch: TwoHopBatch, task: TwoHopTask) -> torch.Tensor:
    """(B, K) for the value slot of each pair (a, f(a)), in dictionary order: the position of the value slot of the
    pair whose key is f(a) — where f(f(a)) sits."""
    keys, values = _dictionary(batch, task)                                         # (B, K) each
    pair_of_key = (values[:, :, None] == keys[:, None, :]).float().argmax(-1)      # (B, K) the pair keyed f(a)
    return 2 * pair_of_key + 1


@torch.no_grad()
def lookahead_scores(model, batch: TwoHopBatch, task: TwoHopTask) -> pd.DataFrame:
    """Per head: mean attention from each value slot to the value slot of the pair keyed by its token, over the
    value slots where that pair comes earlier (the only ones causal attention can reach)."""
    patterns = attention_patterns(model, batch.tokens)                              # (L, B, H, T, T)
    K = task.n_pairs
    source = torch.arange(1, 2 * K, 2).expand(batch.tokens.shape[0], K)            # (B, K) value slots
    target = lookahead_slots(batch, task)                                           # (B, K)
    reachable = target < source
    L, B, H = patterns.shape[:3]
    rows_at = patterns.gather(3, source[None, :, None, :, None].expand(L, B, H, K, patterns.shape[-1]))
    score = rows_at.gather(4, target[None, :, None, :, None].expand(L, B, H, K, 1)).squeeze(-1)   # (L, B, H, K)
    mean = (score * reachable[None, :, None]).sum((1, 3)) / reachable.sum()         # (L, H)
    return pd.DataFrame([{"layer": layer, "head": head, "label": f"L{layer}H{head}",
                          "look-ahead": float(mean[layer, head])}
                         for layer in range(L) for head in range(H)])


def zeroing_in_dictionary(task: TwoHopTask, layer: int, heads) -> list[tuple[str, object]]:
    """Forward hooks that zero some heads' outputs (`hook_z`) of one layer at the dictionary's positions only: the
    heads keep working at the queries, so what is lost is what they wrote into the dictionary for later layers."""
    inside, heads = 2 * task.n_pairs, [int(h) for h in heads]

    def hook(z: torch.Tensor, hook=None) -> torch.Tensor:                           # z: (B, T, H, d_head)
        z = z.clone()
        z[:, :inside, heads] = 0.0
        return z

    return [(f"blocks.{layer}.attn.hook_z", hook)]


@torch.no_grad()
def metrics_with(model, batch: TwoHopBatch, task: TwoHopTask, hooks) -> dict[str, float]:
    """`hop_metrics` with forward hooks attached."""
    with model.hooks(fwd_hooks=list(hooks)):
        return hop_metrics(model, batch, task)
