"""Exceptions a user can act on; the CLI prints them as one line naming the file, row or parameter."""

from __future__ import annotations

from .conventions import PixelSizeError

__all__ = ["UserError", "InputFileError", "OutputError", "PixelSizeError"]


class UserError(Exception):
    """An error caused by the user's input or options, with a message that says how to fix it."""


class InputFileError(UserError, ValueError):
    """A file that cannot be read as what it claims to be.

    The message always names the file, and the row (1-based, as in the STAR table) or the
    image index when one is at fault.
    """

    def __init__(self, path, message: str, *, row: int | None = None):
        where = f"{path}" + (f", row {row}" if row is not None else "")
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.row = row


class OutputError(UserError):
    """An output that cannot be written (full disk, read-only file system, a folder in the way,
    an existing file without ``--force``). The message names the user's path, never a
    temporary file; ``errno`` is the operating system's error number when one caused it."""

    def __init__(self, path, message: str, *, errno: int | None = None):
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.errno = errno
