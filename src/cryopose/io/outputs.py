"""The one output layer: every command checks its outputs before any work and writes them whole.

A command calls :func:`check_outputs` (files) or :func:`check_output_folder` (an ``-o OUTDIR``)
first, before reading its inputs: each target must not be a folder, its folder must be (or be
creatable in) a writable folder on a file system that is not read-only, the file system must
have room for the expected size when the command knows it, and an existing output is refused
unless ``force`` (``--force``), as RELION's job folders and cryoDRGN's ``-o`` guard do.

Then every file is written through :mod:`cryopose.io.atomic` (re-exported here): to a
temporary file in the same folder, renamed over the target when complete, removed on any
error. Stacks are written with ordinary writes (:class:`cryopose.io.mrc.StackWriter`), never
through a memory map, so a full disk is an ``OSError`` (``ENOSPC``) and not a ``SIGBUS``.

Every ``OSError`` of a write becomes one :class:`~cryopose.errors.OutputError` whose message
names the user's path and says why in words (:func:`output_error`); the CLI prints it as one
line with exit status 2.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
from pathlib import Path

from ..errors import OutputError
from .atomic import atomic_path, atomic_write, atomic_write_json, atomic_write_text, remove_stale_temps
from .oserrors import _existing_ancestor, _size_text, free_bytes, os_error_reason, output_error

__all__ = ["check_outputs", "check_output_folder", "check_free_space", "all_or_nothing",
           "output_error", "os_error_reason", "free_bytes",
           "atomic_path", "atomic_write", "atomic_write_text", "atomic_write_json", "remove_stale_temps"]

#: Free space kept beyond the expected size of the outputs (bytes): configs, STAR files, slack.
MARGIN_BYTES = 1 << 20

def _check_folder(folder: Path, what: Path) -> None:
    """``folder`` (to be) holding ``what``: an existing ancestor that is a writable folder."""
    anc = _existing_ancestor(folder)
    if not anc.is_dir():
        raise OutputError(what, f"cannot write: {anc} is a file, not a folder", errno=_errno.ENOTDIR)
    try:
        read_only = bool(os.statvfs(anc).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if read_only:
        raise OutputError(what, f"cannot write: the file system of {anc} is read-only", errno=_errno.EROFS)
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(what, f"cannot write: permission denied in folder {anc}", errno=_errno.EACCES)


def check_free_space(path, expected_bytes: int | None) -> None:
    """Refuse to start when the file system that will hold ``path`` (a file to write) has less
    than ``expected_bytes`` plus :data:`MARGIN_BYTES` free; nothing when ``expected_bytes`` is
    ``None``.

    Raises:
        cryopose.errors.OutputError: Not enough room, naming ``path``, the size needed and free.
    """
    _check_space(Path(path).parent, expected_bytes, Path(path))


def _check_space(folder: Path, expected_bytes: int | None, what) -> None:
    if expected_bytes is None:
        return
    free = free_bytes(folder)
    if free is not None and free < int(expected_bytes) + MARGIN_BYTES:
        raise OutputError(what, f"cannot write: needs about {_size_text(int(expected_bytes) + MARGIN_BYTES)}, and "
                                f"{_existing_ancestor(Path(folder))} has {_size_text(free)} free",
                          errno=_errno.ENOSPC)


def check_outputs(paths, *, force: bool = False, stale=(), expected_bytes: int | None = None) -> list[Path]:
    """Check output files before any work (see the module docstring).

    Args:
        paths: Files the command will write.
        force: The command's ``--force``: existing outputs may be replaced.
        stale: Files of an earlier run that this run will not write (e.g. half maps with
            ``--no-half-maps``): refused like outputs without ``force``, removed with it, so no
            output of another run is left beside the new ones.
        expected_bytes: Total size the outputs will take, when known: refused when the file
            system of the first output has less free (plus :data:`MARGIN_BYTES`).

    Returns:
        ``paths`` as :class:`~pathlib.Path`.

    Raises:
        cryopose.errors.OutputError: A path is a folder, a part of it is a file, its folder is
            not writable or on a read-only file system, the disk lacks room, or an output
            exists without ``force`` (naming it).
    """
    paths = [Path(p) for p in paths]
    for p in [*paths, *map(Path, stale)]:
        if p.is_dir():
            raise OutputError(p, "is a folder; give a file name", errno=_errno.EISDIR)
        _check_folder(p.parent, p)
    existing = [p for p in [*paths, *map(Path, stale)] if p.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputError(existing[0], f"exists{more}; pass --force to replace it (cryopose does not overwrite "
                                       "outputs silently)", errno=_errno.EEXIST)
    if paths:
        _check_space(paths[0].parent, expected_bytes, paths[0])
    if force:
        for p in map(Path, stale):
            try:
                if p.exists():
                    p.unlink()
            except OSError as exc:
                raise output_error(p, exc) from exc
    return paths


def check_output_folder(path, *, names=(), force: bool = False, expected_bytes: int | None = None) -> Path:
    """Check an output folder (``-o OUTDIR``) before any work, then create it.

    Args:
        path: The folder (created with its parents when missing).
        names: File names the command writes in it: refused when present unless ``force``.
        force: The command's ``--force``.
        expected_bytes: Size the outputs will take, when known (see :func:`check_outputs`).

    Returns:
        The folder as a :class:`~pathlib.Path`.

    Raises:
        cryopose.errors.OutputError: ``path`` is a file, a part of it is a file, it cannot be
            created or written, the disk lacks room, or it holds one of ``names`` without
            ``force``.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, "exists and is a file, not a folder", errno=_errno.ENOTDIR)
    _check_folder(folder, folder)
    check_outputs([folder / n for n in names], force=force)
    _check_space(folder, expected_bytes, folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(folder, exc) from exc
    return folder


def _signature(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@contextlib.contextmanager
def all_or_nothing(paths):
    """Outputs written together: when the block fails, those of ``paths`` it wrote are removed.

    A command that writes several files (a stack and its STAR file, a map and its half maps)
    leaves either all of them or none of this run: files that the block created or replaced
    (another inode, time or size than before) are deleted on any exception, and files it did
    not touch are kept. Each file itself is written atomically, so none is ever half-written.

    Args:
        paths: The files the block writes.
    """
    paths = [Path(p) for p in paths]
    before = {p: _signature(p) for p in paths}
    try:
        yield paths
    except BaseException:
        for p in paths:
            sig = _signature(p)
            if sig is not None and sig != before[p]:
                with contextlib.suppress(OSError):
                    p.unlink()
        raise
