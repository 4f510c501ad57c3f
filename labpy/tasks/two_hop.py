"""Multi-hop lookup in context: a dictionary of pairs, then queries that follow it once, twice (or more).

A sequence is `n_pairs` pairs (s, f(s)) in random order, where f is a random cyclic permutation of `n_pairs`
distinct tokens (so every key is also some pair's value, every chain continues, and f(s) ≠ s ≠ f(f(s)): no answer
can be had by copying the query), then `n_queries` queries
(marker, s) with distinct keys s. After a HOP1 marker the answer is f(s), after a HOP2 marker f(f(s)). Only the
answers are trained on, one per query.

Why it separates depths: one hop is induction — a previous-token head writes "s came before me" into the value
slot of (s, f(s)), and a head reading that with the query s copies f(s) (two layers). Two hops need f(s) *before*
the second lookup can be formed, so a third layer must query with what the second copied: no two-layer
attention-only model can build the key f(s) matches, whatever it learns (the dictionary is new in every sequence).

With `max_hops` = k > 2 there are k markers, HOP_j asks for f^j(q), and each query's hop count is drawn
uniformly from 1..k (the two-hop task keeps its `p_two_hop` draw, so its sequences are unchanged).

Layout, with K = n_pairs and Q = n_queries (T = 2K + 2Q):
    s_1 f(s_1) s_2 f(s_2) ... s_K f(s_K) | HOP_1 q_1 HOP_2 q_2 ... -> answers read at the query tokens' positions
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TwoHopTask:
    vocab: int = 32      # ordinary tokens; the markers HOP_1..HOP_k are ids vocab .. vocab + k - 1
    n_pairs: int = 8
    n_queries: int = 6
    p_two_hop: float = 0.5   # with max_hops = 2; more hops are drawn uniformly
    max_hops: int = 2

    def __post_init__(self) -> None:
        if not 3 <= self.n_pairs <= self.vocab:
            raise ValueError(f"n_pairs={self.n_pairs} must be between 3 and vocab={self.vocab}: the pairs' keys are "
                             f"distinct tokens; lower n_pairs or raise vocab")
        if not 1 <= self.n_queries <= self.n_pairs:
            raise ValueError(f"n_queries={self.n_queries} must be between 1 and n_pairs={self.n_pairs}: queries ask "
                             f"about distinct keys; lower n_queries")
        if not 0 <= self.p_two_hop <= 1:
            raise ValueError(f"p_two_hop={self.p_two_hop} is not a probability; use a value in [0, 1]")
        if not 2 <= self.max_hops < self.n_pairs:
            raise ValueError(f"max_hops={self.max_hops} must be between 2 and n_pairs - 1 = {self.n_pairs - 1}: "
                             f"f is one cycle through the keys, so f^k(q) = q when k = n_pairs; lower max_hops")

    @property
    def hop1_marker(self) -> int:
        return self.vocab

    @property
    def hop2_marker(self) -> int:
        return self.vocab + 1

    def marker(self, hops: int) -> int:
        return self.vocab + hops - 1

    @property
    def n_tokens(self) -> int:
        """Input vocabulary: the ordinary tokens and the markers."""
        return self.vocab + self.max_hops

    @property
    def seq_len(self) -> int:
        return 2 * (self.n_pairs + self.n_queries)

    def query_positions(self) -> torch.Tensor:
        """(Q,) positions of the query tokens, where the answers are predicted."""
        return torch.arange(2 * self.n_pairs + 1, self.seq_len, 2)


@dataclass
class TwoHopBatch:
    tokens: torch.Tensor       # (B, T)
    answers: torch.Tensor      # (B, Q) the token each query asks for
    hops: torch.Tensor         # (B, Q) how many hops each query asks for, 1..max_hops
    hop_slots: torch.Tensor    # (B, Q, max_hops) position of f^j(q), j = 1..max_hops

    @property
    def two_hop(self) -> torch.Tensor:
        """(B, Q) bool: a HOP2 query."""
        return self.hops == 2

    @property
    def hop1_slot(self) -> torch.Tensor:
        """(B, Q) position of f(q) in the dictionary: the value slot of the query's own pair."""
        return self.hop_slots[..., 0]

    @property
    def hop2_slot(self) -> torch.Tensor:
        """(B, Q) position of f(f(q)): the value slot of the pair whose key is f(q)."""
        return self.hop_slots[..., 1]


def sample(task: TwoHopTask, n: int, generator: torch.Generator) -> TwoHopBatch:
    K, Q = task.n_pairs, task.n_queries
    keys = torch.argsort(torch.rand(n, task.vocab, generator=generator), dim=1)[:, :K]   # (n, K) distinct tokens
    cycle = torch.argsort(torch.rand(n, K, generator=generator), dim=1)                 # the order f walks the keys
    f = torch.empty_like(cycle).scatter_(1, cycle, cycle.roll(-1, dims=1))              # f(keys[i]) = keys[f[i]]
    slot = torch.argsort(torch.rand(n, K, generator=generator), dim=1)                  # pair i sits at slot[i]
    tokens = torch.empty(n, task.seq_len, dtype=torch.long)
    value_pos = 2 * slot + 1                                                            # (n, K) where f(keys[i]) sits
    tokens.scatter_(1, 2 * slot, keys)
    tokens.scatter_(1, value_pos, torch.gather(keys, 1, f))
    asked = torch.argsort(torch.rand(n, K, generator=generator), dim=1)[:, :Q]          # (n, Q) distinct pair ids
    if task.max_hops == 2:
        hops = 1 + (torch.rand(n, Q, generator=generator) < task.p_two_hop).long()
    else:
        hops = torch.randint(1, task.max_hops + 1, (n, Q), generator=generator)
    chain = [asked]                                                                     # pair ids of q, f(q), ...
    for _ in range(task.max_hops):
        chain.append(torch.gather(f, 1, chain[-1]))
    along = torch.stack(chain[1:], dim=-1)                                              # (n, Q, k) f^j(q), j = 1..k
    answers = torch.gather(keys, 1, along.gather(-1, hops[..., None] - 1).squeeze(-1))
    tokens[:, 2 * K::2] = task.vocab + hops - 1
    tokens[:, 2 * K + 1::2] = torch.gather(keys, 1, asked)
    # f^j(q) is written in the value slot of the pair whose key is f^(j-1)(q)
    before = torch.stack(chain[:-1], dim=-1)                                            # (n, Q, k)
    hop_slots = torch.gather(value_pos, 1, before.flatten(1)).view(before.shape)        # (n, Q, k)
    return TwoHopBatch(tokens, answers, hops, hop_slots)
