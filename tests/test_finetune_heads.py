"""finetune_heads: linear CKA against a hand computation and its invariances, total variation of attention rows,
adapters merged into a copy against peft's own forward, per-head slices of ΔW, and the smoke run's tables (with
the base model compared with itself as the zero-change check, and one pattern change recomputed through peft)."""

import copy

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from labpy.experiments.finetune_heads import head_delta_norms, merge_adapter, text_windows
from labpy.finetune import flatten_factors, lora_delta, lora_factors, unflatten_factors
from labpy.interp.compare import attention_tv, linear_cka
from labpy.models.lora import add_lora

# ---- linear CKA ----


def test_cka_by_hand_in_one_dimension():
    # centred x = (-1, 0, 1), y = (0, -1, 1): ‖yᵀx‖² = 1, ‖xᵀx‖ = ‖yᵀy‖ = 2, so CKA = 1/4
    # (in one dimension CKA is Pearson's r², and r = 1/2 here)
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [0.0], [2.0]])
    assert linear_cka(x, y) == pytest.approx(0.25, abs=1e-12)


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The example-space definition: HSIC(K, L) = tr(K H L H) with linear kernels, normalised."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_matches_the_hsic_form_and_its_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=g)
    y = x @ torch.randn(3, 5, generator=g) + 0.5 * torch.randn(12, 5, generator=g)
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x.double().numpy(), y.double().numpy()), abs=1e-10)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)                # symmetric
    big = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))                                # orthogonal
    assert linear_cka(big, big) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(big, big @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(big, -3.7 * big) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(big, big + torch.randn(1, 16, generator=g) * 10) == pytest.approx(1.0, abs=1e-10)   # shift
    stretch = torch.diag(torch.logspace(0, 2, 16))                                           # not orthogonal
    assert linear_cka(big, big @ stretch) < 0.9
    noise = torch.randn(5000, 4, generator=g), torch.randn(5000, 4, generator=g)
    assert linear_cka(*noise) < 0.01                                                         # unrelated: ~0
    with pytest.raises(ValueError, match="same n"):
        linear_cka(big, big[:10])


# ---- total variation of attention rows ----


def test_attention_tv_known_cases():
    # (L=1, B=1, H=2, T=3, T=3); head 0 identical, head 1 moves half its mass at query 1 and all of it at query 2
    p = torch.tensor([[1, 0, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    q = torch.tensor([[1, 0, 0], [1.0, 0, 0], [1.0, 0, 0]])
    a = torch.stack([p, p])[None, None]
    b = torch.stack([p, q])[None, None]
    tv = attention_tv(a, b)
    assert tv.shape == (1, 2)
    assert tv[0, 0] == 0 and tv[0, 1] == pytest.approx((0.5 + 1.0) / 2)                   # queries 1 and 2
    assert attention_tv(a, b, skip_first_query=False)[0, 1] == pytest.approx((0 + 0.5 + 1.0) / 3)


# ---- merging an adapter ----


def tiny_qwen2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation="eager")
    return Qwen2ForCausalLM(config).eval()


def random_adapter(base: torch.nn.Module, rank: int = 4, alpha: float = 10.0) -> torch.nn.Module:
    peft_model = add_lora(copy.deepcopy(base), rank, alpha)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=g)                                             # B starts at zero
    return peft_model.eval()


def test_merged_adapter_reproduces_peft_forward():
    base = tiny_qwen2()
    peft_model = random_adapter(base)
    factors = lora_factors(peft_model)
    assert len(factors) == 2 * 4 and all(float(f["scale"]) == 2.5 for f in factors.values())
    tokens = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(1))
    merged = merge_adapter(base, unflatten_factors(flatten_factors(factors)))             # the store's form
    with torch.no_grad():
        want, got, before = peft_model(tokens).logits, merged(tokens).logits, base(tokens).logits
    assert (want - before).abs().max() > 1e-2                                              # the adapter matters
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for name in factors:                                                                   # the base is untouched
        assert not torch.equal(merged.get_submodule(name).weight, base.get_submodule(name).weight)
    with pytest.raises(KeyError, match="not in the"):
        merge_adapter(base, {"model.layers.9.self_attn.q_proj": factors["model.layers.0.self_attn.q_proj"]})


def test_head_slices_of_delta_add_up_to_the_whole():
    base = tiny_qwen2()
    factors = lora_factors(random_adapter(base))
    deltas = {name: lora_delta(f) for name, f in factors.items()}
    table = head_delta_norms(base, deltas)
    assert len(table) == 2 * 4 and set(table.kv_head) == {0, 1}
    group = 4 // 2
    for layer, rows in table.groupby("layer"):
        d = {p: deltas[f"model.layers.{layer}.self_attn.{p}_proj"] for p in "qkvo"}
        assert (rows.dq ** 2).sum() == pytest.approx(float(d["q"].norm() ** 2), rel=1e-5)   # rows split q
        assert (rows.do ** 2).sum() == pytest.approx(float(d["o"].norm() ** 2), rel=1e-5)   # columns split o
        assert (rows.dk ** 2).sum() == pytest.approx(group * float(d["k"].norm() ** 2), rel=1e-5)   # shared by a group
        assert (rows.wq ** 2).sum() == pytest.approx(
            float(base.get_submodule(f"model.layers.{layer}.self_attn.q_proj").weight.detach().norm() ** 2), rel=1e-5)
    assert (head_delta_norms(base, {})[["dq", "dk", "dv", "do"]].to_numpy() == 0).all()


# ---- the smoke run ----


def test_finetune_heads_smoke(tmp_store):
    from labpy import results
    from labpy.models.lm import load_lm

    runs = results("finetune_heads", "smoke")
    entry = runs["lora"]
    s = entry.summary
    n_layers, n_heads = s["n_layers"], s["n_heads"]
    models = ["base", *entry.config.adapters]
    heads, layers = entry.table("heads"), entry.table("layers")
    deltas, losses = entry.table("head_deltas"), entry.table("losses")
    assert len(heads) == len(models) * 3 * n_layers * n_heads
    assert len(layers) == len(models) * 3 * n_layers
    assert len(deltas) == len(models) * n_layers * n_heads and len(losses) == len(models) * 3
    assert set(heads.model) == set(models) and set(heads.kind) == {"prose", "code", "repeated random"}
    # the base's reference row: the comparisons give exactly no change on identical readings (a row built from
    # the same reading, so this checks head_rows/layer_rows/CKA at identity, not the model's determinism)
    base_h, base_l = heads[heads.model == "base"], layers[layers.model == "base"]
    assert (base_h.pattern_tv == 0).all() and (base_l.rel_change == 0).all()
    assert np.allclose(base_l.cka, 1.0, atol=1e-9)
    assert (deltas[deltas.model == "base"][["dq", "dk", "dv", "do"]].to_numpy() == 0).all()
    tuned = heads[heads.model != "base"]
    assert tuned.pattern_tv.between(0, 1).all() and (tuned.pattern_tv > 0).any()
    assert layers.cka.between(0, 1 + 1e-9).all()
    assert heads[heads.kind != "repeated random"].induction.isna().all()
    assert heads[heads.kind == "repeated random"].induction.notna().all()
    # the stored ΔW norms are the adapter's: q's head slices add up to the whole ΔW of each layer
    lora = results("lora_rank", "smoke")
    label = entry.config.adapters[-1]
    factors = unflatten_factors(lora[label].checkpoint("adapter"))
    mine = deltas[deltas.model == label]
    for layer in range(n_layers):
        whole = lora_delta(factors[f"model.layers.{layer}.self_attn.q_proj"]).norm() ** 2
        assert (mine[mine.layer == layer].dq ** 2).sum() == pytest.approx(float(whole), rel=1e-4)

    # the page's reader: tables with names, and a guard against adapters re-run since
    from types import SimpleNamespace

    from labpy.experiments import finetune_heads_analysis as fh

    t = fh.tables(entry)
    assert list(t["heads"].drop_duplicates("model").name) == ["base", "rank 1", "rank 4"]
    stale = SimpleNamespace(config=entry.config, name=entry.name, scale="smoke",
                            summary={"adapters": {label: {**s["adapters"][label], "key": "old-key"}}})
    with pytest.raises(fh.StaleAdaptersError, match="--force"):
        fh.check_adapters_current(stale)

    # one pattern change recomputed independently: peft's adapted model, HF's own attention output
    base, tokenizer = load_lm(s["base"])
    rank = lora[label].config.rank
    scale = float(next(iter(factors.values()))["scale"])
    peft_model = add_lora(copy.deepcopy(base), rank, scale * rank).eval()
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            short = name.removeprefix("base_model.model.")
            if short in factors:
                module.lora_A["default"].weight.copy_(factors[short]["A"])
                module.lora_B["default"].weight.copy_(factors[short]["B"])
        tokens = text_windows(tokenizer, entry.config)["code"][:, :-1]
        ref = torch.stack(base(tokens, output_attentions=True).attentions).numpy()          # (L, B, H, T, T)
        new = torch.stack(peft_model(tokens, output_attentions=True).attentions).numpy()
    tv = 0.5 * np.abs(ref - new).sum(-1)[..., 1:].mean(axis=(1, 3))                        # (L, H)
    stored = heads[(heads.model == label) & (heads.kind == "code")].set_index(["layer", "head"]).pattern_tv
    for layer in range(n_layers):
        for head in range(n_heads):
            assert stored[(layer, head)] == pytest.approx(tv[layer, head], abs=1e-5)
