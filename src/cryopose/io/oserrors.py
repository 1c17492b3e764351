"""Why a write failed, in words: the :class:`~cryopose.errors.OutputError` for an ``OSError``
(:func:`output_error`), naming the user's path rather than the temporary file, with the free
space of a full disk. Used by :mod:`cryopose.io.atomic` and :mod:`cryopose.io.outputs` (which
re-exports these names).
"""

from __future__ import annotations

import errno as _errno
import shutil
from pathlib import Path

from ..errors import OutputError

__all__ = ["output_error", "os_error_reason", "free_bytes"]

_REASONS = {
    _errno.ENOSPC: "no space left on the device",
    _errno.EDQUOT: "disk quota exceeded",
    _errno.EROFS: "the file system is read-only",
    _errno.EACCES: "permission denied",
    _errno.EPERM: "operation not permitted",
    _errno.EISDIR: "is a folder; give a file name",
    _errno.ENOTDIR: "a part of the path is a file, not a folder",
    _errno.ENOENT: "its folder does not exist",
    _errno.ENAMETOOLONG: "the file name is too long",
    _errno.EFBIG: "the file is too large for the file system",
    _errno.EIO: "input/output error on the device",
}


def _size_text(n_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def os_error_reason(exc: OSError) -> str:
    """Why ``exc`` happened, in words, without the file name it carries (a temporary file)."""
    return _REASONS.get(exc.errno, exc.strerror or type(exc).__name__)


def output_error(path, exc: OSError) -> OutputError:
    """The :class:`OutputError` for an ``OSError`` raised while writing ``path`` (the user's
    path, not the temporary file the error may name); a full disk says how much is free."""
    path = Path(path)
    reason = os_error_reason(exc)
    if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
        free = free_bytes(path.parent)
        if free is not None:
            reason += f" ({_size_text(free)} free in {_existing_ancestor(path.parent)})"
    return OutputError(path, f"cannot write: {reason}", errno=exc.errno)


def free_bytes(folder) -> int | None:
    """Free bytes on the file system of ``folder`` (or of its nearest existing ancestor), or
    ``None`` when that cannot be asked (:func:`shutil.disk_usage`)."""
    try:
        return int(shutil.disk_usage(_existing_ancestor(Path(folder))).free)
    except OSError:
        return None


def _existing_ancestor(folder: Path) -> Path:
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder
