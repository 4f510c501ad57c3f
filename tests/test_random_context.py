"""random_context: the seen-token penalty and the half losses against hand-built models whose answers are known —
one that ignores its context, one that suppresses every token it has read, one that copies."""

from types import SimpleNamespace

import pytest
import torch

from labpy.interp.random_context import half_losses, random_halves, seen_token_penalty

V = 50


class ContextRule(torch.nn.Module):
    """Logits 0 for every token, plus `bonus` for each token already read at or before the position."""

    def __init__(self, bonus: float) -> None:
        super().__init__()
        self.bonus = bonus

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        n, t = input_ids.shape
        seen = torch.zeros(n, t, V)
        for p in range(t):
            seen[:, p:, :].scatter_(2, input_ids[:, p].view(n, 1, 1).expand(n, t - p, 1), 1.0)
        return SimpleNamespace(logits=self.bonus * seen)


def halves(n: int = 6, half: int = 8):
    return random_halves(n, half, 5, V, torch.Generator().manual_seed(0))


def test_a_model_that_ignores_context_has_no_penalty_and_equal_halves():
    h = halves()
    assert seen_token_penalty(ContextRule(0.0), h) == pytest.approx(0.0, abs=1e-6)
    first, second = half_losses(ContextRule(0.0), torch.cat([h.first, h.first], dim=1))
    assert first == pytest.approx(second) == pytest.approx(torch.log(torch.tensor(float(V))).item(), rel=1e-5)


def test_the_penalty_reads_the_size_and_sign_of_a_suppression():
    h = halves()
    # a seen token's logit is 3 lower; the log-normaliser differs a little between the two windows, so the
    # penalty is -3 up to that difference
    assert seen_token_penalty(ContextRule(-3.0), h) == pytest.approx(-3.0, abs=0.3)
    assert seen_token_penalty(ContextRule(2.0), h) > 1.5                       # a copier raises what it has read


def test_a_copier_does_better_on_a_repeat_and_the_draw_stays_in_range():
    h = halves()
    repeat = torch.cat([h.first, h.first], dim=1)
    first, second = half_losses(ContextRule(4.0), repeat)
    assert second < first - 1
    assert int(h.first.min()) >= 5 and int(h.second.max()) < V
