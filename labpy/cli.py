"""The `lab` command: list experiments, show the run store's status, run an experiment at a scale.

    lab list
    lab status
    lab run induction --scale cpu [--config two_layer] [--set steps=3000 --set lr=3e-4]
    lab pages [--only TEXT]        execute every page as Quarto would (the store read-only), no HTML
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import LabError, UnknownChoiceError
from .experiments import SCALES, all_experiments, get_experiment, run_config, with_overrides
from .experiments.registry import TRAIN_MISSING_ENV
from .status import status_rows
from .store import RunStore


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise LabError(f"--set needs KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def cmd_list(args: argparse.Namespace) -> None:
    for exp in all_experiments():
        print(f"{exp.name:<14} {exp.track:<24} scales: {', '.join(exp.scales):<16} page: {exp.page}")
        print(f"{'':<14} {exp.title}: {exp.description}" if exp.description else f"{'':<14} {exp.title}")


def cmd_status(args: argparse.Namespace) -> None:
    store = RunStore()
    rows = status_rows(store)   # verifying the whole committed store takes well under a second
    print(f"run store: {store.root}  ({store.total_size_bytes() / 2**20:.1f} MiB committed size)")
    shown = [r for r in rows if r["stored"] or r["scale"] != "smoke"]  # smoke runs live in the tests' stores
    e = max([len("experiment"), *(len(r["experiment"]) for r in shown)]) + 2
    c = max([len("config"), *(len(r["config"]) for r in shown)]) + 2
    print(f"{'experiment':<{e}}{'scale':<7}{'config':<{c}}{'status':<9}{'size':>10}  {'wall time':>10}  key")
    for r in shown:
        status = r["status"]
        size = f"{r['size_kb']:.0f} KB" if r["stored"] else "-"
        wall = f"{r['wall_time_s']:.0f} s" if r["wall_time_s"] is not None else "-"
        print(f"{r['experiment']:<{e}}{r['scale']:<7}{r['config']:<{c}}{status:<9}{size:>10}  {wall:>10}  {r['key']}")
    missing = sorted({(r["experiment"], r["scale"]) for r in rows if r["status"] == "missing" and r["scale"] != "smoke"})
    for name, scale in missing:
        print(f"missing: produce with `lab run {name} --scale {scale}`")
    damaged = [r for r in rows if r["status"] == "damaged"]
    for r in damaged:
        print(f"damaged: {r['problem']}")
    if args.verify:
        if damaged:
            raise LabError(f"{len(damaged)} damaged entr{'y' if len(damaged) == 1 else 'ies'} in {store.root} (listed above)")
        print("verified: every stored entry matches its manifest")


def cmd_run(args: argparse.Namespace) -> None:
    os.environ[TRAIN_MISSING_ENV] = "1"   # runs this experiment builds on (e.g. the lab LM) are trained too
    exp = get_experiment(args.name)
    configs = exp.configs(args.scale)
    if args.config:
        if args.config not in configs:
            raise UnknownChoiceError("config", args.config, configs, f"for {exp.name} at scale {args.scale}")
        configs = {args.config: configs[args.config]}
    overrides = _parse_sets(args.set or [])
    store = RunStore()
    for label, config in configs.items():
        config = with_overrides(config, overrides)
        entry = run_config(exp, args.scale, label, config, store, progress=False if args.quiet else None,
                           force=args.force)
        print(f"{exp.name}/{entry.key}: {entry.path}  ({entry.provenance['wall_time_s']:.0f} s)")


def cmd_pages(args: argparse.Namespace) -> None:
    from .pages import execute_all_pages

    runs = execute_all_pages(pattern=args.only)
    failures = [run.path.name for run in runs if not run.ok]
    if failures:
        raise LabError(f"{len(failures)} page(s) failed: {', '.join(failures)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lab", description="LLM Learning Lab: experiments and the run store.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments").set_defaults(func=cmd_list)
    status = sub.add_parser("status", help="stored, missing and damaged runs, sizes")
    status.add_argument("--verify", action="store_true",
                        help="exit 2 if any entry is damaged (status always checks every entry against its manifest)")
    status.set_defaults(func=cmd_status)
    run = sub.add_parser("run", help="run an experiment into the store (skips configs already stored)")
    run.add_argument("name")
    run.add_argument("--scale", default="cpu", help=f"one of {', '.join(SCALES)} (default: cpu)")
    run.add_argument("--config", help="run only this config label")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--force", action="store_true", help="run again from scratch and replace stored entries")
    run.set_defaults(func=cmd_run)
    pages = sub.add_parser("pages", help="execute every .qmd page as Quarto's Jupyter engine would")
    pages.add_argument("--only", help="only pages whose path contains this text")
    pages.set_defaults(func=cmd_pages)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LabError as err:
        print(f"lab: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # bad values in --set and specs: still the user's to fix, no traceback
        print(f"lab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C: say what is kept and how to continue, no traceback
        from .errors import TrainingInterrupted

        what = (interrupt.describe() if isinstance(interrupt, TrainingInterrupted) else
                "interrupted outside a training loop; entries already stored are kept; run the same command "
                "again to continue")
        print(f"lab: {what}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
