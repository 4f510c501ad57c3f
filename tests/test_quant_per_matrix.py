"""quant_per_matrix: the rounding is NF4's and is undone, the damage measures against a hand computation, and a run's
output errors and mixed-precision choice against the model itself."""

import dataclasses

import pytest
import torch

from labpy.experiments.quant_per_matrix import MATRICES, damage, linear_weights, log_probs, rounded
from labpy.nf4 import nf4_codebook, roundtrip


def test_damage_against_a_hand_computation():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]).log()
    q = torch.tensor([[0.5, 0.3, 0.2], [0.25, 0.5, 0.25]]).log()
    windows = {"prose": torch.tensor([[9, 9, 0, 2]])}                    # targets of positions 1, 2: tokens 0 and 2
    got = damage({"prose": p}, {"prose": q}, windows)
    kl_rows = [0.7 * torch.log(torch.tensor(0.7 / 0.5)) + 0.2 * torch.log(torch.tensor(0.2 / 0.3))
               + 0.1 * torch.log(torch.tensor(0.1 / 0.2)),
               0.25 * 0 + 0.25 * torch.log(torch.tensor(0.5)) + 0.5 * torch.log(torch.tensor(2.0))]
    assert got["kl_prose"] == pytest.approx(float(sum(kl_rows) / 2), rel=1e-5)
    loss_rise = (-torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.7))
                 - torch.log(torch.tensor(0.25)) + torch.log(torch.tensor(0.5))) / 2
    assert got["dloss_prose"] == pytest.approx(float(loss_rise), rel=1e-5)
    same = damage({"prose": p}, {"prose": p}, windows)
    assert same == {"kl_prose": 0.0, "dloss_prose": 0.0}


def test_rounded_rounds_to_nf4_and_restores_even_after_an_error():
    layers = {"0.q_proj": torch.nn.Linear(64, 32, bias=False), "0.k_proj": torch.nn.Linear(64, 16, bias=False)}
    before = {n: m.weight.data.clone() for n, m in layers.items()}
    codebook = nf4_codebook()
    with pytest.raises(RuntimeError, match="inside"):
        with rounded(layers, {"0.q_proj": (codebook, 64)}):
            assert torch.equal(layers["0.q_proj"].weight, roundtrip(before["0.q_proj"], codebook, 64))
            assert not torch.equal(layers["0.q_proj"].weight, before["0.q_proj"])
            assert torch.equal(layers["0.k_proj"].weight, before["0.k_proj"])     # not named, not touched
            raise RuntimeError("inside")
    for name, layer in layers.items():
        assert torch.equal(layer.weight, before[name])
    with rounded(layers, {"0.q_proj": (None, 64), "0.k_proj": (codebook, 64)}):          # None: kept in fp32
        assert torch.equal(layers["0.q_proj"].weight, before["0.q_proj"])
        assert torch.equal(layers["0.k_proj"].weight, roundtrip(before["0.k_proj"], codebook, 64))


def test_run_keeps_its_invariants(tmp_store):
    from labpy import results
    from labpy.models.lm import load_lm

    entry = results("quant_per_matrix", "smoke")["lab-lm"]
    model, tokenizer = load_lm(entry.config.model)
    linears = linear_weights(model)
    all_linear = {n for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(linears) == len(all_linear) == len(MATRICES) * model.config.num_hidden_layers
    matrices, wholes = entry.table("matrices"), entry.table("wholes")
    assert len(matrices) == entry.summary["n_matrices"] == len(linears)
    assert (matrices[["kl_prose", "kl_code"]] >= -1e-7).all().all()
    assert ((matrices.weight_error > 0.02) & (matrices.weight_error < 0.3)).all()     # 4 bits lose a few % of W

    # the output error of one matrix, by hand: capture its input on a window and round its weight
    from labpy.tasks.source_code import prose_and_code_windows

    windows = prose_and_code_windows(tokenizer, entry.config.n_windows, entry.config.seq_len + 1)
    name = "1.o_proj"
    seen = []
    handle = linears[name].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        for w in windows.values():
            model(w[:, :-1])
    handle.remove()
    weight = linears[name].weight.data
    delta = roundtrip(weight, nf4_codebook(), entry.config.block) - weight
    x = torch.cat([s[:, 1:].flatten(0, 1) for s in seen])                          # (N, d_in), positions 1..
    by_hand = float((x @ delta.T).norm() / (x @ weight.T).norm())
    row = matrices[(matrices.block == 1) & (matrices.matrix == "o_proj")].iloc[0]
    assert row.output_error == pytest.approx(by_hand, rel=1e-4)

    # the whole model in NF4 again, by the context: the stored KL, and the fp32 model back afterwards
    reference = log_probs(model, windows)
    with rounded(linears, {n: (nf4_codebook(), entry.config.block) for n in linears}):
        again = damage(reference, log_probs(model, windows), windows)
    assert again["kl_code"] == pytest.approx(wholes.kl_code.iloc[0], rel=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(log_probs(model, windows).values(), reference.values()))

    # the kept matrices are the costliest by mean KL, and the mixed run quantizes the rest
    cost = matrices[["kl_prose", "kl_code"]].mean(axis=1)
    costliest = matrices.loc[cost.sort_values(ascending=False).index[:len(entry.summary["kept"])]]
    assert entry.summary["kept"] == [f"{b}.{m}" for b, m in zip(costliest.block, costliest.matrix)]
    assert wholes.n_quantized.tolist() == [len(linears), len(linears) - len(entry.summary["kept"])]
    with pytest.raises(ValueError, match="keep_share"):
        dataclasses.replace(entry.config, keep_share=1.0)
