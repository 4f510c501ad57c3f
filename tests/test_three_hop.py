"""three_hop: the dictionary task with up to three hops against a hand-followed lookup, the two-hop task's draw
left unchanged, the config's checks, and the smoke runs read by the two-hop analysis."""

from __future__ import annotations

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments import two_hop_analysis as tha
from labpy.experiments.three_hop import ThreeHopConfig
from labpy.experiments.two_hop import eval_batch
from labpy.tasks.two_hop import TwoHopTask, sample
from labpy.train import step_generator

TASK = TwoHopTask(vocab=12, n_pairs=6, n_queries=4, max_hops=3)


def test_every_answer_follows_the_dictionary_the_marked_number_of_times():
    batch = sample(TASK, 64, step_generator(0, 0))
    K = TASK.n_pairs
    for row in range(64):
        tokens = batch.tokens[row].tolist()
        f = dict(zip(tokens[0:2 * K:2], tokens[1:2 * K:2]))
        for i, (marker, q) in enumerate(zip(tokens[2 * K::2], tokens[2 * K + 1::2])):
            hops = int(batch.hops[row, i])
            assert marker == TASK.marker(hops) == TASK.vocab + hops - 1
            chain = [q]
            for _ in range(3):
                chain.append(f[chain[-1]])
            assert batch.answers[row, i] == chain[hops] and len(set(chain)) == 4   # f^j(q) all differ from q
            for j in (1, 2, 3):                                                    # f^j(q) sits after f^(j-1)(q)
                slot = int(batch.hop_slots[row, i, j - 1])
                assert tokens[slot] == chain[j] and tokens[slot - 1] == chain[j - 1]
    counts = torch.bincount(batch.hops.flatten(), minlength=4)[1:]
    assert counts.min() > 0.2 * batch.hops.numel()                                 # uniform over 1..3


def test_two_hop_sequences_are_unchanged_by_the_generalisation():
    """The two-hop task draws its markers as before, so its stored runs' training and evaluation data stand."""
    two = sample(TwoHopTask(vocab=12, n_pairs=6, n_queries=4), 32, step_generator(1, 0))
    assert torch.equal(two.hops, 1 + two.two_hop.long())
    assert torch.equal(two.hop_slots[..., 0], two.hop1_slot) and torch.equal(two.hop_slots[..., 1], two.hop2_slot)
    # the first sequence of the stored two-hop runs' draw (seed 3, step 0), as the code before max_hops drew it
    first = sample(TwoHopTask(), 8, step_generator(3, 0))
    assert first.tokens[0].tolist() == [20, 22, 0, 18, 22, 14, 14, 10, 6, 23, 18, 6, 10, 0, 23, 20,
                                        32, 20, 33, 22, 33, 14, 33, 23, 33, 10, 32, 6]
    assert first.answers[0].tolist() == [22, 10, 0, 22, 18, 23]


@pytest.mark.parametrize("kwargs, message", [({"max_hops": 2}, "max_hops"), ({"max_hops": 8}, "max_hops"),
                                             ({"n_layers": 0}, "n_layers")])
def test_bad_configs_name_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ThreeHopConfig(**kwargs)


def test_a_task_cannot_ask_for_a_full_cycle():
    with pytest.raises(ValueError, match="max_hops=6 must be between 2 and n_pairs - 1 = 5"):
        TwoHopTask(vocab=12, n_pairs=6, max_hops=6)


def test_smoke_runs_store_three_hop_metrics_and_the_analysis_reads_them(tmp_store):
    from labpy import results

    models = tha.hop_models(results("three_hop", "smoke"))
    assert [m.n_layers for m in models] == [3, 4, 4]
    m = models[-1]
    assert {"final_acc_hop3", "final_loss_hop3"} <= set(m.entry.summary)
    assert {"acc_hop1", "acc_hop2", "acc_hop3"} <= set(m.entry.table("evals").columns)
    batch = eval_batch(m.config, 48)
    attention = tha.query_attention(m.model(), batch, m.config.task())
    assert set(attention.queries) == {"one-hop", "two-hop", "three-hop"}
    heads = tha.carriers(attention)
    assert list(heads) == ["previous-token", "hop 1", "hop 2", "hop 3"]
    share = tha.answers_without_layer(m.model(), batch, m.config.task(), layer=3, hops=3, answered=2)
    assert 0.0 <= share <= 1.0
