"""Experiments: a registry of named experiments with configs per scale, run into the run store."""

from .registry import (SCALES, Experiment, RunContext, StoredRuns, all_experiments, get_experiment, register,
                       results, run_config, with_overrides)

__all__ = ["SCALES", "Experiment", "RunContext", "StoredRuns", "all_experiments", "get_experiment", "register",
           "results", "run_config", "with_overrides"]
