"""The path expansion and the ablations built on it, against the model's own forward pass: removing a layer-0 head's
write from the stream, with layer 1's patterns and the norms' scales held at the clean run's, must change the logits
by exactly that head's direct term and its virtual terms; the query/key and whole-head ablations must match the
same edits made by hooks; the summaries must read hand-made patterns and writes as computed by hand."""

from dataclasses import replace

import pytest
import torch

from labpy.interp.virtual_heads import (ablation_costs, attention_by_offset, centred_target_logit, expand_paths,
                                        head_profiles, head_removal_costs, mean_ablated_logits, path_name,
                                        path_table, target_losses, where_layer1_looks_costs, write_shares)
from labpy.models.toy import ToyTransformer, ToyTransformerConfig

CONFIG = ToyTransformerConfig(n_layers=2, d_model=16, n_heads=3, d_head=4, d_vocab=11, n_ctx=12)


def random_model(zero_biases: bool = False) -> ToyTransformer:
    """A random model whose norms have random gains and shifts (an untrained model's are 1 and 0)."""
    torch.manual_seed(0)
    model = ToyTransformer(CONFIG)
    for name, param in model.named_parameters():
        with torch.no_grad():
            if zero_biases and name.endswith("bias"):
                param.zero_()
            elif name.endswith("ln1.weight") or name.endswith("ln_final.weight"):
                param.uniform_(0.5, 1.5)
            elif not param.any() or name.endswith(("ln1.bias", "ln_final.bias")):
                param.normal_(0, 0.3)
            else:
                param.normal_(0, 0.5)
    return model


TOKENS = torch.randint(0, CONFIG.d_vocab, (5, CONFIG.n_ctx), generator=torch.Generator().manual_seed(1))


def test_the_terms_sum_to_the_logits_and_every_path_is_named():
    model = random_model()
    expansion = expand_paths(model, TOKENS)
    assert torch.allclose(sum(expansion.terms.values()), model(TOKENS).double(), atol=1e-4)
    H = CONFIG.n_heads
    assert len(expansion.names("virtual")) == H * H
    assert len(expansion.names("layer 1 from embed")) == H
    assert len(expansion.names("direct")) == 1 + H          # the embeddings and each layer-0 head
    assert path_name("L0H2", 1) in expansion.names("virtual")


def frozen_hooks(cache, extra=()):
    """Hold layer 1's patterns and both later norms' scales at the clean run's."""
    def keep(name):
        return name, lambda value, hook: cache[name]
    return [keep("blocks.1.attn.hook_pattern"), keep("blocks.1.ln1.hook_scale"), keep("ln_final.hook_scale"),
            *extra]


@pytest.mark.parametrize("source", [0, 2])
def test_removing_a_layer0_head_changes_the_logits_by_its_direct_and_virtual_terms(source):
    model = random_model(zero_biases=True)     # with no biases a head's write is exactly its path source
    expansion = expand_paths(model, TOKENS)
    logits, cache = model.run_with_cache(TOKENS)
    w_o = model.blocks[0].attn.o.weight.view(CONFIG.d_model, CONFIG.n_heads, CONFIG.d_head)[:, source]   # (d, h)
    write = cache["blocks.0.attn.hook_z"][:, :, source] @ w_o.T                                              # (B, T, d)
    remove = ("blocks.0.hook_resid_post", lambda resid, hook: resid - write)
    with torch.no_grad():
        removed = model.run_with_hooks(TOKENS, fwd_hooks=frozen_hooks(cache, [remove]))
    expected = expansion.terms[path_name(f"L0H{source}")] + sum(
        expansion.terms[path_name(f"L0H{source}", j)] for j in range(CONFIG.n_heads))
    assert torch.allclose((logits - removed).double(), expected, atol=1e-4)

    # and with layer 1's other heads held at their clean outputs, only the virtual path into head 1 is left
    def keep_other_heads(z, hook):
        kept = cache["blocks.1.attn.hook_z"].clone()
        kept[:, :, 1] = z[:, :, 1]
        return kept
    with torch.no_grad():
        one = model.run_with_hooks(TOKENS, fwd_hooks=frozen_hooks(cache, [remove, ("blocks.1.attn.hook_z",
                                                                                    keep_other_heads)]))
    expected = expansion.terms[path_name(f"L0H{source}")] + expansion.terms[path_name(f"L0H{source}", 1)]
    assert torch.allclose((logits - one).double(), expected, atol=1e-4)


def test_mean_ablating_every_path_leaves_the_batch_mean_and_a_constant_path_changes_nothing():
    expansion = expand_paths(random_model(), TOKENS)
    # the model's own logits are float32 and differ from the float64 terms' sum by ~1e-6, by an amount that depends on
    # the kernels torch runs (this passed alone here and failed in a full CI run on the same machine), so
    # the exact identity is asked of the terms' sum; the terms against the model are test_the_terms_sum_to_the_logits
    expansion = replace(expansion, logits=sum(expansion.terms.values()))
    everything = mean_ablated_logits(expansion, list(expansion.terms))
    assert torch.allclose(everything, expansion.logits.mean(0, keepdim=True).expand_as(everything), atol=1e-9, rtol=0)
    expansion.terms["constant"] = torch.ones_like(expansion.logits) * 3.0
    assert torch.equal(mean_ablated_logits(expansion, ["constant"]), expansion.logits)


def test_losses_and_pushes_against_a_hand_computation():
    expansion = expand_paths(random_model(), TOKENS)
    logits = expansion.logits
    b, t = 2, 4                                   # position 4 predicts token 5 of sequence 2
    target = TOKENS[b, t + 1]
    by_hand = -(logits[b, t].log_softmax(-1)[target])
    assert target_losses(logits, TOKENS)[b, t].item() == pytest.approx(by_hand.item(), rel=1e-9)
    term = expansion.terms[path_name("embed")]
    push = term[b, t, target] - term[b, t].mean()
    assert centred_target_logit(term, TOKENS)[b, t].item() == pytest.approx(push.item(), rel=1e-9)
    mask = torch.zeros(TOKENS.shape[0], TOKENS.shape[1] - 1, dtype=torch.bool)
    mask[b, t] = True
    costs = ablation_costs(expansion, TOKENS, mask, {"embed": [path_name("embed")]}).iloc[0]
    ablated = mean_ablated_logits(expansion, [path_name("embed")])
    assert costs["added loss"] == pytest.approx(-(ablated[b, t].log_softmax(-1)[target]).item() - by_hand.item())
    table = path_table(expansion, TOKENS, mask).set_index("path")
    assert len(table) == len(expansion.terms) - len(expansion.names("bias"))
    assert table.loc[path_name("embed"), "added loss"] == pytest.approx(costs["added loss"])
    assert table.loc[path_name("embed"), "push on the answer"] == pytest.approx(push.item())
    assert table.loc[path_name("L0H1", 2), ["kind", "source", "layer-1 head"]].tolist() == ["virtual", "L0H1", "L1H2"]


def test_a_model_the_expansion_does_not_cover_is_named():
    model = ToyTransformer(ToyTransformerConfig(n_layers=3))
    with pytest.raises(ValueError, match="n_layers=3"):
        expand_paths(model, TOKENS)


def test_write_shares_against_a_hand_computation():
    constant = torch.tensor([3.0, 0.0, 4.0])                              # |c|² = 25 at every (b, t)
    positional = torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])        # mean zero over t, |p_t|² = 1
    varying = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 0.0, -2.0]])          # mean zero over b, |v_b|² = 5
    writes = constant + positional[None, :, :] + varying[:, None, :]      # (B=2, T=2, d=3)
    assert write_shares(writes) == pytest.approx({"constant": 25 / 31, "positional": 1 / 31, "varying": 5 / 31})
    assert write_shares(constant.expand(2, 7, 3))["varying"] == 0


@pytest.mark.parametrize("where", ["own", "previous", "uniform"])
def test_head_profiles_read_a_forced_pattern(where):
    model = random_model()
    T = CONFIG.n_ctx
    forced = {"own": torch.eye(T), "previous": torch.eye(T).roll(-1, dims=1).tril(),
              "uniform": torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]}[where]
    forced[0, 0] = 1.0                                                    # the first position can only see itself
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: forced.expand_as(p).clone())]):
        _, cache = model.run_with_cache(TOKENS)
    row = head_profiles(model, cache).iloc[1]
    expected = {"own": (1.0, 0.0, 0.0), "previous": (0.0, 1.0, 0.0),
                "uniform": ((1 / torch.arange(2, T + 1)).mean().item(), (1 / torch.arange(2, T + 1)).mean().item(),
                            1.0)}[where]
    assert (row["own position"], row["previous position"], row["entropy / uniform"]) == pytest.approx(expected)
    shares = row[["constant share", "positional share", "varying share"]]
    assert shares.sum() == pytest.approx(1) and (shares > 0).all() and row["write / embeddings"] > 0


@pytest.mark.parametrize("part,side", [("L0H1", "both"), ("L0H2", "queries"), ("embed", "keys")])
def test_where_layer1_looks_against_the_models_own_forward(part, side):
    """The same ablation done by hooks on the model itself: the part swapped for its mean in the stream layer 1
    reads, layer 1's values (and, for one side, the other side) and the norms' scales pinned to the clean run's,
    and the part restored in the stream the unembedding reads."""
    model = random_model()
    logits, cache = model.run_with_cache(TOKENS)
    if part == "embed":
        x = cache["hook_embed"] + cache["hook_pos_embed"]
    else:
        head = int(part[-1])
        w_o = model.blocks[0].attn.o.weight.view(CONFIG.d_model, CONFIG.n_heads, CONFIG.d_head)[:, head]
        x = cache["blocks.0.attn.hook_z"][:, :, head] @ w_o.T
    shift = x.mean((0, 1)) - x                                                # (B, T, d)
    pinned = ["blocks.1.ln1.hook_scale", "ln_final.hook_scale", "blocks.1.attn.hook_v"]
    pinned += {"queries": ["blocks.1.attn.hook_k"], "keys": ["blocks.1.attn.hook_q"], "both": []}[side]
    hooks = [(name, lambda value, hook: cache[hook.name]) for name in pinned]
    hooks += [("blocks.0.hook_resid_post", lambda resid, hook: resid + shift),
              ("blocks.1.hook_resid_post", lambda resid, hook: resid - shift)]
    with torch.no_grad():
        ablated = model.run_with_hooks(TOKENS, fwd_hooks=hooks)
    mask = torch.ones(TOKENS.shape[0], TOKENS.shape[1] - 1, dtype=torch.bool)
    costs = where_layer1_looks_costs(model, TOKENS, mask).set_index(["part", "side"])
    by_hooks = target_losses(ablated.double(), TOKENS).mean() - target_losses(logits.double(), TOKENS).mean()
    assert costs.loc[(part, side), "added loss"] == pytest.approx(by_hooks.item(), abs=1e-5)
    assert costs.intact.iloc[0] == pytest.approx(target_losses(logits.double(), TOKENS).mean().item(), abs=1e-5)


def test_attention_by_offset_reads_a_forced_pattern():
    model = random_model()
    T = CONFIG.n_ctx
    two_back = torch.eye(T).roll(-2, dims=1).tril()
    two_back[0, 0] = two_back[1, 1] = 1.0                                  # the first two positions cannot look back 2
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: two_back.expand_as(p).clone())]):
        _, cache = model.run_with_cache(TOKENS)
    row = attention_by_offset(cache, offsets=3).iloc[0]
    assert row[["0 back", "1 back", "2 back", "3 back"]].tolist() == pytest.approx([0, 0, 1, 0])


def test_head_removal_costs_against_removing_the_write_from_the_stream():
    """Replacing a head's z by its mean is replacing its write by the write's mean (the write is linear in z); done
    here the other way, on the stream, with the same pinning."""
    model = random_model()
    mask = torch.ones(TOKENS.shape[0], TOKENS.shape[1] - 1, dtype=torch.bool)
    costs = head_removal_costs(model, TOKENS, mask).set_index(["head", "scales pinned"])["added loss"]
    logits, cache = model.run_with_cache(TOKENS)
    w_o = model.blocks[0].attn.o.weight.view(CONFIG.d_model, CONFIG.n_heads, CONFIG.d_head)[:, 2]
    write = cache["blocks.0.attn.hook_z"][:, :, 2] @ w_o.T                 # (B, T, d)
    shift = write.mean((0, 1)) - write
    for pinned, names in (("nothing", []), ("both norms", ["blocks.1.ln1.hook_scale", "ln_final.hook_scale"])):
        hooks = [("blocks.0.hook_resid_post", lambda r, hook: r + shift)]
        hooks += [(n, lambda v, hook: cache[hook.name]) for n in names]
        with torch.no_grad():
            ablated = model.run_with_hooks(TOKENS, fwd_hooks=hooks)
        by_stream = target_losses(ablated.double(), TOKENS).mean() - target_losses(logits.double(), TOKENS).mean()
        assert costs[("L0H2", pinned)] == pytest.approx(by_stream.item(), abs=1e-5)
    assert costs[("L0H2", "nothing")] != pytest.approx(costs[("L0H2", "both norms")], abs=1e-4)

