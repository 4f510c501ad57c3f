"""The lab's error types: each message names the bad value and the fix, so the CLI can print it without a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class LabError(Exception):
    """Base class for errors a user can fix; the CLI prints these as one line, never as a traceback."""


class UnknownChoiceError(LabError, ValueError):
    """A name (experiment, scale, config, config key) that is not one of the valid choices."""

    def __init__(self, what: str, value: object, choices: Iterable[object], context: str = "") -> None:
        self.what, self.value, self.choices = what, value, sorted(map(str, choices))
        where = f" {context}" if context else ""
        super().__init__(
            f"unknown {what} {value!r}{where}; valid choices: {', '.join(self.choices) or '(none)'}"
        )


class MissingRunError(LabError, LookupError):
    """A page or analysis needs a run that the store does not hold."""


class StoreReadOnlyError(LabError, PermissionError):
    """The store is in read-only mode (tests, CI) and something tried to write or train."""
