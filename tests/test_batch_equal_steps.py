"""batch_equal_steps: every entry takes batch_lr's batch-32 steps and differs from batch_lr's configs only in the batch
and the examples, so the two experiments' entries compare run for run."""

import dataclasses

from labpy.experiments.batch_lr import _steps
from labpy.experiments.registry import get_experiment


def test_entries_take_batch_32s_steps_and_nothing_else_changes():
    equal_steps = get_experiment("batch_equal_steps").configs("cpu")
    grid = get_experiment("batch_lr").configs("cpu")
    assert {_steps(c) for c in equal_steps.values()} == {_steps(grid["b32"])} == {16}
    for label, config in equal_steps.items():
        assert config.batch_size * _steps(config) == config.examples
        same = dataclasses.replace(grid.get(label, grid["b32"]), batch_size=config.batch_size, examples=config.examples)
        assert same == config, label
    assert [c.batch_size for c in equal_steps.values()] == [4, 8, 16, 64, 128]
