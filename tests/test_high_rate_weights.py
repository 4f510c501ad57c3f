"""high_rate_weights: the watcher's write and shrink against PyTorch's own AdamW step, its memory against the
weights themselves, and a run that is the sweep's run step for step."""

import dataclasses

import pytest
import torch

from labpy.experiments.high_rate_weights import EMBEDDING, WeightWatchConfig, group_of, watcher
from labpy.experiments.lr_sweep import SMOKE, SweepConfig
from labpy.experiments.registry import RunContext, get_experiment
from labpy.models.lab_lm import build_lab_lm, lm_loss
from labpy.train import StatsContext


def test_write_and_shrink_split_pytorchs_adamw_step_and_memory_is_a_cosine():
    lr, decay = 0.05, 2.0
    model = build_lab_lm(SweepConfig(**SMOKE).hf_config(), seed=0)
    names = {id(p): n for n, p in model.named_parameters()}
    initial = {n: float(p.detach().pow(2).mean().sqrt()) for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
    stats = watcher(initial, lag=1, weight_decay=decay)
    batch = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    snapshots, rows = [], []
    for step in (1, 2):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer.zero_grad()
        lm_loss(model, batch).backward()
        optimizer.step()
        rows.append({r["group"]: r for r in stats(StatsContext(model, optimizer, step, lr, names))})
        snapshots.append((before, {n: p.detach().clone() for n, p in model.named_parameters()}))
    before, after = snapshots[1]
    for group in ("matrices", "embedding"):
        mine = [n for n in after if group_of(n) == group]
        # AdamW: w ← w·(1 − lr·decay) − lr·m̂/(√v̂ + ε); the write is what is left once the decay is taken out
        write = [float((after[n] - (1 - lr * decay) * before[n]).pow(2).mean().sqrt()) for n in mine]
        size = [float(after[n].pow(2).mean().sqrt()) / initial[n] for n in mine]
        memory = [float(torch.nn.functional.cosine_similarity(after[n].flatten(), snapshots[0][1][n].flatten(), dim=0))
                  for n in mine]
        row = rows[1][group]
        assert row["write"] == pytest.approx(sum(write) / len(write), rel=1e-4)
        assert row["shrink"] == pytest.approx(lr * decay * sum(initial[n] * s for n, s in zip(mine, size)) / len(mine),
                                              rel=1e-5)
        assert row["size"] == pytest.approx(sum(size) / len(size), rel=1e-6)
        assert row["memory"] == pytest.approx(sum(memory) / len(memory), rel=1e-6)
        assert rows[0][group]["memory"] != rows[0][group]["memory"]          # NaN: nothing 1 step before step 1
    assert group_of(EMBEDDING) == "embedding" and group_of("model.layers.0.mlp.down_proj.weight") == "matrices"
    assert group_of("model.layers.0.input_layernorm.weight") is None


def test_run_is_the_sweep_run_step_for_step(tmp_path):
    experiment = get_experiment("high_rate_weights")
    config = experiment.configs("smoke")["wd-3"]
    result = experiment.run(config, RunContext(work_dir=tmp_path / "watch"))
    sweep_config = SweepConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(SweepConfig)})
    reference = get_experiment("lr_sweep").run(sweep_config, RunContext(work_dir=tmp_path / "sweep"))
    assert result.tables["seeds"].final_val_loss.tolist() == pytest.approx(
        reference.tables["seeds"].final_val_loss.tolist(), abs=1e-6)
    weights = result.tables["weights"]
    assert set(weights.group) == {"matrices", "embedding"}
    assert weights.step.max() == config.steps and (weights.step % config.measure_every == 0).all()
    assert weights[weights.step <= config.lag_steps].memory.isna().all()
    assert weights[weights.step > config.lag_steps].memory.between(-1, 1).all()
    with pytest.raises(ValueError, match="lag_steps"):
        dataclasses.replace(config, lag_steps=3)
    with pytest.raises(ValueError, match="measure_every"):
        WeightWatchConfig(measure_every=0)
