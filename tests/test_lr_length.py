"""lr_length: the sweep's model for four times the steps, nothing else changed (the warm-up is the sweep's, the cosine
spans the new length); a smoke run's tables fill."""

import dataclasses

from labpy.experiments.lr_length import LENGTH_FACTOR
from labpy.experiments.lr_sweep import SweepConfig
from labpy.experiments.lr_width import WIDTH_LRS
from labpy.experiments.registry import get_experiment
from labpy.train import lr_at


def test_cpu_configs_change_only_the_steps_and_the_rate():
    configs = get_experiment("lr_length").configs("cpu")
    assert sorted(c.lr for c in configs.values()) == sorted(WIDTH_LRS)
    for config in configs.values():
        assert config.steps == LENGTH_FACTOR * SweepConfig().steps == 800
        assert dataclasses.replace(config, steps=200, lr=1e-3) == SweepConfig()
        spec = config.train_spec(seed=0)
        assert lr_at(spec, 19) == config.lr and lr_at(spec, 410) == config.lr / 2   # the cosine's middle at 410


def test_smoke_run_fills_the_tables(tmp_store):
    from labpy import results

    runs = results("lr_length", "smoke")
    (entry,) = runs.entries.values()
    assert entry.config.steps == LENGTH_FACTOR * 12
    seeds = entry.table("seeds")
    assert list(seeds.seed) == list(entry.config.seeds) and seeds.final_val_loss.notna().all()
