"""quant_sink: the position-limited rounding hook against a swapped weight, what a last-block matrix can reach, and the
stored run against quant_per_matrix's."""

import dataclasses

import pytest
import torch

from labpy.experiments.quant_sink import WHERE, rounded_at


def test_rounded_at_equals_the_swapped_weight_at_its_positions_only():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 5)
    x = torch.randn(2, 6, 8)
    rounded = layer.weight.detach() + 0.1 * torch.randn(5, 8)
    plain = layer(x).detach()
    swapped = torch.nn.functional.linear(x, rounded, layer.bias).detach()
    for positions in WHERE.values():
        handle = rounded_at(layer, rounded, positions)
        got = layer(x).detach()
        handle.remove()
        mask = torch.zeros(6, dtype=torch.bool)
        mask[positions] = True
        assert torch.allclose(got[:, mask], swapped[:, mask], atol=1e-6)
        assert torch.allclose(got[:, ~mask], plain[:, ~mask], atol=1e-6)
    assert torch.allclose(layer(x), plain)                                   # the hook is gone


def test_smoke_run_keeps_the_last_block_off_position_0(tmp_store):
    from labpy import results

    entry = results("quant_sink", "smoke")["lab-lm"]
    splits = entry.table("splits").set_index(["matrix", "kind"])
    last = splits.loc["1.o_proj"]            # the last block's output at position 0 reaches no scored position
    assert (last["kl position 0 only"].abs() < 1e-9).all()
    assert (last["sink everywhere"] == last["sink_fp32"]).all()              # attention is computed before o_proj
    assert (splits["error_pos0"] > 0).all() and (splits["error_rest"] > 0).all()
    with pytest.raises(ValueError, match="matrices"):
        dataclasses.replace(entry.config, matrices=("down_proj",))


def test_stored_run_agrees_with_quant_per_matrix():
    """The committed SmolLM2 runs: rounding a matrix everywhere through the hook costs what quant_per_matrix measured
    with the weight swapped (the smoke model's KLs, near 1e-7, are too small to compare above float32 noise)."""
    from labpy import results

    splits = results("quant_sink", scale="cpu")["smollm2"].table("splits").set_index(["matrix", "kind"])
    singles = results("quant_per_matrix", scale="cpu")["smollm2"].table("matrices")
    singles = singles.assign(name=singles.block.astype(str) + "." + singles.matrix).set_index("name")
    for (matrix, kind), row in splits.iterrows():
        assert row["kl everywhere"] == pytest.approx(singles.loc[matrix, f"kl_{kind}"], rel=0.01), (matrix, kind)
