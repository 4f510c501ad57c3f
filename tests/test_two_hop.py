"""two_hop: the dictionary task against a hand-followed lookup, hop metrics on oracle models, the analysis."""

from __future__ import annotations

import pytest
import torch

from labpy.errors import ConfigError
from labpy.experiments import two_hop as th
from labpy.experiments import two_hop_analysis as tha
from labpy.interp.heads import ablate_head_hook
from labpy.models.toy import build_toy_transformer
from labpy.tasks.two_hop import TwoHopTask, sample
from labpy.train import step_generator

TASK = TwoHopTask(vocab=12, n_pairs=5, n_queries=4)


def test_every_answer_is_the_dictionary_followed_by_hand():
    batch = sample(TASK, 64, step_generator(0, 0))
    K = TASK.n_pairs
    for row in range(64):
        tokens = batch.tokens[row].tolist()
        f = dict(zip(tokens[0:2 * K:2], tokens[1:2 * K:2]))
        assert len(f) == K and set(f.values()) == set(f)        # distinct keys, and every value is a key: a permutation
        queries = tokens[2 * K + 1::2]
        assert len(set(queries)) == TASK.n_queries
        for i, (marker, q) in enumerate(zip(tokens[2 * K::2], queries)):
            two = bool(batch.two_hop[row, i])
            assert marker == (TASK.hop2_marker if two else TASK.hop1_marker)
            assert batch.answers[row, i] == (f[f[q]] if two else f[q])
            assert f[q] != q and f[f[q]] != q                       # a cycle: no answer is the query itself
            assert tokens[batch.hop1_slot[row, i]] == f[q] and tokens[batch.hop1_slot[row, i] - 1] == q
            assert tokens[batch.hop2_slot[row, i]] == f[f[q]] and tokens[batch.hop2_slot[row, i] - 1] == f[q]
    assert 0.3 < batch.two_hop.float().mean() < 0.7


def test_f_is_one_cycle_through_all_keys():
    tokens = sample(TASK, 16, step_generator(1, 0)).tokens
    for row in tokens.tolist():
        f = dict(zip(row[0:10:2], row[1:10:2]))
        start = seen = row[0]
        for _ in range(TASK.n_pairs - 1):
            seen = f[seen]
            assert seen != start
        assert f[seen] == start


@pytest.mark.parametrize("kwargs, message", [
    ({"n_pairs": 13}, "n_pairs=13 must be between 3 and vocab=12"),
    ({"n_pairs": 2}, "n_pairs=2 must be between 3"),
    ({"n_queries": 6}, "n_queries=6 must be between 1 and n_pairs=5"),
    ({"p_two_hop": 1.5}, "p_two_hop=1.5 is not a probability"),
])
def test_bad_task_settings_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TwoHopTask(**{"vocab": 12, "n_pairs": 5, "n_queries": 4, **kwargs})


@pytest.mark.parametrize("kwargs, field", [({"n_pairs": 40}, "n_pairs"), ({"n_queries": 9}, "n_queries"),
                                           ({"p_two_hop": -0.1}, "p_two_hop"), ({"n_layers": 0}, "n_layers")])
def test_bad_configs_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        th.TwoHopConfig(**kwargs)


class Oracle(torch.nn.Module):
    """Puts all its logit on f(q) (or f(f(q)) with `two_hops`) at every query position: a model with a known score."""

    def __init__(self, batch, two_hops: bool | None):
        super().__init__()
        self.batch, self.two_hops = batch, two_hops

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, TASK.n_tokens)
        hop1 = tokens.gather(1, self.batch.hop1_slot)
        hop2 = tokens.gather(1, self.batch.hop2_slot)
        if self.two_hops is None:
            pick = torch.where(self.batch.two_hop, hop2, hop1)       # the right hop for each marker
        else:
            pick = hop2 if self.two_hops else hop1
        logits[:, TASK.query_positions()] = 30.0 * torch.nn.functional.one_hot(pick, TASK.n_tokens).float()
        return logits


def test_hop_metrics_score_oracles_that_follow_one_two_or_the_right_number_of_hops():
    batch = sample(TASK, 128, step_generator(2, 0))
    right = th.hop_metrics(Oracle(batch, None), batch, TASK)
    assert right["acc_hop1"] == right["acc_hop2"] == 1.0 and right["loss_hop2"] < 1e-6
    once = th.hop_metrics(Oracle(batch, False), batch, TASK)
    assert once["acc_hop1"] == 1.0 and once["acc_hop2"] == 0.0 and once["loss_hop2"] > 25


def test_query_attention_reads_the_slots_of_each_query():
    config = th.TwoHopConfig(vocab=12, n_pairs=5, n_queries=4, n_layers=2)
    model = build_toy_transformer(config.model_config(), seed=0).eval()
    batch = sample(config.task(), 8, step_generator(3, 0))
    table = tha.query_attention(model, batch, config.task()).set_index(["label", "queries"])
    _, cache = model.run_with_cache(batch.tokens)
    pattern = cache["blocks.1.attn.hook_pattern"][:, 2]                       # (B, T, T) of head L1H2
    q_pos = config.task().query_positions()
    hand = [pattern[b, q_pos[i], batch.hop2_slot[b, i]] for b in range(8) for i in range(4) if batch.two_hop[b, i]]
    assert abs(table.loc[("L1H2", "two-hop"), "hop-2 answer"] - torch.stack(hand).mean().item()) < 1e-6
    prev = cache["blocks.0.attn.hook_pattern"][:, 1]
    hand_prev = torch.stack([prev[:, v, v - 1] for v in (1, 3, 5, 7, 9)]).mean().item()
    assert abs(table.loc[("L0H1", "one-hop"), "previous_token"] - hand_prev) < 1e-6


def test_smoke_runs_store_every_depth_and_the_analysis_reads_them(tmp_store):
    from labpy import results

    runs = results("two_hop", "smoke")
    models = tha.hop_models(runs)
    assert [m.n_layers for m in models] == [1, 2, 2, 3, 3]
    final = tha.final_table(models)
    assert final[["acc_hop1", "acc_hop2"]].stack().between(0, 1).all()
    m = models[-1]
    batch = th.eval_batch(m.config, 32)
    ablations = tha.ablation_table(m.model(), batch, m.config.task())
    assert len(ablations) == 1 + 3 * m.config.n_heads
    none = ablations.set_index("label").loc["none"]
    assert none.acc_hop2 == pytest.approx(th.hop_metrics(m.model(), batch, m.config.task())["acc_hop2"])
    heads = tha.carriers(tha.query_attention(m.model(), batch, m.config.task()))
    assert heads["previous-token"].startswith("L0")
    formed = tha.formation(m, heads, n=16)
    assert formed.step.tolist() == m.entry.checkpoint_steps() and formed.acc_hop2.between(0, 1).all()


def test_layer_ablation_zeroes_every_subset_and_agrees_with_one_head_at_a_time():
    """2^H subsets; the empty one is the intact model, the singletons are `ablation_table`'s rows, and the full
    one is the layer's z zeroed in one hook, the same hook that `answers_without_layer` must match by hand."""
    config = th.TwoHopConfig(vocab=12, n_pairs=5, n_queries=4, n_layers=2)
    model, task = build_toy_transformer(config.model_config(), seed=0).eval(), config.task()
    batch = sample(task, 16, step_generator(4, 0))
    subsets = tha.layer_ablation_table(model, batch, task, layer=1).set_index("zeroed")
    assert len(subsets) == 2 ** config.n_heads and sorted(subsets.n_zeroed.value_counts()) == [1, 1, 4, 4, 6]
    assert subsets.loc["none", "loss_hop2"] == pytest.approx(th.hop_metrics(model, batch, task)["loss_hop2"])
    singles = tha.ablation_table(model, batch, task).set_index("label")
    for head in range(config.n_heads):
        assert subsets.loc[f"L1H{head}", "loss_hop2"] == pytest.approx(singles.loc[f"L1H{head}", "loss_hop2"])
    everything = "+".join(f"L1H{h}" for h in range(config.n_heads))
    assert subsets.loc[everything, "kept"] == "none"

    def zero_all(z, hook=None):
        return torch.zeros_like(z)

    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", zero_all)]):
        assert subsets.loc[everything, "loss_hop2"] == pytest.approx(th.hop_metrics(model, batch, task)["loss_hop2"])
        predicted = th.answer_logits(model, batch, task).argmax(-1)
    first_hop = batch.tokens.gather(1, batch.hop1_slot)
    hand = (predicted == first_hop)[batch.two_hop].float().mean().item()
    assert tha.answers_without_layer(model, batch, task, layer=1, hops=2, answered=1) == pytest.approx(hand)


def test_direct_attributions_and_every_other_write_add_up_to_the_logit():
    """The heads' direct attributions, with the embeddings', the output biases' and the final norm's bias, through
    the same scale, make the right answer's logit less the mean logit, query by query (checked on the means)."""
    config = th.TwoHopConfig(vocab=12, n_pairs=5, n_queries=4, n_layers=2)
    model, task = build_toy_transformer(config.model_config(), seed=0).eval(), config.task()
    with torch.no_grad():
        for block in model.blocks:                       # non-zero biases, so forgetting one would show
            block.attn.o.bias.normal_()
        model.ln_final.bias.normal_()
    batch = sample(task, 16, step_generator(5, 0))
    heads = sum(tha.direct_attribution(model, batch, task, layer).sum() for layer in range(config.n_layers))

    _, cache = model.run_with_cache(batch.tokens)
    q = task.query_positions()
    scale = cache["ln_final.hook_scale"][:, q]                                            # (B, Q, 1)
    rest = cache["hook_embed"][:, q] + cache["hook_pos_embed"][:, q] + sum(b.attn.o.bias for b in model.blocks)
    rest = (rest - rest.mean(-1, keepdim=True)) / scale * model.ln_final.weight + model.ln_final.bias
    logits_rest = rest @ model.W_U                                                         # (B, Q, V)
    logits = model(batch.tokens)[:, q]
    pick = lambda x: (x.gather(-1, batch.answers[..., None]).squeeze(-1) - x.mean(-1))[batch.two_hop].mean()
    assert heads + pick(logits_rest).item() == pytest.approx(pick(logits).item(), abs=1e-4)
    # zeroing a head removes its own attribution and rescales the others by the change in the norm's scale
    without = tha.direct_attribution(model, batch, task, 1, zeroed=(0,))
    intact = tha.direct_attribution(model, batch, task, 1)
    assert without["L1H0"] == 0.0 and without["L1H1"] != pytest.approx(intact["L1H1"])


def test_frozen_norm_ablation_matches_a_hand_built_final_norm():
    """Zero a head, take the last residual stream the ablated model computes, and apply the final LayerNorm by
    hand with the intact model's scale: the loss must be `hop_metrics_with_frozen_norm`'s, and differ from the
    plain ablation's (where the norm rescales)."""
    import torch.nn.functional as F

    config = th.TwoHopConfig(vocab=12, n_pairs=5, n_queries=4, n_layers=2)
    model, task = build_toy_transformer(config.model_config(), seed=1).eval(), config.task()
    batch = sample(task, 16, step_generator(6, 0))
    frozen = tha.hop_metrics_with_frozen_norm(model, batch, task, layer=1, head=2)

    _, intact = model.run_with_cache(batch.tokens)
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", ablate_head_hook(2))]):
        plain = th.hop_metrics(model, batch, task)
        _, ablated = model.run_with_cache(batch.tokens)
    resid = ablated["blocks.1.hook_resid_post"]
    norm = model.ln_final
    normed = (resid - resid.mean(-1, keepdim=True)) / intact["ln_final.hook_scale"] * norm.weight + norm.bias
    logits = (normed @ model.W_U)[:, task.query_positions()]
    losses = F.cross_entropy(logits.transpose(1, 2), batch.answers, reduction="none")
    assert frozen["loss_hop2"] == pytest.approx(losses[batch.two_hop].mean().item(), rel=1e-5)
    assert frozen["loss_hop2"] != pytest.approx(plain["loss_hop2"], rel=1e-3)


def test_first_hop_heads_are_the_layer_one_heads_on_f_of_q_from_those_queries():
    import pandas as pd

    rows = [{"layer": layer, "label": f"L{layer}H{h}", "queries": kind, "hop-1 answer": score}
            for layer in (0, 1, 2) for h in range(3)
            for kind, score in (("one-hop", 0.9 if (layer, h) == (1, 0) else 0.1),
                                ("two-hop", 0.6 if h == 2 else 0.49))]
    attention = pd.DataFrame(rows)
    assert tha.first_hop_heads(attention, hops=1) == ["L1H0"]
    assert tha.first_hop_heads(attention, hops=2) == ["L1H2"]              # L0H2 and L2H2 are not layer 1
    assert tha.first_hop_heads(attention, hops=2, level=0.4) == ["L1H0", "L1H1", "L1H2"]
