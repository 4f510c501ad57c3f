"""Which parts of SmolLM2 carry the answer of an indirect-object prompt: activation and attribution patching.

Run on clean/corrupted indirect-object prompts that differ in one token (`labpy.tasks.ioi`), scored by the
logit difference logit(IO) − logit(S) at the last position, normalised so 0 is the corrupted run's value and
1 the clean run's:
- the residual stream entering every block (and leaving the last) at every position, patched both ways:
  *denoising* (clean into corrupted: the share restored) and *noising* (corrupted into clean: the share
  destroyed);
- every attention head's output (`hook_z`, all positions), both ways;
- attribution patching's first-order estimate of every one of those patches, from one forward and backward
  pass per run (`labpy.interp.patching`);
- where the heads that matter look from the last position (the IO name, the subject's two mentions);
- a check by ablation: the top heads, mean-ablated together in the clean run, against random sets of heads.

Positions before the changed token hold identical streams in both runs (the model is causal), so patching
there changes nothing: the run verifies they are equal and records 0 rather than rerunning the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..interp.hf_hooks import HookInfo, heads, run_with_cache, run_with_hooks
from ..interp.patching import (attribution, gradients, head_outputs, logit_diff, patch_head, patch_residual,
                               residual_streams)
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.ioi import TEMPLATES, WORDS, ioi_pairs
from ..validation import check_ranges, one_of
from .registry import Experiment, RunContext, register

MODELS = ("smollm2-135m", "lab-lm:smoke")
TOP_K = 10                  # heads kept for the ablation curve
RANDOM_SETS = 10            # random head sets per size, for the ablation baseline
RANDOM_SIZES = (3, 5, 10)


@dataclass(frozen=True)
class PatchingConfig:
    model: str = "smollm2-135m"
    template: str = "store"
    words: str = "names"
    n_pairs: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_pairs",), nonneg_int=("seed",),
                     rules={"model": one_of(*MODELS), "template": one_of(*TEMPLATES), "words": one_of(*WORDS)})


# The cpu and smoke prompts, shared with `component_patching` (same prompt pairs, so the same configs).
PATCHING_SCALES = {"smoke": {"lab-lm": PatchingConfig(model="lab-lm:smoke", words="python words", n_pairs=2)},
                   "cpu": {"smollm2": PatchingConfig()}}


def prompt_summary(pairs, metric: dict) -> dict:
    """What a patching page needs to know of the prompts: mean logit differences and where the names sit."""
    return {"logit_diff_clean": float(metric["clean"]), "logit_diff_corrupted": float(metric["corrupted"]),
            "n_positions": int(pairs.clean.shape[1]), "s2_position": pairs.s2_position,
            "io_position": pairs.io_position, "s1_position": pairs.s1_position,
            "position_labels": pairs.position_labels}


def _bar(total: int, desc: str, ctx: RunContext):
    return tqdm(total=total, desc=desc, disable=None if ctx.progress is None else not ctx.progress, leave=False)


def residual_table(model, pairs, streams: dict, grads: dict, metric: dict, ctx: RunContext) -> pd.DataFrame:
    clean, corrupt = streams["clean"], streams["corrupted"]                             # (L+1, B, T, d)
    span = metric["clean"] - metric["corrupted"]
    n_points, _, n_pos, _ = clean.shape
    same_before = torch.equal(clean[:, :, :pairs.s2_position], corrupt[:, :, :pairs.s2_position])
    den_attr = attribution(grads["corrupted"], corrupt, clean, span, (-1,), 1)          # (L+1, T) share restored
    noi_attr = -attribution(grads["clean"], clean, corrupt, span, (-1,), 1)             # (L+1, T) share destroyed
    rows = []
    bar = _bar(n_points * n_pos, "residual patches", ctx)
    for layer in range(n_points):
        for pos in range(n_pos):
            if pos < pairs.s2_position and same_before:
                den = noi = 0.0                                  # identical streams: a patch changes nothing
            else:
                den = float((logit_diff(patch_residual(model, corrupt, clean, layer, pos), pairs.io, pairs.s).mean()
                             - metric["corrupted"]) / span)
                noi = float((metric["clean"] - logit_diff(patch_residual(model, clean, corrupt, layer, pos),
                                                          pairs.io, pairs.s).mean()) / span)
            rows.append({"layer": layer, "position": pos, "token": pairs.position_labels[pos],
                         "denoising": den, "noising": noi, "denoising_attribution": float(den_attr[layer, pos]),
                         "noising_attribution": float(noi_attr[layer, pos]), "rerun": not (pos < pairs.s2_position
                                                                                          and same_before)})
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


def head_table(model, pairs, streams: dict, z: dict, grads_z: dict, metric: dict, ctx: RunContext) -> pd.DataFrame:
    span = metric["clean"] - metric["corrupted"]
    n_layers, _, _, n_heads, _ = z["clean"].shape
    # z: (L, B, T, H, h); sum over positions and the head's width, mean over prompts -> (L, H)
    den_attr = attribution(grads_z["corrupted"], z["corrupted"], z["clean"], span, (2, 4), 1)
    noi_attr = -attribution(grads_z["clean"], z["clean"], z["corrupted"], span, (2, 4), 1)
    _, patterns = run_with_cache(model, pairs.clean, lambda n: n.endswith("attn.hook_pattern"))
    rows = []
    bar = _bar(n_layers * n_heads, "head patches", ctx)
    for layer in range(n_layers):
        last_row = patterns[f"blocks.{layer}.attn.hook_pattern"][:, :, -1].mean(0)     # (H, T) from the last position
        for head in range(n_heads):
            den = float((logit_diff(patch_head(model, streams["corrupted"], z["clean"][layer], layer, head),
                                    pairs.io, pairs.s).mean() - metric["corrupted"]) / span)
            noi = float((metric["clean"] - logit_diff(patch_head(model, streams["clean"], z["corrupted"][layer], layer,
                                                                 head), pairs.io, pairs.s).mean()) / span)
            rows.append({"layer": layer, "head": head, "denoising": den, "noising": noi,
                         "denoising_attribution": float(den_attr[layer, head]),
                         "noising_attribution": float(noi_attr[layer, head]),
                         "attn_to_io": float(last_row[head, pairs.io_position]),
                         "attn_to_s1": float(last_row[head, pairs.s1_position]),
                         "attn_to_s2": float(last_row[head, pairs.s2_position]),
                         "attn_to_first": float(last_row[head, 0])})
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


def mean_ablated_logit_diff(model, pairs, z_clean: torch.Tensor, chosen: list[tuple[int, int]]) -> float:
    """The clean runs' mean logit difference with the `chosen` (layer, head)s replaced by their mean output over
    the prompts at each position (a mean ablation: it removes what differs between prompts, the names)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in chosen:
        by_layer.setdefault(layer, []).append(head)

    def ablate(z: torch.Tensor, info: HookInfo) -> torch.Tensor:
        z = z.clone()                                                                    # (B, T, H, h)
        hs = by_layer[info.layer]
        z[:, :, hs] = z_clean[info.layer][:, :, hs].mean(0, keepdim=True)
        return z

    logits = run_with_hooks(model, pairs.clean, [(f"blocks.{layer}.attn.hook_z", ablate) for layer in by_layer])
    return float(logit_diff(logits[:, -1], pairs.io, pairs.s).mean())


def ablation_table(model, pairs, heads_frame: pd.DataFrame, z_clean: torch.Tensor, seed: int) -> pd.DataFrame:
    ranked = heads_frame.sort_values("denoising", ascending=False)
    top = list(zip(ranked["layer"].astype(int), ranked["head"].astype(int)))
    rows = [{"set": "top heads", "k": k, "draw": 0,
             "logit_diff": mean_ablated_logit_diff(model, pairs, z_clean, top[:k])} for k in range(1, min(TOP_K, len(top)) + 1)]
    others = top[TOP_K:]
    generator = torch.Generator().manual_seed(seed)
    for k in (k for k in RANDOM_SIZES if k <= len(others)):
        for draw in range(RANDOM_SETS):
            pick = torch.randperm(len(others), generator=generator)[:k].tolist()
            rows.append({"set": "random heads", "k": k, "draw": draw,
                         "logit_diff": mean_ablated_logit_diff(model, pairs, z_clean, [others[i] for i in pick])})
    return pd.DataFrame(rows)


def run(config: PatchingConfig, ctx: RunContext) -> RunResult:
    model, tokenizer = load_lm(config.model)
    pairs = ioi_pairs(tokenizer, config.template, config.words, config.n_pairs)
    streams, metric, grads, grads_z, z, per_prompt = {}, {}, {}, {}, {}, {}
    for run_name, tokens in (("clean", pairs.clean), ("corrupted", pairs.corrupted)):
        streams[run_name], logits = residual_streams(model, tokens)
        per_prompt[run_name] = logit_diff(logits, pairs.io, pairs.s)
        metric[run_name] = per_prompt[run_name].mean()
        grads[run_name], grads_z[run_name], _ = gradients(model, tokens, pairs.io, pairs.s)
        z[run_name] = head_outputs(model, tokens)
    resid = residual_table(model, pairs, streams, grads, metric, ctx)
    heads_frame = head_table(model, pairs, streams, z, grads_z, metric, ctx)
    ablation = ablation_table(model, pairs, heads_frame, z["clean"], config.seed)
    prompts = pd.DataFrame({"prompt": pairs.texts, "clean_logit_diff": per_prompt["clean"].tolist(),
                            "corrupted_logit_diff": per_prompt["corrupted"].tolist()})
    n_heads, n_kv, _ = heads(model)
    summary = {**prompt_summary(pairs, metric), "n_layers": model.config.num_hidden_layers, "n_heads": n_heads,
               "n_kv_heads": n_kv}
    return RunResult(tables={"residual": resid, "heads": heads_frame, "ablation": ablation, "prompts": prompts},
                     summary=summary, seed=config.seed)


register(Experiment(
    name="activation_patching",
    title="Activation and attribution patching of an indirect-object behaviour in SmolLM2",
    track="Attention & circuits",
    page="experiments/activation-patching.qmd",
    version=1,
    config_type=PatchingConfig,
    scales=PATCHING_SCALES,
    run=run,
    description="Residual stream (layers × positions) and per-head patching, denoising and noising, against "
                "attribution patching, with the top heads checked by mean ablation, on SmolLM2-135M.",
))
