"""two_class_starts: the hand-built arrangements, read back by `arrangement`, and the shared evaluation batch."""

import dataclasses

import pytest
import torch

from labpy.experiments.registry import RunContext, get_experiment
from labpy.experiments.two_class_starts import STARTS, TwoClassStartsConfig, arrangement, hand_built


def test_hand_built_starts_are_what_their_names_say():
    expected = {"all A": (10, 0, 5, 0), "6 A + 4 B, sorted": (6, 4, 5, 0), "6 A + 4 B, mixed": (6, 4, 5, 4)}
    for name, pairs in STARTS.items():
        W = hand_built(pairs, 20, 5)
        assert torch.equal(W @ W.T, 2 * torch.eye(5))        # one pair per axis: two columns ±e_k on each
        a = arrangement(W, 10)
        assert (a["A kept"], a["B kept"], a["pairs"], a["mixed pairs"]) == expected[name]
    assert arrangement(hand_built(STARTS["6 A + 4 B, mixed"], 20, 5), 10)["pair list"] == "0-10 1-11 2-12 3-13 4-5"


def test_bad_density_names_the_field():
    with pytest.raises(ValueError, match="sparse_densities"):
        TwoClassStartsConfig(sparse_densities=(0.3,))


def test_smoke_run_scores_same_density_models_on_one_batch():
    experiment = get_experiment("two_class_starts")
    config = dataclasses.replace(experiment.configs("smoke")["toy"], steps=1, lr=1e-9, start_noise=0.0)
    result = experiment.run(config, RunContext(work_dir=None))
    runs = result.tables["instances"]
    assert list(runs.start[:3]) == list(STARTS) and runs["start mixed pairs"].tolist()[:3] == [0, 0, 4]
    # barely trained, so the two 6 A + 4 B starts differ only in which features pair up; the shared batch scores
    # the same kept features' own terms alike, and the all-A start (more dense features kept) lowest
    by_start = runs.set_index("start").loss
    assert by_start["all A"] < by_start["6 A + 4 B, sorted"] and by_start["all A"] < by_start["6 A + 4 B, mixed"]
