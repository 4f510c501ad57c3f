"""Grokking over more seeds: when does each seed grok, which frequencies does it choose, and what the
split and weight decay change (open problems 5.4 and 5.5 with more than three seeds).

Each run trains one seed exactly as `grokking` does (`train_grokking`: the same model, data, optimiser, stopping
rule and progress measures), but on the lab's device (CUDA when present) and with a compact entry: no weights
and no per-frequency history, only the evaluations (with the logits' top frequencies at each one), the
restricted/excluded losses at the kept checkpoints and the final per-frequency norms. About 27 KB a seed, so
dozens of seeds fit the store. Alone on this lab's CPU one seed trains at about 15 epochs a second (7-8 minutes
to grok; over 20 when runs share the two cores). The `cpu` scale adds 6 initialisations, 3 splits and one run
without weight decay to `grokking`'s three seeds, and seed 0 with weight decay 0.5 and 0.3; the `gpu` scale
(32, 8 and 4) is for a GPU machine: `scripts/gpu_check.py run OUT --experiment grokking_seeds --labels all`.

The `gpu` scale is not stored. The first attempt (an H200, 2026-12-04) learned what the sweep costs there: this
model's step is a few hundred tiny kernels, so processes sharing the GPU wait on each other. Sixteen worker
processes finished no seed in 470 s; two finished one each in 139 and 173 s, about 3× one CPU core. Next time:
`--workers 1`, or seeds batched into one model.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from ..device import lab_device
from ..store import RunResult
from .grokking import GrokkingConfig, train_grokking
from .registry import Experiment, RunContext, register

INIT_SEEDS = tuple(range(32))       # the same split (data_seed 0), different initialisations
SPLIT_SEEDS = tuple(range(1, 9))    # initialisation seed 0, different 30% training splits
NO_DECAY_SEEDS = tuple(range(4))    # the same split, no weight decay
# On the CPU: the seeds `grokking` has not trained (its seeds 0-2 are the same configs, stored with weights).
CPU_INIT_SEEDS, CPU_SPLIT_SEEDS, CPU_NO_DECAY_SEEDS = tuple(range(3, 9)), (1, 2, 3), (0,)
# Weaker weight decay for seed 0, on the CPU only: if the onset scales as 1 / weight decay (seed 0 crossed it at
# epoch 4,000 with decay 1), 0.3 needs about 13,000 epochs, so these runs may go on to 16,000 (about 18 minutes
# alone on one core); 0.1 would need some 40,000 and is left out.
WEAKER_DECAYS, WEAKER_DECAY_EPOCHS = (0.5, 0.3), 16_000


def top_frequency_lists(stats: pd.DataFrame, n: int) -> pd.Series:
    """Per evaluated step, the `n` frequencies with the largest logit norm, strongest first, as "k1 k2 ..."
    (a string: one short column instead of 56 rows per evaluation)."""
    ranked = stats.sort_values(["step", "logit_norm"], ascending=[True, False]).groupby("step").head(n)
    return ranked.groupby("step").freq.agg(lambda f: " ".join(str(int(k)) for k in f))


def run(config: GrokkingConfig, ctx: RunContext) -> RunResult:
    trained = train_grokking(config, ctx, lab_device())
    stats = trained.log.custom_stats                                   # step, freq, embed_norm, logit_norm
    evals = trained.log.evals.copy()
    evals["top_logit_freqs"] = evals.step.map(top_frequency_lists(stats, config.n_key_freqs))
    final = stats[stats.step == stats.step.max()][["freq", "embed_norm", "logit_norm"]].reset_index(drop=True)
    return RunResult(tables={"evals": evals, "progress": trained.progress, "final_frequencies": final},
                     summary=trained.summary, seed=config.seed)


def _configs(init: tuple[int, ...], splits: tuple[int, ...], no_decay: tuple[int, ...]) -> dict[str, GrokkingConfig]:
    base = GrokkingConfig(hold_epochs=500)
    # the longest runs (no decay: all 12,000 epochs) first, so that parallel workers finish together
    return ({f"nodecay-s{s}": dataclasses.replace(base, seed=s, weight_decay=0.0) for s in no_decay}
            | {f"init-s{s}": dataclasses.replace(base, seed=s) for s in init}
            | {f"split-d{d}": dataclasses.replace(base, data_seed=d) for d in splits})


_SMOKE = GrokkingConfig(p=13, d_model=16, n_heads=2, d_head=8, d_mlp=32, train_fraction=0.5, lr=3e-3, max_epochs=60,
                        eval_every=10, checkpoint_every=20, hold_epochs=20, n_key_freqs=2)

register(Experiment(
    name="grokking_seeds",
    title="Grokking over more seeds: initialisation, split and weight decay",
    track="Toy models",
    page="experiments/grokking.qmd",
    version=1,
    config_type=GrokkingConfig,
    scales={
        "smoke": {"init-s0": _SMOKE, "init-s1": dataclasses.replace(_SMOKE, seed=1),
                  "split-d1": dataclasses.replace(_SMOKE, data_seed=1),
                  "nodecay-s0": dataclasses.replace(_SMOKE, weight_decay=0.0)},
        "cpu": {f"decay{d:g}-s0": GrokkingConfig(hold_epochs=500, weight_decay=d, max_epochs=WEAKER_DECAY_EPOCHS)
                for d in WEAKER_DECAYS} | _configs(CPU_INIT_SEEDS, CPU_SPLIT_SEEDS, CPU_NO_DECAY_SEEDS),
        "gpu": _configs(INIT_SEEDS, SPLIT_SEEDS, NO_DECAY_SEEDS),
    },
    run=run,
    description="The grokking setup over more initialisations, other training splits and without weight decay "
                "(cpu: 6, 3 and 1 beside grokking's three seeds, and seed 0 with weight decay 0.5 and 0.3; gpu: 32, "
                "8 and 4); compact entries (curves, "
                "progress measures, final frequencies, no weights).",
))
