"""grokking_seeds: the compact many-seed entries, through the GPU hand-off (scripts/gpu_check.py run with several
labels in parallel processes, then store), against the `grokking` experiment's own run of the same config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from labpy.experiments.grokking_seeds import top_frequency_lists
from labpy.experiments.grokking_analysis import forecast_onsets

ROOT = Path(__file__).resolve().parent.parent


def test_top_frequencies_per_step_strongest_first():
    stats = pd.DataFrame({"step": [0, 0, 0, 10, 10, 10], "freq": [1, 2, 3, 1, 2, 3],
                          "logit_norm": [0.1, 0.3, 0.2, 5.0, 0.0, 1.0]})
    assert top_frequency_lists(stats, 2).to_dict() == {0: "2 3", 10: "1 3"}


def test_many_labels_through_the_hand_off_equal_the_grokking_run(tmp_path):
    """Two labels in two processes, stored here; init-s0's curves are `grokking`'s seed0 smoke run, number for number
    (the same config on the same CPU), and the top frequencies at the last evaluation are the summary's key ones."""
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "LAB_RUNS_DIR": str(tmp_path / "runs"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "run", str(out), "--experiment", "grokking_seeds",
                           "--scale", "smoke", "--labels", "init-s0,nodecay-s0", "--workers", "2", "--commit", "test"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "FAILED" not in done.stdout, done.stdout + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["init-s0", "nodecay-s0"]
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "store", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    from labpy.experiments.registry import RunContext, get_experiment
    from labpy.store import RunStore

    entries = {e.label: e for e in RunStore(tmp_path / "runs").entries()}
    assert set(entries) == {"init-s0", "nodecay-s0"} and {e.experiment for e in entries.values()} == {"grokking_seeds"}
    grokking = get_experiment("grokking")
    reference = grokking.run(grokking.configs("smoke")["seed0"], RunContext(work_dir=tmp_path / "w"))
    evals = entries["init-s0"].table("evals")
    pd.testing.assert_frame_equal(evals.drop(columns="top_logit_freqs"), reference.tables["evals"],
                                  check_dtype=False, rtol=1e-5)
    assert entries["init-s0"].summary["key_freqs"] == reference.summary["key_freqs"]
    last = [int(k) for k in str(evals.top_logit_freqs.iloc[-1]).split()]
    assert last == entries["init-s0"].summary["key_freqs"]
    assert entries["nodecay-s0"].config.weight_decay == 0
    assert entries["init-s0"].provenance["git_commit"] == "test"


def test_a_run_with_weights_is_refused_by_the_hand_off(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "LAB_RUNS_DIR": str(tmp_path / "runs"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "run", str(tmp_path / "out"), "--experiment",
                           "grokking", "--scale", "smoke", "--label", "seed0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "grokking/seed0 returned checkpoints" in done.stderr
    assert not (tmp_path / "out").exists()


def test_leave_one_out_forecast_by_hand():
    """Onset = warning × the median onset/warning ratio of the other seeds."""
    marks = pd.DataFrame({"warning": [100.0, 200.0, 400.0], "onset": [300.0, 800.0, 1200.0]})
    # ratios 3, 4, 3: seed 0 uses median(4, 3) = 3.5, seed 1 median(3, 3) = 3, seed 2 median(3, 4) = 3.5
    expected = pd.Series([350.0, 600.0, 1400.0])
    pd.testing.assert_series_equal(forecast_onsets(marks.warning, marks.onset), expected, check_names=False)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        forecast_onsets(marks.warning[:1], marks.onset[:1])
    # gaps 200, 600, 800: seed 0 adds median(600, 800) = 700, seed 1 median(200, 800) = 500, seed 2 median(200, 600)
    expected_gap = pd.Series([800.0, 700.0, 800.0])
    pd.testing.assert_series_equal(forecast_onsets(marks.warning, marks.onset, by="gap"), expected_gap,
                                   check_names=False)
    with pytest.raises(ValueError, match="by='sum'"):
        forecast_onsets(marks.warning, marks.onset, by="sum")


def test_grokkings_three_seeds_are_the_same_runs_as_the_new_ones():
    """The grokking page pools `grokking`'s seeds 0-2 with `grokking_seeds`' cpu runs: that is only fair while their
    configs are the same (seed 0 held on longer after grokking, which moves none of its milestones)."""
    import dataclasses

    from labpy.experiments.registry import get_experiment

    old = get_experiment("grokking").configs("cpu")
    new = get_experiment("grokking_seeds")
    assert set(new.configs("cpu")).isdisjoint({f"init-s{i}" for i in range(3)})
    for i in range(3):
        assert dataclasses.replace(old[f"seed{i}"], hold_epochs=500) == new.configs("gpu")[f"init-s{i}"]
    base = new.configs("gpu")["init-s0"]
    for label, config in new.configs("cpu").items():
        kind, seed = label.split("-")
        if kind.startswith("decay"):                 # seed 0 with a weaker decay, allowed to train for longer
            changed = {"weight_decay": float(kind.removeprefix("decay")), "max_epochs": 16_000}
        else:
            changed = {"init": {"seed": int(seed[1:])}, "split": {"data_seed": int(seed[1:])},
                       "nodecay": {"seed": int(seed[1:]), "weight_decay": 0.0}}[kind]
        assert config == dataclasses.replace(base, **changed), label
    assert {c.weight_decay for l, c in new.configs("cpu").items() if l.startswith("decay")} == {0.5, 0.3}
