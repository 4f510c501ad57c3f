"""quant_first_token: the restoring hook, and a run where restoring position 0's keys and values in every later layer
undoes the rounding exactly (after the rounded block, other positions read position 0 through nothing else)."""

import pytest
import torch

from labpy.experiments.quant_first_token import FirstTokenConfig, keep_position_0, run
from labpy.experiments.registry import RunContext


def test_keep_position_0_puts_back_only_position_0():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 5, 4)
    clean = torch.zeros(2, 3)
    handle = keep_position_0(layer, clean)
    out = layer(x).detach()
    handle.remove()
    assert torch.equal(out[:, 0], clean)
    assert torch.allclose(out[:, 1:], layer(x)[:, 1:].detach())


def test_restoring_keys_and_values_undoes_the_rounding(tmp_store, tmp_path):
    from labpy import results

    entry = results("quant_first_token", "smoke")["lab-lm"]
    restores = entry.table("restores").set_index(["kind", "variant"])
    n_layers = entry.summary["n_layers"]
    for kind in ("prose", "code"):
        assert abs(restores.loc[(kind, "keys and values restored"), "kl"]) < 1e-9
        per_layer = [v for v in restores.loc[kind].index if "in layer" in v]
        assert len(per_layer) == n_layers - 1 - entry.config.block
    with pytest.raises(ValueError, match="block=1"):
        run(FirstTokenConfig(model="lab-lm:smoke", block=n_layers - 1, n_windows=2, seq_len=16),
            RunContext(work_dir=tmp_path / "w"))
