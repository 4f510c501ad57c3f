"""HMM filtering: observations from a hidden Markov model whose parameters are new in every sequence.

Each sequence draws its own transition matrix T (S×S) and emission matrix E (S×O), every row ~ Dirichlet(1),
a uniform initial state, then hidden states s_1..s_K and observations o_1..o_K. The exact filtering posterior
P(s_t | o_1..o_t; T, E) comes from the forward algorithm. In the paper's wind tunnel the model is shown T and E
(as a header of probability tokens) and then the observations, so the forward posterior is exactly what a
Bayes-optimal model should output at each observation: the soft target, and the yardstick for its error.

Probabilities (T, E, posteriors) are float64 throughout: they are reference answers, not model inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .posterior_math import entropy_bits, kl_bits  # noqa: F401  (re-exported for convenience)


@dataclass(frozen=True)
class HMMTask:
    n_states: int = 5   # S
    n_symbols: int = 5  # O
    length: int = 10    # K observations per sequence
    grid: int | None = None  # round T and E to multiples of 1/grid (what a token header can show); None: exact

    def __post_init__(self) -> None:
        for name, value, low in (("n_states", self.n_states, 2), ("n_symbols", self.n_symbols, 2),
                                 ("length", self.length, 1)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}; got {name}={value}. Use {name}={low} or more.")


@dataclass
class HMMBatch:
    transition: torch.Tensor    # (B, S, S) float64, transition[b, i, j] = P(s_{t+1}=j | s_t=i)
    emission: torch.Tensor      # (B, S, O) float64, emission[b, i, o] = P(o_t=o | s_t=i)
    states: torch.Tensor        # (B, K) long, hidden
    observations: torch.Tensor  # (B, K) long, what a model sees


def dirichlet_rows(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Rows ~ Dirichlet(1, ..., 1) along the last dim: normalised Exp(1) draws.

    torch.distributions.Dirichlet ignores a generator; this way the batch is a function of the seed alone.
    """
    x = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator)  # (..., D)
    return x / x.sum(dim=-1, keepdim=True)


def quantize_rows(probs: torch.Tensor, grid: int) -> torch.Tensor:
    """Round each row to multiples of 1/grid that still sum to exactly 1 (largest-remainder rounding).

    The model reads T and E as tokens, so it can only know them to 1/grid. Generating the data and computing
    the exact posterior from the *rounded* matrices keeps the posterior exact for what the model is shown.
    """
    scaled = probs * grid                                           # (..., D)
    units = scaled.floor()
    short = (grid - units.sum(dim=-1, keepdim=True)).long()         # (..., 1) units still to hand out
    order = (scaled - units).argsort(dim=-1, descending=True)       # largest remainders first
    rank = order.argsort(dim=-1)                                    # rank of each entry's remainder
    units = units + (rank < short).to(units.dtype)
    return units / grid


def _draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One category per row of probs (B, D) -> (B,) long."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def sample(task: HMMTask, n: int, generator: torch.Generator) -> HMMBatch:
    S, O, K = task.n_states, task.n_symbols, task.length
    T = dirichlet_rows((n, S, S), generator)                        # (B, S, S)
    E = dirichlet_rows((n, S, O), generator)                        # (B, S, O)
    if task.grid:
        T, E = quantize_rows(T, task.grid), quantize_rows(E, task.grid)
    rows = torch.arange(n)
    states = torch.empty(n, K, dtype=torch.long)                    # (B, K)
    obs = torch.empty(n, K, dtype=torch.long)                       # (B, K)
    s = torch.randint(0, S, (n,), generator=generator)              # (B,) uniform initial state
    for t in range(K):
        if t > 0:
            s = _draw(T[rows, s], generator)                        # (B,) from row s_{t-1} of T
        states[:, t] = s
        obs[:, t] = _draw(E[rows, s], generator)                    # (B,) from row s_t of E
    return HMMBatch(T, E, states, obs)


def filtering_posterior(transition: torch.Tensor, emission: torch.Tensor, observations: torch.Tensor) -> torch.Tensor:
    """P(s_t | o_1..o_t), shape (B, K, S) float64, by the normalised forward algorithm.

    α_1 ∝ π0 ⊙ E[:, o_1] with π0 uniform;  α_t ∝ E[:, o_t] ⊙ (Tᵀ α_{t-1}). Normalising every step keeps it
    from underflowing on long sequences, and the normalised α_t is exactly the filtering distribution.
    """
    T, E = transition.double(), emission.double()                   # (B, S, S), (B, S, O)
    B, S, _ = T.shape
    K = observations.shape[1]
    idx = observations.unsqueeze(1).expand(B, S, K)                 # (B, S, K)
    lik = E.gather(2, idx).transpose(1, 2)                          # (B, K, S) lik[b, t, i] = E[b, i, o_t]
    alpha = torch.full((B, S), 1.0 / S, dtype=torch.float64)        # (B, S) prior π0 before o_1
    out = torch.empty(B, K, S, dtype=torch.float64)                 # (B, K, S)
    for t in range(K):
        if t > 0:
            alpha = torch.einsum("bi,bij->bj", alpha, T)            # (B, S) predict: Tᵀ α_{t-1}
        alpha = alpha * lik[:, t]                                   # (B, S) update with o_t
        alpha = alpha / alpha.sum(dim=1, keepdim=True)
        out[:, t] = alpha
    return out


def header_length(task: HMMTask) -> int:
    """Tokens before the first observation: every entry of T, then every entry of E, row by row."""
    return task.n_states * task.n_states + task.n_states * task.n_symbols


def vocab_size(task: HMMTask) -> int:
    """Probability tokens 0..grid (the value k means k/grid), then one token per observation symbol."""
    if not task.grid:
        raise ValueError("a token header needs a grid; got grid=None. Use HMMTask(grid=100) (steps of 0.01).")
    return task.grid + 1 + task.n_symbols


def encode(task: HMMTask, batch: HMMBatch) -> torch.Tensor:
    """Token ids (B, header + K): [T row by row, E row by row, o_1, ..., o_K]; positions tell entries apart."""
    if not task.grid:
        raise ValueError("encode needs a grid; got grid=None. Use HMMTask(grid=100) (steps of 0.01).")
    B = batch.observations.shape[0]
    header = torch.cat([batch.transition.reshape(B, -1), batch.emission.reshape(B, -1)], dim=1)  # (B, H)
    header_ids = (header * task.grid).round().long()                # (B, H) in 0..grid
    return torch.cat([header_ids, batch.observations + task.grid + 1], dim=1)
