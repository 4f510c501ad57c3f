"""quant_bits: the bytes each recipe takes by hand, the 8-bit code book's rounding bound, the recipes' plans, and a run
whose all-NF4 row repeats quant_per_matrix's."""

import pytest
import torch

from labpy.experiments.quant_bits import RECIPES, bits, int8_codebook, recipe_plan
from labpy.nf4 import roundtrip


def test_bits_by_hand():
    assert bits(6400, "nf4", 64) / 6400 == pytest.approx(4 + 32 / 64)       # QLoRA's 4.5 bits without double quant
    assert bits(6400, "nf4", 16) / 6400 == pytest.approx(6.0)
    assert bits(6400, "int8", 64) / 6400 == pytest.approx(8.5)
    assert bits(6400, "fp32", 64) == 32 * 6400


def test_int8_rounding_is_within_half_a_step_of_each_blocks_absmax():
    torch.manual_seed(0)
    w = torch.randn(8, 128) * torch.logspace(-2, 1, 128)                     # blocks of very different sizes
    back = roundtrip(w, int8_codebook(), 64)
    absmax = w.reshape(-1, 64).abs().amax(1, keepdim=True)
    assert ((back - w).reshape(-1, 64).abs() <= absmax / 254 + 1e-6).all()
    assert torch.equal(back.reshape(-1, 64).abs().amax(1, keepdim=True), absmax)   # the largest value is exact


def test_recipes_change_only_what_they_name():
    linears = {f"{b}.{m}": None for b in range(2) for m in ("q_proj", "up_proj", "down_proj")}
    for recipe, (which, codebook, block) in RECIPES.items():
        plan = recipe_plan(linears, recipe)
        changed = {n for n, p in plan.items() if p != ("nf4", 64)}
        expected = set() if (codebook, block) == ("nf4", 64) else (
            set(linears) if which == "all" else {n for n in linears if n.endswith("down_proj")})
        assert changed == expected, recipe


def test_run_repeats_quant_per_matrix(tmp_store):
    from labpy import results

    entry = results("quant_bits", "smoke")["lab-lm"]
    recipes = entry.table("recipes").set_index("recipe")
    per_matrix = results("quant_per_matrix", "smoke")["lab-lm"].table("wholes").set_index("run")
    assert recipes.loc["all NF4, block 64", "kl_code"] == pytest.approx(per_matrix.loc["all in NF4", "kl_code"], rel=1e-5)
    assert recipes.loc["all NF4, block 64", "bits_per_weight"] == pytest.approx(4.5)
    share = entry.summary["down_params"] / entry.summary["linear_params"]
    assert recipes.loc["down projections: fp32", "bits_per_weight"] == pytest.approx(4.5 + share * 27.5, rel=1e-4)   # the store keeps 6 digits
    assert recipes.loc["all: 8-bit", "kl_prose"] < recipes.loc["all NF4, block 64", "kl_prose"] / 10
    assert list(recipes.index) == list(RECIPES)
