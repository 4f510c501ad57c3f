"""blurred_circuit_longer: the accuracy by segment length against a hand-built copier whose answer is known for every
length, and a smoke run."""

import pytest
import torch

from labpy.experiments import blurred_circuit_longer as longer
from labpy.experiments.induction import EVAL_SEED, InductionConfig
from labpy.tasks.repeated_tokens import sample
from labpy.train import step_generator


def fixed_distance_copier(distance: int, vocab: int):
    """A stand-in model that predicts, at position j, the token at j − distance + 1: it copies a repeat exactly when
    the segment is `distance` tokens long. (B, T) tokens -> (B, T, vocab) logits."""
    def forward(tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        logits = torch.zeros(B, T, vocab)
        j = torch.arange(distance - 1, T)
        for b in range(B):
            logits[b, j, tokens[b, j - distance + 1]] = 30.0
        return logits
    return forward


def test_a_fixed_distance_copier_copies_only_its_own_length():
    config = InductionConfig()
    table = longer.repeat_by_length(fixed_distance_copier(10, config.vocab), config).set_index("segment_len")
    assert list(table.index) == list(range(config.min_segment, config.max_segment + 1))
    assert table.accuracy[10] == 1.0 and table.loss[10] == pytest.approx(0.0, abs=1e-6)
    assert table.drop(index=10).accuracy.max() < 0.2        # elsewhere it is right only when two random tokens match
    batch = sample(config.task(), longer.LENGTH_SEQUENCES, step_generator(EVAL_SEED + 2, config.seed))
    for length in (6, 15, 24):   # the repeat's targets: the L − 1 tokens after the second copy's first
        assert table.targets[length] == int((batch.segment_len == length).sum()) * (length - 1)


def test_smoke_run_stores_every_checkpoint_but_the_first(tmp_store):
    from labpy import results

    run = results("blurred_circuit_longer", "smoke")["heads-2-s0"]
    steps = [s for s in run.config.checkpoint_steps() if s > 0]
    for name in ("layer0", "layer1", "by_length", "scores"):
        assert sorted(run.table(name).step.unique()) == steps
    layer0 = run.table("layer0")
    assert layer0.groupby(["step", "head"]).attention.sum().tolist() == pytest.approx([1.0] * 2 * len(steps), abs=1e-5)
    assert len(run.table("scores")) == 2 * run.config.n_heads * len(steps)
    assert not run.checkpoint_names()


def test_median_distance_back_by_hand():
    import pandas as pd
    from labpy.experiments.induction_analysis import median_distance_back

    # head 0: 0.3 on 2 back, 0.3 on 7 back (half is spent at 7); head 1: 0.6 in the far bucket (half spent there)
    backs = [str(d) for d in range(16)] + ["16 or more"]
    head0 = {"2": 0.3, "7": 0.3, "16 or more": 0.4}
    head1 = {"1": 0.4, "16 or more": 0.6}
    layer0 = pd.DataFrame([{"step": 5, "head": h, "back": b, "attention": spread.get(b, 0.0)}
                           for h, spread in enumerate((head0, head1)) for b in backs])
    medians = median_distance_back(layer0).set_index("head").median_back
    assert medians.to_dict() == {0: 7, 1: 16}
    assert "step" in median_distance_back(layer0).columns
    assert median_distance_back(layer0.drop(columns="step")).median_back.tolist() == [7, 16]


def test_accuracy_over_lengths_counts_each_target_once():
    import pandas as pd
    from labpy.experiments.induction_analysis import accuracy_over_lengths

    table = pd.DataFrame({"step": [1, 1, 1, 2], "segment_len": [6, 7, 20, 6], "targets": [10, 30, 50, 4],
                          "accuracy": [0.0, 0.5, 1.0, 0.25]})
    got = accuracy_over_lengths(table, 6, 8)
    assert got[1] == pytest.approx(15 / 40) and got[2] == pytest.approx(0.25)
