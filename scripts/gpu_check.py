"""Run `gpu_check` on a borrowed GPU machine and store its result here.

The GPU machine returns only a few flat files (no store folders, no git), so the run is split in two:

    python scripts/gpu_check.py run OUT_DIR [--scale gpu] [--label L] [--commit SHA]   # on the GPU machine
    python scripts/gpu_check.py store OUT_DIR                              # here: one store entry, verified

`run` executes the registered experiment exactly as `lab run gpu_check --scale gpu` would (same config, same
provenance fields, the commit given since the machine has no git) and writes its tables, summary, meta and
provenance as flat files; `store` writes them into the run store through `RunStore.put`, which builds the
manifest, so the entry verifies like any other.
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
    sys.meta_path.insert(0, _StubFinder())


def run(out: Path, scale: str, label: str, commit: str) -> None:
    stub_page_side()
    from labpy.device import use_device
    from labpy.experiments.registry import RunContext, get_experiment
    from labpy.provenance import collect

    experiment = get_experiment("gpu_check")
    config = experiment.configs(scale)[label]
    shm = Path("/dev/shm")
    scratch = shm if shm.is_dir() and os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize > 40e9 else None
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    with tempfile.TemporaryDirectory(dir=scratch) as work, use_device(experiment.device) as device:
        result = experiment.run(config, RunContext(work_dir=Path(work), progress=True, label=label))
    provenance = collect(result.seed, time.perf_counter() - t0, started, scale, commit, device)
    provenance["resumed"] = False
    provenance["stubbed_packages"] = list(PAGE_SIDE)
    meta = {"label": label, "scale": scale, "version": experiment.version, "title": experiment.title,
            "config": dataclasses.asdict(config)}
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in result.tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=1, default=float))
    (out / "provenance.json").write_text(json.dumps(provenance, indent=1))
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def store(folder: Path) -> None:
    from labpy.experiments.gpu_check import exact_integers
    from labpy.experiments.registry import get_experiment
    from labpy.store import RunResult, RunStore

    experiment = get_experiment("gpu_check")
    meta = json.loads((folder / "meta.json").read_text())
    config = experiment.config_from(meta["config"])
    meta["config"] = dataclasses.asdict(config)          # fields added since the run, at their defaults
    if config != experiment.configs(meta["scale"])[meta["label"]]:
        sys.exit(f"{folder}: its config is not gpu_check's {meta['scale']}/{meta['label']} config any more; rerun it")
    result = RunResult(tables={p.stem: exact_integers(pd.read_csv(p)) for p in sorted(folder.glob("*.csv"))},
                       summary=json.loads((folder / "summary.json").read_text()), seed=config.seed)
    entry = RunStore().put(experiment.name, experiment.key(config, meta["label"]), meta, result,
                           json.loads((folder / "provenance.json").read_text()))
    print(f"stored {entry.path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("run", "store"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--scale", default="gpu")
    parser.add_argument("--label", default="qwen7b-shape")
    parser.add_argument("--commit", default="unknown")
    args = parser.parse_args()
    if args.mode == "run":
        run(args.folder, args.scale, args.label, args.commit)
    else:
        store(args.folder)


if __name__ == "__main__":
    main()
