"""beyond_depth: the walk along f read off each dictionary by hand, pair orders, look-ahead slots and scores against
attention read from the cache, order-split accuracy of a model with a known score, and zeroing inside the
dictionary only."""

from __future__ import annotations

import contextlib

import pytest
import torch

from labpy.experiments import beyond_depth as bd
from labpy.experiments import two_hop_analysis as tha
from labpy.experiments.three_hop import ThreeHopConfig
from labpy.experiments.two_hop import answer_logits
from labpy.models.toy import build_toy_transformer
from labpy.tasks.two_hop import TwoHopTask, sample
from labpy.train import step_generator

TASK = TwoHopTask(vocab=12, n_pairs=6, n_queries=4, max_hops=3)


def test_the_walk_follows_each_sequences_own_dictionary():
    batch = sample(TASK, 32, step_generator(5, 0))
    walk = bd.cycle_tokens(batch, TASK)                                            # (B, Q, K)
    K = TASK.n_pairs
    for row in range(32):
        tokens = batch.tokens[row].tolist()
        f = dict(zip(tokens[0:2 * K:2], tokens[1:2 * K:2]))
        for i, q in enumerate(tokens[2 * K + 1::2]):
            by_hand = [q]
            for _ in range(K - 1):
                by_hand.append(f[by_hand[-1]])
            assert walk[row, i].tolist() == by_hand and f[by_hand[-1]] == q        # one cycle through all K keys
            assert walk[row, i, int(batch.hops[row, i])] == batch.answers[row, i]


def test_pair_order_names_the_pairs_by_hop_in_dictionary_order():
    batch = sample(TASK, 4, step_generator(6, 0))
    batch.hop_slots[0, 0] = torch.tensor([9, 11, 1])      # f³'s pair first, then f¹'s, then f²'s
    batch.hop_slots[0, 1] = torch.tensor([1, 5, 9])
    orders = bd.pair_order(batch, hops=3)
    assert orders[0] == "3·1·2" and orders[1] == "1·2·3" and len(orders) == 4 * TASK.n_queries
    assert bd.pair_order(batch, hops=2)[0] == "1·2"


def test_lookahead_slots_hold_the_next_value_along_f():
    batch = sample(TASK, 16, step_generator(7, 0))
    slots = bd.lookahead_slots(batch, TASK)                                        # (B, K)
    values = batch.tokens[:, 1:2 * TASK.n_pairs:2]
    assert torch.equal(batch.tokens.gather(1, slots - 1), values)                  # the target pair's key is f(a)
    assert (slots % 2 == 1).all() and (slots != torch.arange(1, 2 * TASK.n_pairs, 2)).all()


class Known(torch.nn.Module):
    """Answers right where the last hop's pair comes before the previous hop's, and with q elsewhere."""

    def __init__(self, batch, hops: int):
        super().__init__()
        first = batch.hop_slots[..., hops - 1] < batch.hop_slots[..., hops - 2]   # (B, Q)
        queries = batch.tokens[:, TASK.query_positions()]
        self.pick = torch.where(first, batch.answers, queries)

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, TASK.n_tokens)
        logits[:, TASK.query_positions()] = 40.0 * torch.nn.functional.one_hot(self.pick, TASK.n_tokens).float()
        return logits

    def hooks(self, fwd_hooks=()):
        return contextlib.nullcontext()


def test_order_split_and_answer_mass_of_a_model_with_a_known_score():
    batch = sample(TASK, 200, step_generator(8, 0))
    table = bd.accuracy_by_order(Known(batch, 3), batch, TASK, hops=3)
    assert set(table.order) == {"1·2·3", "1·3·2", "2·1·3", "2·3·1", "3·1·2", "3·2·1"}
    assert table.queries.sum() == int((batch.hops == 3).sum())
    assert (table.accuracy == table["last pair first"].astype(float)).all()        # 1 where f³'s pair is first
    assert set(table[table["last pair first"]].order) == {"1·3·2", "3·1·2", "3·2·1"}
    assert bd.order_gain(table) == pytest.approx(1.0)                                # right exactly where first
    mass = bd.answer_mass(Known(batch, 3), batch, TASK, hops=3).set_index("answer").probability
    first = (batch.hop_slots[..., 2] < batch.hop_slots[..., 1])[batch.hops == 3].float().mean().item()
    assert mass["f^3(q)"] == pytest.approx(first, abs=1e-4) and mass["q"] == pytest.approx(1 - first, abs=1e-4)
    assert mass.sum() == pytest.approx(1.0, abs=1e-5) and mass["not in the dictionary"] == pytest.approx(0, abs=1e-4)


def test_lookahead_scores_match_attention_read_from_the_cache():
    config = ThreeHopConfig(vocab=12, n_pairs=6, n_queries=4, n_layers=2)
    model, task = build_toy_transformer(config.model_config(), seed=0).eval(), config.task()
    batch = sample(task, 8, step_generator(9, 0))
    table = bd.lookahead_scores(model, batch, task).set_index("label")["look-ahead"]
    _, cache = model.run_with_cache(batch.tokens)
    pattern = cache["blocks.1.attn.hook_pattern"][:, 3]                            # (B, T, T) head L1H3
    keys, values = batch.tokens[:, 0:12:2].tolist(), batch.tokens[:, 1:12:2].tolist()
    hand = [pattern[b, 2 * i + 1, 2 * keys[b].index(v) + 1]
            for b in range(8) for i, v in enumerate(values[b]) if keys[b].index(v) < i]
    assert len(hand) > 0 and table["L1H3"] == pytest.approx(torch.stack(hand).mean().item(), abs=1e-6)


def test_zeroing_inside_the_dictionary_spares_the_queries():
    """The last layer's writes inside the dictionary are read by no one, so zeroing them there leaves the answers
    as they were; zeroing the head everywhere, or an earlier layer's head inside the dictionary, does not."""
    config = ThreeHopConfig(vocab=12, n_pairs=6, n_queries=4, n_layers=2)
    model, task = build_toy_transformer(config.model_config(), seed=0).eval(), config.task()
    batch = sample(task, 8, step_generator(10, 0))
    with torch.no_grad():
        intact = answer_logits(model, batch, task)
        with model.hooks(fwd_hooks=bd.zeroing_in_dictionary(task, layer=1, heads=[2])):
            last_inside = answer_logits(model, batch, task)
        with model.hooks(fwd_hooks=tha.zeroing(1, [2])):
            last_everywhere = answer_logits(model, batch, task)
        with model.hooks(fwd_hooks=bd.zeroing_in_dictionary(task, layer=0, heads=[2])):
            first_inside = answer_logits(model, batch, task)
    assert torch.equal(intact, last_inside)
    assert not torch.allclose(intact, last_everywhere, atol=1e-4)
    assert not torch.allclose(intact, first_inside, atol=1e-4)
    with torch.no_grad(), model.hooks(fwd_hooks=bd.zeroing_in_dictionary(task, layer=0, heads=[1, 2])):
        two_inside = answer_logits(model, batch, task)
    with torch.no_grad(), model.hooks(fwd_hooks=bd.zeroing_in_dictionary(task, 0, [1])
                                      + bd.zeroing_in_dictionary(task, 0, [2])):
        one_then_other = answer_logits(model, batch, task)
    assert torch.equal(two_inside, one_then_other) and not torch.allclose(two_inside, first_inside, atol=1e-4)
    metrics = bd.metrics_with(model, batch, task, bd.zeroing_in_dictionary(task, layer=1, heads=[2]))
    assert metrics["acc_hop3"] == pytest.approx((intact.argmax(-1) == batch.answers)[batch.hops == 3].float().mean())
