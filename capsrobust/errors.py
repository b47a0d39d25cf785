"""Exceptions for problems the user can fix (bad data, bad checkpoint, bad option).

Library code raises these with a one-line message that names the problem *and* the fix;
the CLI turns any :class:`CapsRobustError` into ``Error: <message>`` and exit status 2,
never a traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class CapsRobustError(Exception):
    """Base class: a one-line, user-facing error."""


class DataError(CapsRobustError):
    """A dataset file or directory is missing, corrupt or inconsistent."""


class ConfigError(CapsRobustError):
    """An option or name is invalid (unknown split, model or attack; value out of range)."""


class CheckpointError(CapsRobustError):
    """A checkpoint is missing, truncated, foreign or for another model/config/dataset."""
