"""The `mlp_neurons` experiment and its analysis (`labpy.toy.mlp`, `labpy.tasks.digits`), against hand-computed
values on tiny networks, identities that must hold exactly, and a network whose neurons were permuted on purpose."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from labpy.tasks.digits import digit_pair, other_digits, xor_split
from labpy.toy.mlp import (LOGIC, MLP, bar_path, bar_pixels, boundary_segment, class_selectivity, corner_logic,
                           correlation_matrix, exclusive_neurons, hidden_activations, initial_model, knockout_effect,
                           knockout_sweep, logic_pattern, match_neurons, neuron_changes, stroke_pixels, train_many,
                           train_mlp, train_snapshots)


def hand_network() -> MLP:
    """2 inputs -> 2 hidden (identity weights, no bias: hidden = ReLU(x)) -> 2 logits."""
    model = MLP(2, 2, 2)
    with torch.no_grad():
        model.w_in.weight.copy_(torch.eye(2))
        model.w_in.bias.zero_()
        model.w_out.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
        model.w_out.bias.copy_(torch.tensor([0.5, -0.5]))
    return model


def random_network(n_in: int = 6, n_hidden: int = 16, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(n_in, n_hidden, 2).eval()


def test_selectivity_matches_a_hand_computation():
    x = torch.tensor([[1.0, -1.0], [3.0, 0.0], [-2.0, 2.0], [0.0, -5.0]])     # hidden = ReLU(x)
    y = np.array([0, 0, 1, 1])
    sel = class_selectivity(hidden_activations(hand_network(), x), y).set_index("neuron")
    # neuron 0 sees 1, 3 on class 0 and 0, 0 on class 1; neuron 1 sees 0, 0 and 2, 0
    assert sel.loc[0, ["mean_0", "mean_1", "difference", "index", "active_0", "active_1"]].tolist() == \
        pytest.approx([2.0, 0.0, -2.0, -1.0, 1.0, 0.0])
    assert sel.loc[1, ["mean_0", "mean_1", "difference", "index", "active_0", "active_1"]].tolist() == \
        pytest.approx([0.0, 1.0, 1.0, 1.0, 0.0, 0.5])
    exclusive = exclusive_neurons(sel.reset_index())
    assert exclusive.neuron.tolist() == [0] and exclusive.fires_for.tolist() == [0]   # neuron 1: half of class 1


def test_a_neuron_that_never_fires_has_index_zero_not_nan():
    sel = class_selectivity(np.zeros((4, 3)), np.array([0, 1, 0, 1]))
    assert (sel["index"] == 0).all() and (sel.difference == 0).all()


def test_knocking_out_every_neuron_leaves_the_output_bias():
    model = random_network()
    x = torch.randn(50, 6)
    y = torch.randint(0, 2, (50,))
    bias_class = int(model.w_out.bias.argmax())
    assert torch.allclose(model(x, torch.zeros(16)), model.w_out.bias.expand(50, 2))
    effect = knockout_effect(model, x, y, list(range(16)))
    assert effect["accuracy"] == pytest.approx((y == bias_class).float().mean().item())
    assert effect["flipped"] == pytest.approx((model(x).argmax(-1) != bias_class).float().mean().item())
    nothing = knockout_effect(model, x, y, [])
    assert nothing["flipped"] == 0 and nothing["margin_drop"] == pytest.approx(0.0, abs=1e-6)


def test_the_sweep_agrees_with_itself_at_its_ends_and_orders_by_size():
    model = random_network()
    x, y = torch.randn(40, 6), torch.randint(0, 2, (40,))
    difference = np.linspace(-2, 3, 16)
    sweep = knockout_sweep(model, x, y, difference, random_draws=3, seed=0)
    assert sorted(sweep.k.unique()) == list(range(17))
    for k in (0, 16):                                     # nothing out / everything out: every ranking agrees
        assert sweep[sweep.k == k].accuracy.nunique() == 1
    largest = sweep[sweep.ranking == "largest difference first"].dropna(subset=["threshold"])
    assert largest.threshold.is_monotonic_decreasing and largest.threshold.iloc[0] == 3.0
    # the set at threshold t is exactly the neurons with |difference| >= t
    k5 = largest[largest.k == 5].iloc[0]
    out = np.flatnonzero(np.abs(difference) >= k5.threshold)
    assert len(out) == 5 and knockout_effect(model, x, y, out)["accuracy"] == pytest.approx(k5.accuracy)


def test_matching_recovers_a_permutation_of_the_hidden_neurons():
    a = random_network(n_hidden=12, seed=3)
    perm = np.random.default_rng(0).permutation(12)       # neuron h of B is neuron perm[h] of A
    b = MLP(6, 12, 2)
    with torch.no_grad():
        b.w_in.weight.copy_(a.w_in.weight[perm])
        b.w_in.bias.copy_(a.w_in.bias[perm])
        b.w_out.weight.copy_(a.w_out.weight[:, perm])
        b.w_out.bias.copy_(a.w_out.bias)
    x = torch.randn(300, 6)
    assert torch.allclose(a(x), b(x), atol=1e-5)           # the same function
    acts_a, acts_b = hidden_activations(a, x), hidden_activations(b, x)
    assert (acts_a.max(0) > 0).all()                      # no dead neuron, so the matching is unique
    corr = correlation_matrix(acts_a, acts_b)
    rows, cols = match_neurons(corr)
    assert (perm[cols] == rows).all()                     # A's neuron i is matched to the B neuron holding it
    assert corr[rows, cols] == pytest.approx(np.ones(12), abs=1e-6)


def test_correlation_of_a_dead_neuron_is_zero():
    acts = np.random.default_rng(0).random((20, 3))
    dead = acts.copy()
    dead[:, 1] = 0.0
    corr = correlation_matrix(acts, dead)
    assert np.all(corr[:, 1] == 0) and corr[0, 0] == pytest.approx(1.0)


def test_first_order_identity_for_neurons_that_stay_active():
    model = random_network(n_in=8, n_hidden=20, seed=1)
    start = torch.rand(30, 8)
    end = start + 0.3 * torch.randn(30, 8)
    changes = neuron_changes(model, start, end)
    assert np.allclose(changes.d_pre, changes.first_order, atol=1e-5)      # the pre-activation is linear
    active = changes[changes.state == "stays active"]
    off = changes[changes.state == "stays off"]
    switching = changes[changes.state.isin(["switches on", "switches off"])]
    assert len(active) and len(off) and len(switching)
    assert np.allclose(active.d_act, active.first_order, atol=1e-5)
    assert (off.d_act == 0).all()
    assert (switching.d_act.abs() <= switching.first_order.abs() + 1e-6).all()   # ReLU never amplifies


def test_bar_pixels_and_path_follow_the_stated_rule():
    x = np.zeros((4, 64), np.float32)
    x[2:, [1, 2, 9, 40]] = [0.9, 0.5, 0.7, 1.0]           # class 1 has ink at pixels 1, 2, 9 (top rows) and 40
    y = np.array([0, 0, 1, 1])
    bar = bar_pixels(x, y, rows=2, margin=0.6)
    assert bar.pixel.tolist() == [1, 9]                   # 2 is under the margin, 40 is below the top rows
    images = torch.tensor(np.c_[np.full((2, 1), 0.2), np.zeros((2, 63))], dtype=torch.float32)
    images[1, 9] = 0.95                                   # already darker than the template: left alone
    path = bar_path(images, bar.pixel.to_numpy(), bar.mean_1.to_numpy(), add=True)
    assert path.shape == (2, 3, 64)
    assert torch.equal(path[:, 0], images)
    assert (path[:, 1] != path[:, 0]).sum(-1).tolist() == [1, 1]          # one pixel per step
    assert path[0, -1, 1].item() == pytest.approx(0.9) and path[0, -1, 9].item() == pytest.approx(0.7)
    assert path[1, -1, 9].item() == pytest.approx(0.95)
    removed = bar_path(path[:, -1], bar.pixel.to_numpy(), np.zeros(2), add=False)
    assert removed[:, -1, [1, 9]].abs().max() == 0 and removed[:, -1, 0].tolist() == pytest.approx([0.2, 0.2])


def test_stroke_pixels_are_where_class_0_has_more_ink_anywhere():
    x = np.zeros((4, 64), np.float32)
    x[:2, [3, 35, 60]] = [0.5, 0.9, 0.7]                  # class 0 ("1") has ink at 3 (top row), 35 and 60
    x[2:, [35, 1]] = [0.6, 0.8]                           # class 1 ("7") shares some of 35 and has 1
    y = np.array([0, 0, 1, 1])
    stroke = stroke_pixels(x, y, margin=0.25)
    assert stroke.pixel.tolist() == [60, 3, 35]           # by difference 0.7, 0.5, 0.3; 1 is class 1's ink
    assert stroke.difference.tolist() == pytest.approx([-0.7, -0.5, -0.3])
    assert stroke.mean_1.tolist() == pytest.approx([0, 0, 0.6])   # the "7" template a removal lowers ink to
    assert stroke_pixels(x, y, margin=0.4).pixel.tolist() == [60, 3]


def test_logic_functions_of_relu_neurons():
    assert LOGIC[logic_pattern(np.array([0.0, 0.0, 0.0, 2.0]))] == "x1 AND x2"
    assert LOGIC[logic_pattern(np.array([0.0, 1.0, 1.0, 2.0]))] == "x1 OR x2"
    assert LOGIC[logic_pattern(np.array([0.0, 0.05, 3.0, 0.0]))] == "x1 AND NOT x2"   # 0.05 < 10% of 3
    assert LOGIC[logic_pattern(np.zeros(4))] == "dead"
    corners = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    rng = torch.Generator().manual_seed(0)
    w, b = torch.randn(2000, 2, generator=rng), torch.randn(2000, generator=rng)
    acts = torch.relu(corners @ w.T + b).numpy()          # (4, 2000)
    names = {LOGIC[logic_pattern(acts[:, i])] for i in range(2000)}
    assert "x1 XOR x2" not in names and "XNOR" not in names and len(names) > 8   # one half-plane each


def test_boundary_segment_is_where_the_neuron_switches():
    ends = boundary_segment(np.array([1.0, -1.0]), -0.5, -0.25, 1.25)     # x1 - x2 = 0.5
    assert ends.shape == (2, 2) and np.allclose(ends[:, 0] - ends[:, 1], 0.5)
    assert boundary_segment(np.array([1.0, 1.0]), -5.0, -0.25, 1.25).shape == (0, 2)


def test_other_digits_are_the_rest_of_the_set_scaled_alike():
    from sklearn.datasets import load_digits

    x, digit = other_digits((1, 7))
    pair = digit_pair(1, 7, 0.3, seed=0)
    assert len(x) + len(pair.y_train) + len(pair.y_test) == len(load_digits().target) == 1797
    assert set(digit.tolist()) == {0, 2, 3, 4, 5, 6, 8, 9} and x.shape == (len(digit), 64)
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.max()) > 0.9   # /16, as digit_pair scales


def test_data_and_training_are_fixed_by_their_seeds():
    split = digit_pair(1, 7, 0.3, seed=0)
    assert len(split.y_train) + len(split.y_test) == 361 and split.n_inputs == 64
    assert 0 <= float(split.x_train.min()) and float(split.x_train.max()) <= 1
    assert abs(split.y_train.float().mean().item() - split.y_test.float().mean().item()) < 0.02   # stratified
    assert torch.equal(digit_pair(1, 7, 0.3, seed=0).x_test, split.x_test)
    xor, corner = xor_split(5, 0.1, seed=0)
    assert xor.y_test.tolist() == [int(c in (1, 2)) for c in corner.tolist()]    # corners 01 and 10 are XOR = 1
    one, again, other = (train_mlp(xor, 4, 30, 0.01, seed) for seed in (0, 0, 1))
    assert torch.equal(one.model.w_in.weight, again.model.w_in.weight)
    assert not torch.equal(one.model.w_in.weight, other.model.w_in.weight)


def test_training_many_at_once_follows_each_single_run():
    """Two different draws of the points and three seeds: each batched model ends where `train_mlp` does."""
    splits = [xor_split(20, 0.1, seed=d)[0] for d in (0, 1, 0)]
    # Batched and single matmuls sum in different orders on different CPUs: after 20 steps the runs agree to 1e-5;
    # over 300 Adam steps (which rescale tiny gradients) the rounding grows to ~1e-4 on some machines, while a
    # wrong seed or split would differ by O(1).
    for steps, tol in ((20, 1e-5), (300, 1e-3)):
        batched = train_many(splits, 8, steps, 0.01, [0, 0, 3])
        for split, seed, many in zip(splits, [0, 0, 3], batched):
            single = train_mlp(split, 8, steps, 0.01, seed)
            for name, value in single.model.state_dict().items():
                assert torch.allclose(value, many.model.state_dict()[name], atol=tol, rtol=tol), (steps, name)
            assert abs(many.final_loss - single.final_loss) < tol
            if steps == 300:
                assert many.test_accuracy == single.test_accuracy
    with pytest.raises(ValueError, match="2 splits and 1 seeds"):
        train_many(splits[:2], 8, 1, 0.01, [0])


def test_snapshots_of_one_run_are_the_shorter_runs():
    split = digit_pair(1, 7, 0.3, seed=0)
    snaps = train_snapshots([split] * 2, 6, 0.01, [0, 1], at_steps=[0, 1, 7], optimizer="sgd")
    assert sorted(snaps) == [0, 1, 7]
    for k, models in snaps.items():
        for model, again in zip(models, train_many([split] * 2, 6, k, 0.01, [0, 1], optimizer="sgd")):
            for name, value in model.state_dict().items():
                assert torch.equal(value, again.model.state_dict()[name]), (k, name)
    assert torch.equal(snaps[0][1].w_in.weight, initial_model(64, 6, 1).w_in.weight)


def test_a_leaky_relu_passes_a_slope_below_zero_and_keeps_the_initialisation():
    leaky, plain = MLP(2, 3, negative_slope=0.1), MLP(2, 3)
    with torch.no_grad():
        for model in (leaky, plain):
            model.w_in.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]]))
            model.w_in.bias.zero_()
    x = torch.tensor([[1.0, -1.0]])                                              # pre-activations 1, -1, -2
    assert torch.allclose(leaky.run(x)[1], torch.tensor([[1.0, -0.1, -0.2]]))
    assert torch.allclose(plain.run(x)[1], torch.tensor([[1.0, 0.0, 0.0]]))
    split = xor_split(10, 0.1, seed=0)[0]
    zero_steps = train_many([split], 4, 0, 0.01, [2], negative_slope=0.01)[0].model
    assert zero_steps.negative_slope == 0.01
    assert torch.equal(zero_steps.w_in.weight, initial_model(2, 4, 2).w_in.weight)


def test_warmup_scales_the_first_steps_and_then_leaves_the_rate_alone():
    """Adam's first step moves a weight by about the rate: with warmup over 10 steps, a tenth of it."""
    split = xor_split(10, 0.1, seed=0)[0]
    start = initial_model(2, 4, 0).w_in.weight
    plain = train_many([split], 4, 1, 0.01, [0])[0].model.w_in.weight
    warm = train_many([split], 4, 1, 0.01, [0], warmup_steps=10)[0].model.w_in.weight
    assert torch.allclose((warm - start).abs(), (plain - start).abs() / 10, rtol=1e-3, atol=1e-7)
    assert torch.equal(train_many([split], 4, 5, 0.01, [0], warmup_steps=1)[0].model.w_in.weight,
                       train_many([split], 4, 5, 0.01, [0])[0].model.w_in.weight)


def test_sgd_steps_by_the_gradient_and_bad_optimizers_are_named():
    split = xor_split(10, 0.1, seed=0)[0]
    start = initial_model(2, 4, 1)
    start.zero_grad()
    F.cross_entropy(start(split.x_train), split.y_train).backward()
    stepped = train_many([split], 4, 1, 0.5, [1], optimizer="sgd")[0].model
    assert torch.allclose(stepped.w_in.weight, start.w_in.weight - 0.5 * start.w_in.weight.grad, atol=1e-6)
    big_eps = train_many([split], 4, 1, 0.5, [1], eps=1e3)[0].model                 # step = lr·g / (|g| + ε)
    assert torch.allclose(big_eps.w_in.weight, start.w_in.weight - 0.5 * start.w_in.weight.grad
                          / (start.w_in.weight.grad.abs() + 1e3), atol=1e-7)
    with pytest.raises(ValueError, match="optimizer 'rmsprop'"):
        train_many([split], 4, 1, 0.5, [1], optimizer="rmsprop")


def test_corner_logic_names_each_neuron():
    model = MLP(2, 3)
    with torch.no_grad():
        model.w_in.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, -1.0]]))
        model.w_in.bias.copy_(torch.tensor([0.0, 0.0, -0.5]))
    corners = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    assert corner_logic(model, corners) == ["x1 AND NOT x2", "x2", "dead"]


def test_the_smoke_experiment_stores_consistent_tables(tmp_store):
    from labpy import results
    from labpy.toy.mlp import mlp_from_state

    runs = results("mlp_neurons", "smoke")
    digits, xor = runs["digits"], runs["xor"]
    for entry in (digits, xor):
        config = entry.config
        sel = entry.table("selectivity")
        assert np.allclose(sel.difference, sel.mean_1 - sel.mean_0, atol=1e-4)
        assert sel["index"].between(-1, 1).all() and sel[["active_0", "active_1"]].stack().between(0, 1).all()
        assert sel.groupby("seed").neuron.nunique().eq(config.hidden).all()
        sweep = entry.table("knockout_sweep")
        for _, g in sweep.groupby("seed"):
            assert sorted(g.k.unique()) == list(range(config.hidden + 1))
            assert (g[g.k == 0].flipped == 0).all()
            assert g[g.k == config.hidden].accuracy.nunique() == 1        # all out: the bias, whatever the order
        match = entry.table("matching")
        for _, g in match.groupby(["seed_a", "seed_b"]):
            assert g.neuron_a.is_unique and g.neuron_b.is_unique and len(g) == config.hidden
        corr = entry.table("correlation").set_index(["neuron_a", "neuron_b"])["corr"]
        first = match[(match.seed_a == config.seeds[0]) & (match.seed_b == config.seeds[1])]
        assert np.allclose([corr[(a, b)] for a, b in zip(first.neuron_a, first.neuron_b)], first["corr"], atol=1e-5)
        models = entry.table("models").set_index("seed")
        split = digit_pair(1, 7, config.test_share, config.data_seed) if config.task == "digits" else \
            xor_split(config.xor_per_corner, config.xor_noise, config.data_seed)[0]
        for seed in config.seeds:                         # the stored weights reproduce the stored accuracy
            model = mlp_from_state(entry.checkpoint(f"seed_{seed}"))
            accuracy = (model(split.x_test).argmax(-1) == split.y_test).float().mean().item()
            assert accuracy == pytest.approx(models.test_accuracy[seed], abs=1e-6)
    changes = digits.table("bar_neurons")
    active = changes[changes.state == "stays active"]
    assert np.allclose(active.d_act, active.first_order, atol=1e-4)
    assert (changes[changes.state == "stays off"].d_act == 0).all()
    steps, n_bar = digits.table("bar_steps"), len(digits.table("bar_pixels"))
    assert n_bar > 0 and sorted(steps.step.unique()) == list(range(n_bar + 1))
    assert (digits.table("bar_pixels").row < digits.config.bar_rows).all()
    flips = digits.table("bar_flips")
    assert flips.flip_step.dropna().between(1, n_bar).all()
    corners = xor.table("corners")
    assert set(corners.logic) <= set(LOGIC.values()) and set(corners.corner) == {"0,0", "0,1", "1,0", "1,1"}
    assert isinstance(pd.read_csv(xor.path / "tables" / "corners.csv").corner.iloc[0], str)


def test_a_config_that_cannot_be_matched_is_one_clear_error():
    from labpy.errors import ConfigError
    from labpy.experiments.mlp_neurons import MLPNeuronsConfig

    with pytest.raises(ConfigError, match=r"MLPNeuronsConfig.seeds = \(0,\) is out of range; it needs at least two "
                                          r"different seeds"):
        MLPNeuronsConfig(seeds=(0,))
    with pytest.raises(ConfigError, match=r"MLPNeuronsConfig.task = 'mnist' is out of range; it must be one of: "
                                          r"digits, xor"):
        MLPNeuronsConfig(task="mnist")


def test_dead_over_training_matches_train_snapshots_and_the_front_layer_starts_as_the_identity():
    from labpy.toy.mlp import dead_over_training

    split = digit_pair(1, 7, 0.3, 0)
    seeds, steps = [0, 1, 2], [0, 5, 40]
    plain, plain_accuracy = dead_over_training([split] * 3, 16, 0.01, seeds, steps)
    snapshots = train_snapshots([split] * 3, 16, 0.01, seeds, steps)
    for k in steps:
        by_hand = np.stack([((m.pre(split.x_train) > 0).sum(0) == 0).detach().numpy() for m in snapshots[k]])
        assert np.array_equal(plain[k], by_hand)
    final = snapshots[40]
    assert plain_accuracy.tolist() == pytest.approx(
        [float((m(split.x_test).argmax(1) == split.y_test).float().mean()) for m in final], abs=1e-6)
    fronted, _ = dead_over_training([split] * 3, 16, 0.01, seeds, steps, front=True)
    assert np.array_equal(fronted[0], plain[0])                    # the identity front: the same models at the start
    assert plain[40].sum() > 0 and not np.array_equal(fronted[40], plain[40])


def test_all_digits_split_and_ten_class_models_share_the_pair_models_input_weights():
    from labpy.tasks.digits import all_digits
    from labpy.toy.mlp import dead_over_training

    split = all_digits(0.3, 0)
    assert split.classes == tuple("0123456789") and set(split.y_train.tolist()) == set(range(10))
    assert len(split.y_train) + len(split.y_test) == 1797                     # sklearn's digits, every image
    counts = np.bincount(split.y_test.numpy(), minlength=10)
    assert counts.min() >= 50 and counts.max() <= 56                          # stratified: about 54 of each
    pair = digit_pair(1, 7, 0.3, 0)
    ten, two = initial_model(64, 16, 3, 10), initial_model(64, 16, 3)
    assert torch.equal(ten.w_in.weight, two.w_in.weight) and ten.w_out.weight.shape == (10, 16)
    masks, accuracy = dead_over_training([split] * 2, 16, 0.01, [0, 1], [0, 20])
    assert masks[20].shape == (2, 16) and 0.5 < accuracy.min() <= 1          # ten classes learned well past chance
    assert pair.classes == ("1", "7")


def test_dead_spans_round_trip_the_masks_they_compress():
    from labpy.experiments.mlp_neuron_sweeps import dead_spans

    rng = np.random.default_rng(0)
    masks = {k: rng.random((3, 5)) < 0.4 for k in (0, 10, 20, 30)}          # dying and reviving at random
    masks[30][0, 0], masks[0][1, 1], masks[10][1, 1] = True, True, False
    spans = pd.DataFrame(dead_spans(masks, [7, 8, 9]))
    for k, mask in masks.items():
        back = np.zeros_like(mask)
        for s in spans[(spans["first"] <= k) & (spans["last"] >= k)].itertuples():
            back[[7, 8, 9].index(s.seed), s.neuron] = True
        assert np.array_equal(back, mask)
    assert ((spans.seed == 8) & (spans.neuron == 1) & (spans["first"] == 0) & (spans["last"] == 0)).any()


def test_the_sweeps_replay_single_runs_and_snapshots(tmp_store):
    from labpy import results
    from labpy.experiments.mlp_neuron_sweeps import dead_masks
    from labpy.tasks.digits import CORNERS, all_digits
    from labpy.toy.mlp import train_mlp

    runs = results("mlp_neuron_sweeps", "smoke")
    xc = runs["xor_inits"].config
    logic = runs["xor_inits"].table("logic").set_index(["draw", "init", "neuron"]).logic
    models = runs["xor_inits"].table("models").set_index(["draw", "init"])
    assert len(models) == xc.draws * xc.inits
    for draw, init in ((xc.data_seed, 0), (xc.data_seed + xc.draws - 1, xc.inits - 1)):   # one model at a time
        split = xor_split(xc.xor_per_corner, xc.xor_noise, draw)[0]
        single = train_mlp(split, xc.hidden, xc.steps, xc.lr, init)
        assert [logic[(draw, init, h)] for h in range(xc.hidden)] == corner_logic(
            single.model, torch.tensor(CORNERS, dtype=torch.float32))
        assert models.test_accuracy[(draw, init)] == pytest.approx(single.test_accuracy, abs=1e-6)
    tc = runs["ten_digits"].config
    ten = dead_masks(runs["ten_digits"])
    assert tc.read_at == [0, 10, 20] and set(ten) == {"fixed pixels", "learned layer in front"}
    split = all_digits(tc.test_share, tc.data_seed)
    snapshots = train_snapshots([split] * tc.inits, tc.hidden, tc.lr, tc.seeds, tc.read_at)
    masks, accuracy = ten["fixed pixels"]
    for k in tc.read_at:                                 # the stored spans give back the snapshots' dead neurons
        by_hand = np.stack([((m.pre(split.x_train) > 0).sum(0) == 0).detach().numpy() for m in snapshots[k]])
        assert np.array_equal(masks[k], by_hand)
    assert accuracy == pytest.approx([float((m(split.x_test).argmax(1) == split.y_test).float().mean())
                                      for m in snapshots[tc.steps]], abs=1e-6)
    assert np.array_equal(ten["learned layer in front"][0][0], masks[0])       # both start as the same models


def test_mirror_symmetric_points_equal_their_own_swap_and_shifts_move_one_cluster():
    from labpy.experiments.xor_draw_tilt import asymmetries, mirror_symmetric, shifted, swapped
    from labpy.tasks.digits import xor_points

    x, y, corner = xor_points(10, 0.1, 4)
    sym = mirror_symmetric(x, corner)
    mirror_corner = torch.tensor([0, 2, 1, 3])[corner]                  # swapping x1 and x2 exchanges "0,1" and "1,0"
    for c in range(4):                                                 # each cluster is the swap of its mirror's
        mine = sorted(map(tuple, sym[corner == c].tolist()))
        assert mine == sorted(map(tuple, swapped(sym[mirror_corner == c]).tolist()))
    assert torch.equal(sym[corner == 1], x[corner == 1]) and torch.equal(sym[corner == 0][:5], x[corner == 0][:5])
    assert all(abs(v) < 1e-7 for v in asymmetries(sym, corner).values())
    moved = shifted(sym, corner, 0.03)
    assert torch.allclose(moved[corner == 2, 0], sym[corner == 2, 0] + 0.03)
    assert torch.equal(moved[corner != 2], sym[corner != 2]) and torch.equal(moved[:, 1], sym[:, 1])
    stats = asymmetries(moved, corner)
    assert stats["outward"] == pytest.approx(0.03, abs=1e-6) and abs(stats["spread"]) < 1e-6
    # every statistic changes sign when the points are mirrored (the "0,1" and "1,0" clusters exchange roles)
    plain, mirrored = asymmetries(x, corner), asymmetries(swapped(x), mirror_corner)
    assert all(mirrored[k] == pytest.approx(-v, abs=1e-6) for k, v in plain.items())
    by_hand = float((x[corner == 0, 0].double() - x[corner == 0, 1].double()).mean())
    assert plain["corner_00"] == pytest.approx(by_hand, abs=1e-9)


def test_the_tilt_runs_match_single_runs_and_odd_clusters_are_one_clear_error(tmp_store):
    from labpy import results
    from labpy.errors import ConfigError
    from labpy.experiments.xor_draw_tilt import FUNCTIONS, XorTiltConfig

    with pytest.raises(ConfigError, match=r"XorTiltConfig.xor_per_corner = 5 is out of range; it must be even"):
        XorTiltConfig(xor_per_corner=5)
    runs = results("xor_draw_tilt", "smoke")
    draws = runs["draws"]
    c = draws.config
    models = draws.table("models").set_index(["draw", "init"])
    assert len(models) == c.draws * c.inits
    split = xor_split(c.xor_per_corner, c.xor_noise, c.data_seed + 1)[0]
    single = train_mlp(split, c.hidden, c.steps, c.lr, c.inits - 1)
    found = set(corner_logic(single.model, torch.tensor([[0.0, 0], [0, 1], [1, 0], [1, 1]])))
    row = models.loc[(c.data_seed + 1, c.inits - 1)]
    assert [bool(row[f]) for f in FUNCTIONS] == [f in found for f in FUNCTIONS]
    assert row.test_accuracy == pytest.approx(single.test_accuracy, abs=1e-6)
    parts = runs["parts"].table("point_sets").set_index(["draw", "variant"])
    as_drawn = draws.table("point_sets").set_index("draw")
    for d in range(c.data_seed, c.data_seed + runs["parts"].config.draws):     # one part mirrored leaves the rest
        assert parts.loc[(d, "as drawn")].to_dict() == pytest.approx(as_drawn.loc[d].to_dict(), abs=1e-6)
        assert parts.loc[(d, "all mirrored")].abs().max() < 1e-6
        xor1 = parts.loc[(d, "XOR = 1 clusters mirrored")]
        assert abs(xor1.outward) < 1e-6 and abs(xor1.cross) < 1e-6
        assert xor1.corner_00 == pytest.approx(as_drawn.corner_00[d], abs=1e-6)
        assert abs(parts.loc[(d, "'0,0' mirrored")].corner_00) < 1e-6
        assert parts.loc[(d, "'0,0' mirrored")].corner_11 == pytest.approx(as_drawn.corner_11[d], abs=1e-6)
    assert len(runs["parts"].table("models")) == 2 * 5 * 3
    for label, moved, still in (("shifts", "outward", "cross"), ("cross_shifts", "cross", "outward")):
        stats = runs[label].table("point_sets").set_index("shift")          # each sweep moves one statistic only
        assert stats[moved].to_dict() == pytest.approx({s: s for s in runs[label].config.shifts}, abs=1e-6)
        assert stats[still].abs().max() < 1e-6


def test_on_mirror_symmetric_points_a_mirrored_start_builds_the_mirrored_solution():
    """Why the lean left on symmetric points is the initialisations' own: training commutes with swapping x1 and x2."""
    from labpy.experiments.xor_draw_tilt import mirror_symmetric, swapped
    from labpy.tasks.digits import CORNERS, xor_points

    x, y, corner = xor_points(50, 0.1, 0)
    x = mirror_symmetric(x, corner)
    corners = torch.tensor(CORNERS, dtype=torch.float32)
    name_of = {name: pattern for pattern, name in LOGIC.items()}
    mirror_name = {name: LOGIC[p[0] + p[2] + p[1] + p[3]] for name, p in name_of.items()}   # swap 01 and 10
    found = []
    for seed in range(4):
        model = initial_model(2, 8, seed)
        twin = initial_model(2, 8, seed)
        with torch.no_grad():
            twin.w_in.weight.copy_(swapped(model.w_in.weight))            # the same start, mirrored
        for m in (model, twin):
            opt = torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.0)
            for _ in range(300):
                loss = F.cross_entropy(m(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        assert torch.allclose(twin.w_in.weight, swapped(model.w_in.weight), atol=1e-3)   # up to float sums
        mine, theirs = corner_logic(model, corners), corner_logic(twin, corners)
        assert theirs == [mirror_name[n] for n in mine]
        found += mine
    assert any(mirror_name[n] != n for n in found)              # the check saw functions that do change when mirrored


def test_tail_variants_swap_the_chosen_one_one_points_and_nothing_else():
    from labpy.experiments.xor_draw_tilt import (TAIL_SIZES, TAIL_VARIANTS, asymmetries, swapped, tail_asymmetry,
                                                 tail_order, tail_variants)
    from labpy.tasks.digits import xor_points

    x, _, corner = xor_points(50, 0.1, 6)
    order = tail_order(x, corner)
    d = (x[:, 0] - x[:, 1]).tolist()
    by_hand = sorted((i for i in range(len(d)) if corner[i] == 3), key=lambda i: -abs(d[i]))
    assert order.tolist() == by_hand                                   # furthest from the diagonal first
    ones = sorted(d[i] for i in by_hand)
    assert tail_asymmetry(x, corner) == pytest.approx(np.mean(ones[-5:]) + np.mean(ones[:5]), abs=1e-6)
    variants = tail_variants(x, corner, 6)
    assert tuple(variants) == TAIL_VARIANTS
    assert torch.equal(variants["as drawn"], x)
    for name, moved in variants.items():
        assert torch.equal(moved[corner != 3], x[corner != 3])              # only "1,1" points move
        changed = set(torch.nonzero((moved != x).any(1)).squeeze(1).tolist())
        assert all(torch.equal(moved[i], swapped(x[i:i + 1])[0]) for i in changed)
    k = TAIL_SIZES[-1]
    assert torch.equal(swapped(variants[f"{k} furthest swapped"])[order[k:]],
                       variants[f"all but the {k} furthest swapped"][order[k:]])
    assert (variants[f"{k} at random swapped"] != x).any(1).sum() <= k
    full = variants["'1,1' swapped"]
    assert tail_asymmetry(full, corner) == pytest.approx(-tail_asymmetry(x, corner), abs=1e-6)
    assert asymmetries(full, corner)["corner_11"] == pytest.approx(-asymmetries(x, corner)["corner_11"], abs=1e-6)
    assert tail_variants(x, corner, 6)[f"{k} at random swapped"].equal(variants[f"{k} at random swapped"])


def test_the_tails_run_matches_a_single_run_on_its_swapped_points(tmp_store):
    from labpy import results
    from labpy.experiments.xor_draw_tilt import FUNCTIONS, TAIL_VARIANTS, corner_ids, tail_variants
    from labpy.tasks.digits import Split

    run = results("xor_draw_tilt", "smoke")["tails"]
    c = run.config
    models = run.table("models").set_index(["draw", "variant", "init"])
    assert len(models) == c.draws * len(TAIL_VARIANTS) * c.inits
    d, variant = c.data_seed + 1, TAIL_VARIANTS[3]
    split = xor_split(c.xor_per_corner, c.xor_noise, d)[0]
    x = tail_variants(split.x_train, corner_ids(c), d)[variant]
    single = train_mlp(Split(x, split.y_train, split.x_test, split.y_test, split.classes), c.hidden, c.steps, c.lr,
                       c.inits - 1)
    found = set(corner_logic(single.model, torch.tensor([[0.0, 0], [0, 1], [1, 0], [1, 1]])))
    row = models.loc[(d, variant, c.inits - 1)]
    assert [bool(row[f]) for f in FUNCTIONS] == [f in found for f in FUNCTIONS]
    assert row.test_accuracy == pytest.approx(single.test_accuracy, abs=1e-6)
    stats = run.table("point_sets").set_index(["draw", "variant"])
    assert stats.loc[(d, "'1,1' swapped")].tail_11 == pytest.approx(-stats.loc[(d, "as drawn")].tail_11, abs=1e-6)


def test_outlier_reading_ranks_the_one_one_points_by_the_side_detector_by_hand():
    from labpy.experiments.xor_draw_tilt import first_pair_code, outlier_reading

    x = torch.tensor([[0.0, 0.0], [1.0, 0.1], [1.1, 0.7], [0.9, 1.0], [0.7, 1.2]])     # 0,0 / 1,0 / three 1,1
    corner = torch.tensor([0, 2, 3, 3, 3])
    model = MLP(2, 3)
    with torch.no_grad():
        model.w_in.weight.copy_(torch.tensor([[1.0, -1.0], [1.0, -2.0], [-1.0, 1.0]]))
        model.w_in.bias.copy_(torch.tensor([-0.5, -0.2, -0.5]))
    # neurons 0 and 1 are 'x1 AND NOT x2' (on at 1,0 only), neuron 2 is its mirror
    assert first_pair_code(model, torch.tensor([[0.0, 0], [0, 1], [1, 0], [1, 1]])) == 3
    reading = outlier_reading(model, x, corner, outlier=2)            # x1 − x2 = 0.4 > 0: the 'x1 AND NOT x2' side
    # pre-activations of the 1,1 points: neuron 0: -0.1, -0.6, -1.0; neuron 1: -0.5, -1.3, -1.9 -> rank 1 in both
    assert reading["outlier_pre"] == pytest.approx(-0.1) and reading["outlier_rank"] == 1
    reading = outlier_reading(model, x, corner, outlier=3)            # x1 − x2 = −0.1: the mirror's side, neuron 2
    assert reading["outlier_pre"] == pytest.approx(-0.4) and reading["outlier_rank"] == 2     # 0.7,1.2 gives 0.0
    with torch.no_grad():
        model.w_in.bias.copy_(torch.tensor([-0.5, -0.2, -5.0]))       # neuron 2 never fires: no mirror detector
    assert np.isnan(outlier_reading(model, x, corner, outlier=3)["outlier_rank"])


def test_the_lines_run_ends_where_the_tails_run_does(tmp_store):
    from labpy import results
    from labpy.experiments.xor_draw_tilt import FUNCTIONS, LINE_VARIANTS

    runs = results("xor_draw_tilt", "smoke")
    lines, tails = runs["lines"], runs["tails"]
    assert (lines.config.hidden, lines.config.steps, lines.config.inits) == (
        tails.config.hidden, tails.config.steps, tails.config.inits)
    ends = lines.table("models").set_index(["draw", "variant", "init"])
    same = tails.table("models").set_index(["draw", "variant", "init"]).loc[ends.index]
    assert set(ends.index.get_level_values("variant")) == set(LINE_VARIANTS)
    code = same[FUNCTIONS[0]].astype(int) + 2 * same[FUNCTIONS[1]].astype(int)   # snapshots end as train_many does
    assert (ends[f"code_{lines.config.steps}"] == code).all()
    assert np.allclose(ends.test_accuracy, same.test_accuracy, atol=1e-6)
    assert (ends.code_0.isin([0, 1, 2, 3])).all() and ends.outlier.nunique() == lines.config.draws
