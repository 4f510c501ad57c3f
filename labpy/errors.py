"""The lab's error types: each message names the bad value and the fix, so the CLI can print it without a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class LabError(Exception):
    """Base class for errors a user can fix; the CLI prints these as one line, never as a traceback."""

    def _render_traceback_(self) -> list[str]:
        """IPython (a page's kernel, so Quarto's render log) shows this one line instead of a traceback."""
        return [f"{type(self).__name__}: {self}"]


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


class DamagedEntryError(LabError, RuntimeError):
    """A stored entry differs from its manifest (a truncated table, an edited config): never shown, reported."""


class StoreNotWritableError(LabError, PermissionError):
    """The store's folder cannot be written: refused before training, so no run is lost at the end."""


class ConfigError(LabError, ValueError):
    """A config field (or a combination of fields) outside its valid range; the message names the class, the
    field, the bad value and the valid range, on one line."""

    def __init__(self, message: str, *, config: str = "", field: str = "", value: object = None) -> None:
        self.config, self.field, self.value = config, field, value
        super().__init__(message)


class TrainingDivergedError(LabError, FloatingPointError):
    """The training loss became non-finite (usually: the learning rate is too high). A FloatingPointError too,
    so experiments that record divergence as a finding (`except FloatingPointError`) keep working."""

    def __init__(self, message: str, *, step: int, lr: float, loss: float) -> None:
        self.step, self.lr, self.loss = step, lr, loss
        super().__init__(message)


class ResumeStateError(LabError, RuntimeError):
    """A run's resume state (`resume.pt`) cannot be read or does not fit the model: the message names the file
    and the fix (delete it, which restarts that run from step 0)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `labpy.train.train`, after the resume state of the last completed step was saved.

    A KeyboardInterrupt, not a LabError, so code that catches `Exception` never swallows a user's Ctrl-C; the
    CLI prints `describe()` as one line. `step`: updates completed when it stopped; `work_dir`: where resume
    state lives (None: the run keeps none); `kept`: the step the saved resume state holds (None: nothing saved).
    """

    def __init__(self, step: int, work_dir: object | None, kept: int | None) -> None:
        self.step, self.work_dir, self.kept = step, work_dir, kept
        super().__init__(self.describe())

    def describe(self) -> str:
        if self.work_dir is None:
            return (f"interrupted at step {self.step}; this run keeps no resume state, so the same command starts "
                    f"it over (entries already stored are kept)")
        if self.kept is None:
            return (f"interrupted at step {self.step}, before any progress was saved; the same command starts this "
                    f"run over")
        return (f"interrupted; progress up to step {self.kept} is kept in {self.work_dir}; run the same command "
                f"again to resume")
