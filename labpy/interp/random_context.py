"""What a language model does with random tokens it has already read: a repeat, fresh random tokens, a seen token.

The attention-heads page found the lab LM doing slightly *worse* on the second copy of repeated random tokens than
on the first. Two readings predict that: the model has learned to expect that a token does not recur soon (it
lowers the probability of what it has seen), or any long run of random tokens degrades its predictions, repeat or
not. These measurements separate them:

- `half_losses`: the mean next-token loss on the first and the second half of a window, for a window whose second
  half repeats the first and for one whose second half is fresh random tokens;
- `seen_token_penalty`: the change in a token's log-probability in the second half when it appeared in the first
  half, against the same position of a window that differs only in its first half, where it did not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.lab_lm import per_token_loss


@dataclass
class RandomHalves:
    """Three (n, half) blocks of random token ids: two first halves and one second half."""
    first: torch.Tensor
    other_first: torch.Tensor
    second: torch.Tensor


def random_halves(n: int, half: int, low: int, high: int, generator: torch.Generator) -> RandomHalves:
    """Token ids uniform in [low, high): `low` skips the special and byte tokens at the start of a vocabulary."""
    draw = lambda: torch.randint(low, high, (n, half), generator=generator)
    return RandomHalves(draw(), draw(), draw())


@torch.no_grad()
def half_losses(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[float, float]:
    """(mean loss on targets inside the first half, inside the second half) of (n, 2·half) windows; the target
    that opens the second half is left out, as the attention-heads page leaves it out."""
    half = tokens.shape[1] // 2
    losses = per_token_loss(model, tokens)                      # (n, 2·half − 1): target t + 1 from position t
    return float(losses[:, :half - 1].mean()), float(losses[:, half:].mean())


@torch.no_grad()
def seen_token_penalty(model: torch.nn.Module, halves: RandomHalves) -> float:
    """Mean over windows, second-half positions and tokens seen in one first half only (and nowhere in the second
    half) of log p(token | its first half) − log p(token | the other first half), in nats, both ways round.
    Negative: the model lowers what it has read; zero: it ignores it; positive: it copies."""
    a = torch.cat([halves.first, halves.second], dim=1)                       # (n, 2·half)
    b = torch.cat([halves.other_first, halves.second], dim=1)
    half = halves.first.shape[1]
    log_a = F.log_softmax(model(input_ids=a).logits[:, half:].float(), dim=-1)     # (n, half, V)
    log_b = F.log_softmax(model(input_ids=b).logits[:, half:].float(), dim=-1)
    differences = []
    for i in range(a.shape[0]):
        later = set(halves.second[i].tolist())
        only_a = sorted(set(halves.first[i].tolist()) - set(halves.other_first[i].tolist()) - later)
        only_b = sorted(set(halves.other_first[i].tolist()) - set(halves.first[i].tolist()) - later)
        differences.append((log_a[i][:, only_a] - log_b[i][:, only_a]).flatten())
        differences.append((log_b[i][:, only_b] - log_a[i][:, only_b]).flatten())
    return float(torch.cat(differences).mean())
