"""What the wind-tunnel pages compute from the store: headline errors over seeds, geometry, ablations, dissociation.

Both `experiments/bayesian-wind-tunnels.qmd` and `papers/bayesian-geometry.qmd` read these, so a number the
paper page quotes is the number the experiment page shows. Everything here is analysis of stored runs (seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, wraps

import pandas as pd
import torch
import torch.nn.functional as F

from ..interp import bayes_geometry as geo
from ..store import checkpoint_name
from ..tasks.posterior_math import entropy_bits
from .registry import StoredRuns, results
from .wind_tunnels import (TunnelBatch, WindTunnelConfig, errors_by_position, eval_batch,
                           load_model)

ANALYSIS_SEQUENCES = 500   # sequences for geometry and ablations: seconds on a CPU, spread well under 1e-3 bits


def _errors_from_logits(logits: torch.Tensor, batch: TunnelBatch) -> dict[str, float]:
    """Entropy MAE and mean KL of full-sequence logits (B, T, C) at the batch's prediction positions."""
    errors = errors_by_position(F.softmax(logits[:, batch.positions].double(), dim=-1), batch.posterior)
    return {"entropy_mae": float(errors.entropy_error.mean()), "kl": float(errors.kl.mean())}


def leak_by_position(model: torch.nn.Module, batch: TunnelBatch) -> pd.DataFrame:
    """Bijection, per position: probability left on revealed values, the entropy excess over Bayes, and the excess
    the leak alone explains (see `WindTunnelReport.leak`)."""
    with torch.no_grad():
        q = F.softmax(model(batch.tokens)[:, batch.positions].double(), dim=-1)  # (B, P, V)
    p = batch.posterior.double()
    leaked = (q * (p == 0)).sum(-1).mean(0)                                       # (P,)
    n = (p > 0).sum(-1)[0].double()                                               # (P,) values still possible
    m = p.shape[-1] - n                                                           # (P,) values revealed
    eps = leaked.clamp(min=1e-12)
    h2 = -(eps * torch.log2(eps) + (1 - eps) * torch.log2(1 - eps))
    predicted = torch.where(m > 0, h2 + eps * torch.log2(m.clamp(min=1) / n), torch.zeros_like(eps))
    excess = (entropy_bits(q) - entropy_bits(p)).mean(0)                          # (P,) signed
    return pd.DataFrame({"position": range(1, len(n) + 1), "values_revealed": m.long().numpy(),
                         "leaked_mass": leaked.numpy(), "entropy_excess": excess.numpy(),
                         "excess_from_leak": predicted.numpy()})


def _memo(method: Callable) -> Callable:
    """Cache a report method per instance and arguments: both pages ask for the same analyses more than once."""
    @wraps(method)
    def cached(self: WindTunnelReport, *args, **kwargs):
        key = (method.__name__, args, tuple(sorted(kwargs.items())))
        if key not in self._cache:
            self._cache[key] = method(self, *args, **kwargs)
        return self._cache[key]
    return cached


@dataclass
class WindTunnelReport:
    runs: StoredRuns
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def scale(self) -> str:
        return self.runs.scale

    def entry(self, task: str, model: str, seed: int = 0):
        return self.runs[f"{task}-{model}-s{seed}"]

    @cached_property
    def seeds(self) -> list[int]:
        return sorted({int(label.rsplit("-s", 1)[1]) for label in self.runs.entries})

    # --- headline errors --------------------------------------------------------------------------------------
    @cached_property
    def headline(self) -> pd.DataFrame:
        """One row per run: task, model, seed, parameters, entropy MAE, KL, wall time."""
        rows = []
        for label, entry in self.runs.entries.items():
            task, model, seed = label.rsplit("-", 2)
            rows.append({"task": task, "model": model, "seed": int(seed[1:]), "params": entry.summary["n_params"],
                         "entropy_mae": entry.summary["entropy_mae"], "kl": entry.summary["kl"],
                         "wall_s": entry.provenance["wall_time_s"]})
        return pd.DataFrame(rows)

    @cached_property
    def by_model(self) -> pd.DataFrame:
        """Mean and standard deviation over seeds, per task and model."""
        g = self.headline.groupby(["task", "model"])
        out = g[["entropy_mae", "kl"]].agg(["mean", "std", "min", "max"])
        out.columns = [f"{a}_{b}" for a, b in out.columns]
        return out.join(g.params.first()).join(g.seed.count().rename("seeds")).reset_index()

    def mean(self, task: str, model: str, metric: str = "entropy_mae") -> float:
        row = self.by_model.query("task == @task and model == @model")
        return float(row[f"{metric}_mean"].iloc[0])

    def gap(self, task: str, metric: str = "entropy_mae") -> float:
        """MLP error over transformer error (means over seeds)."""
        return self.mean(task, "mlp", metric) / self.mean(task, "transformer", metric)

    def positions(self, task: str) -> pd.DataFrame:
        frames = [self.entry(task, model, seed).table("positions").assign(model=model, seed=seed)
                  for model in ("transformer", "mlp") for seed in self.seeds]
        return pd.concat(frames, ignore_index=True)

    def curves(self, task: str) -> pd.DataFrame:
        frames = [self.entry(task, model, seed).table("evals")[["step", "entropy_mae", "kl"]].assign(model=model, seed=seed)
                  for model in ("transformer", "mlp") for seed in self.seeds]
        return pd.concat(frames, ignore_index=True)

    def lengths(self) -> pd.DataFrame:
        frames = [self.entry("hmm", "transformer", seed).table("lengths").assign(seed=seed) for seed in self.seeds]
        return pd.concat(frames, ignore_index=True)

    # --- models and data for the live analyses ----------------------------------------------------------------
    def config(self, task: str) -> WindTunnelConfig:
        return self.entry(task, "transformer").config

    def model(self, task: str, seed: int = 0, step: int | None = None):
        return load_model(self.entry(task, "transformer", seed), step)

    def batch(self, task: str, n: int = ANALYSIS_SEQUENCES, length: int | None = None) -> TunnelBatch:
        return eval_batch(self.config(task), n, length)

    @_memo
    def leak(self, seed: int = 0) -> pd.DataFrame:
        """Bijection: where the entropy error comes from. Per position: the probability the model still gives to
        values already revealed (impossible ones), the entropy error, and the entropy excess that leak alone
        would cause if spread evenly — ε spread over the m revealed values, 1 − ε evenly over the n possible ones:
        ΔH = h₂(ε) + ε·log₂(m/n), with h₂ the binary entropy."""
        return leak_by_position(self.model("bijection", seed), self.batch("bijection", 2000))

    # --- geometry -----------------------------------------------------------------------------------------------
    @_memo
    def key_orthogonality(self) -> pd.DataFrame:
        """Layer-0 key cosines per head and seed, with the random and (seed 0) initial-weights baselines."""
        config = self.config("bijection")
        frames = []
        for seed in self.seeds:
            entry = self.entry("bijection", "transformer", seed)
            state = entry.step_checkpoint(entry.checkpoint_steps()[-1])
            frames.append(geo.key_orthogonality(state, config.n_heads, range(config.vocab)).assign(seed=seed, weights="trained"))
        first = self.entry("bijection", "transformer", 0)
        if 0 in first.checkpoint_steps():
            frames.append(geo.key_orthogonality(first.step_checkpoint(0), config.n_heads, range(config.vocab))
                          .assign(seed=0, weights="initial"))
        return pd.concat(frames, ignore_index=True)

    def random_key_baseline(self) -> float:
        config = self.config("bijection")
        return geo.random_key_baseline(config.vocab, config.d_model // config.n_heads)

    @cached_property
    def bijection_cache(self) -> dict[str, torch.Tensor]:
        return geo.attention_and_qk(self.model("bijection"), self.batch("bijection").tokens)

    @_memo
    def qk_alignment(self) -> pd.DataFrame:
        """Long table: layer, prediction index t, key position j, mean cosine (seed 0, averaged over sequences)."""
        batch = self.batch("bijection")
        cos = geo.qk_alignment(self.bijection_cache["q"], self.bijection_cache["k"], batch.positions)  # (L, P, T)
        L, P, T = cos.shape
        rows = [{"layer": l, "t": p + 1, "position": j, "kind": "value" if j % 2 else "key", "cosine": float(cos[l, p, j])}
                for l in range(L) for p in range(P) for j in range(T) if j <= int(batch.positions[p])]
        return pd.DataFrame(rows)

    @_memo
    def attention_entropy(self) -> pd.DataFrame:
        return geo.attention_entropy(self.bijection_cache["pattern"], self.batch("bijection").positions)

    @_memo
    def elimination_attention(self) -> pd.DataFrame:
        return geo.elimination_attention(self.bijection_cache["pattern"], self.config("bijection").vocab - 1)

    @_memo
    def manifold(self, task: str, seed: int = 0, step: int | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
        """PCA points (PC1, PC2, entropy, position) and the manifold statistics, at a training step (default: last)."""
        batch = self.batch(task)
        reps = geo.final_representations(self.model(task, seed, step), batch.tokens, batch.positions)  # (B, P, d)
        B, P, d = reps.shape
        h = entropy_bits(batch.posterior.double())                                  # (B, P)
        position = torch.arange(1, P + 1).repeat(B)                                 # (B·P,)
        flat, h_flat = reps.reshape(B * P, d), h.reshape(B * P)
        stats = geo.value_manifold(flat, h_flat, groups=position if task == "hmm" else None)
        pcs = geo.pca_points(flat)
        points = pd.DataFrame({"pc1": pcs[:, 0], "pc2": pcs[:, 1], "entropy": h_flat.numpy(), "position": position.numpy()})
        return points, stats

    @_memo
    def manifold_over_seeds(self, task: str) -> pd.DataFrame:
        return pd.DataFrame([{"task": task, "seed": seed, **self.manifold(task, seed)[1]} for seed in self.seeds])

    # --- ablations ---------------------------------------------------------------------------------------------
    @_memo
    def ablations(self, task: str, seed: int = 0, length: int | None = None, heads: bool = True) -> pd.DataFrame:
        """Error with nothing removed, each head zeroed (if `heads`), each block bypassed, and the attention of
        the top two layers removed, on the same sequences."""
        config, model = self.config(task), self.model(task, seed)
        batch = self.batch(task, length=length)
        cases: list[tuple[str, int | None, int | None, list]] = [("none", None, None, [])]
        if heads:
            cases += [("head", l, h, geo.ablation_hooks(head=(l, h)))
                      for l in range(config.n_layers) for h in range(config.n_heads)]
        cases += [("layer", l, None, geo.ablation_hooks(layer=l)) for l in range(config.n_layers)]
        top_two = list(range(config.n_layers - 2, config.n_layers))
        cases.append(("top-2 attention", None, None, geo.ablation_hooks(attention_layers=top_two)))
        rows = []
        for kind, layer, head, hooks in cases:
            errors = _errors_from_logits(geo.logits_with_hooks(model, batch.tokens, hooks), batch)
            rows.append({"ablation": kind, "layer": layer, "head": head, **errors})
        return pd.DataFrame(rows)

    # --- dissociation over training ----------------------------------------------------------------------------
    @_memo
    def dissociation(self, n: int = 200) -> pd.DataFrame:
        """For each stored checkpoint of bijection seed 0, against the last checkpoint: attention change (mean JS
        divergence of attention rows at prediction positions, bits), representation change (1 − linear CKA of
        final-layer representations), PC1–entropy correlation, and the error of that checkpoint."""
        entry = self.entry("bijection", "transformer", 0)
        steps = entry.checkpoint_steps()
        batch = self.batch("bijection", n)
        h = entropy_bits(batch.posterior.double()).reshape(-1)
        snapshots = {}
        for step in steps:
            model = load_model(entry, step)
            patterns = geo.attention_and_qk(model, batch.tokens)["pattern"][:, :, :, batch.positions]  # (L, B, H, P, T)
            reps = geo.final_representations(model, batch.tokens, batch.positions).reshape(-1, model.cfg.d_model)
            with torch.no_grad():
                errors = _errors_from_logits(model(batch.tokens), batch)
            snapshots[step] = (patterns, reps, errors)
        final_patterns, final_reps, _ = snapshots[steps[-1]]
        rows = []
        for step in steps:
            patterns, reps, errors = snapshots[step]
            pc1 = torch.as_tensor(geo.pca_points(reps, 1)[:, 0])
            corr = abs(float(torch.corrcoef(torch.stack([pc1, h]))[0, 1]))
            rows.append({"step": step, "checkpoint": checkpoint_name(step),
                         "attention_js": float(geo.js_divergence_bits(patterns, final_patterns).mean()),
                         "representation_change": 1 - geo.linear_cka(reps, final_reps),
                         "pc1_entropy_corr": corr, **errors})
        return pd.DataFrame(rows)


def report(scale: str | None = None) -> WindTunnelReport:
    return WindTunnelReport(results("wind_tunnels", scale))


def measurements(rep: WindTunnelReport) -> dict[str, float | str]:
    """Every number the predictions and the paper's claims are checked against."""
    out: dict[str, float | str] = {}
    for task in ("bijection", "hmm"):
        for model in ("transformer", "mlp"):
            for metric in ("entropy_mae", "kl"):
                row = rep.by_model.query("task == @task and model == @model").iloc[0]
                out[f"{task}_{model}_{metric}"] = float(row[f"{metric}_mean"])
                out[f"{task}_{model}_{metric}_max"] = float(row[f"{metric}_max"])
                out[f"{task}_{model}_{metric}_std"] = float(row[f"{metric}_std"])
        out[f"{task}_gap_mae"] = rep.gap(task, "entropy_mae")
        out[f"{task}_gap_kl"] = rep.gap(task, "kl")
    out["seeds"] = len(rep.seeds)

    lengths = rep.lengths()
    config = rep.config("hmm")
    per_length = lengths.groupby("test_length")[["kl", "entropy_error"]].mean()
    out["hmm_train_length"], out["hmm_test_length"] = config.hmm_length, config.test_length
    out["hmm_kl_train_length"] = float(per_length.kl.loc[config.hmm_length])
    out["hmm_kl_test_length"] = float(per_length.kl.loc[config.test_length])
    longest = lengths[lengths.test_length == config.test_length]
    out["hmm_kl_beyond_training"] = float(longest[longest.position > config.hmm_length].kl.mean())
    out["hmm_kl_within_training"] = float(longest[longest.position <= config.hmm_length].kl.mean())

    keys = rep.key_orthogonality()
    out["key_cos_trained"] = float(keys[keys.weights == "trained"].mean_abs_cos.mean())
    out["key_cos_initial"] = float(keys[keys.weights == "initial"].mean_abs_cos.mean()) if (keys.weights == "initial").any() else float("nan")
    out["key_cos_random"] = rep.random_key_baseline()

    for task in ("bijection", "hmm"):
        manifold = rep.manifold_over_seeds(task)
        for stat in ("pc1_ratio", "pc1_pearson", "probe_r2", *(("pc1_pearson_within",) if task == "hmm" else ())):
            out[f"{task}_{stat}"] = float(manifold[stat].mean())

    elimination = rep.elimination_attention()
    best = elimination.loc[elimination.kl_to_uniform_revealed.idxmin()]
    out["elimination_kl"] = float(best.kl_to_uniform_revealed)
    out["elimination_head"] = f"L{int(best.layer)}H{int(best['head'])}"
    out["elimination_mass"] = float(best.mass_on_values)

    entropy = rep.attention_entropy()
    out["attention_entropy_first"] = float(entropy.attention_entropy_fraction.iloc[0])
    out["attention_entropy_last"] = float(entropy.attention_entropy_fraction.iloc[-1])

    ab = rep.ablations("bijection")
    base = float(ab[ab.ablation == "none"].kl.iloc[0])
    l0 = ab[(ab.ablation == "head") & (ab.layer == 0)].sort_values("kl", ascending=False)
    out["ablation_base_kl"] = base
    out["frame_head"] = f"L0H{int(l0['head'].iloc[0])}"
    out["frame_head_rise"] = float(l0.kl.iloc[0] - base)
    out["frame_head_ratio"] = float((l0.kl.iloc[0] - base) / max(l0.kl.iloc[1] - base, 1e-12))
    layers = ab[ab.ablation == "layer"]
    out["layer_ablation_min_factor"] = float(layers.kl.min() / base)
    out["layer_ablation_weakest"] = f"block {int(layers.loc[layers.kl.idxmin()].layer)}"

    for k, label in ((config.hmm_length, "train"), (config.test_length, "test")):
        table = rep.ablations("hmm", length=k, heads=False)
        out[f"hmm_top2_kl_{label}"] = float(table[table.ablation == "top-2 attention"].kl.iloc[0])

    dis = rep.dissociation()
    mid = dis.iloc[(dis.step - dis.step.max() / 2).abs().argmin()]
    first = dis.iloc[0]
    out["dissociation_mid_step"] = int(mid.step)
    out["attention_change_left"] = float(mid.attention_js / first.attention_js)
    out["representation_change_left"] = float(mid.representation_change / first.representation_change)
    out["kl_mid"], out["kl_final"] = float(mid.kl), float(dis.kl.iloc[-1])
    return out


# --- soft targets against hard labels (`wind_tunnel_targets`) ---------------------------------------------------
def targets_table(rep: WindTunnelReport, targets_runs: StoredRuns) -> pd.DataFrame:
    """One row per bijection transformer run: vocabulary, targets (the V = 10 hard-label runs are the `wind_tunnels`
    entries; the rest come from `wind_tunnel_targets`), seed, entropy MAE, KL and the largest probability left on
    revealed values (over positions, 2000 held-out sequences)."""
    runs = [rep.entry("bijection", "transformer", seed) for seed in rep.seeds] + list(targets_runs.entries.values())
    rows = []
    for entry in runs:
        config = entry.config
        leak = leak_by_position(load_model(entry), eval_batch(config, 2000))
        rows.append({"vocab": config.vocab, "targets": "hard" if config.hard_labels() else "soft", "seed": config.seed,
                     "entropy_mae": entry.summary["entropy_mae"], "kl": entry.summary["kl"],
                     "max_leak": float(leak.leaked_mass.max()), "minutes": entry.provenance["wall_time_s"] / 60})
    return pd.DataFrame(rows).sort_values(["vocab", "targets", "seed"], ignore_index=True)


def targets_curves(rep: WindTunnelReport, targets_runs: StoredRuns) -> pd.DataFrame:
    """Held-out entropy MAE and KL over training for every bijection transformer of `targets_table`."""
    runs = [rep.entry("bijection", "transformer", seed) for seed in rep.seeds] + list(targets_runs.entries.values())
    return pd.concat([entry.table("evals")[["step", "entropy_mae", "kl"]].assign(
        vocab=entry.config.vocab, targets="hard labels" if entry.config.hard_labels() else "soft targets",
        seed=entry.config.seed) for entry in runs], ignore_index=True)


def targets_measurements(table: pd.DataFrame) -> dict[str, float]:
    """Means over seeds per vocabulary and kind of target, and soft/hard ratios: what the targets predictions are
    checked on (`soft_kl` at V = 10, `v20_soft_kl` at V = 20, ...)."""
    out: dict[str, float] = {}
    for vocab, group in table.groupby("vocab"):
        prefix = "" if vocab == 10 else f"v{vocab}_"
        means = group.groupby("targets")[["entropy_mae", "kl", "max_leak"]].mean()
        for kind in means.index:
            for metric in means.columns:
                out[f"{prefix}{kind}_{metric}"] = float(means.loc[kind, metric])
        if {"hard", "soft"} <= set(means.index):
            for metric in means.columns:
                out[f"{prefix}soft_over_hard_{metric}"] = out[f"{prefix}soft_{metric}"] / out[f"{prefix}hard_{metric}"]
    return out
