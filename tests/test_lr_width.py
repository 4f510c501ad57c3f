"""lr_width: the sweep's model at other widths, nothing else changed; the widths scale the parameter count as a
hand count says; the best rate is found by width on a parabola with a known vertex; a smoke run's tables fill."""

import dataclasses
import math

import pandas as pd
import pytest

from labpy.experiments import batch_lr_analysis
from labpy.experiments.lr_sweep import SweepConfig
from labpy.experiments.lr_width import WIDTH_LRS, WIDTHS, width_config
from labpy.experiments.registry import get_experiment


def test_cpu_configs_change_only_the_width_and_the_rate():
    configs = get_experiment("lr_width").configs("cpu")
    assert len(configs) == len(WIDTHS) * len(WIDTH_LRS) and 64 not in WIDTHS
    for config in configs.values():
        assert config.intermediate_size == 3 * config.hidden_size
        assert dataclasses.replace(config, hidden_size=64, intermediate_size=192, lr=1e-3) == SweepConfig()
    assert {(c.hidden_size, c.lr) for c in configs.values()} == {(w, lr) for w in WIDTHS for lr in WIDTH_LRS}


@pytest.mark.parametrize("width", [32, 128])
def test_parameter_count_by_hand(width):
    """Tied embedding V·d; per layer q (d·d + d), k and v (d·d/2 + d/2 each, two of four heads' width), o d·d,
    gate, up and down 3·d·d each, two RMSNorm weights d; a final norm d."""
    d, vocab = width, SweepConfig().vocab_size
    layer = (d * d + d) + 2 * (d * d // 2 + d // 2) + d * d + 3 * (3 * d * d) + 2 * d
    model = width_config(width, 1e-3).build_model(0)
    assert sum(p.numel() for p in model.parameters()) == vocab * d + 2 * layer + d


def test_fitted_best_lr_by_width_finds_each_vertex_and_the_slope():
    rows = [{"width": w, "lr": lr, "diverged": False, "final_val_loss": (math.log(lr) - math.log(0.32 / w)) ** 2}
            for w in (32, 128) for lr in WIDTH_LRS]                                   # optimum 0.32 / width
    fitted = batch_lr_analysis.fitted_best_lr(pd.DataFrame(rows), "final_val_loss", by="width")
    assert fitted.width.tolist() == [32, 128] and fitted.best_lr.tolist() == pytest.approx([1e-2, 2.5e-3], rel=1e-6)
    assert batch_lr_analysis.scaling_exponent(fitted, by="width") == pytest.approx(-1.0, rel=1e-6)


def test_smoke_run_fills_the_tables(tmp_store):
    from labpy import results

    runs = results("lr_width", "smoke")
    assert {e.config.hidden_size for e in runs.entries.values()} == {8, 32}
    for entry in runs.entries.values():
        seeds = entry.table("seeds")
        assert list(seeds.seed) == list(entry.config.seeds) and seeds.final_val_loss.notna().all()


class _Entry:
    """A stored run as the analysis reads it: a config, a summary and a per-seed table."""

    def __init__(self, width: int, lr: float, warmup_steps: int = 10, steps: int = 200, offset: float = 0.0):
        self.config = type("Config", (), dict(hidden_size=width, lr=lr, warmup_steps=warmup_steps, steps=steps))()
        self.summary = {"n_params": 10 * width}
        # optimum at 0.32 / width; the three seeds sit 0, 0.1 and 0.3 nats above the curve
        loss = (math.log(lr) - math.log(0.32 / width)) ** 2 + offset
        self.seeds = pd.DataFrame({"seed": [0, 1, 2], "final_val_loss": [loss, loss + 0.1, loss + 0.3],
                                   "nonfinite_at_step": [None, None, None]})

    def table(self, name: str) -> pd.DataFrame:
        assert name == "seeds"
        return self.seeds


class _Runs:
    def __init__(self, entries):
        self.entries = {f"run{i}": e for i, e in enumerate(entries)}


def test_width_sweep_takes_the_stored_sweep_as_width_64_and_fits_each_width():
    from labpy.experiments import lr_sweep_analysis as analysis

    sweep = _Runs([_Entry(64, lr) for lr in WIDTH_LRS]
                  + [_Entry(64, 2e-2, warmup_steps=0, offset=-5.0), _Entry(64, 1e-1, offset=-5.0)])   # not in column
    widths = _Runs([_Entry(w, lr) for w in (32, 128) for lr in WIDTH_LRS])
    seeds, fit, mean = analysis.width_sweep(sweep, widths)
    assert len(seeds) == 3 * 3 * len(WIDTH_LRS) and sorted(seeds.width.unique()) == [32, 64, 128]
    assert fit.best_lr.tolist() == pytest.approx([0.32 / 32, 0.32 / 64, 0.32 / 128], rel=1e-6)
    by = fit.set_index("width")
    assert by.best_grid_lr[32] == 1e-2 and by.n_params[128] == 1280
    assert by.spread_at_best.tolist() == pytest.approx([0.3] * 3)                   # the seeds' max minus min
    curve = {(w, lr): (math.log(lr) - math.log(0.32 / w)) ** 2 + 0.4 / 3 for w in (32, 64, 128) for lr in WIDTH_LRS}
    assert by.high_cost[128] == pytest.approx(curve[(128, 5e-2)] - curve[(128, by.best_grid_lr[128])])
    assert analysis.carried_cost(mean, fit, "width", source=32, target=128) == pytest.approx(
        curve[(128, by.best_grid_lr[32])] - curve[(128, by.best_grid_lr[128])])


def test_least_closed_frozen_seed_is_the_smallest_of_each_seeds_worst_layer():
    from labpy.experiments.lr_sweep_analysis import least_closed_frozen_seed

    diagnosis = pd.DataFrame({"seed": [0, 0, 1, 1, 1, 0], "state": ["frozen"] * 5 + ["initialisation"],
                              "measure": ["gates never open"] * 4 + ["weight RMS", "gates never open"],
                              "value": [0.2, 0.5, 0.3, 0.1, 9.0, 0.9]})
    assert least_closed_frozen_seed(diagnosis) == pytest.approx(0.3)     # seed 0's worst 0.5, seed 1's 0.3
