"""Experiments: a registry of named experiments with configs per scale, run into the run store."""

from .registry import (SCALES, TRACKS, Experiment, RunContext, StoredRuns, all_experiments, config_of,
                       get_experiment, register, results, run_config, with_overrides)

__all__ = ["SCALES", "TRACKS", "Experiment", "RunContext", "StoredRuns", "all_experiments", "config_of",
           "get_experiment", "register", "results", "run_config", "with_overrides"]
