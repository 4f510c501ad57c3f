"""Three-hop lookup: does each extra attention-only layer buy one more hop?

The two-hop experiment found that one layer follows no hop, two follow one and three follow two. Here the same
in-context dictionary (`labpy.tasks.two_hop` with `max_hops=3`) is queried for f(q), f(f(q)) or f(f(f(q))), one
hop count drawn uniformly per query, and 3- and 4-layer attention-only models are trained on it with the two-hop
experiment's training loop, evaluation and checkpoints (`two_hop.run`). If depth buys one hop per layer past the
first, the 3-layer model follows two hops and guesses on three, and the 4-layer model follows all three.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..tasks.two_hop import TwoHopTask
from ..validation import require
from .registry import Experiment, register
from .two_hop import TwoHopConfig, run


@dataclass(frozen=True)
class ThreeHopConfig(TwoHopConfig):
    """The two-hop config with a hop count per query drawn from 1..max_hops (p_two_hop is not used)."""
    max_hops: int = 3
    n_layers: int = 4
    steps: int = 30000
    checkpoint_every: int = 3000

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, isinstance(self.max_hops, int) and 3 <= self.max_hops < self.n_pairs, "max_hops",
                f"must be an integer from 3 to n_pairs - 1 = {self.n_pairs - 1} (f is one cycle through the "
                f"keys; two hops are the two_hop experiment)")

    def task(self) -> TwoHopTask:
        return TwoHopTask(self.vocab, self.n_pairs, self.n_queries, self.p_two_hop, self.max_hops)


def _configs(**common) -> dict[str, ThreeHopConfig]:
    names = {3: "three_layer", 4: "four_layer"}
    return {f"{names[n]}-s{seed}": ThreeHopConfig(n_layers=n, seed=seed, **common)
            for n, seeds in ((3, (0,)), (4, (0, 1))) for seed in seeds}


register(Experiment(
    name="three_hop",
    title="Three-hop lookup: one more layer, one more hop?",
    track="Attention & circuits",
    page="experiments/three-hop.qmd",
    version=1,
    config_type=ThreeHopConfig,
    scales={
        "smoke": _configs(steps=40, eval_every=20, checkpoint_every=20, eval_batch=64),
        "cpu": _configs(),
    },
    run=run,
    description="3- and 4-layer attention-only models on an in-context dictionary with one-, two- and three-hop "
                "queries: does each layer past the first buy one hop?",
))
