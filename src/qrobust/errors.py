"""User-facing errors: one clear line naming what is wrong and what to do.

Everything the CLI should print without a traceback raises :class:`QrobustError`.
"""
from __future__ import annotations


class QrobustError(Exception):
    """An error caused by user input or environment, printed as one line by the CLI."""


class ConfigError(QrobustError):
    """A configuration value is unknown, missing or of the wrong type."""


class DataError(QrobustError):
    """A corpus cannot be read, is empty, or is too short."""


class CheckpointError(QrobustError):
    """A checkpoint path is missing, unsafe, or holds invalid weights."""


class QrobustWarning(UserWarning):
    """Something was skipped or will be redone (an unreadable record, say); the CLI prints it as one line."""
