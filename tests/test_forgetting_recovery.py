"""forgetting_recovery: its first stage is `lora_rank`'s full fine-tuning at lr 1e-3, step for step; the second stage
and the control start where they should (the fine-tuned model's and the base model's own losses); the weight
distances obey the triangle inequality and match a hand computation on a tiny model."""

import pytest
import torch

from labpy.experiments.forgetting_recovery import ForgettingRecoveryConfig, flat_weights
from labpy.experiments.lora_rank import CPU_BASE


def test_first_stage_is_lora_ranks_full_finetuning():
    from labpy.experiments.registry import get_experiment

    configs = get_experiment("forgetting_recovery").configs("cpu")
    config = configs["full-lr1e-3"]
    assert config.finetune() == get_experiment("lora_rank").configs("cpu")["full_lr0.001"]
    assert configs["recover-lr1e-4"].finetune() == config.finetune()           # only the recovery differs
    assert configs["recover-lr1e-4"].recover_lr == 1e-4
    assert config.finetune().rank == 0 and config.finetune().steps == CPU_BASE.steps
    with pytest.raises(ValueError, match="recover_lr"):
        ForgettingRecoveryConfig(recover_lr=0)


def test_flat_weights_by_hand():
    layer = torch.nn.Linear(2, 3)
    expected = torch.cat([layer.weight.detach().flatten(), layer.bias.detach().flatten()])
    assert torch.equal(flat_weights(layer), expected)


def test_smoke_run_stages_join_up(tmp_store):
    from labpy import results

    entry = results("forgetting_recovery", "smoke")["full-lr1e-3"]
    reference = results("lora_rank", "smoke")["full_lr0.001"]
    s = entry.summary
    # stage 1 repeats lora_rank's run exactly
    assert s["finetune"]["final_pydoc"] == pytest.approx(reference.summary["final_pydoc"], abs=1e-5)
    assert s["finetune"]["final_source"] == pytest.approx(reference.summary["final_source"], abs=1e-5)
    # stage 2 starts from the fine-tuned model, the control from the base model
    assert s["recover"]["base_pydoc"] == pytest.approx(s["finetune"]["final_pydoc"], abs=1e-5)
    assert s["control"]["base_pydoc"] == pytest.approx(s["finetune"]["base_pydoc"], abs=1e-5)
    assert s["recover"]["delta_pydoc"] < 0                      # training on pydoc lowers the pydoc loss
    d = s["distances"]
    assert d["recovered_from_base"] <= d["finetuned_from_base"] + d["recovered_from_finetuned"] + 1e-6
    assert min(d.values()) > 0
    evals = entry.table("evals")
    assert list(evals.stage.unique()) == ["fine-tune on source", "pydoc again", "base on pydoc (control)"]
