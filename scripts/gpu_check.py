"""Run `gpu_check` (or another experiment's GPU runs) on a borrowed GPU machine and store the results here.

The GPU machine returns only a few flat files (no store folders, no git), so the run is split in two:

    python scripts/gpu_check.py run OUT_DIR [--scale gpu] [--label L] [--commit SHA]   # on the GPU machine
    python scripts/gpu_check.py run OUT_DIR --experiment grokking_seeds --labels all [--commit SHA]
    python scripts/gpu_check.py store OUT_DIR                              # here: verified store entries

`run` executes a registered experiment exactly as `lab run EXPERIMENT --scale gpu` would (same config, same
provenance fields, the commit given since the machine has no git) and writes each run's tables, summary, meta and
provenance as flat files (one folder per label with `--labels`); `store` writes them into the run store through
`RunStore.put`, which builds the manifest, so each entry verifies like any other. Runs that return weights are
refused: the hand-off carries tables only.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import pandas as pd

# Page-side packages `import labpy` pulls in (plots, notebook cells, TransformerLens' bridge and its many
# dependencies) that a GPU machine's image lacks and this run never calls: stubbed in `run` mode, so the run
# needs only torch, transformers, peft and bitsandbytes there. The toy transformer does build on two
# TransformerLens classes; the stub gives them their training-time behaviour (`HookPoint.forward` is the
# identity, as in TransformerLens; `setup` only names hook points for `run_with_cache`, which the run never calls).
PAGE_SIDE = ("altair", "vl_convert", "IPython", "traitlets", "transformer_lens", "datasets")


class _Stub(types.ModuleType):
    """A module whose every attribute is a MagicMock: importable, never called by the run."""

    __path__: list[str] = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        from unittest.mock import MagicMock

        value = MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in PAGE_SIDE:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module) -> None:
        import torch

        class HookPoint(torch.nn.Module):
            def forward(self, x):
                return x

        class HookedRootModule(torch.nn.Module):
            def setup(self) -> None:
                pass

        module.__version__ = "stub"
        if module.__name__ in ("transformer_lens", "transformer_lens.hook_points"):
            module.HookPoint, module.HookedRootModule = HookPoint, HookedRootModule


def stub_page_side() -> None:
    if not any(isinstance(finder, _StubFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder())


def run_one(out: Path, experiment_name: str, scale: str, label: str, commit: str) -> None:
    """One label of one experiment, exactly as `lab run` would (same config and provenance fields; the commit is
    given, the machine has no git), written as flat files into `out` only once it has finished."""
    stub_page_side()
    from labpy.device import use_device
    from labpy.experiments.registry import RunContext, get_experiment
    from labpy.provenance import collect

    experiment = get_experiment(experiment_name)
    config = experiment.configs(scale)[label]
    shm = Path("/dev/shm")
    scratch = shm if shm.is_dir() and os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize > 40e9 else None
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    with tempfile.TemporaryDirectory(dir=scratch) as work, use_device(experiment.device) as device:
        result = experiment.run(config, RunContext(work_dir=Path(work), progress=None, label=label))
    if result.checkpoints:
        raise SystemExit(f"{experiment_name}/{label} returned checkpoints, which this hand-off does not carry")
    provenance = collect(result.seed, time.perf_counter() - t0, started, scale, commit, device)
    provenance["resumed"] = False
    provenance["stubbed_packages"] = list(PAGE_SIDE)
    meta = {"label": label, "scale": scale, "version": experiment.version, "title": experiment.title,
            "config": dataclasses.asdict(config), "experiment": experiment_name}
    tmp = out.parent / f".tmp-{out.name}"
    tmp.mkdir(parents=True, exist_ok=True)
    for name, frame in result.tables.items():
        frame.to_csv(tmp / f"{name}.csv", index=False)
    (tmp / "summary.json").write_text(json.dumps(result.summary, indent=1, default=float))
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=1))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if out.exists():
        for old in out.iterdir():
            old.unlink()
        out.rmdir()
    tmp.rename(out)          # a run cut off by the machine's time limit leaves no folder `store` would take


def _run_label(args: tuple[Path, str, str, str, str]) -> str:
    out, experiment, scale, label, commit = args
    t0 = time.perf_counter()
    run_one(out, experiment, scale, label, commit)
    return f"{label}: {time.perf_counter() - t0:.0f} s"


def run_many(out: Path, experiment: str, scale: str, labels: list[str], commit: str, workers: int) -> None:
    """Several labels in `workers` processes at once (small models leave a GPU mostly idle), each into
    `out/<label>/`; a label that fails is reported and the others go on."""
    import concurrent.futures
    import multiprocessing

    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out / label, experiment, scale, label, commit) for label in labels]
    context = multiprocessing.get_context("spawn")        # CUDA does not survive a fork
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_run_label, job): job[3] for job in jobs}
        for done in concurrent.futures.as_completed(futures):
            try:
                print(done.result(), flush=True)
            except BaseException as err:                    # noqa: BLE001 - one failed label must not stop the rest
                print(f"{futures[done]}: FAILED {type(err).__name__}: {err}", flush=True)


def store(folder: Path) -> None:
    """Store one run folder, or every finished run folder inside `folder`."""
    if not (folder / "meta.json").is_file():
        runs = sorted(p for p in folder.iterdir() if (p / "meta.json").is_file())
        if not runs:
            sys.exit(f"{folder}: no meta.json in it or in any folder inside it; give the folder `run` wrote")
        for run_folder in runs:
            store(run_folder)
        return
    from labpy.experiments.gpu_check import exact_integers
    from labpy.experiments.registry import get_experiment
    from labpy.store import RunResult, RunStore

    meta = json.loads((folder / "meta.json").read_text())
    experiment = get_experiment(meta.pop("experiment", "gpu_check"))
    config = experiment.config_from(meta["config"])
    meta["config"] = dataclasses.asdict(config)          # fields added since the run, at their defaults
    if config != experiment.configs(meta["scale"])[meta["label"]]:
        sys.exit(f"{folder}: its config is not {experiment.name}'s {meta['scale']}/{meta['label']} config any more; "
                 f"rerun it")
    result = RunResult(tables={p.stem: exact_integers(pd.read_csv(p))
                               for p in sorted(folder.glob("*.csv"))},
                       summary=json.loads((folder / "summary.json").read_text()), seed=config.seed)
    entry = RunStore().put(experiment.name, experiment.key(config, meta["label"]), meta, result,
                           json.loads((folder / "provenance.json").read_text()))
    print(f"stored {entry.path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("run", "store"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--experiment", default="gpu_check")
    parser.add_argument("--scale", default="gpu")
    parser.add_argument("--label", default="qwen7b-shape", help="one label, written into FOLDER itself")
    parser.add_argument("--labels", help="several labels (comma-separated, or 'all' of the scale), each into "
                                         "FOLDER/<label>/")
    parser.add_argument("--workers", type=int, default=1, help="processes running --labels at once")
    parser.add_argument("--commit", default="unknown")
    args = parser.parse_args()
    if args.mode == "store":
        store(args.folder)
    elif args.labels:
        if args.labels == "all":
            stub_page_side()
            from labpy.experiments.registry import get_experiment

            labels = list(get_experiment(args.experiment).configs(args.scale))
        else:
            labels = args.labels.split(",")
        run_many(args.folder, args.experiment, args.scale, labels, args.commit, args.workers)
    else:
        run_one(args.folder, args.experiment, args.scale, args.label, args.commit)


if __name__ == "__main__":
    main()
