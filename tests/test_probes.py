"""Probing (`labpy.interp.probes`) and its labels (`labpy.tasks.code_labels`), against hand-labelled source,
scikit-learn's own behaviour on data with a known answer, and the definition of a control task."""

import numpy as np
import pytest

from labpy.interp.probes import control_labels, majority_accuracy, probe_accuracy
from labpy.tasks.code_labels import char_labels


def test_char_labels_match_a_hand_labelled_line():
    source = 'x = f(a, [1, "s(t)"])  # c (\ny = 2\n'
    in_string, in_comment, depth = char_labels(source)
    labelled = {i: (int(in_string[i]), int(in_comment[i]), int(depth[i])) for i in range(len(source))}
    assert labelled[source.index("a")] == (0, 0, 1)             # inside f( ... )
    assert labelled[source.index("1")] == (0, 0, 2)             # inside f( [ ... ] )
    assert labelled[source.index("s(")] == (1, 0, 2)            # in the string; its "(" opens nothing
    assert labelled[source.index("t)")][2] == 2
    assert labelled[source.index("# c")] == (0, 1, 0)           # the comment's "(" opens nothing either
    assert labelled[source.index("y")] == (0, 0, 0)
    assert labelled[source.index("f")] == (0, 0, 0) and labelled[source.index("(")] == (0, 0, 0)   # the opener is outside
    assert labelled[source.index("])")] == (0, 0, 1)            # "]" closes at itself: depth 1 there, as at "a"


def test_control_labels_are_a_function_of_the_token_type_with_the_property_distribution():
    rng = np.random.default_rng(0)
    token_ids = rng.integers(0, 400, size=20_000)
    labels = (rng.random(20_000) < 0.3).astype(int)
    control = control_labels(token_ids, labels, seed=1)
    for t in np.unique(token_ids)[:50]:
        assert len(set(control[token_ids == t])) == 1              # one label per type, every occurrence
    per_type = np.array([control[token_ids == t][0] for t in np.unique(token_ids)])
    assert per_type.mean() == pytest.approx(0.3, abs=0.06)        # drawn from the property's distribution
    assert (control_labels(token_ids, labels, seed=1) == control).all()
    assert not (control_labels(token_ids, labels, seed=2) == control).all()


def test_probe_finds_a_linear_signal_and_not_a_missing_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20))
    y = (x[:, 3] + 0.1 * rng.normal(size=600) > 0).astype(int)
    assert probe_accuracy(x[:400], y[:400], x[400:], y[400:]) > 0.9
    noise = rng.integers(0, 2, size=600)
    assert probe_accuracy(x[:400], noise[:400], x[400:], noise[400:]) < 0.65
    assert majority_accuracy(np.array([0, 0, 1]), np.array([0, 1, 1, 1])) == 0.25
    assert probe_accuracy(x[:10], np.zeros(10, int), x[10:20], np.r_[np.zeros(5, int), np.ones(5, int)]) == 0.5


def test_the_experiment_reports_selectivity_against_its_control(tmp_store):
    from labpy import results

    entry = results("probes", "smoke")["lab-lm"]
    probes = entry.table("probes")
    assert np.allclose(probes.selectivity, probes.accuracy - probes.control_accuracy, atol=1e-5)   # stored to 6 digits
    assert probes.groupby("property").layer.nunique().eq(entry.summary["n_layers"] + 1).all()
    assert probes[["accuracy", "control_accuracy", "majority"]].stack().between(0, 1).all()
    tokens = entry.table("tokens")
    assert set(tokens.split) == {"train", "test"}
    assert tokens.groupby("window").split.nunique().eq(1).all()    # whole windows go to one side
    pca = entry.table("pca")
    assert set(pca.layer) == {-1, entry.summary["n_layers"] // 2 - 1, entry.summary["n_layers"] - 1}
    assert (tokens.loc[pca.token, "position"] > 0).all()           # the sink position is left out


def test_too_few_windows_is_one_clear_error():
    from labpy.errors import ConfigError
    from labpy.experiments.probes import ProbesConfig

    with pytest.raises(ConfigError, match=r"ProbesConfig.n_windows = 1 is out of range; 70% of the windows train"):
        ProbesConfig(n_windows=1)
