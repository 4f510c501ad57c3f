"""Range checks for config dataclasses, stated once per class and reported as one line naming the fix.

Every experiment config (and `labpy.train.TrainSpec`) calls `check_ranges` from its `__post_init__`, so a bad
value fails when the config is built — `lab run X --set eval_every=0` included, since `--set` rebuilds the config
with `dataclasses.replace` — instead of as a traceback deep in training:

    def __post_init__(self) -> None:
        check_ranges(self, positive_int=("steps", "batch_size", "eval_every"), positive=("lr",),
                     nonneg=("weight_decay",), nonneg_int=("warmup_steps", "seed"))
        require(self, self.min_segment <= self.max_segment, "min_segment", f"must be <= max_segment ...")

    InductionConfig.eval_every = 0 is out of range; it must be an integer >= 1 (set it with --set eval_every=N)

A field holding a tuple (learning rates, seeds, steps) is checked entry by entry. The checks live in methods,
not in new dataclass fields or defaults, so `dataclasses.asdict(config)` — hence every run-store key — is
unchanged by them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """A valid range: `text` completes "it must be ...", `ok` tests one value, `placeholder` shows the form."""

    text: str
    ok: Callable[[Any], bool]
    placeholder: str = "N"


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _fmt(x: float) -> str:
    return f"{x:g}"


def int_at_least(low: int) -> Rule:
    return Rule(f"an integer >= {low}", lambda v: _is_int(v) and v >= low, "N")


def int_between(low: int, high: int) -> Rule:
    return Rule(f"an integer in [{low}, {high}]", lambda v: _is_int(v) and low <= v <= high, "N")


def number_above(low: float) -> Rule:
    return Rule(f"a finite number > {_fmt(low)}", lambda v: _is_number(v) and v > low, "X")


def number_at_least(low: float) -> Rule:
    return Rule(f"a finite number >= {_fmt(low)}", lambda v: _is_number(v) and v >= low, "X")


def number_between(low: float, high: float, *, high_open: bool = False) -> Rule:
    bracket = ")" if high_open else "]"
    return Rule(f"a number in [{_fmt(low)}, {_fmt(high)}{bracket}",
                lambda v: _is_number(v) and low <= v and (v < high if high_open else v <= high), "X")


def or_none(rule: Rule) -> Rule:
    return Rule(f"{rule.text}, or None", lambda v: v is None or rule.ok(v), rule.placeholder)


def one_of(*choices: Any) -> Rule:
    return Rule(f"one of: {', '.join(map(str, choices))}", lambda v: v in choices, "VALUE")


POSITIVE_INT = int_at_least(1)
NONNEG_INT = int_at_least(0)
POSITIVE = number_above(0)
NONNEG = number_at_least(0)
PROBABILITY = number_between(0, 1)


def _is_sequence(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, (str, bytes))


def _hint(field: str, placeholder: str, sequence: bool, hint: bool) -> str:
    if not hint:
        return ""
    form = f"{placeholder}1,{placeholder}2,..." if sequence else placeholder
    return f" (set it with --set {field}={form})"


def check_ranges(config: Any, *, positive_int: Iterable[str] = (), nonneg_int: Iterable[str] = (),
                 positive: Iterable[str] = (), nonneg: Iterable[str] = (), probability: Iterable[str] = (),
                 rules: Mapping[str, Rule] | None = None, nonempty: Iterable[str] = (), hint: bool = True) -> None:
    """Raise `ConfigError` for the first field of `config` outside its range.

    positive_int: integers >= 1; nonneg_int: integers >= 0; positive: finite numbers > 0; nonneg: finite
    numbers >= 0; probability: numbers in [0, 1]; `rules`: any other `Rule` by field. A field whose value is a
    tuple (or list) is checked entry by entry; `nonempty` names the tuples that must hold at least one entry.
    `hint=False` leaves out "(set it with --set ...)" for classes the command line does not set directly.
    """
    table: dict[str, Rule] = {}
    for names, rule in ((positive_int, POSITIVE_INT), (nonneg_int, NONNEG_INT), (positive, POSITIVE),
                        (nonneg, NONNEG), (probability, PROBABILITY)):
        table.update(dict.fromkeys(names, rule))
    table.update(rules or {})
    cls = type(config).__name__
    for field in nonempty:
        value = getattr(config, field)
        if not _is_sequence(value) or len(value) == 0:
            raise ConfigError(f"{cls}.{field} = {value!r} is out of range; it must hold at least one entry"
                              f"{_hint(field, table[field].placeholder if field in table else 'X', True, hint)}",
                              config=cls, field=field, value=value)
    for field, rule in table.items():
        value = getattr(config, field)
        if _is_sequence(value):
            if not all(rule.ok(v) for v in value):
                raise ConfigError(f"{cls}.{field} = {tuple(value)!r} is out of range; every entry must be "
                                  f"{rule.text}{_hint(field, rule.placeholder, True, hint)}",
                                  config=cls, field=field, value=value)
        elif not rule.ok(value):
            raise ConfigError(f"{cls}.{field} = {value!r} is out of range; it must be {rule.text}"
                              f"{_hint(field, rule.placeholder, False, hint)}", config=cls, field=field, value=value)


def require(config: Any, condition: bool, field: str, why: str, *, hint: bool = True) -> None:
    """A check across fields: unless `condition`, raise `ConfigError` saying `field = value` and `why`
    (e.g. "must be <= batch_size = 8")."""
    if not condition:
        cls, value = type(config).__name__, getattr(config, field)
        suffix = f" (set it with --set {field}=...)" if hint else ""
        raise ConfigError(f"{cls}.{field} = {value!r} {why}{suffix}", config=cls, field=field, value=value)
