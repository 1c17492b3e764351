"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A reader never sees a half-written file: the target path either keeps its old content or
holds the complete new content, because ``os.replace`` within one folder is atomic on POSIX
and Windows. The temporary file is created with mode ``0o666`` so the usual umask applies
(unlike :func:`tempfile.mkstemp`, which creates ``0o600`` files).

An operating-system error while writing (full disk, read-only file system, a folder in the
way) removes the temporary file and is raised as one
:class:`~cryopose.errors.OutputError` naming the target, never the temporary file
(:func:`cryopose.io.oserrors.os_error_reason`). Temporary files left by a killed process
(``.NAME.PID.HEX.tmp`` whose process is gone) are removed the next time ``NAME`` is written.
The checks before any work and the ``--force`` rule are in :mod:`cryopose.io.outputs`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import IO, Iterator

from .oserrors import output_error

__all__ = ["atomic_path", "atomic_write", "atomic_write_text", "json_ready", "atomic_write_json",
           "remove_stale_temps"]


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``target`` left by killed processes; return them.

    A temporary file ``.NAME.PID.HEX.tmp`` beside ``target`` whose process ``PID`` no longer
    runs is a leftover of a write that was interrupted by ``SIGKILL`` or a power cut (an
    exception removes its own). Files of running processes are kept.
    """
    target = Path(target)
    removed = []
    try:
        candidates = list(target.parent.glob(f".{glob_escape(target.name)}.*.tmp"))
    except OSError:
        return removed
    for p in candidates:
        pid = p.name[len(target.name) + 2:].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with the glob wildcards ``* ? [`` escaped (:func:`glob.escape`)."""
    import glob

    return glob.escape(name)


def _fsync_dir(folder: Path) -> None:
    """Best-effort fsync of a folder so the rename itself is durable (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it to ``path``.

    For writers that need a file name rather than a file object (``mrcfile.new``). The
    caller must have closed the file before the ``with`` block ends. On an exception the
    temporary file is removed and ``path`` is left untouched.

    Args:
        path: The final file path. Its folder must exist.

    Yields:
        The temporary path to write to (it does not exist yet).

    Raises:
        cryopose.errors.OutputError: An ``OSError`` while writing, syncing or renaming (full
            disk, read-only file system, no such folder, ``path`` is a folder), naming ``path``.
    """
    target = Path(path)
    remove_stale_temps(target)
    tmp = _temp_name(target)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise output_error(target, exc) from exc
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str = "utf-8") -> Iterator[IO]:
    """Open a file for writing so that it appears at ``path`` only when complete.

    Writes go to a temporary file in the same folder; when the ``with`` block ends without
    an exception the file is flushed, fsynced and renamed over ``path`` with ``os.replace``.
    On an exception the temporary file is removed and ``path`` keeps its previous content.

    Args:
        path: Final file path; its folder must exist.
        mode: ``"wb"`` (default) or ``"w"`` (text, ``encoding``, ``\\n`` line endings).
        encoding: Text encoding for ``mode="w"``.

    Yields:
        The open file object.

    Raises:
        ValueError: If ``mode`` is not a write mode.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        if mode == "w":
            f = os.fdopen(fd, "w", encoding=encoding, newline="\n")
        else:
            f = os.fdopen(fd, "wb")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def json_ready(value):
    """``value`` with every non-finite float (``inf``, ``nan``) replaced by ``None``, recursively
    through dicts, lists and tuples: strict JSON has no infinities (an FSC that never crosses its
    threshold gives one)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, value, *, indent: int | None = 2, default=None) -> None:
    """Write ``value`` as strict JSON (:func:`json_ready`), atomically (:func:`atomic_write_text`);
    ``default`` converts objects JSON does not know (as in :func:`json.dumps`).

    Raises:
        TypeError: ``value`` holds something JSON cannot represent.
        OSError: As :func:`atomic_write_text`.
    """
    atomic_write_text(path, json.dumps(json_ready(value), indent=indent, default=default) + "\n")
