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
