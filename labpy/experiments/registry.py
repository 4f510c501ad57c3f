"""The experiment registry: what each experiment is, its configs at each scale, and how to run one config.

An experiment declares configs per scale (`smoke` for tests in seconds, `cpu` for the site, optionally `gpu`).
Each config becomes one run-store entry keyed by (experiment, config, version); bumping `version` when the
experiment's code changes what it measures invalidates old entries on purpose.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingRunError, UnknownChoiceError
from ..provenance import collect as collect_provenance
from ..provenance import code_files, git_commit
from ..store import RunEntry, RunResult, RunStore, entry_key

SCALES = ("smoke", "cpu", "gpu")  # smallest to largest


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

    def configs(self, scale: str) -> Mapping[str, Any]:
        if scale not in self.scales:
            raise UnknownChoiceError("scale", scale, self.scales, f"for experiment {self.name!r}")
        return self.scales[scale]

    def key(self, config: Any, label: str) -> str:
        return entry_key(label, dataclasses.asdict(config), self.version)

    def command(self, scale: str) -> str:
        return f"lab run {self.name} --scale {scale}"


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    unknown = set(experiment.scales) - set(SCALES)
    if unknown:
        raise ValueError(f"experiment {experiment.name!r} declares unknown scales {sorted(unknown)}; use {SCALES}")
    _REGISTRY[experiment.name] = experiment
    return experiment


def all_experiments() -> list[Experiment]:
    _load_builtin()
    return list(_REGISTRY.values())


def get_experiment(name: str) -> Experiment:
    _load_builtin()
    if name not in _REGISTRY:
        raise UnknownChoiceError("experiment", name, _REGISTRY)
    return _REGISTRY[name]


def _load_builtin() -> None:
    """Import every module of `labpy.experiments`; each registers its experiments on import."""
    import importlib
    import pkgutil

    from .. import experiments as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "registry":
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
    store.check_writable(f"train {experiment.name}/{key} (run `{experiment.command(scale)}` where it may write)")
    work_dir = store.work_dir(experiment.name, key)
    work_dir.mkdir(parents=True, exist_ok=True)
    started, t0, commit = dt.datetime.now(dt.timezone.utc), time.perf_counter(), git_commit(code_files(experiment.run))
    resumed = any(work_dir.iterdir())  # an interrupted run left state: wall time covers only the rest
    result = experiment.run(config, RunContext(work_dir=work_dir, progress=progress, label=label))
    provenance = collect_provenance(result.seed, time.perf_counter() - t0, started, scale, commit)
    provenance["resumed"] = resumed
    meta = {"label": label, "scale": scale, "version": experiment.version, "title": experiment.title,
            "config": dataclasses.asdict(config)}
    return store.put(experiment.name, key, meta, result, provenance)


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


def results(name: str, scale: str | None = None, store: RunStore | None = None) -> StoredRuns:
    """What a page reads: the largest scale whose every config is stored (or the `scale` asked for).

    With nothing stored, a read-only store (tests, CI) raises an error naming the `lab run` command; otherwise
    the `cpu` scale is trained and stored first, like a cache, with no progress output in the page.
    """
    experiment, store = get_experiment(name), store or RunStore()
    candidates = [scale] if scale else [s for s in reversed(SCALES) if s in experiment.scales]
    for candidate in candidates:
        found = stored_runs(experiment, candidate, store)
        if found is not None:
            return found
    target = scale or ("cpu" if "cpu" in experiment.scales else candidates[-1])
    if store.read_only:
        raise MissingRunError(
            f"no stored runs of {name!r} at scale {target!r} in {store.root}; produce them with: "
            f"{experiment.command(target)}"
        )
    for label, config in experiment.configs(target).items():
        run_config(experiment, target, label, config, store, progress=False)
    return stored_runs(experiment, target, store)
