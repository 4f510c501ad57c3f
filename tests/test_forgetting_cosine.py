"""forgetting_cosine: the long run again, with the schedule the only change."""

import dataclasses

from labpy.experiments.registry import get_experiment


def test_only_the_schedule_differs_from_forgettings_long_run():
    for scale in ("smoke", "cpu"):
        long = get_experiment("forgetting").configs(scale)["long_lr1e-3"]
        cosine = get_experiment("forgetting_cosine").configs(scale)["long_cosine_lr1e-3"]
        assert (long.schedule, cosine.schedule) == ("constant", "cosine")
        assert dataclasses.replace(cosine, schedule=long.schedule) == long
