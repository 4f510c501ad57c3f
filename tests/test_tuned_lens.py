"""The tuned lens: its least-squares start against scikit-learn's ridge regression, its scores against a hand
computation, and a smoke run whose translators start at the least-squares fit and train on the KL."""

import torch
import torch.nn.functional as F

from labpy.experiments.tuned_lens import kl_to_final, lensed_layers, least_squares
from labpy.models.lm import load_lm


def test_least_squares_matches_sklearn_ridge():
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 6, generator=g, dtype=torch.float64).float()
    target = h @ torch.randn(6, 6, generator=g) + torch.randn(6, generator=g) + 0.1 * torch.randn(300, 6, generator=g)
    ridge = 0.05
    linear = least_squares(h, target, ridge)
    centred = h - h.mean(0)
    alpha = ridge * (centred.double() ** 2).sum(0).mean().item()        # the relative ridge, in sklearn's units
    reference = Ridge(alpha=alpha).fit(h.numpy(), target.numpy())
    assert torch.allclose(linear.weight, torch.tensor(reference.coef_, dtype=torch.float32), atol=1e-4)
    assert torch.allclose(linear.bias, torch.tensor(reference.intercept_, dtype=torch.float32), atol=1e-4)


def test_kl_is_zero_on_itself_and_matches_torch():
    g = torch.Generator().manual_seed(1)
    p, q = F.log_softmax(torch.randn(4, 9, generator=g), -1), F.log_softmax(torch.randn(4, 9, generator=g), -1)
    assert kl_to_final(p, p).abs().max() < 1e-6
    reference = F.kl_div(q, p, log_target=True, reduction="none").sum(-1)   # KL(p ‖ q)
    assert torch.allclose(kl_to_final(p, q), reference, atol=1e-6)


def test_lensed_layers_never_include_the_last_block():
    assert lensed_layers(30, 2) == list(range(0, 29, 2)) and lensed_layers(4, 1) == [0, 1, 2]
    assert lensed_layers(30, 3)[-1] == 27


def test_smoke_run_scores_three_lenses_and_the_model_reads_itself(tmp_store):
    from labpy import results

    entry = results("tuned_lens", "smoke")["lab-lm"]
    lenses, training = entry.table("lenses"), entry.table("training")
    layers = entry.summary["lensed_layers"]
    assert set(lenses.lens) == {"logit lens", "least squares", "tuned lens", "model"}
    assert len(lenses) == (3 * len(layers) + 1) * 2                    # (3 lenses x layers + the model) x 2 kinds
    model = lenses[lenses.lens == "model"]
    assert (model.kl.abs() < 1e-6).all() and (model.top1 == 1).all()
    assert (lenses.kl >= -1e-6).all() and lenses.top1.between(0, 1).all()
    assert sorted(set(training.step)) == list(range(1, entry.config.steps + 1))
    assert set(training.layer) == set(layers)
    lstsq = lenses[lenses.lens == "least squares"].set_index(["layer", "kind"]).kl
    tuned = lenses[lenses.lens == "tuned lens"].set_index(["layer", "kind"]).kl
    assert (lstsq != tuned).all()                                      # the KL steps moved the translators


def test_the_model_row_is_the_models_own_next_token_loss(tmp_store):
    """The "model" row's cross-entropy is SmolLM2's (here the smoke LM's) own loss on the eval windows, position 0
    left out: the lens machinery reads the model exactly at the last block."""
    from labpy import results
    from labpy.experiments.residual_stream import ResidualConfig, windows

    entry = results("tuned_lens", "smoke")["lab-lm"]
    c = entry.config
    model, tokenizer = load_lm(c.model)
    tokens = windows(tokenizer, ResidualConfig(c.model, c.eval_windows, c.eval_seq_len))["prose"]
    with torch.no_grad():
        logits = model(tokens[:, :-1]).logits[:, 1:]                    # (B, T-1, V): predictions of tokens 2..
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 2:].reshape(-1)).item()
    row = entry.table("lenses").query("lens == 'model' and kind == 'prose'").iloc[0]
    assert abs(row.ce - loss) < 1e-4
