"""What LoRA fine-tuning on code changes inside the lab LM: attention patterns head by head, and representations
layer by layer.

Run (one entry): the base lab LM and, for a few stored LoRA runs of `lora_rank` (one learning rate, ranks 1 to
64), the same model with that run's adapter merged into a copy of its weights (W += ΔW = B·A·α/r on q, k, v and
o of every layer: `merge_adapter`) read the same windows of prose (the pydoc topics, the base model's own
domain), held-out Python source (the fine-tuning domain) and random tokens repeated once. Stored:

- per model, kind of text and head: head scores (previous-token, first-token, attention entropy; induction on
  the repeated tokens) and the **pattern change** — the total-variation distance between the base and the
  fine-tuned model's attention row, averaged over query positions t >= 1 and windows (0: same pattern; 1:
  disjoint);
- per model, kind and layer: **linear CKA** (Kornblith et al. 2019) between the base and the fine-tuned
  residual stream after each block, over all tokens of all windows (position 0 apart), and the stream's
  relative change ‖h_ft − h_base‖ / ‖h_base‖;
- per model and head: the Frobenius norm of the adapter's ΔW restricted to that head — its rows of q_proj, its
  key/value group's rows of k_proj and v_proj, its columns of o_proj — beside the same slices of W;
- per model and kind: the next-token loss on these windows.

The base model is itself a row of every table (model "base"): pattern change 0, CKA 1, ΔW 0 — the sanity
check that the comparison measures nothing when nothing changed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from ..finetune import lora_delta, unflatten_factors
from ..interp.compare import attention_tv, linear_cka
from ..interp.heads import entropy_bits, first_token_scores, induction_scores, previous_token_scores
from ..interp.hf_hooks import heads, kv_head_of, run_with_cache
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.repeated_tokens import repeated_random_tokens
from ..tasks.source_code import prose_and_code_windows
from ..train import step_generator
from ..validation import Rule, check_ranges, one_of, require
from .registry import SCALES, Experiment, RunContext, register, results

KINDS = ("prose", "code", "repeated random")
BASE = "base"
EVEN_AT_LEAST_8 = Rule("an even integer >= 8 (repeated tokens need two equal halves)",
                       lambda v: isinstance(v, int) and v >= 8 and v % 2 == 0, "N")


@dataclass(frozen=True)
class FinetuneHeadsConfig:
    lora_scale: str = "cpu"                 # the scale of the `lora_rank` runs whose adapters are read
    adapters: tuple[str, ...] = ("r1_lr0.005", "r4_lr0.005", "r16_lr0.005", "r64_lr0.005")   # their labels
    n_windows: int = 64                     # windows per kind of text
    seq_len: int = 64                       # tokens per window (the fine-tuning runs trained on 64)
    seed: int = 0                           # the repeated random tokens

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("n_windows",), nonneg_int=("seed",),
                     rules={"lora_scale": one_of(*SCALES), "seq_len": EVEN_AT_LEAST_8})
        require(self, len(self.adapters) > 0 and len(set(self.adapters)) == len(self.adapters), "adapters",
                "is out of range; name one or more distinct lora_rank runs, e.g. --set adapters=r1_lr0.005,r16_lr0.005")
        require(self, BASE not in self.adapters, "adapters", f"is out of range; {BASE!r} names the base model itself")


# ---- the fine-tuned models ----

def merge_adapter(model: torch.nn.Module, factors: Mapping[str, Mapping[str, torch.Tensor]]) -> torch.nn.Module:
    """A deep copy of `model` with every adapter's ΔW = B·A·scale added to its linear layer's weight.

    `factors` as `labpy.finetune.lora_factors` gives them (names relative to the base model, peft's
    `base_model.model.` prefix removed), or `unflatten_factors` of a stored `adapter` checkpoint."""
    merged = copy.deepcopy(model)
    modules = dict(merged.named_modules())
    missing = [name for name in factors if name not in modules]
    if missing:
        raise KeyError(f"adapter modules {missing[:3]} are not in the {type(model).__name__}; is it the model the "
                       f"adapter was trained on? (its names look like {next(iter(modules.keys() - {''}), '?')!r})")
    with torch.no_grad():
        for name, f in factors.items():
            weight = modules[name].weight                                              # (d_out, d_in)
            delta = lora_delta(f)
            if delta.shape != weight.shape:
                raise ValueError(f"{name}: ΔW is {tuple(delta.shape)} but the weight is {tuple(weight.shape)}")
            weight += delta.to(weight.dtype)
    return merged


def head_slices(name: str, n_heads: int, n_kv: int, head_dim: int, head: int) -> tuple[int, slice]:
    """(axis, slice) of one query head's part of a projection: rows of q_proj; rows of its key/value group in
    k_proj and v_proj; columns (the head's z dimensions) of o_proj."""
    proj = name.rsplit(".", 1)[-1]
    kv = head // (n_heads // n_kv)
    if proj == "q_proj":
        return 0, slice(head * head_dim, (head + 1) * head_dim)
    if proj in ("k_proj", "v_proj"):
        return 0, slice(kv * head_dim, (kv + 1) * head_dim)
    if proj == "o_proj":
        return 1, slice(head * head_dim, (head + 1) * head_dim)
    raise ValueError(f"{name}: head slices are defined for q_proj, k_proj, v_proj and o_proj")


def head_delta_norms(model: torch.nn.Module, deltas: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """One row per (layer, head): ‖ΔW‖_F of the head's slice of each adapted projection (`dq`, `dk`, `dv`,
    `do`) and ‖W‖_F of the same slice of the base weight (`wq`, ...). Projections without an adapter get 0."""
    n_heads, n_kv, head_dim = heads(model)
    kv = kv_head_of(model)
    layers = model.model.layers
    rows = []
    for layer, block in enumerate(layers):
        for head in range(n_heads):
            row = {"layer": layer, "head": head, "kv_head": int(kv[head])}
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                name = f"model.layers.{layer}.self_attn.{proj}"
                axis, part = head_slices(name, n_heads, n_kv, head_dim, head)
                w = getattr(block.self_attn, proj).weight.detach().float()
                take = (lambda m: m[part]) if axis == 0 else (lambda m: m[:, part])
                row[f"w{proj[0]}"] = float(take(w).norm())
                row[f"d{proj[0]}"] = float(take(deltas[name]).norm()) if name in deltas else 0.0
            rows.append(row)
    return pd.DataFrame(rows)


# ---- what each model does on the windows ----

def text_windows(tokenizer, config: FinetuneHeadsConfig) -> dict[str, torch.Tensor]:
    """{kind: (n_windows, seq_len + 1)} token ids: prose and code with their next tokens; repeated random tokens
    (two copies of seq_len / 2 ordinary ids, above the first 100) with one more random token at the end."""
    half = config.seq_len // 2
    g = step_generator(config.seed, 0)
    vocab = len(tokenizer) - 100
    random = repeated_random_tokens(config.n_windows, half, vocab, g) + 100                  # (n, seq_len)
    tail = torch.randint(0, vocab, (config.n_windows, 1), generator=g) + 100
    return {**prose_and_code_windows(tokenizer, config.n_windows, config.seq_len + 1),
            "repeated random": torch.cat([random, tail], 1)}


@dataclass
class Reading:
    """One model's forward pass over one kind of text."""

    patterns: torch.Tensor      # (n_layers, B, H, T, T)
    resid: torch.Tensor         # (n_layers, B, T, d) residual stream after each block
    loss: float                 # mean next-token cross-entropy over the scored positions


@torch.no_grad()
def read(model: torch.nn.Module, tokens: torch.Tensor, kind: str) -> Reading:
    """tokens (B, T + 1). Loss over every position for text; over the second copy for repeated tokens (the
    predictions a model can get right only by copying)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]                                          # (B, T)
    logits, cache = run_with_cache(model, inputs, lambda n: n.endswith(("attn.hook_pattern", "hook_resid_post")))
    n_layers = model.config.num_hidden_layers
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)   # (B, T)
    if kind == "repeated random":
        ce = ce[:, inputs.shape[1] // 2:-1]          # predictions of second-copy tokens (the last target is random)
    return Reading(patterns=torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(n_layers)]),
                   resid=torch.stack([cache[f"blocks.{l}.hook_resid_post"] for l in range(n_layers)]),
                   loss=float(ce.mean()))


def head_rows(reading: Reading, base: Reading, kind: str, half: int) -> list[dict]:
    """Per head: scores of this model on `kind` and the pattern change from the base model."""
    p = reading.patterns
    scores = {"previous_token": previous_token_scores(p), "first_token": first_token_scores(p),
              "entropy_bits": entropy_bits(p),
              "induction": (induction_scores(p, half) if kind == "repeated random"
                            else torch.full(p.shape[:1] + p.shape[2:3], float("nan"))),
              "pattern_tv": attention_tv(p, base.patterns)}
    n_layers, n_heads = scores["pattern_tv"].shape
    return [{"kind": kind, "layer": layer, "head": head, **{k: float(v[layer, head]) for k, v in scores.items()}}
            for layer in range(n_layers) for head in range(n_heads)]


def layer_rows(reading: Reading, base: Reading, kind: str) -> list[dict]:
    """Per layer: linear CKA and relative change of the stream after the block, tokens at positions >= 1."""
    rows = []
    for layer in range(reading.resid.shape[0]):
        x = base.resid[layer, :, 1:].flatten(0, 1)                                           # (B·(T−1), d)
        y = reading.resid[layer, :, 1:].flatten(0, 1)
        rows.append({"kind": kind, "layer": layer, "cka": linear_cka(x, y),
                     "rel_change": float(((y - x).norm(dim=-1) / x.norm(dim=-1)).mean())})
    return rows


def run(config: FinetuneHeadsConfig, ctx: RunContext) -> RunResult:
    torch.manual_seed(config.seed)
    lora_runs = results("lora_rank", config.lora_scale)      # `lab run` / tests train missing smoke runs first
    entries = {label: lora_runs[label] for label in config.adapters}
    full = [label for label, e in entries.items() if not e.config.rank]
    if full:
        raise ValueError(f"{full} are full fine-tuning runs, which store only ΔW of the attention layers; name "
                         f"LoRA runs of lora_rank (labels starting with r), e.g. r16_lr0.005")
    bases = {e.config.base for e in entries.values()}
    if len(bases) != 1:
        raise ValueError(f"the adapters were trained on different bases {sorted(bases)}; compare runs of one base")
    base_name = bases.pop()
    base, tokenizer = load_lm(base_name)                     # eager attention: the patterns are returned
    windows = text_windows(tokenizer, config)
    half = config.seq_len // 2
    base_readings = {kind: read(base, tokens, kind) for kind, tokens in windows.items()}

    models = {BASE: (base, {}, 0, 0.0)}
    for label, entry in entries.items():
        factors = unflatten_factors(entry.checkpoint("adapter"))
        models[label] = (None, factors, entry.config.rank, entry.config.lr)

    head_frames, layer_frames, delta_frames, loss_rows = [], [], [], []
    for label, (model, factors, rank, lr) in models.items():
        model = model if model is not None else merge_adapter(base, factors)
        tags = {"model": label, "rank": rank}
        deltas = {name: lora_delta(f) for name, f in factors.items()}
        delta_frames.append(head_delta_norms(base, deltas).assign(**tags))
        for kind, tokens in windows.items():
            reading = read(model, tokens, kind) if label != BASE else base_readings[kind]
            head_frames.append(pd.DataFrame(head_rows(reading, base_readings[kind], kind, half)).assign(**tags))
            layer_frames.append(pd.DataFrame(layer_rows(reading, base_readings[kind], kind)).assign(**tags))
            loss_rows.append({**tags, "lr": lr, "kind": kind, "loss": reading.loss})
        del model

    kv = kv_head_of(base)
    heads_table = pd.concat(head_frames, ignore_index=True)
    heads_table["kv_head"] = kv.numpy()[heads_table["head"].to_numpy()]
    n_heads, n_kv, head_dim = heads(base)
    summary = {"base": base_name, "n_layers": base.config.num_hidden_layers, "n_heads": n_heads, "n_kv_heads": n_kv,
               "head_dim": head_dim, "d_model": base.config.hidden_size,
               "tokens_per_kind": {k: int(v[:, 1:-1].numel()) for k, v in windows.items()},
               "adapters": {label: {"key": e.key, "rank": e.config.rank, "lr": e.config.lr, "steps": e.config.steps,
                                    **{k: e.summary[k] for k in ("base_source", "final_source", "base_pydoc",
                                                                 "final_pydoc", "trainable_params")}}
                            for label, e in entries.items()}}
    return RunResult(tables={"heads": heads_table, "layers": pd.concat(layer_frames, ignore_index=True),
                             "head_deltas": pd.concat(delta_frames, ignore_index=True),
                             "losses": pd.DataFrame(loss_rows)},
                     summary=summary, seed=config.seed)


register(Experiment(
    name="finetune_heads",
    title="What LoRA fine-tuning on code changes in the lab LM's attention and representations",
    track="Fine-tuning",
    page="experiments/finetune-heads.qmd",
    version=1,
    config_type=FinetuneHeadsConfig,
    scales={"smoke": {"lora": FinetuneHeadsConfig(lora_scale="smoke", adapters=("r1_lr0.003", "r4_lr0.003"),
                                                  n_windows=2, seq_len=16)},
            "cpu": {"lora": FinetuneHeadsConfig()}},
    run=run,
    description="Base vs LoRA-fine-tuned lab LM (ranks 1-64): per-head attention change (total variation) and head "
                "scores, per-layer CKA of the residual stream on prose and code, per-head ‖ΔW‖.",
))
