"""The one error base class, and the input errors every layer shares.

Anything this package raises on purpose derives from :class:`InfiniteTalkError`; the CLI turns
it into one ``error:`` line and a non-zero exit. Each subclass also derives from the builtin a
caller would expect (``ValueError`` for bad input, ``RuntimeError`` for a job that could not
finish), so ``except ValueError`` keeps working. Layer-specific errors live next to the code
that raises them (``CheckpointError`` in models, ``StoreError`` / ``StitchError`` /
``FarmError`` / ``WindowFailed`` in farm) and derive from the base.
"""

from __future__ import annotations

import os

__all__ = ["AudioError", "InfiniteTalkError", "InputError", "MediaError"]


class InfiniteTalkError(Exception):
    """Base of every error this package raises on purpose (the CLI prints it as one line)."""


class InputError(InfiniteTalkError, ValueError):
    """A request that cannot be rendered as given (missing, conflicting or invalid options)."""


class MediaError(InfiniteTalkError, ValueError):
    """A media file is missing, unreadable, corrupt or unsuitable; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AudioError(InfiniteTalkError, ValueError):
    """An input audio file (or waveform) that cannot be used; the message names it and says why."""
