"""The interp benchmark's paired ratios and their bootstrap interval, against hand-built timings."""

import numpy as np
import pandas as pd
import pytest

from labpy.experiments.interp_benchmark import median_interval, paired_ratios


def _captures(hooks: list[float], bridge: list[float]) -> pd.DataFrame:
    rows = [{"model": "m", "repeat": r, "way": way, "seconds": s}
            for way, times in (("hooks", hooks), ("bridge", bridge)) for r, s in enumerate(times)]
    rows.append({"model": "other", "repeat": 0, "way": "hooks", "seconds": 100.0})
    rows.append({"model": "other", "repeat": 0, "way": "bridge", "seconds": 1.0})
    return pd.DataFrame(rows)


def test_paired_ratios_divide_within_each_repeat_of_one_model():
    ratios = paired_ratios(_captures([1.0, 3.0, 2.0], [2.0, 3.0, 1.0]), "m", "hooks", "bridge")
    assert ratios.tolist() == [0.5, 1.0, 2.0]                     # repeat by repeat, the other model left out


def test_interval_brackets_the_median_and_collapses_when_every_ratio_agrees():
    median, low, high = median_interval(pd.Series([0.9] * 20))
    assert median == low == high == pytest.approx(0.9)
    ratios = pd.Series(np.random.default_rng(1).normal(1.0, 0.05, 41))
    median, low, high = median_interval(ratios)
    assert median == pytest.approx(float(np.median(ratios)))
    assert low < median < high
    assert median_interval(ratios) == (median, low, high)         # seeded: a page shows the same interval
    assert ratios.min() <= low and high <= ratios.max()


def test_interval_narrows_with_more_repeats():
    rng = np.random.default_rng(2)
    few = median_interval(pd.Series(rng.normal(1.0, 0.05, 15)))
    many = median_interval(pd.Series(rng.normal(1.0, 0.05, 160)))
    assert many[2] - many[1] < few[2] - few[1]
