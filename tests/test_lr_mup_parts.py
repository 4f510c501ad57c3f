"""lr_mup_parts: each config undoes exactly the μP changes it names (checked against the standard and the μP model of
the same seed), all four undone is the standard model, bad parts are named, and a smoke run's tables fill."""

import math

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments.lr_mup import mup_config
from labpy.experiments.lr_mup_parts import PARTS, MupPartsConfig, parts_config
from labpy.experiments.lr_width import width_config
from labpy.experiments.registry import get_experiment
from labpy.models.mup import apply_mup

IDS = torch.randint(0, 1024, (1, 10), generator=torch.Generator().manual_seed(6))


def _logits(config):
    with torch.no_grad():
        return config.build_model(0)(input_ids=IDS).logits


def test_all_four_undone_is_the_standard_model_and_none_undone_is_mup():
    standard, mup = width_config(128, 5e-3), mup_config(128, 5e-3)
    assert torch.equal(_logits(parts_config(128, 5e-3, PARTS)), _logits(standard))
    assert parts_config(128, 5e-3, PARTS).train_spec(0) == standard.train_spec(0)
    assert torch.equal(_logits(parts_config(128, 5e-3)), _logits(mup))
    assert parts_config(128, 5e-3).train_spec(0) == mup.train_spec(0)


def test_each_part_undone_alone_changes_only_itself():
    mup = mup_config(128, 5e-3)
    output = parts_config(128, 5e-3, ("output",)).build_model(0)
    with torch.no_grad():
        out = output(input_ids=IDS, output_hidden_states=True)
    assert torch.allclose(out.logits, out.hidden_states[-1] @ output.model.embed_tokens.weight.T, atol=1e-6)  # no ÷2
    assert output.model.layers[0].self_attn.scaling == pytest.approx(1 / 8)
    init = parts_config(128, 5e-3, ("init",)).build_model(0)
    q = init.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q, width_config(128, 5e-3).build_model(0).model.layers[0].self_attn.q_proj.weight)
    attention = parts_config(128, 5e-3, ("attention",)).build_model(0)
    assert attention.model.layers[1].self_attn.scaling == pytest.approx(1 / math.sqrt(32))
    assert parts_config(128, 5e-3, ("rates",)).train_spec(0).lr_scales == ()
    assert torch.equal(_logits(parts_config(128, 5e-3, ("rates",))), _logits(mup))


def test_bad_parts_are_named():
    with pytest.raises(ConfigError, match=r"standard_parts = \('bias',\) names \['bias'\], not μP changes; choose"):
        MupPartsConfig(hidden_size=128, intermediate_size=384, standard_parts=("bias",))
    with pytest.raises(ValueError, match=r"apply_mup parts \['rates'\] are not μP changes of the model"):
        apply_mup(width_config(128, 5e-3).build_model(0), 64, ("rates",))


def test_cpu_configs():
    configs = get_experiment("lr_mup_parts").configs("cpu")
    undone = [c for c in configs.values() if len(c.standard_parts) == 1]
    assert sorted({c.standard_parts[0] for c in undone}) == sorted(PARTS) and len(undone) == 12
    assert all(c.hidden_size == 128 and c.seeds == (0, 1, 2) for c in undone)
    reseeded = [c for c in configs.values() if c.seeds == (3, 4, 5)]
    assert sorted((len(c.standard_parts), c.lr) for c in reseeded) == [(0, 2e-3), (0, 5e-3), (4, 2e-3), (4, 5e-3)]


def test_smoke_run_fills_the_tables(tmp_store):
    from labpy import results

    runs = results("lr_mup_parts", "smoke")
    assert len(runs.entries) >= 4
    for entry in runs.entries.values():
        seeds = entry.table("seeds")
        assert list(seeds.seed) == list(entry.config.seeds) and seeds.final_val_loss.notna().all()
