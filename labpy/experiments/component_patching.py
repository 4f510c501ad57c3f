"""Attention or MLP, position by position: which block's write carries SmolLM2's indirect-object answer.

`activation_patching` patched the whole residual stream at each (layer, position), and each head's output at
all positions. This run splits the stream into what each block writes: every block's attention output
(`hook_attn_out`) and MLP output (`hook_mlp_out`) at every position, patched both ways on the same
clean/corrupted prompts (`labpy.tasks.ioi`), scored by the same normalised logit difference at the last position:
*denoising* (clean write into the corrupted run: the share restored) and *noising* (corrupted write into the
clean run: the share destroyed). Positions before the changed token hold identical writes in both runs (the
model is causal), so the run verifies they are equal and records 0 there without rerunning the model.
"""

from __future__ import annotations

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..interp.hf_hooks import HookInfo, run_with_cache, run_with_hooks
from ..interp.patching import logit_diff
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.ioi import ioi_pairs
from .activation_patching import PATCHING_SCALES, PatchingConfig, prompt_summary   # the same prompts
from .registry import Experiment, RunContext, register

COMPONENTS = {"attention": "hook_attn_out", "MLP": "hook_mlp_out"}


def patch_at(source: torch.Tensor, position: int):
    """A hook that replaces one position of a block's write (B, T, d) with `source`'s."""
    def hook(write: torch.Tensor, info: HookInfo) -> torch.Tensor:
        write = write.clone()
        write[:, position] = source[:, position]
        return write
    return hook


@torch.no_grad()
def last_logit_diff(model, tokens: torch.Tensor, pairs, hooks=()) -> torch.Tensor:
    """(B,) logit(IO) − logit(S) at the last position, with `hooks` applied."""
    return logit_diff(run_with_hooks(model, tokens, list(hooks))[:, -1], pairs.io, pairs.s)


def run(config: PatchingConfig, ctx: RunContext) -> RunResult:
    torch.manual_seed(config.seed)
    model, tokenizer = load_lm(config.model)
    pairs = ioi_pairs(tokenizer, config.template, config.words, config.n_pairs)
    n_layers, n_pos = model.config.num_hidden_layers, pairs.clean.shape[1]
    names = {f"blocks.{layer}.{point}" for layer in range(n_layers) for point in COMPONENTS.values()}
    writes, metric = {}, {}
    for run_name, tokens in (("clean", pairs.clean), ("corrupted", pairs.corrupted)):
        with torch.no_grad():
            logits, writes[run_name] = run_with_cache(model, tokens, lambda n: n in names)
        metric[run_name] = logit_diff(logits[:, -1], pairs.io, pairs.s).mean()
    span = metric["clean"] - metric["corrupted"]
    rows = []
    bar = tqdm(total=n_layers * len(COMPONENTS) * n_pos, desc="component patches", leave=False,
               disable=None if ctx.progress is None else not ctx.progress)
    for layer in range(n_layers):
        for component, point in COMPONENTS.items():
            name = f"blocks.{layer}.{point}"
            clean, corrupt = writes["clean"][name], writes["corrupted"][name]                # (B, T, d)
            for pos in range(n_pos):
                same = torch.equal(clean[:, pos], corrupt[:, pos])
                if pos < pairs.s2_position and same:
                    den = noi = 0.0                              # identical writes: a patch changes nothing
                else:
                    den = float((last_logit_diff(model, pairs.corrupted, pairs, [(name, patch_at(clean, pos))]).mean()
                                 - metric["corrupted"]) / span)
                    noi = float((metric["clean"] - last_logit_diff(model, pairs.clean, pairs,
                                                                   [(name, patch_at(corrupt, pos))]).mean()) / span)
                rows.append({"layer": layer, "component": component, "position": pos,
                             "token": pairs.position_labels[pos], "denoising": den, "noising": noi,
                             "rerun": not (pos < pairs.s2_position and same)})
                bar.update()
    bar.close()
    summary = {**prompt_summary(pairs, metric), "n_layers": n_layers}
    return RunResult(tables={"components": pd.DataFrame(rows)}, summary=summary, seed=config.seed)


register(Experiment(
    name="component_patching",
    title="Attention or MLP, position by position: patching each block's writes in SmolLM2",
    track="Attention & circuits",
    page="experiments/activation-patching.qmd",
    version=1,
    config_type=PatchingConfig,
    scales=PATCHING_SCALES,
    run=run,
    description="Every block's attention and MLP output at every position patched clean↔corrupted (denoising and "
                "noising) on SmolLM2-135M's indirect-object prompts.",
))
