"""Experiments: a registry of named experiments with configs per scale, run into the run store."""

from ..models.lm import provide_named_model
from .registry import (SCALES, TRACKS, Experiment, RunContext, StoredRuns, all_experiments,
                       get_experiment, register, results, run_config, with_overrides)

__all__ = ["SCALES", "TRACKS", "Experiment", "RunContext", "StoredRuns", "all_experiments",
           "get_experiment", "register", "results", "run_config", "with_overrides"]


def _lab_lm_dir(scale: str | None):
    from .lab_lm import lab_lm_dir   # on first use: the module imports the training stack

    return lab_lm_dir(scale)


# `load_lm("lab-lm")` / `load_lm("lab-lm:smoke")`: the stored lab LM, provided from here so that the models layer
# never imports the experiments above it.
provide_named_model("lab-lm", _lab_lm_dir)
