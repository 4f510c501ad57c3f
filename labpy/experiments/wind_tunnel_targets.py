"""Wind tunnels, soft targets against hard labels: is the bijection transformer's 0.02-bit floor the labels' doing?

The `wind_tunnels` bijection transformer learns from sampled next values (hard labels), so the only pressure to
put exactly zero probability on revealed values is that they never occur as labels; its entropy error settles
near 0.02 bits with a fraction of a percent of probability left on them. Here the same model, data stream, steps
and schedule train on the exact posterior instead (soft cross-entropy, as the HMM runs already do). The cross-
entropy against the posterior differs from the hard-label loss only by a constant in expectation, so any gain
comes from lower gradient noise, not from a different optimum. The hard-label runs are the stored `wind_tunnels`
entries; only the soft-target runs are made here. At `cpu` scale the paper's V = 20 is trained too, on both kinds
of target (one seed each, the same model and steps: a larger task for the same budget).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..validation import check_ranges, one_of
from .registry import Experiment, register
from .wind_tunnels import WindTunnelConfig, _configs, run


@dataclass(frozen=True)
class TargetsConfig(WindTunnelConfig):
    targets: str = "soft"          # "soft": the exact posterior; "hard": the sampled outcome (bijection only)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, rules={"targets": one_of("soft", "hard")})

    def hard_labels(self) -> bool:
        return self.task == "bijection" and self.targets == "hard"


def _soft_twins(scale: str, seeds: tuple[int, ...], paper_vocab: int | None = None) -> dict[str, TargetsConfig]:
    """The bijection transformer configs of `wind_tunnels` at this scale, trained on the exact posterior; with
    `paper_vocab`, also that vocabulary (the paper's V = 20) on both kinds of target, seed 0."""
    base = _configs(scale)
    twins = {}
    for seed in seeds:
        hard = replace(base[f"bijection-transformer-s{seed}"], n_checkpoints=0)
        twins[f"bijection-soft-s{seed}"] = TargetsConfig(**{**hard.__dict__, "targets": "soft"})
    if paper_vocab:
        hard = replace(base["bijection-transformer-s0"], n_checkpoints=0, vocab=paper_vocab)
        for targets in ("hard", "soft"):
            twins[f"bijection-v{paper_vocab}-{targets}-s0"] = TargetsConfig(**{**hard.__dict__, "targets": targets})
    return twins


register(Experiment(
    name="wind_tunnel_targets",
    title="Wind tunnels: the bijection trained on the exact posterior instead of sampled labels",
    track="Paper reproductions",
    page="experiments/bayesian-wind-tunnels.qmd",
    version=1,
    config_type=TargetsConfig,
    scales={"smoke": _soft_twins("smoke", (0,), paper_vocab=6), "cpu": _soft_twins("cpu", (0, 1), paper_vocab=20),
            "gpu": _soft_twins("gpu", (0,))},
    run=run,
    description="The V=10 bijection transformer of `wind_tunnels`, same steps and data, soft targets; two seeds "
                "against the stored hard-label runs; and the paper's V=20 on both kinds of target.",
))
