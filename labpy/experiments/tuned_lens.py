"""The tuned lens beside the logit lens: how much of the final answer is in a middle layer's residual stream,
once a per-layer affine translator is allowed to re-express it?

The logit lens reads block l's residual stream h_l with the model's own final norm and unembedding. Early layers
write in a basis the unembedding does not read, so the lens can miss what is there. A tuned lens (Belrose et al.
2023) learns, for each layer, an affine map h_l -> A_l h_l + b_l into the last layer's basis, trained to make
the lens's distribution match the model's final one (KL). Training it on the full vocabulary is the expensive
part on a CPU, so the run does it in two steps:

1. **least squares**: A_l, b_l fit in closed form to map h_l onto the last block's output h_L (ridge
   regression, Din et al. 2023's "linear shortcut");
2. **tuned**: starting there, `steps` Adam steps on KL(final ‖ lens) over batches of captured streams.

Run (SmolLM2-135M; the smoke scale uses the smoke lab LM): capture h_l for the lensed layers on training text
(stdlib docstrings and training-split stdlib source), fit and train the translators, then score the logit lens,
the least-squares lens and the tuned lens on the held-out prose and code windows the residual-stream page uses
(pydoc topics, held-out source): KL to the final distribution, top-1 agreement, cross-entropy on the next token.
Position 0 (the attention-sink token, with a stream far larger than the rest) is left out everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..interp.hf_hooks import run_with_cache
from ..models.lm import load_lm
from ..store import RunResult
from ..tasks.corpus import encode, stdlib_docstrings
from ..tasks.source_code import source_corpus, spaced_windows
from ..train import step_generator
from ..validation import check_ranges, one_of
from .registry import Experiment, RunContext, register
from .residual_stream import MODELS, ResidualConfig, windows

LENSES = ("logit lens", "least squares", "tuned lens")


@dataclass(frozen=True)
class TunedLensConfig:
    model: str = "smollm2-135m"
    layer_stride: int = 2           # lens every `layer_stride`-th block (0, s, 2s, ...), the last block excluded
    train_windows: int = 64         # windows of each kind of training text (docstrings, source)
    train_seq_len: int = 64
    ridge: float = 1e-2             # of the least-squares fit, relative to the mean diagonal of the Gram matrix
    steps: int = 40                 # KL steps per translator
    batch_tokens: int = 128
    lr: float = 1e-3
    eval_windows: int = 8           # the residual-stream page's held-out windows (per kind)
    eval_seq_len: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("layer_stride", "train_windows", "train_seq_len", "steps", "batch_tokens",
                                         "eval_windows", "eval_seq_len"),
                     positive=("lr",), nonneg=("ridge",), nonneg_int=("seed",), rules={"model": one_of(*MODELS)})


def lensed_layers(n_layers: int, stride: int) -> list[int]:
    """Blocks whose output is lensed: every `stride`-th, never the last (its lens is the model itself)."""
    return list(range(0, n_layers - 1, stride))


@torch.no_grad()
def streams(model, tokens: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
    """{layer: (N, d) block outputs}, for every listed layer and the last, positions 1.. of each window."""
    n_layers = model.config.num_hidden_layers
    names = {f"blocks.{layer}.hook_resid_post" for layer in [*layers, n_layers - 1]}
    _, cache = run_with_cache(model, tokens, lambda n: n in names)
    d = model.config.hidden_size
    return {layer: cache[f"blocks.{layer}.hook_resid_post"][:, 1:].reshape(-1, d) for layer in [*layers, n_layers - 1]}


def read_out(model, resid: torch.Tensor) -> torch.Tensor:
    """(N, d) last-layer-basis stream -> (N, V) log-probabilities through the final norm and the unembedding."""
    return F.log_softmax(model.lm_head(model.model.norm(resid)).float(), -1)


def least_squares(h: torch.Tensor, target: torch.Tensor, ridge: float) -> torch.nn.Linear:
    """Ridge regression h -> target with a bias: (N, d), (N, d) -> Linear(d, d)."""
    mean_h, mean_t = h.mean(0), target.mean(0)
    x, y = (h - mean_h).double(), (target - mean_t).double()
    gram = x.T @ x                                                                       # (d, d)
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    weight = torch.linalg.solve(gram, x.T @ y).T.float()                                 # (d_out, d_in)
    linear = torch.nn.Linear(h.shape[1], h.shape[1])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(mean_t - weight @ mean_h)
    return linear


def kl_to_final(final_logp: torch.Tensor, lens_logp: torch.Tensor) -> torch.Tensor:
    """(N, V), (N, V) -> (N,): KL(final ‖ lens) in nats."""
    return (final_logp.exp() * (final_logp - lens_logp)).sum(-1)


def train_translators(model, translators: dict[int, torch.nn.Linear], train_h: dict[int, torch.Tensor],
                      final: torch.Tensor, config: TunedLensConfig, progress: bool | None = None) -> list[dict]:
    """`steps` Adam steps of KL(final ‖ lens(translator(h_l))), every layer's translator on the same random batch
    of positions (so the final distribution, the costly target, is computed once per step). The translators
    share no parameter and Adam is per-parameter, so this is the same as training each alone. Rows: (layer,
    step, kl)."""
    params = [p for t in translators.values() for p in t.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    rows = []
    for step in tqdm(range(config.steps), desc="tuned lens", disable=None if progress is None else not progress):
        pick = torch.randint(0, len(final), (config.batch_tokens,), generator=step_generator(config.seed, step))
        with torch.no_grad():
            target = read_out(model, final[pick])                                        # (b, V)
        losses = {layer: kl_to_final(target, read_out(model, t(train_h[layer][pick]))).mean()
                  for layer, t in translators.items()}
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        rows += [{"layer": layer, "step": step + 1, "kl": loss.item()} for layer, loss in losses.items()]
    return rows


@torch.no_grad()
def scores(model, h: torch.Tensor, final_logp: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """A lens's KL to the final distribution `final_logp` (N, V), top-1 agreement with it and cross-entropy
    on the next token; h (N, d) is already in the last layer's basis."""
    lens = read_out(model, h)
    return {"kl": kl_to_final(final_logp, lens).mean().item(),
            "top1": (lens.argmax(-1) == final_logp.argmax(-1)).float().mean().item(),
            "ce": F.nll_loss(lens, targets).item()}


def training_text(tokenizer, config: TunedLensConfig) -> torch.Tensor:
    """(2 * train_windows, train_seq_len + 1) windows of docstrings and of training-split source: text that
    the held-out eval windows (pydoc topics, held-out source) do not contain."""
    texts = (stdlib_docstrings()[:400_000], source_corpus("train", max_chars=400_000).text)
    return torch.cat([spaced_windows(encode(tokenizer, t), config.train_windows, config.train_seq_len) for t in texts])


def run(config: TunedLensConfig, ctx: RunContext) -> RunResult:
    torch.manual_seed(config.seed)
    model, tokenizer = load_lm(config.model)
    for p in model.parameters():
        p.requires_grad_(False)
    n_layers = model.config.num_hidden_layers
    layers = lensed_layers(n_layers, config.layer_stride)
    train_h = streams(model, training_text(tokenizer, config)[:, :-1], layers)
    final_train = train_h[n_layers - 1]
    eval_sets = {kind: tokens for kind, tokens in
                 windows(tokenizer, ResidualConfig(config.model, config.eval_windows, config.eval_seq_len)).items()}
    eval_h = {kind: (streams(model, tokens[:, :-1], layers), tokens[:, 2:].reshape(-1))
              for kind, tokens in eval_sets.items()}
    final_logp = {kind: read_out(model, h[n_layers - 1]) for kind, (h, _) in eval_h.items()}     # (N, V) each

    def scored(lens: str, translate) -> list[dict]:
        with torch.no_grad():
            return [{"layer": layer, "lens": lens, "kind": kind,
                     **scores(model, translate(layer, h[layer]), final_logp[kind], targets)}
                    for layer in layers for kind, (h, targets) in eval_h.items()]

    translators = {layer: least_squares(train_h[layer], final_train, config.ridge) for layer in layers}
    rows = scored("logit lens", lambda layer, h: h) + scored("least squares", lambda layer, h: translators[layer](h))
    curve = train_translators(model, translators, train_h, final_train, config, ctx.progress)
    rows += scored("tuned lens", lambda layer, h: translators[layer](h))
    rows += [{"layer": n_layers - 1, "lens": "model", "kind": kind,
              **scores(model, h[n_layers - 1], final_logp[kind], t)}
             for kind, (h, t) in eval_h.items()]
    summary = {"n_layers": n_layers, "d_model": model.config.hidden_size, "lensed_layers": layers,
               "train_tokens": int(len(final_train)), "eval_tokens": {k: int(len(t)) for k, (_, t) in eval_h.items()}}
    return RunResult(tables={"lenses": pd.DataFrame(rows), "training": pd.DataFrame(curve)},
                     summary=summary, seed=config.seed)


register(Experiment(
    name="tuned_lens",
    title="The tuned lens beside the logit lens: what a middle layer already knows",
    track="Representations",
    page="experiments/residual-stream.qmd",
    version=1,
    config_type=TunedLensConfig,
    scales={"smoke": {"lab-lm": TunedLensConfig(model="lab-lm:smoke", layer_stride=1, train_windows=4,
                                                train_seq_len=16, steps=3, batch_tokens=16, eval_windows=2,
                                                eval_seq_len=12)},
            "cpu": {"smollm2": TunedLensConfig(),
                    "smollm2-lr1e-4": TunedLensConfig(lr=1e-4)}},          # the step-size follow-up
    run=run,
    description="Per-layer affine translators (least squares, then KL-trained) read SmolLM2's residual stream; "
                "KL, top-1 and cross-entropy of logit, least-squares and tuned lenses on held-out prose and code.",
))
