"""The lab's toy transformer (`labpy.models.toy`) against plain PyTorch and the TransformerLens bridge it replaced.

1. `speed`: one AdamW training step of four implementations of the same shape and parameter count — the lab's
   model; a plain nanoGPT-style model without hooks whose attention is PyTorch's fused kernel
   (`F.scaled_dot_product_attention`, what nanoGPT uses); the same plain model computing attention by hand
   (masked scores, softmax, as the lab's model does when a hook reads the pattern); and TransformerLens 4's
   `TransformerBridge`. Same batches, one torch thread, blocks of `block_steps` steps that alternate with the
   order rotated every block so drifts in machine load hit all four. Two shapes: the induction model
   (2 layers, attention only, LayerNorm) and the wind-tunnel model (MLP, RMSNorm, a task head). The figure
   is the median over blocks of per-block time ratios. Target (`TARGET`): the lab's step ≤ 1.15× the plain fused one.
2. `reproduce`: a stored run of another experiment retrained on the lab's model with its stored config. The
   same seed gives the same initial weights as the bridge did (tests/test_toy_transformer.py) and the same
   batches, so any difference from the stored run is floating-point order, amplified by training.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..models.toy import ToyTransformerConfig, build_bridge_transformer, build_toy_transformer, load_toy_transformer
from ..store import RunResult
from ..train import step_generator
from ..validation import check_ranges, one_of, require
from .registry import Experiment, RunContext, get_experiment, register

IMPLEMENTATIONS = ("labpy", "plain (fused attention)", "plain (attention by hand)", "TL bridge")
REFERENCE = "plain (fused attention)"
TARGET = 1.15   # the lab model's training step, at most this many times the reference's (the goal)


@dataclass(frozen=True)
class ToyTransformerBenchConfig:
    part: str = "speed"              # "speed" | "reproduce"
    block_steps: int = 30            # speed: training steps per timed block
    blocks: int = 10                 # speed: blocks per implementation, interleaved
    source: str = ""                 # reproduce: "<experiment>/<scale>/<label>", a run of the registry
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, rules={"part": one_of("speed", "reproduce")},
                     positive_int=("block_steps", "blocks"), nonneg_int=("seed",))
        require(self, self.part == "speed" or self.source.count("/") == 2, "source",
                "must name a run as '<experiment>/<scale>/<label>', e.g. 'induction/cpu/two_layer'")


# --- the plain reference: what a tutorial writes, no hooks ---------------------------------------------------
class PlainAttention(nn.Module):
    def __init__(self, config: ToyTransformerConfig, fused: bool):
        super().__init__()
        self.n_heads, self.d_head, self.fused = config.n_heads, config.d_head, fused
        self.qkv = nn.Linear(config.d_model, 3 * config.n_heads * config.d_head)
        self.o = nn.Linear(config.n_heads * config.d_head, config.d_model)
        self.register_buffer("future", torch.ones(config.n_ctx, config.n_ctx, dtype=torch.bool).triu(1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                    # (B, T, d)
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)   # (B, H, T, h) each
        if self.fused:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_head)
            z = scores.masked_fill(self.future[:T, :T], float("-inf")).softmax(-1) @ v
        return self.o(z.transpose(1, 2).reshape(B, T, -1))


def plain_norm(config: ToyTransformerConfig) -> nn.Module:
    return nn.LayerNorm(config.d_model) if config.normalization == "LN" else nn.RMSNorm(config.d_model, eps=1e-5)


class PlainBlock(nn.Module):
    def __init__(self, config: ToyTransformerConfig, fused: bool):
        super().__init__()
        self.ln1, self.attn = plain_norm(config), PlainAttention(config, fused)
        self.mlp = None if config.attn_only else nn.Sequential(
            plain_norm(config), nn.Linear(config.d_model, config.mlp_width), nn.GELU(), nn.Linear(config.mlp_width, config.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x if self.mlp is None else x + self.mlp(x)


class PlainTransformer(nn.Module):
    def __init__(self, config: ToyTransformerConfig, fused: bool = True):
        super().__init__()
        require(config, config.normalization in ("LN", "RMS"), "normalization", "must be 'LN' or 'RMS' here")
        self.embed = nn.Embedding(config.d_vocab, config.d_model)
        self.pos_embed = nn.Embedding(config.n_ctx, config.d_model)
        self.blocks = nn.ModuleList(PlainBlock(config, fused) for _ in range(config.n_layers))
        self.ln_final = plain_norm(config)
        self.unembed = nn.Linear(config.d_model, config.n_outputs, bias=False)   # the lab's bias is fixed at 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:               # (B, T) -> (B, T, V_out)
        x = self.embed(tokens) + self.pos_embed(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))


def build(name: str, config: ToyTransformerConfig, seed: int) -> nn.Module:
    if name == "labpy":
        return build_toy_transformer(config, seed)
    if name == "TL bridge":
        return build_bridge_transformer(config, seed)
    with torch.random.fork_rng(devices=[]):   # its weights are never compared: only its time counts
        torch.manual_seed(seed)
        return PlainTransformer(config, fused=name == REFERENCE)


# --- 1. speed ---------------------------------------------------------------------------------------------
def speed_shapes() -> dict[str, tuple[str, ToyTransformerConfig, int]]:
    """The two toy models the lab trains most: key -> (title, model config, training batch size)."""
    from .induction import InductionConfig
    from .wind_tunnels import WindTunnelConfig

    induction, tunnel = InductionConfig(), WindTunnelConfig()
    shapes = {"induction": (induction.model_config(), induction.batch_size),
              "wind_tunnel": (tunnel.transformer_config(), tunnel.batch_size)}
    return {key: (f"{key.replace('_', ' ')} ({c.n_layers}L, {'attention-only' if c.attn_only else 'with MLP'}, "
                  f"{c.normalization})", c, batch) for key, (c, batch) in shapes.items()}


def time_steps(config: ToyTransformerBenchConfig, shape: ToyTransformerConfig, batch_size: int) -> pd.DataFrame:
    """Seconds per training step of every implementation, per block (interleaved, order rotated per block)."""
    g = step_generator(config.seed, 0)
    batches = [(torch.randint(0, shape.d_vocab, (batch_size, shape.n_ctx), generator=g),
                torch.randint(0, shape.n_outputs, (batch_size, shape.n_ctx), generator=g))
               for _ in range(config.block_steps)]                          # (B, T) inputs, (B, T) targets
    models = {name: build(name, shape, config.seed) for name in IMPLEMENTATIONS}
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert len(set(counts.values())) == 1, f"implementations differ in size: {counts}"
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}

    def block(name: str) -> float:
        model, optimizer = models[name], optimizers[name]
        start = time.perf_counter()
        for tokens, targets in batches:
            loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        loss.item()
        return (time.perf_counter() - start) / len(batches)

    rows = []
    for index in range(config.blocks + 1):                                 # block 0 warms up, not kept
        turn = index % len(IMPLEMENTATIONS)
        order = IMPLEMENTATIONS[turn:] + IMPLEMENTATIONS[:turn]
        for name in order:
            seconds = block(name)
            if index:
                rows.append({"block": index, "implementation": name, "ms_per_step": 1000 * seconds})
    return pd.DataFrame(rows)


def run_speed(config: ToyTransformerBenchConfig) -> RunResult:
    frames, summary = [], {}
    for key, (title, shape, batch_size) in speed_shapes().items():
        times = time_steps(config, shape, batch_size).assign(shape=title)
        wide = times.pivot(index="block", columns="implementation", values="ms_per_step")
        for name in IMPLEMENTATIONS:
            if name != REFERENCE:
                summary[f"{key}_ratio_{name}"] = statistics.median(wide[name] / wide[REFERENCE])
        summary[f"{key}_bridge_over_labpy"] = statistics.median(wide["TL bridge"] / wide["labpy"])
        summary[f"{key}_params"] = sum(p.numel() for p in build_toy_transformer(shape, 0).parameters())
        print(f"{title}: labpy / plain fused {summary[f'{key}_ratio_labpy']:.3f} (target <= {TARGET}); "
              f"bridge / labpy {summary[f'{key}_bridge_over_labpy']:.2f}")
        frames.append(times)
    return RunResult(tables={"step_times": pd.concat(frames, ignore_index=True)}, summary=summary, seed=config.seed)


# --- 2. reproduce -----------------------------------------------------------------------------------------
def run_reproduce(config: ToyTransformerBenchConfig, ctx: RunContext) -> RunResult:
    """The source run retrained here; the induction model also gets its head scores at every checkpoint (what
    the induction page computes), and only the final checkpoint is kept."""
    name, scale, label = config.source.split("/")
    experiment = get_experiment(name)
    source = experiment.configs(scale)[label]
    result = experiment.run(source, ctx)
    if name == "induction":
        from ..interp.heads import head_scores_table
        from .induction import score_tokens

        tokens = score_tokens(source)
        scores = [head_scores_table(load_toy_transformer(source.model_config(), state), tokens,
                                    source.score_half).assign(step=int(checkpoint.split("_")[-1]))
                  for checkpoint, state in result.checkpoints.items()]
        result.tables["head_scores"] = pd.concat(scores, ignore_index=True)
    last = sorted(result.checkpoints)[-1]
    result.checkpoints = {last: result.checkpoints[last]}
    result.summary["source"] = config.source
    return result


def run(config: ToyTransformerBenchConfig, ctx: RunContext) -> RunResult:
    torch.set_num_threads(1)
    return run_speed(config) if config.part == "speed" else run_reproduce(config, ctx)


register(Experiment(
    name="toy_transformer",
    title="Benchmark: the lab's toy transformer vs plain PyTorch and the TL bridge; stored runs reproduced",
    track="The lab itself",
    page="experiments/benchmarks.qmd",
    version=1,
    config_type=ToyTransformerBenchConfig,
    scales={"smoke": {"speed": ToyTransformerBenchConfig(block_steps=2, blocks=1),
                      "reproduce-induction-one_layer": ToyTransformerBenchConfig(
                          part="reproduce", source="induction/smoke/one_layer"),
                      "reproduce-wind_tunnels-bijection-transformer-s0": ToyTransformerBenchConfig(
                          part="reproduce", source="wind_tunnels/smoke/bijection-transformer-s0"),
                      "reproduce-wind_tunnel_targets-bijection-soft-s0": ToyTransformerBenchConfig(
                          part="reproduce", source="wind_tunnel_targets/smoke/bijection-soft-s0")},
            "cpu": {"speed": ToyTransformerBenchConfig(),
                    "reproduce-induction-two_layer": ToyTransformerBenchConfig(
                        part="reproduce", source="induction/cpu/two_layer"),
                    "reproduce-induction-one_layer": ToyTransformerBenchConfig(
                        part="reproduce", source="induction/cpu/one_layer"),
                    "reproduce-wind_tunnels-bijection-transformer-s0": ToyTransformerBenchConfig(
                        part="reproduce", source="wind_tunnels/cpu/bijection-transformer-s0"),
                    "reproduce-wind_tunnel_targets-bijection-soft-s0": ToyTransformerBenchConfig(
                        part="reproduce", source="wind_tunnel_targets/cpu/bijection-soft-s0"),
                    "reproduce-wind_tunnel_targets-bijection-v20-hard-s0": ToyTransformerBenchConfig(
                        part="reproduce", source="wind_tunnel_targets/cpu/bijection-v20-hard-s0"),
                    "reproduce-wind_tunnel_targets-bijection-v20-soft-s0": ToyTransformerBenchConfig(
                        part="reproduce", source="wind_tunnel_targets/cpu/bijection-v20-soft-s0")}},
    run=run,
    description=f"Training-step time ratios side by side (target <= {TARGET}x plain PyTorch); induction runs and "
                "wind tunnels (hard and soft targets) retrained on the lab's model.",
))
