"""last_mlp_role: the per-position temperature against a brute-force search, the ablation against a hand-zeroed MLP,
and a run's invariants."""

import dataclasses

import pytest
import torch

from labpy.experiments.last_mlp_role import best_temperature, kl, logits_with_and_without, stand_in_rows


def test_best_temperature_matches_a_grid_search():
    torch.manual_seed(0)
    logits = torch.randn(3, 50, dtype=torch.float64) * 3
    target = (torch.randn(3, 50, dtype=torch.float64) * 2).log_softmax(-1)
    logits[0] *= 30                                             # a spread where Newton's method from 1 overshoots
    beta = best_temperature(target, logits, steps=40)
    grid = torch.linspace(0.001, 5, 20000, dtype=torch.float64)
    for i in range(3):
        scores = torch.stack([kl(target[i:i + 1], (b * logits[i:i + 1]).log_softmax(-1))[0] for b in grid])
        assert float(beta[i]) == pytest.approx(float(grid[scores.argmin()]), abs=1e-3)


def test_a_tempered_copy_is_won_back_by_the_temperature_alone():
    """If the ablated logits are the full ones at another temperature, the temperature wins back everything."""
    torch.manual_seed(1)
    logits = torch.randn(6, 40, dtype=torch.float64) * 2
    full = logits.log_softmax(-1)
    ablated = (logits / 2.5).log_softmax(-1)
    targets = torch.randint(0, 40, (6,))
    rows = {r["stand_in"]: r for r in stand_in_rows(full, ablated, torch.zeros(40, dtype=torch.float64), targets, 30)}
    assert rows["without the MLP"]["kl_won_back"] == pytest.approx(0, abs=1e-12)
    assert rows["a temperature"]["kl_won_back"] == pytest.approx(1, abs=1e-6)
    assert rows["a fixed token prior"]["kl"] == pytest.approx(rows["without the MLP"]["kl"])  # a zero prior does nothing
    assert rows["full model"]["kl"] == pytest.approx(0, abs=1e-12) and rows["full model"]["top1_changed"] == 0


def test_run_zeroes_the_last_mlp_and_keeps_its_invariants(tmp_store):
    from labpy import results
    from labpy.models.lm import load_lm

    entry = results("last_mlp_role", "smoke")["lab-lm"]
    model, _ = load_lm(entry.config.model)
    layer = entry.summary["layer"]
    tokens = torch.randint(0, model.config.vocab_size, (1, 8))
    seen = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [model.model.layers[layer].mlp.register_forward_hook(keep("mlp")),
               model.model.layers[layer].register_forward_hook(keep("block"))]
    with torch.no_grad():
        full_logits = model(tokens).logits
        for h in handles:
            h.remove()
        by_hand = model.lm_head(model.model.norm(seen["block"] - seen["mlp"]))     # the stream less the MLP's write
    full, ablated = logits_with_and_without(model, tokens, layer)
    assert seen["mlp"].abs().max() > 1e-3
    assert torch.allclose(full, full_logits[0, 1:].log_softmax(-1), atol=1e-5)
    assert torch.allclose(ablated, by_hand[0, 1:].log_softmax(-1), atol=1e-5)
    stand_ins = entry.table("stand_ins").set_index(["kind", "stand_in"])
    for kind in ("prose", "code"):
        mine = stand_ins.loc[kind]
        assert mine.loc["full model", "kl"] == pytest.approx(0, abs=1e-5)
        assert mine.loc["a temperature", "kl"] <= mine.loc["without the MLP", "kl"] + 1e-6   # β = 1 is a candidate
        assert mine.loc["prior and temperature", "kl"] <= mine.loc["a fixed token prior", "kl"] + 1e-6
    prior = entry.table("prior")
    for kind, mine in prior.groupby("kind"):
        raised, lowered = (mine[mine.direction == d].sort_values("rank")["shift"] for d in ("raised", "lowered"))
        assert raised.is_monotonic_decreasing and lowered.is_monotonic_increasing
        assert raised.iloc[0] >= lowered.max() and lowered.iloc[0] <= raised.min()
    with pytest.raises(ValueError, match="n_windows=1"):
        dataclasses.replace(entry.config, n_windows=1)
