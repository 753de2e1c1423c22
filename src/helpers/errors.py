"""Every error this project raises on purpose, in one tree under ReportError.

Each carries what was wrong and what to do about it: the message says both, and `fix` holds
the remedy on its own where the raiser gave one, so a caller (the CLI, the report's error
box) can show it apart. Catching ReportError catches every one of them; the ValueError /
RuntimeError bases keep them catchable the way Python code expects for bad values.
"""

from __future__ import annotations


class ReportError(Exception):
    """Root of the project's errors: `str(exc)` is the message, with the fix when given."""

    def __init__(self, message: str, fix: str = "") -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message}; {fix}" if fix else message)


class ConfigError(ReportError, ValueError):
    """A run parameter or stage knob is unknown, ill-typed or inconsistent."""


class DeviceError(ReportError, ValueError):
    """A device or dtype request that cannot be met on this machine."""


class ModelLoadError(ReportError, ValueError):
    """A model directory, config or weight file that a recipe cannot read."""


class AudioError(ReportError, ValueError):
    """An audio file or array that is missing, unreadable or unusable."""


class BenchError(ReportError, ValueError):
    """A timing protocol that cannot be followed (bad counts, a function that fails)."""


class WorkerStartError(ReportError, RuntimeError):
    """The isolated probe worker process could not be started."""


class CapReached(ReportError):
    """A capped call (the first graph-mode compile) ran past its time cap."""


class MemoryBudgetError(ReportError, MemoryError):
    """A side of a run that the memory free here cannot hold, said before it is loaded."""
