"""Bijection elimination and HMM filtering: samples are what they claim, posteriors match brute-force enumeration."""

import itertools
import math
from collections import Counter

import pytest
import torch

from labpy.tasks import bijection, hmm
from labpy.tasks.posterior_math import entropy_bits, kl_bits
from labpy.train import step_generator


# ---------------------------------------------------------------- bijection

def test_bijection_sequences_are_bijections():
    task = bijection.BijectionTask(vocab=10)
    batch = bijection.sample(task, 300, step_generator(0, 0))
    L = task.n_pairs
    assert batch.tokens.shape == (300, 2 * L) and batch.keys.shape == batch.values.shape == (300, L)
    assert batch.perm.shape == (300, 10) and batch.tokens.dtype == torch.long
    for i in range(300):
        perm, keys, values = batch.perm[i].tolist(), batch.keys[i].tolist(), batch.values[i].tolist()
        assert sorted(perm) == list(range(10))
        assert len(set(keys)) == L and len(set(values)) == L
        assert values == [perm[k] for k in keys]
        assert batch.tokens[i, 0::2].tolist() == keys and batch.tokens[i, 1::2].tolist() == values
    assert bijection.prediction_positions(L).tolist() == list(range(0, 2 * L, 2))
    assert torch.equal(batch.tokens[:, bijection.prediction_positions(L)], batch.keys)


def test_bijection_permutations_and_key_orders_are_uniform():
    batch = bijection.sample(bijection.BijectionTask(vocab=3), 6000, step_generator(1, 0))
    perms = Counter(tuple(p) for p in batch.perm.tolist())
    orders = Counter(tuple(k) for k in batch.keys.tolist())
    assert len(perms) == 6 and len(orders) == 6                    # all 3! perms, all ordered 2-prefixes
    assert all(abs(c - 1000) < 150 for c in list(perms.values()) + list(orders.values()))  # ~5 sd


def test_bijection_sampling_is_deterministic_in_the_seed():
    task = bijection.BijectionTask(vocab=7)
    a, b = (bijection.sample(task, 50, step_generator(3, 4)) for _ in range(2))
    c = bijection.sample(task, 50, step_generator(3, 5))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.perm, b.perm)
    assert not torch.equal(a.tokens, c.tokens)


def test_bijection_posterior_is_normalised_and_eliminates_revealed_values():
    task = bijection.BijectionTask(vocab=10)
    batch = bijection.sample(task, 200, step_generator(0, 1))
    post = bijection.posterior(batch)                                   # (B, L, V)
    assert post.shape == (200, 9, 10)
    assert torch.allclose(post.sum(-1), torch.ones(200, 9))
    for t in range(9):
        revealed = batch.values[:, :t]                                  # (B, t)
        assert (post[:, t].gather(1, revealed) == 0).all()
        true = post[:, t].gather(1, batch.values[:, t:t + 1]).squeeze(1)
        assert torch.allclose(true, torch.full((200,), 1 / (10 - t)))
        assert ((post[:, t] > 0).sum(1) == 10 - t).all()


@pytest.mark.parametrize("V", [3, 4])
def test_bijection_posterior_equals_enumeration_over_all_permutations(V):
    batch = bijection.sample(bijection.BijectionTask(vocab=V), 60, step_generator(V, 0))
    post = bijection.posterior(batch)
    all_perms = list(itertools.permutations(range(V)))
    for i in range(60):
        keys, values = batch.keys[i].tolist(), batch.values[i].tolist()
        for t in range(V - 1):
            consistent = [p for p in all_perms if all(p[keys[j]] == values[j] for j in range(t))]
            counts = Counter(p[keys[t]] for p in consistent)
            ref = torch.tensor([counts[j] for j in range(V)], dtype=torch.float32) / len(consistent)
            assert torch.equal(post[i, t], ref)       # both correctly-rounded quotients of the same rationals


def test_bijection_posterior_entropy_is_the_bayes_entropy():
    V = 10
    batch = bijection.sample(bijection.BijectionTask(vocab=V), 100, step_generator(2, 0))
    h = entropy_bits(bijection.posterior(batch))                        # (B, L)
    expected = bijection.bayes_entropy_bits(V)
    assert expected.shape == (V - 1,)
    assert torch.allclose(expected, torch.tensor([math.log2(V - t) for t in range(V - 1)]))
    assert torch.allclose(h, expected.expand(100, -1), atol=1e-5)
    assert expected[0] == pytest.approx(math.log2(10)) and expected[-1] == pytest.approx(1.0)


def test_bijection_bad_vocab_is_named():
    with pytest.raises(ValueError, match="vocab=1"):
        bijection.BijectionTask(vocab=1)
    bijection.BijectionTask(vocab=2)


# ---------------------------------------------------------------- HMM

def brute_force_filter(T: torch.Tensor, E: torch.Tensor, obs: list[int]) -> torch.Tensor:
    """P(s_t | o_1..o_t) for every t by summing the joint over all S^t hidden paths. (K, S) float64"""
    S = T.shape[0]
    out = torch.zeros(len(obs), S, dtype=torch.float64)
    for t in range(1, len(obs) + 1):
        for path in itertools.product(range(S), repeat=t):
            p = 1.0 / S * E[path[0], obs[0]].item()
            for j in range(1, t):
                p *= T[path[j - 1], path[j]].item() * E[path[j], obs[j]].item()
            out[t - 1, path[-1]] += p
        out[t - 1] /= out[t - 1].sum()
    return out


@pytest.mark.parametrize("S,O", [(2, 3), (3, 2)])
def test_hmm_filtering_equals_enumeration_over_all_paths(S, O):
    batch = hmm.sample(hmm.HMMTask(n_states=S, n_symbols=O, length=4), 8, step_generator(S, O))
    post = hmm.filtering_posterior(batch.transition, batch.emission, batch.observations)
    assert post.shape == (8, 4, S) and post.dtype == torch.float64
    for i in range(8):
        ref = brute_force_filter(batch.transition[i], batch.emission[i], batch.observations[i].tolist())
        assert torch.allclose(post[i], ref, rtol=1e-10, atol=1e-12)


def test_hmm_filtering_rows_sum_to_one_on_long_sequences():
    batch = hmm.sample(hmm.HMMTask(n_states=5, n_symbols=5, length=200), 64, step_generator(0, 2))
    post = hmm.filtering_posterior(batch.transition, batch.emission, batch.observations)
    assert torch.isfinite(post).all() and (post >= 0).all()          # normalising each step: no underflow
    assert torch.allclose(post.sum(-1), torch.ones(64, 200, dtype=torch.float64))


def test_hmm_sampling_is_deterministic_and_parameters_are_stochastic():
    task = hmm.HMMTask(n_states=4, n_symbols=6, length=12)
    a, b = (hmm.sample(task, 40, step_generator(7, 3)) for _ in range(2))
    c = hmm.sample(task, 40, step_generator(7, 4))
    for name in ("transition", "emission", "states", "observations"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.observations, c.observations)
    assert a.transition.shape == (40, 4, 4) and a.emission.shape == (40, 4, 6)
    assert a.states.shape == a.observations.shape == (40, 12)
    for m in (a.transition, a.emission):
        assert (m > 0).all() and torch.allclose(m.sum(-1), torch.ones(m.shape[:-1], dtype=torch.float64))
    assert int(a.states.max()) < 4 and int(a.observations.max()) < 6 and int(a.states.min()) >= 0


def test_hmm_dirichlet_rows_have_dirichlet_one_moments():
    x = hmm.dirichlet_rows((20000, 4), step_generator(0, 0))           # Dirichlet(1,1,1,1)
    assert torch.allclose(x.mean(0), torch.full((4,), 0.25, dtype=torch.float64), atol=0.005)
    assert x[:, 0].var().item() == pytest.approx(3 / 80, rel=0.05)     # Var = (a0-1)/(a0^2 (a0+1)) = 3/80


def test_hmm_states_and_observations_follow_their_rows():
    """Martingale check: indicator(next = j) - P(next = j | current) averages to 0 if sampling uses the right rows."""
    batch = hmm.sample(hmm.HMMTask(n_states=3, n_symbols=4, length=8), 4000, step_generator(5, 0))
    B, K = batch.states.shape
    rows = torch.arange(B).unsqueeze(1).expand(B, K - 1)
    pred_T = batch.transition[rows, batch.states[:, :-1]]               # (B, K-1, S) row of the current state
    resid_T = torch.nn.functional.one_hot(batch.states[:, 1:], 3) - pred_T
    rows = torch.arange(B).unsqueeze(1).expand(B, K)
    pred_E = batch.emission[rows, batch.states]                          # (B, K, O)
    resid_E = torch.nn.functional.one_hot(batch.observations, 4) - pred_E
    assert resid_T.mean((0, 1)).abs().max() < 0.01 and resid_E.mean((0, 1)).abs().max() < 0.01  # sd ~ 0.003
    first = torch.bincount(batch.states[:, 0], minlength=3) / B
    assert torch.allclose(first, torch.full((3,), 1 / 3), atol=0.03)    # uniform initial state


@pytest.mark.parametrize("kwargs,name", [({"n_states": 1}, "n_states=1"), ({"n_symbols": 0}, "n_symbols=0"),
                                         ({"length": 0}, "length=0")])
def test_hmm_bad_shape_is_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        hmm.HMMTask(**kwargs)


# ---------------------------------------------------------------- entropy and KL

def test_entropy_bits_by_hand():
    assert entropy_bits(torch.full((4,), 0.25)).item() == pytest.approx(2.0)
    assert entropy_bits(torch.tensor([1.0, 0.0, 0.0])).item() == 0.0          # 0 log 0 = 0, no NaN
    assert entropy_bits(torch.tensor([0.5, 0.5, 0.0])).item() == pytest.approx(1.0)
    # H(1/2, 1/4, 1/4) = 1/2·1 + 2·(1/4·2) = 1.5 bits; works along any dim
    p = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]).T                # (3, 2) distributions in columns
    assert torch.allclose(entropy_bits(p, dim=0), torch.tensor([1.5, 1.5]))
    assert hmm.entropy_bits is entropy_bits


def test_kl_bits_by_hand():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0])
    assert kl_bits(p, p).item() == 0.0
    q = torch.full((4,), 0.25)
    # KL(p‖uniform4) = log2 4 - H(p) = 2 - 1.5
    assert kl_bits(p, q).item() == pytest.approx(0.5)
    # KL((1/2,1/2) ‖ (1/4,3/4)) = 1/2 log2 2 + 1/2 log2(2/3)
    expected = 0.5 * 1 + 0.5 * math.log2(2 / 3)
    assert kl_bits(torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])).item() == pytest.approx(expected)
    assert kl_bits(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])).item() == math.inf  # q misses p's support
    assert kl_bits(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])).item() == pytest.approx(1.0)
    assert hmm.kl_bits is kl_bits


def test_hmm_quantized_rows_sum_to_one_on_the_grid_and_stay_close():
    p = hmm.dirichlet_rows((500, 5, 5), step_generator(0, 9))
    q = hmm.quantize_rows(p, 100)
    assert torch.allclose(q.sum(-1), torch.ones(500, 5, dtype=q.dtype))
    assert torch.allclose(q * 100, (q * 100).round())           # multiples of 0.01
    assert (q - p).abs().max() <= 0.01 + 1e-12                   # largest remainder moves each entry < 1 step


def test_hmm_encoding_lays_out_header_then_observations():
    task = hmm.HMMTask(n_states=2, n_symbols=3, length=4, grid=10)
    batch = hmm.sample(task, 3, step_generator(1, 1))
    tokens = hmm.encode(task, batch)
    assert tokens.shape == (3, hmm.header_length(task) + 4) and hmm.header_length(task) == 4 + 6
    assert torch.equal(tokens[:, :4], (batch.transition.reshape(3, 4) * 10).round().long())
    assert torch.equal(tokens[:, 10:], batch.observations + 11)
    assert tokens.max() < hmm.vocab_size(task) == 14
    with pytest.raises(ValueError, match="grid=None"):
        hmm.encode(hmm.HMMTask(), batch)


def test_uniform_baseline_matches_the_papers_per_position_mlp_figure():
    # the reference: a context-blind uniform predictor scores exactly 1.107 bits at V = 20
    assert bijection.uniform_entropy_mae(20) == pytest.approx(1.107, abs=5e-4)
    assert bijection.uniform_entropy_mae(2) == 0.0          # one pair shown: its value is uniform over 2 anyway
