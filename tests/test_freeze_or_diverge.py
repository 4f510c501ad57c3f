"""freeze_or_diverge: the norm-free model has no RMSNorm left (and exactly their weights fewer), SGD in
`labpy.train` takes the steps torch's SGD with momentum takes by hand, bad values are named, and a smoke run fills the
sweep's tables."""

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments.freeze_or_diverge import VariantConfig, strip_norms
from labpy.experiments.lr_sweep import CURVE_EVERY, SMOKE
from labpy.train import TrainSpec, train


def test_strip_norms_removes_every_rmsnorm_and_only_their_weights():
    config = VariantConfig(**SMOKE)
    normed, bare = config.build_model(0), VariantConfig(**SMOKE, norm="none").build_model(0)
    norms = [m for m in normed.modules() if type(m).__name__.endswith("RMSNorm")]
    assert len(norms) == 2 * config.n_layers + 1
    assert not [m for m in bare.modules() if type(m).__name__.endswith("RMSNorm")]
    count = lambda m: sum(p.numel() for p in m.parameters())                                   # noqa: E731
    assert count(normed) - count(bare) == (2 * config.n_layers + 1) * config.hidden_size
    # the same initial weights otherwise, and a different function: the norms did something
    bare_params = dict(bare.named_parameters())
    assert all(torch.equal(p, bare_params[n]) for n, p in normed.named_parameters() if n in bare_params)
    ids = torch.tensor([[1, 5, 9, 2]])
    assert not torch.allclose(normed(input_ids=ids).logits, bare(input_ids=ids).logits)
    assert strip_norms(normed) is normed


class _Quadratic(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


def test_sgd_with_momentum_by_hand():
    """loss (w − 3)², w₀ = 0, lr 0.1, momentum 0.9: g₁ = −6, w₁ = 0.6; g₂ = −4.8, buffer −10.2, w₂ = 1.62."""
    model = _Quadratic()
    spec = TrainSpec(steps=2, lr=0.1, optimizer="sgd", momentum=0.9, grad_clip=None, eval_every=2, resume_every=10)
    train(model, lambda step: torch.zeros(1), lambda m, b: (m.w - 3) ** 2, spec, progress=False, device="cpu")
    assert float(model.w.detach()) == pytest.approx(1.62, abs=1e-6)


def test_bad_variant_values_are_named():
    with pytest.raises(ConfigError, match=r"VariantConfig.norm = 'layer' is out of range"):
        VariantConfig(norm="layer")
    with pytest.raises(ConfigError, match=r"VariantConfig.optimizer = 'adam' is out of range"):
        VariantConfig(optimizer="adam")
    with pytest.raises(ConfigError, match=r"TrainSpec.optimizer = 'lion' is out of range"):
        TrainSpec(steps=1, lr=0.1, optimizer="lion")


def test_smoke_runs_fill_the_sweep_tables(tmp_store):
    from labpy import results

    runs = results("freeze_or_diverge", "smoke")
    bare, sgd = runs["no-norm-lr-0.1"], runs["sgd-lr-1"]
    assert bare.config.norm == "none" and sgd.config.optimizer == "sgd"
    assert sgd.summary["n_params"] - bare.summary["n_params"] == (2 * bare.config.n_layers + 1) * bare.config.hidden_size
    for run in (bare, sgd):
        seeds = run.table("seeds")
        assert list(seeds.seed) == list(run.config.seeds) and seeds.final_val_loss.notna().all()
        assert run.config.steps - CURVE_EVERY < run.table("curves").step.max() <= run.config.steps
