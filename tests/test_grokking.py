"""The grokking model and its Fourier tools (`labpy.toy.modular_addition`), against a hand computation of the
same network, the algebra of the Fourier basis, and logits built from the algorithm the paper found."""

import dataclasses
import math

import numpy as np
import pandas as pd

import pytest
import torch
import torch.nn.functional as F

from labpy.toy.modular_addition import (ModularAdditionSpec, ModularAdditionTransformer, all_pairs,
                                        embedding_frequency_norms, excluded_logits, fast_logits, fourier_basis,
                                        logit_frequency_norms, neuron_frequency_fve, restricted_logits,
                                        sum_directions, top_frequencies, train_split)

SPEC = ModularAdditionSpec(p=7, d_model=12, n_heads=3, d_head=4, d_mlp=20)


def by_hand(model: ModularAdditionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The same network written out example by example and head by head, with loops instead of einsums."""
    out = []
    for seq in tokens:
        x = model.W_E[seq] + model.W_pos                                   # (3, d)
        attn = torch.zeros(model.spec.d_model)
        for h in range(model.spec.n_heads):
            a = model.blocks[0].attn
            q = x[-1] @ a.W_Q[h]
            k, v = x @ a.W_K[h], x @ a.W_V[h]
            weights = torch.softmax(k @ q / math.sqrt(model.spec.d_head), dim=0)
            attn = attn + (weights @ v) @ a.W_O[h]
        resid = x[-1] + attn
        mlp = model.blocks[0].mlp
        resid = resid + torch.relu(resid @ mlp.W_in + mlp.b_in) @ mlp.W_out + mlp.b_out
        out.append(resid @ model.W_U)
    return torch.stack(out)


def test_model_matches_a_hand_computation_and_exposes_hooks():
    model = ModularAdditionTransformer(SPEC, seed=3)
    with torch.no_grad():
        for p in model.parameters():            # biases non-zero too, so a dropped bias would show
            p.add_(0.1 * torch.randn_like(p))
    tokens, _ = all_pairs(SPEC.p)
    logits = model(tokens[:20])
    assert logits.shape == (20, SPEC.p)
    assert torch.allclose(logits, by_hand(model, tokens[:20]), atol=1e-5)
    assert torch.allclose(fast_logits(model, tokens), model(tokens), atol=1e-5)    # training's shortcut
    fast_grads = torch.autograd.grad(fast_logits(model, tokens[:30]).square().sum(), list(model.parameters()))
    grads = torch.autograd.grad(model(tokens[:30]).square().sum(), list(model.parameters()))
    assert all(torch.allclose(f, g, atol=1e-4) for f, g in zip(fast_grads, grads))
    _, cache = model.run_with_cache(tokens[:5])
    assert cache["blocks.0.attn.hook_pattern"].shape == (5, SPEC.n_heads, 1, 3)
    assert torch.allclose(cache["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(5, SPEC.n_heads, 1))
    assert cache["blocks.0.mlp.hook_post"].shape == (5, 1, SPEC.d_mlp)
    assert (cache["blocks.0.mlp.hook_post"] >= 0).all()
    assert torch.allclose(cache["blocks.0.hook_resid_post"][:, 0] @ model.W_U, logits[:5], atol=1e-6)


def test_data_is_every_pair_once_with_a_seeded_split():
    tokens, labels = all_pairs(5)
    assert tokens.shape == (25, 3) and (tokens[:, 2] == 5).all()
    assert tokens[7].tolist() == [1, 2, 5] and labels[7] == 3
    assert labels[24] == (4 + 4) % 5
    mask = train_split(113, 0.3, seed=0)
    assert mask.sum() == round(0.3 * 113 ** 2)
    assert torch.equal(mask, train_split(113, 0.3, seed=0)) and not torch.equal(mask, train_split(113, 0.3, seed=1))


def test_fourier_basis_is_orthonormal_and_splits_an_embedding_by_frequency():
    p = 11
    basis = fourier_basis(p)
    assert torch.allclose(basis @ basis.T, torch.eye(p), atol=1e-5)
    x = torch.arange(p, dtype=torch.float32)
    W_E = torch.zeros(p + 1, 2)
    W_E[:p, 0] = 3 * torch.cos(2 * math.pi * 4 * x / p)          # all of it in frequency 4
    W_E[:p, 1] = torch.sin(2 * math.pi * 2 * x / p)              # and some in frequency 2
    W_E[p] = 100.0                                               # the "=" row is not a residue: ignored
    norms = embedding_frequency_norms(W_E, p)
    assert norms.shape == ((p - 1) // 2,)
    assert norms.sum() == pytest.approx((W_E[:p] ** 2).sum().item(), rel=1e-5)   # no constant part here
    assert top_frequencies(norms, 2) == [4, 2]


def test_restricted_and_excluded_logits_on_the_papers_algorithm():
    """Logits written as the paper's algorithm, sum_k cos(w_k (a + b - c)), live entirely in the key
    frequencies: restricting to them changes nothing, excluding them leaves only a constant per input pair."""
    p, key = 13, [2, 5]
    tokens, labels = all_pairs(p)
    a, b = tokens[:, 0].double(), tokens[:, 1].double()
    c = torch.arange(p, dtype=torch.float64)
    logits = sum(torch.cos(2 * math.pi * k * ((a + b)[:, None] - c[None]) / p) for k in key).float() * 4
    directions = sum_directions(p)
    assert set(top_frequencies(logit_frequency_norms(logits, directions), 2)) == set(key)
    assert torch.allclose(restricted_logits(logits, directions, key), logits, atol=1e-4)
    excluded = excluded_logits(logits, directions, key)
    assert excluded.abs().max() < 1e-4
    assert F.cross_entropy(logits, labels) < F.cross_entropy(torch.zeros_like(logits), labels) - 1
    # a frequency the logits do not use: restricting to it leaves chance
    wrong = restricted_logits(logits, directions, [1])
    assert F.cross_entropy(wrong, labels).item() == pytest.approx(math.log(p), abs=1e-3)


def test_should_stop_needs_the_accuracy_held_for_the_whole_window():
    from labpy.experiments.grokking import should_stop

    rows = [{"step": s, "test_acc": acc} for s, acc in [(0, 0.0), (100, 0.5), (200, 0.995), (300, 0.999)]]
    assert not should_stop(rows, 0.99, 200)          # held since 200: only 100 epochs
    rows.append({"step": 400, "test_acc": 0.991})
    assert should_stop(rows, 0.99, 200)
    rows.append({"step": 500, "test_acc": 0.98})
    assert not should_stop(rows, 0.99, 200)
    assert should_stop(rows[:1], 0.0, 0)


def test_smoke_run_stores_measures_and_progress(tmp_store):
    from labpy import results

    entry = results("grokking", "smoke")["seed0"]
    evals, freqs, progress = entry.table("evals"), entry.table("frequencies"), entry.table("progress")
    config = entry.config
    assert evals.step.iloc[-1] == entry.summary["epochs"] and evals[["train_acc", "test_acc"]].stack().between(0, 1).all()
    assert set(freqs.freq) == set(range(1, (config.p - 1) // 2 + 1))
    assert evals[["embed_top_share", "logit_top_share"]].stack().between(0, 1).all()
    assert len(entry.summary["key_freqs"]) == config.n_key_freqs
    assert list(progress.step) == list(range(0, entry.summary["epochs"] + 1, config.checkpoint_every))
    model = ModularAdditionTransformer(config.spec())
    model.load_state_dict(entry.checkpoint("final"))
    tokens, labels = all_pairs(config.p)
    mask = train_split(config.p, config.train_fraction, config.data_seed)
    loss = F.cross_entropy(model(tokens[mask]), labels[mask]).item()
    assert loss == pytest.approx(evals.train_loss.iloc[-1], abs=2e-3)     # half-precision checkpoint

    from labpy.experiments.grokking_analysis import fourier_ablation

    ablation = fourier_ablation(entry).set_index("variant")               # the pages' reading of the final model
    with torch.no_grad():
        logits = model(tokens)                                            # the hooked forward, not fast_logits
    assert ablation.loss["logits"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)
    assert ablation.accuracy["logits"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert set(ablation.index) == {"logits", "key frequencies only", "key frequencies removed"}
    assert ablation.accuracy.between(0, 1).all()

    from labpy.experiments.grokking_analysis import neuron_frequencies

    neurons = neuron_frequencies(entry)                                   # one row per MLP neuron
    _, cache = model.run_with_cache(tokens)
    acts = cache["blocks.0.mlp.hook_post"][:, -1]
    assert len(neurons) == config.d_mlp and neurons.fires.tolist() == (acts.max(0).values > 0).tolist()
    assert neurons.frequency.between(1, (config.p - 1) // 2).all() and neurons.fve.between(0, 1 + 1e-6).all()
    fve = neuron_frequency_fve(acts, config.p)
    key = [k - 1 for k in entry.summary["key_freqs"]]
    assert neurons.key_fve.to_numpy() == pytest.approx(fve[key].sum(0).numpy(), abs=1e-6)
    assert (neurons.key_fve <= 1 + 1e-5).all()


def test_phases_tile_training_from_the_milestones():
    from labpy.experiments.grokking_analysis import PHASES, phases

    spans = phases({"memorised": 200.0, "onset": 4000.0, "grokked": 5100.0, "warn_share": 0.0})
    assert list(spans.phase) == list(PHASES)
    assert spans.start.iloc[0] == 0 and list(spans.start.iloc[1:]) == list(spans.end.iloc[:-1])
    assert spans.end.iloc[-1] == 5100


def test_a_bad_train_fraction_is_one_clear_error():
    from labpy.errors import ConfigError
    from labpy.experiments.grokking import GrokkingConfig

    with pytest.raises(ConfigError, match=r"GrokkingConfig.train_fraction = 1.5 is out of range"):
        GrokkingConfig(train_fraction=1.5)


def test_neuron_fve_finds_one_frequency_products_and_splits_mixtures():
    """Hand-built neurons over p = 11: a product of frequency-2 waves with a linear term, cos(w_1 (a + b)) (a sum
    of products, so still frequency 1), an even mix of frequencies 1 and 3, a constant and a dead neuron."""
    p = 11
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T.double()
    w = lambda k: 2 * math.pi * k / p
    acts = torch.stack([torch.cos(w(2) * a) * torch.sin(w(2) * b) + 0.3 * torch.cos(w(2) * a) + 5,
                        torch.cos(w(1) * (a + b)),
                        torch.cos(w(1) * a) + torch.cos(w(3) * b),
                        torch.cos(w(4) * a) + torch.cos(w(4) * (a - b)),      # cos(w(a-b)) is frequency 4 too
                        torch.full_like(a, 2.0),
                        torch.zeros_like(a)], dim=1)                          # (p², 6)
    fve = neuron_frequency_fve(acts, p)                                       # (5, 6)
    assert fve.shape == (5, 6)
    assert fve[1, 0] == pytest.approx(1, abs=1e-5) and fve[0, 1] == pytest.approx(1, abs=1e-5)
    assert fve[0, 2] == pytest.approx(0.5, abs=1e-5) and fve[2, 2] == pytest.approx(0.5, abs=1e-5)
    assert fve[3, 3] == pytest.approx(1, abs=1e-5)
    assert torch.all(fve[:, 4:] == 0)                                         # no variance: nothing explained
    noise = torch.randn(p * p, 3, generator=torch.Generator().manual_seed(0))
    shares = neuron_frequency_fve(noise, p)
    assert torch.all(shares.sum(0) <= 1 + 1e-5) and torch.all(shares.max(0).values < 0.5)


def test_initial_norms_are_the_ones_training_starts_from(tmp_path):
    """The rebuilt untrained model's Fourier norms agree with what training itself recorded at epoch 0 (its
    evaluation there; the per-frequency rows start later): the share of the embedding and of the logits in their
    strongest few frequencies."""
    from labpy.experiments.grokking_analysis import initial_frequency_norms
    from labpy.experiments.registry import RunContext, get_experiment

    experiment = get_experiment("grokking_seeds")
    config = dataclasses.replace(experiment.configs("smoke")["init-s1"], max_epochs=20)
    at_start = experiment.run(config, RunContext(work_dir=tmp_path)).tables["evals"].query("step == 0").iloc[0]
    rebuilt = initial_frequency_norms(config).set_index("freq")
    n = config.n_key_freqs
    model = ModularAdditionTransformer(config.spec(), seed=config.seed)
    with torch.no_grad():
        logits = fast_logits(model, all_pairs(config.p)[0])                           # (p², p)
    centred = logits - logits.mean(dim=0, keepdim=True)
    assert rebuilt.logit_norm.nlargest(n).sum() / float((centred ** 2).sum()) == pytest.approx(
        at_start.logit_top_share, rel=1e-5)
    W_E = model.W_E.detach()
    share = rebuilt.embed_norm.nlargest(n).sum() / float((W_E[:config.p] ** 2).sum())
    assert share == pytest.approx(at_start.embed_top_share, rel=1e-5)
    other_seed = initial_frequency_norms(dataclasses.replace(config, seed=2)).set_index("freq")
    assert not np.allclose(other_seed.embed_norm, rebuilt.embed_norm)         # the seed matters


def test_mean_rank_and_chance_band_by_hand():
    from labpy.experiments.grokking_analysis import chance_band, mean_rank

    norms = {"a": pd.Series([0.1, 0.5, 0.3, 0.9], index=[1, 2, 3, 4]),        # ranks: 4→1, 2→2, 3→3, 1→4
             "b": pd.Series([2.0, 1.0, 1.0, 0.0], index=[1, 2, 3, 4])}        # ranks: 1→1, 2 and 3 tie at 2.5, 4→4
    assert mean_rank(norms, {"a": [4, 2], "b": [3]}) == pytest.approx((1 + 2 + 2.5) / 3)
    low, high = chance_band([2, 1], 4, draws=4_000)
    assert low < 2.5 < high and 1 <= low and high <= 4                     # random ranks of 1..4 average 2.5
    assert chance_band([56], 56) == (28.5, 28.5)                          # every frequency chosen: no spread
