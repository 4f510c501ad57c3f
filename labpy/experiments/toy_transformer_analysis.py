"""What the benchmarks page computes about the toy transformer: the last checkpoint of every stored toy-model run
read through it and through the TL bridge (logits compared), and the stored runs retrained on it (induction,
a wind tunnel) beside the originals."""

from __future__ import annotations

import pandas as pd
import torch

from ..models.toy import load_bridge_transformer, load_toy_transformer
from ..train import step_generator
from .induction_analysis import head_scores_over_training, head_summary, phase_change
from .registry import results

# every experiment whose stored checkpoints are toy transformers, and how its config names the model's
MODEL_CONFIG = {"induction": "model_config", "attention_depth": "model_config", "wind_tunnels": "transformer_config"}


@torch.no_grad()
def checkpoint_agreement(batch: int = 16) -> pd.DataFrame:
    """Per stored run (its last checkpoint): the largest |logit difference| between the lab's model and the TL
    bridge loading the same weights, on random token ids."""
    rows = []
    for experiment in MODEL_CONFIG:
        for label, entry in results(experiment).entries.items():
            if experiment == "wind_tunnels" and entry.config.model != "transformer":
                continue
            config = getattr(entry.config, MODEL_CONFIG[experiment])()
            state = entry.step_checkpoint(entry.checkpoint_steps()[-1])
            tokens = torch.randint(0, config.d_vocab, (batch, config.n_ctx), generator=step_generator(0, 0))
            reference = load_bridge_transformer(config, state)(tokens)                 # (B, T, V_out)
            diff = (load_toy_transformer(config, state)(tokens) - reference).abs().max().item()
            rows.append({"experiment": experiment, "run": label, "parameters": sum(v.numel() for v in state.values()),
                         "max |logit difference|": diff, "max |logit|": reference.abs().max().item()})
    return pd.DataFrame(rows)


def induction_facts(evals: pd.DataFrame, scores: pd.DataFrame) -> dict[str, float]:
    """The numbers the induction page rests on, from an eval table and head scores over training."""
    heads = head_summary(scores)
    last = evals.iloc[-1]
    facts = {"final repeat loss": float(last.loss_repeat), "final first-copy loss": float(last.loss_first_copy),
             "final repeat accuracy": float(last.acc_repeat),
             "best induction score": float(heads["induction_head"]["induction"]),
             "best previous-token score": float(heads["prev_head"]["previous_token"])}
    if scores.layer.max() > 0:
        facts["phase change midpoint (step)"] = phase_change(evals)["middle_step"]
    return facts


WIND_TUNNEL_FACTS = {"entropy_mae": "entropy MAE (bits)", "kl": "KL to the exact posterior (bits)",
                     "final_train_loss": "final training loss"}


def reproduction_table() -> pd.DataFrame:
    """Each stored run that was retrained on the lab's model (`toy_transformer` runs named `reproduce-…`) beside
    its retraining: the induction page's numbers for induction runs, the summary's for a wind tunnel (hard or soft
    targets)."""
    rows = []
    for again in results("toy_transformer").entries.values():
        if again.config.part != "reproduce":
            continue
        experiment, _, label = again.config.source.split("/")
        entry = results(experiment)[label]
        if experiment == "induction":
            before = induction_facts(entry.table("evals"), head_scores_over_training(entry))
            after = induction_facts(again.table("evals"), again.table("head_scores"))
        else:
            before, after = ({title: float(run.summary[key]) for key, title in WIND_TUNNEL_FACTS.items()}
                             for run in (entry, again))
        for measure, value in before.items():
            rows.append({"experiment": experiment, "run": label, "measure": measure, "TL bridge (stored)": value,
                         "lab model (retrained)": after[measure], "difference": after[measure] - value})
    return pd.DataFrame(rows)


def curve_gap(label: str, column: str = "loss_repeat") -> pd.DataFrame:
    """The two runs' eval curves side by side (long format, for a chart)."""
    stored = results("induction")[label].table("evals")[["step", column]].assign(model="TL bridge (stored)")
    again = results("toy_transformer")[f"reproduce-induction-{label}"].table("evals")[["step", column]]
    return pd.concat([stored, again.assign(model="lab model (retrained)")], ignore_index=True)
