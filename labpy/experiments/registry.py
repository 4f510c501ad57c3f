"""The experiment registry: what each experiment is, its configs at each scale, and how to run one config.

An experiment declares configs per scale (`smoke` for tests in seconds, `cpu` for the site, optionally `gpu`).
Each config becomes one run-store entry keyed by (experiment, config, version); bumping `version` when the
experiment's code changes what it measures invalidates old entries on purpose.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..device import use_device
from ..errors import MissingRunError, UnknownChoiceError
from ..provenance import collect as collect_provenance
from ..provenance import code_files, git_commit
from ..store import RunEntry, RunResult, RunStore, entry_key, set_config_reader

SCALES = ("smoke", "cpu", "gpu")  # smallest to largest
# The one list of tracks, in reading order, with what each is about: the navbar's Experiments groups, page
# subtitles ("Track: X · ...") and the front page follow it (tests/test_site.py checks that they do).
TRACKS = {
    "Training dynamics": "a lab language model (Qwen2 architecture, trained here on Python's own documentation) "
                         "and how it learns",
    "Fine-tuning": "LoRA, QLoRA and full fine-tuning of the lab LM: quality, memory and what is forgotten",
    "Attention & circuits": "what attention heads look at, and the circuits built from them",
    "Representations": "what the residual stream of a real language model holds, layer by layer, and who writes it",
    "Toy models": "small networks trained here so that a question has a clean answer: grokking, superposition, "
                  "single neurons",
    "Paper reproductions": "a paper's claims, each measured in the lab and given a verdict",
    "The lab itself": "how fast the lab's own machinery is",
}


@dataclass
class RunContext:
    """What a run function gets besides its config: where to keep resume state, whether to show progress."""

    work_dir: Path
    progress: bool | None = None
    label: str = ""


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    track: str
    page: str                                       # path of the page that shows it, from the project root
    version: int
    config_type: type                               # a dataclass; its fields are the valid config keys
    scales: Mapping[str, Mapping[str, Any]]         # scale -> {label: config instance}
    run: Callable[[Any, RunContext], RunResult]
    description: str = ""
    device: str | None = None                       # pin runs to a device ("cpu": it measures the CPU itself);
                                                    # None: the lab's device policy (`labpy.device.lab_device`)

    def configs(self, scale: str) -> Mapping[str, Any]:
        if scale not in self.scales:
            raise UnknownChoiceError("scale", scale, self.scales, f"for experiment {self.name!r}")
        return self.scales[scale]

    def key(self, config: Any, label: str) -> str:
        return entry_key(label, dataclasses.asdict(config), self.version)

    def command(self, scale: str) -> str:
        return f"lab run {self.name} --scale {scale}"

    def config_from(self, stored: Mapping[str, Any]) -> Any:
        """A stored config (JSON: tuples came back as lists) as this experiment's dataclass, validated again."""
        return self.config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})


_REGISTRY: dict[str, Experiment] = {}
_REGISTERED_BY: dict[str, str] = {}   # experiment name -> the module that registered it

# Page-side modules beside an experiment's training code (`induction_analysis.py` beside `induction.py`): they
# import the training module, never the reverse, and register nothing, so the registry does not load them.
ANALYSIS_SUFFIXES = ("_analysis", "_report")


def register(experiment: Experiment) -> Experiment:
    if experiment.track not in TRACKS:
        raise ValueError(f"experiment {experiment.name!r} declares track {experiment.track!r}; "
                         f"use one of {list(TRACKS)}")
    unknown = set(experiment.scales) - set(SCALES)
    if unknown:
        raise ValueError(f"experiment {experiment.name!r} declares unknown scales {sorted(unknown)}; use {SCALES}")
    module = sys._getframe(1).f_globals.get("__name__", "?")          # the module whose import registers it
    known = _REGISTERED_BY.get(experiment.name, module)
    if known != module and "__main__" not in (known, module):         # a module run with -m is itself again
        raise ValueError(f"experiment {experiment.name!r} is registered by {known} and again by {module}; "
                         "give one of them another name")
    _REGISTERED_BY[experiment.name] = module
    _REGISTRY[experiment.name] = experiment
    return experiment


def all_experiments() -> list[Experiment]:
    _load_builtin()
    return list(_REGISTRY.values())


def get_experiment(name: str) -> Experiment:
    if name not in _REGISTRY:
        _load_module_named(name)
    if name not in _REGISTRY:
        _load_builtin()
    if name not in _REGISTRY:
        raise UnknownChoiceError("experiment", name, _REGISTRY)
    return _REGISTRY[name]


def _load_module_named(name: str) -> None:
    """Import `labpy.experiments.<name>` alone, where that module exists: most experiments live in a module of
    their own name, and a page that reads one of them should not import every training module (with sklearn,
    scipy and peft behind them, ~1.7 s of each page's kernel). Any other name falls back to `_load_builtin`."""
    import importlib
    import importlib.util

    module = f"{__package__}.{name}"
    if name.isidentifier() and not name.endswith(ANALYSIS_SUFFIXES) and importlib.util.find_spec(module):
        importlib.import_module(module)


def _load_builtin() -> None:
    """Import every training module of `labpy.experiments`; each registers its experiments on import."""
    import importlib
    import pkgutil

    from .. import experiments as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "registry" and not module.name.endswith(ANALYSIS_SUFFIXES):
            importlib.import_module(f"{package.__name__}.{module.name}")


def with_overrides(config: Any, overrides: Mapping[str, str]) -> Any:
    """Apply `key=value` strings from the command line, typed like the dataclass field they replace."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for key, text in overrides.items():
        if key not in fields:
            raise UnknownChoiceError("config key", key, fields, f"for {type(config).__name__}")
        current = getattr(config, key)
        changes[key] = _parse_like(text, current, key)
    return dataclasses.replace(config, **changes)


def _parse_like(text: str, current: Any, key: str) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            return tuple(type(current[0])(x) for x in text.split(",")) if current else tuple(text.split(","))
    except ValueError:
        raise ValueError(f"config key {key!r} needs a value like {current!r}, got {text!r}") from None
    return text


def run_config(experiment: Experiment, scale: str, label: str, config: Any, store: RunStore | None = None,
               progress: bool | None = None, force: bool = False) -> RunEntry:
    """Return the stored entry for this config, training and storing it first if it is missing (or `force`)."""
    store = store or RunStore()
    key = experiment.key(config, label)
    if store.has(experiment.name, key) and not force:
        return store.get(experiment.name, key)
    store.check_writable(f"train {experiment.name}/{key} (run `{experiment.command(scale)}` where it may write)",
                         experiment.name)
    work_dir = store.work_dir(experiment.name, key)
    if force:       # from scratch: a forced rerun never resumes from (possibly corrupt) state of an earlier try
        shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    started, t0, commit = dt.datetime.now(dt.timezone.utc), time.perf_counter(), git_commit(code_files(experiment.run))
    resumed = any(work_dir.iterdir())  # an interrupted run left state: wall time covers only the rest
    with use_device(experiment.device) as device:   # the policy's choice, or the experiment's pinned device
        result = experiment.run(config, RunContext(work_dir=work_dir, progress=progress, label=label))
    provenance = collect_provenance(result.seed, time.perf_counter() - t0, started, scale, commit, device)
    provenance["resumed"] = resumed
    meta = {"label": label, "scale": scale, "version": experiment.version, "title": experiment.title,
            "config": dataclasses.asdict(config)}
    return store.put(experiment.name, key, meta, result, provenance)


def _typed_config(experiment: str, stored: Mapping[str, Any]) -> Any:
    """What `RunEntry.config` returns: the experiment's dataclass, or the stored dict for an unregistered name."""
    try:
        return get_experiment(experiment).config_from(stored)
    except UnknownChoiceError:
        return dict(stored)


set_config_reader(_typed_config)


@dataclass
class StoredRuns:
    """The entries of one experiment at one scale, by config label."""

    experiment: Experiment
    scale: str
    entries: dict[str, RunEntry]

    def __getitem__(self, label: str) -> RunEntry:
        if label not in self.entries:
            raise UnknownChoiceError("config", label, self.entries, f"for {self.experiment.name} at scale {self.scale}")
        return self.entries[label]


def stored_runs(experiment: Experiment, scale: str, store: RunStore) -> StoredRuns | None:
    entries = {}
    for label, config in experiment.configs(scale).items():
        key = experiment.key(config, label)
        if not store.has(experiment.name, key):
            return None
        entries[label] = store.get(experiment.name, key)
    return StoredRuns(experiment, scale, entries)


TRAIN_MISSING_ENV = "LAB_TRAIN_MISSING"


def may_train_missing() -> bool:
    """Only `lab run` (and tests of smoke runs) opt in; a page's kernel never trains, whatever the store allows."""
    return os.environ.get(TRAIN_MISSING_ENV, "").lower() not in ("", "0", "false", "no")


def results(name: str, scale: str | None = None, store: RunStore | None = None,
            train_missing: bool | None = None) -> StoredRuns:
    """What a page reads: the largest scale whose every config is stored (or the `scale` asked for).

    Nothing missing is ever trained from a page: `quarto render` would silently start hours of training in the
    page's kernel. A missing scale raises `MissingRunError` naming the `lab run` command. `train_missing=True`
    (or `$LAB_TRAIN_MISSING=1`, which `lab run` sets for the runs an experiment depends on) trains and stores
    the `cpu` scale (or the `scale` asked for) first, with no progress output.
    """
    experiment, store = get_experiment(name), store or RunStore()
    candidates = [scale] if scale else [s for s in reversed(SCALES) if s in experiment.scales]
    for candidate in candidates:
        found = stored_runs(experiment, candidate, store)
        if found is not None:
            return found
    target = scale or ("cpu" if "cpu" in experiment.scales else candidates[-1])
    if store.read_only or not (may_train_missing() if train_missing is None else train_missing):
        raise MissingRunError(
            f"no stored runs of {name!r} at scale {target!r} in {store.root}; produce them with: "
            f"{experiment.command(target)}"
        )
    for label, config in experiment.configs(target).items():
        run_config(experiment, target, label, config, store, progress=False)
    return stored_runs(experiment, target, store)
