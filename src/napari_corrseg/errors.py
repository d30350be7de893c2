"""Exceptions for mistakes a user can fix.

Everything a user can cause (a missing model, an unreadable image, a 3-D stack without a
chosen plane) raises a `CorrsegError` subclass with a message that names the problem and
the way out. The command line prints that message as one line and exits non-zero; the
widgets show it as a napari notification. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "CorrsegError",
    "InputImageError",
    "ModelLoadError",
    "OutputError",
]


class CorrsegError(Exception):
    """Base class for errors caused by user input or environment, not by a bug."""


class ModelLoadError(CorrsegError):
    """The requested model cannot be loaded (missing weights, offline, corrupt file)."""


class InputImageError(CorrsegError, ValueError):
    """An input image cannot be used (wrong dimensions, NaN, too small, unreadable)."""


class OutputError(CorrsegError):
    """Results cannot be written where asked."""


class Cancelled(CorrsegError):
    """The user cancelled a running computation."""
