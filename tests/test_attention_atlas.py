"""Head scores against hand-built attention patterns, and the attention atlas at smoke scale."""

import math

import torch

from labpy.interp.heads import (duplicate_token_scores, entropy_bits, first_token_scores, induction_scores,
                                local_window_scores, previous_token_scores)

T, HALF = 8, 4


def _one(rows: list[int]) -> torch.Tensor:
    """A (1, 1, 1, T, T) pattern where query t puts all its weight on key rows[t]."""
    p = torch.zeros(T, T)
    p[torch.arange(T), torch.tensor(rows)] = 1.0
    return p[None, None, None]


def test_scores_of_hand_built_patterns():
    previous = _one([0] + list(range(T - 1)))                          # t -> t-1
    induction = _one([0, 0, 1, 2, 1, 2, 3, 4])                         # second copy t -> t - HALF + 1 (t >= 4)
    duplicate = _one([0, 0, 1, 2, 0, 1, 2, 3])                         # second copy t -> t - HALF
    sink = _one([0] * T)
    assert previous_token_scores(previous).item() == 1.0
    assert first_token_scores(sink).item() == 1.0 and abs(first_token_scores(previous).item() - 1 / (T - 1)) < 1e-7
    assert induction_scores(induction, HALF).item() == 1.0 and duplicate_token_scores(induction, HALF).item() == 0
    assert duplicate_token_scores(duplicate, HALF).item() == 1.0
    assert local_window_scores(previous, 4).item() == 1.0 and abs(local_window_scores(sink, 4).item() - 1 / 5) < 1e-6   # only query 3 has key 0 in its window
    assert entropy_bits(sink).item() == 0.0


def test_scores_are_per_head_and_averaged_over_the_batch():
    """Three heads with three different jobs in a batch of two: each score picks out its own head."""
    heads = torch.cat([_one([0] + list(range(T - 1))), _one([0] * T), _one([0, 0, 1, 2, 1, 2, 3, 4])], dim=2)
    patterns = torch.cat([heads, heads], dim=1)                                  # (1 layer, B=2, H=3, T, T)
    assert previous_token_scores(patterns)[0, 0].item() == 1.0 and previous_token_scores(patterns).shape == (1, 3)
    assert first_token_scores(patterns)[0].argmax().item() == 1
    assert induction_scores(patterns, HALF)[0].tolist() == [0.0, 0.0, 1.0]


def test_entropy_of_uniform_causal_attention_is_log2_of_the_keys():
    uniform = torch.tril(torch.ones(T, T))
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None, None]
    expected = sum(math.log2(t + 1) for t in range(1, T)) / (T - 1)
    assert abs(entropy_bits(uniform).item() - expected) < 1e-5
    # the 4 most recent keys hold min(4, t+1)/(t+1) of uniform attention, averaged over t >= 3
    assert abs(local_window_scores(uniform, 4).item() - sum(4 / (t + 1) for t in range(3, T)) / (T - 3)) < 1e-6


def test_atlas_smoke_run_scores_every_head_on_every_kind(tmp_store):
    from labpy import results
    from labpy.experiments.attention_atlas import KINDS, SCORES, explorer_key

    entry = results("attention_atlas", "smoke")["lab-lm"]
    heads = entry.table("heads")
    n_layers, n_heads = entry.summary["n_layers"], entry.summary["n_heads"]
    assert len(heads) == len(KINDS) * n_layers * n_heads and set(heads.kind) == set(KINDS)
    assert set(SCORES) <= set(heads.columns)
    repeated = heads[heads.kind == "repeated random"]
    assert repeated.induction.notna().all() and heads[heads.kind == "prose"].induction.isna().all()
    assert heads[list(set(SCORES) - {"entropy_bits"})].stack().dropna().between(0, 1).all()
    for kind in KINDS:
        patterns = entry.checkpoint(explorer_key(kind))["patterns"].float()              # (L, H, T, T)
        assert patterns.shape[:2] == (n_layers, n_heads)
        assert torch.allclose(patterns.sum(-1), torch.ones(patterns.shape[:-1]), atol=5e-3)   # fp16 rows sum to 1
        assert len(entry.summary["explorer_tokens"][kind]) == patterns.shape[-1]
    repeated_tokens = entry.summary["explorer_tokens"]["repeated random"]
    half = len(repeated_tokens) // 2
    assert half >= 2 and repeated_tokens[:half] == repeated_tokens[half:]


def test_explorer_snippet_reads_a_random_sequence_twice_and_cuts_the_others():
    """A plain cut of a repeated-random window would show only its first copy, where no induction head has
    anything to find; the explorer's snippet is the window's start read twice."""
    from labpy.experiments.attention_atlas import AtlasConfig, explorer_key, explorer_snippet

    config = AtlasConfig(n_windows=3, seq_len=16, explorer_len=6)
    rows = torch.arange(3 * 16).reshape(3, 16)                                  # window i holds 16i .. 16i+15
    windows = {"prose": rows, "code": rows + 100, "repeated random": rows + 200}
    assert explorer_snippet(windows, "prose", config).tolist() == [list(range(16, 22))]
    assert explorer_snippet(windows, "code", config).tolist() == [list(range(116, 122))]
    assert explorer_snippet(windows, "repeated random", config).tolist() == [[216, 217, 218, 216, 217, 218]]
    assert explorer_key("repeated random") == "explorer_repeated_random"


def test_formation_replays_the_lab_lm_bit_for_bit_and_scores_every_step(tmp_store):
    """The replay's final weights have the stored lab LM's digest; its step-0 scores come from the untrained
    model (near-uniform attention), and a changed weight changes the digest."""
    from labpy import results
    from labpy.experiments.attention_formation import replayed_config
    from labpy.store import state_digest

    replay = results("attention_formation", "smoke")["replay"]
    stored = results("lab_lm", "smoke")["base"]
    state = stored.checkpoint("final", torch.float16)
    assert replay.summary["final_fp16_digest"] == state_digest(state)
    state["model.norm.weight"][0] += 1
    assert state_digest(state) != replay.summary["final_fp16_digest"]

    lm = replayed_config(replay.config)
    heads, icl = replay.table("heads"), replay.table("in_context")
    steps = sorted(set(heads.step))
    assert steps[0] == 0 and steps[-1] == lm.steps and steps == sorted(set(icl.step))
    assert len(heads) == len(steps) * lm.n_layers * lm.n_heads
    start = heads[heads.step == 0]
    t = replay.config.seq_len
    uniform_entropy = sum(math.log2(k + 1) for k in range(1, t)) / (t - 1)    # every query spreads evenly
    assert (start.entropy_bits - uniform_entropy).abs().max() < 0.05
    assert heads[["previous_token", "first_token", "induction", "duplicate_token"]].stack().between(0, 1).all()


def test_regroupings_are_every_split_into_equal_groups_once():
    from labpy.experiments.attention_atlas_analysis import regroupings

    from collections import Counter

    nine = regroupings(9, 3)                                           # 9! / (3!^3 · 3!) = 280
    assert nine.shape == (280, 9) and all(sorted(Counter(r).values()) == [3, 3, 3] for r in nine)
    as_sets = {frozenset(frozenset(int(h) for h in range(9) if r[h] == g) for g in range(3)) for r in nine}
    assert len(as_sets) == 280                                         # no split twice under another labelling
    assert len(regroupings(4, 2)) == 3 and len(regroupings(6, 3)) == 10


def test_group_gap_and_its_exact_p_value_on_hand_built_heads():
    import numpy as np
    import pandas as pd

    from labpy.experiments.attention_atlas_analysis import group_eta2, group_gap, head_profiles, kv_group_gaps

    points = np.array([[0.0], [0.0], [3.0], [3.0]])                   # two tight pairs, 3 apart
    assert group_gap(points, np.array([0, 0, 1, 1])) == 3.0           # across 3, within 0
    assert group_gap(points, np.array([0, 1, 0, 1])) == -1.5          # across (0 + 3) / 2, within 3
    rows = []
    for layer, offset in ((0, 0.0), (1, 10.0)):
        for head in range(9):
            group = head // 3
            rows += [{"kind": "prose", "layer": layer, "head": head, "kv_head": group,
                      "previous_token": offset + group + 0.01 * head, "first_token": 0.5 * group,
                      "entropy_bits": 1.0 + (head % 2), "induction": np.nan}]
    heads = pd.DataFrame(rows)
    profiles = head_profiles(heads)
    assert set(profiles.columns) == {"layer", "head", "kv_head", "previous_token (prose)", "first_token (prose)",
                                     "entropy_bits (prose)"}
    assert np.allclose(profiles.iloc[:, 3:].mean(), 0) and np.allclose(profiles.iloc[:, 3:].std(ddof=0), 1)
    table, p_all = kv_group_gaps(head_profiles(heads.drop(columns="entropy_bits")), samples=2000)
    assert (table.gap > 0).all() and (table.within < table.across).all()
    assert np.allclose(table.p, 1 / 280)                               # only the true grouping is that tight
    assert p_all < 0.002
    assert group_eta2(heads, "first_token", "prose") == 1.0            # constant within groups, differs across
    assert 0 < group_eta2(heads, "entropy_bits", "prose") < 0.25      # alternates inside every group
    mixed, _ = kv_group_gaps(profiles, samples=10)                     # entropy splits every group: less alike
    assert (mixed.p > 1 / 280).all()
