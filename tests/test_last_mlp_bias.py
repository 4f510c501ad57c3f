"""last_mlp_bias: the prior's direction against a known direction, the mean write against the model run by hand, the
neuron shares adding up, and its fixed token prior matching last_mlp_role's on the same windows."""

import dataclasses

import pytest
import torch

from labpy.experiments.last_mlp_bias import prior_direction, replace_write


def test_prior_direction_recovers_a_planted_direction():
    torch.manual_seed(0)
    unembed = torch.randn(400, 12)
    planted = torch.randn(12)
    prior = unembed @ planted + 3.0                                  # any constant shift is removed by centring
    found, r2 = prior_direction(prior, unembed)
    assert r2 == pytest.approx(1, abs=1e-9)
    assert torch.nn.functional.cosine_similarity(found, planted, dim=0) > 0.999
    noise = torch.randn(400, generator=torch.Generator().manual_seed(1))
    assert prior_direction(noise, unembed)[1] < 0.1                   # about d / V = 0.03 for a random prior


def test_replace_write_keeps_position_zero():
    write = torch.arange(24.0).view(1, 4, 6)
    mean = torch.full((6,), -1.0)
    assert torch.equal(replace_write(mean)(write, None)[0, 0], write[0, 0])
    assert (replace_write(mean)(write, None)[0, 1:] == -1).all()
    assert (replace_write(None)(write, None)[0, 1:] == 0).all()
    assert torch.equal(write, torch.arange(24.0).view(1, 4, 6))      # the hook does not write into its input


def test_run_against_the_model_and_last_mlp_role(tmp_store):
    from labpy import results
    from labpy.models.lm import load_lm
    from labpy.tasks.source_code import prose_and_code_windows

    entry = results("last_mlp_bias", "smoke")["lab-lm"]
    role = results("last_mlp_role", "smoke")["lab-lm"]
    assert (entry.config.n_windows, entry.config.seq_len) == (role.config.n_windows, role.config.seq_len)
    stand_ins = entry.table("stand_ins").set_index(["kind", "stand_in"])
    role_rows = role.table("stand_ins").set_index(["kind", "stand_in"])
    for kind in ("prose", "code"):
        # the same windows and the same prior; only position 0's write differs, which no scored position reads
        assert stand_ins.loc[(kind, "the fixed token prior"), "kl"] == pytest.approx(
            role_rows.loc[(kind, "a fixed token prior"), "kl"], rel=1e-4)
        assert stand_ins.loc[(kind, "without the MLP"), "kl"] == pytest.approx(
            role_rows.loc[(kind, "without the MLP"), "kl"], rel=1e-4)
        assert stand_ins.loc[(kind, "full model"), "kl"] == pytest.approx(0, abs=1e-6)
        assert entry.summary["per_kind"][kind]["prior_r2"] > 0.999          # every logit change is in the span

    # the mean write by hand: the last MLP's output averaged over the fitting windows' positions 1..
    model, tokenizer = load_lm(entry.config.model)
    layer = entry.summary["layer"]
    half = entry.config.n_windows // 2
    fit = prose_and_code_windows(tokenizer, entry.config.n_windows, entry.config.seq_len + 1)["code"][:half, :-1]
    seen = []
    handle = model.model.layers[layer].mlp.register_forward_hook(lambda m, args, out: seen.append(out))
    with torch.no_grad():
        model(fit)
    handle.remove()
    mean_write = seen[0][:, 1:].flatten(0, 1).mean(0)
    down = model.model.layers[layer].mlp.down_proj.weight.detach()
    writers = entry.table("writers")
    code = writers[writers.kind == "code"]
    direction = mean_write / mean_write.norm()
    for _, row in code.iterrows():                                      # share = mean activation × W_down column · û
        by_hand = row.mean_activation * float(direction @ down[:, int(row.neuron)]) / float(mean_write.norm())
        assert row["share"] == pytest.approx(by_hand, rel=1e-3, abs=1e-6)
    assert code["share"].abs().is_monotonic_decreasing and code.cumulative_abs_share.is_monotonic_increasing
    with pytest.raises(ValueError, match="n_windows=1"):
        dataclasses.replace(entry.config, n_windows=1)
