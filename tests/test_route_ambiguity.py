"""route_ambiguity: the same seven models as induction_head_count (only the checkpoint interval differs, which the
training does not read), measured on the attention-depth page's batch; a smoke run stores both tables and no weights."""

import dataclasses

from labpy.experiments import attention_depth_analysis as ada
from labpy.experiments.induction import fixed_eval_batch
from labpy.experiments.registry import get_experiment


def test_cpu_configs_are_induction_head_counts():
    ours = get_experiment("route_ambiguity").configs("cpu")
    theirs = get_experiment("induction_head_count").configs("cpu")
    assert list(ours) == list(theirs)
    for label, config in ours.items():
        assert dataclasses.replace(config, checkpoint_every=theirs[label].checkpoint_every) == theirs[label]


def test_smoke_run_stores_regions_and_heads(tmp_store):
    from labpy import results

    run = results("route_ambiguity", "smoke")["heads-4-s1"]
    regions, heads = run.table("regions").set_index("region"), run.table("heads")
    masks = ada.region_masks(fixed_eval_batch(run.config))
    assert list(regions.index) == list(ada.REGIONS)
    assert regions.targets.to_dict() == {r: int(m.sum()) for r, m in masks.items()}
    assert len(heads) == run.config.n_layers * run.config.n_heads
    assert heads[["on candidates", "right share", "induction", "previous_token"]].notna().all().all()
    assert heads["on candidates"].between(0, 1).all() and heads.chance.nunique() == 1   # one batch for every head
    assert not run.checkpoint_names()
