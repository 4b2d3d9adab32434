"""Errors that the command line turns into one line on stderr and exit code 2."""

from __future__ import annotations

__all__ = ["CheckpointError", "CovsegError", "DataError"]


class CovsegError(Exception):
    """Base class: a problem with the user's input, reported as one line (``file: problem``)."""


class DataError(CovsegError):
    """An input file or folder cannot be used (unreadable, wrong shape, NaN, missing mask, ...)."""


class CheckpointError(CovsegError):
    """A checkpoint fails its hash or version check, or does not match its config."""
