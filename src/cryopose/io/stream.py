"""Positional reads of particle images: bounded open files, no memory maps, flat memory.

:class:`cryopose.io.particles.ParticleStack` reads through cached memory maps
(:func:`cryopose.io.mrc.open_stack`): fastest for random access, but every page of a map that
has been read stays mapped, and mapped pages count in the process's resident memory (RSS) until
the map is closed. Reading a whole 10^6-particle stack through one map makes the RSS grow by the
stack's size (64 GB at 128 px). :class:`PositionalReader` reads the requested images with
``readinto`` at their byte offsets instead: the data pass through the operating system's page
cache (reclaimable, not the process's memory) into one buffer per batch, so the memory of a
streamed run does not grow with the number of particles. Open files are bounded by an LRU of
``max_open_files`` handles per process (DataLoader workers each keep their own), so a data
set of 10^5 ``.mrcs`` files never runs into the open-file limit.
"""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path

import numpy as np

from .mrc import _read_header

__all__ = ["PositionalReader", "DEFAULT_MAX_OPEN_FILES"]

#: Open stack files kept per process by a :class:`PositionalReader`.
DEFAULT_MAX_OPEN_FILES = 64


class PositionalReader:
    """Read images of MRC stacks at their byte offsets through an LRU of open files.

    Args:
        max_open_files: Most files held open per process (least recently used closed first).

    The headers are validated once per file (:func:`cryopose.io.mrc.read_header_info`'s checks:
    mode, dimensions, truncation). Pickling (a ``DataLoader`` started with ``spawn``) drops the
    open files; each process opens its own (handles are keyed by process id).
    """

    def __init__(self, max_open_files: int = DEFAULT_MAX_OPEN_FILES):
        if int(max_open_files) < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        self.max_open_files = int(max_open_files)
        self._files: collections.OrderedDict = collections.OrderedDict()
        self._headers: dict[str, object] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"max_open_files": self.max_open_files}

    def __setstate__(self, state):
        self.__init__(state["max_open_files"])

    @property
    def open_files(self) -> int:
        """Files currently open by this process."""
        pid = os.getpid()
        return sum(1 for (p, _) in self._files if p == pid)

    def header(self, path: str):
        """The validated header of ``path`` (cached): ``shape`` ``(nz, ny, nx)``, ``dtype``,
        ``data_offset``.

        Raises:
            InputFileError: Missing, truncated or unreadable file.
        """
        info = self._headers.get(path)
        if info is None:
            info = _read_header(Path(path))
            self._headers[path] = info
        return info

    def _handle(self, path: str):
        key = (os.getpid(), path)
        f = self._files.get(key)
        if f is not None:
            self._files.move_to_end(key)
            return f
        f = open(path, "rb", buffering=0)
        self._files[key] = f
        while len(self._files) > self.max_open_files:
            _, old = self._files.popitem(last=False)
            old.close()
        return f

    def read(self, path: str, indices: np.ndarray) -> np.ndarray:
        """Images ``indices`` (0-based, in range) of the stack ``path`` as float32 ``(B, ny, nx)``.

        Consecutive indices are read in one call. The caller checks the range
        (:meth:`header` gives the image count).
        """
        info = self.header(path)
        _, ny, nx = info.shape
        item = ny * nx * info.dtype.itemsize
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((idx.size, ny, nx), dtype=np.float32)
        if idx.size == 0:
            return out
        cuts = np.flatnonzero(np.diff(idx) != 1) + 1
        with self._lock:
            f = self._handle(path)
            start = 0
            for run in np.split(np.arange(idx.size), cuts):
                count = run.size
                buf = np.empty(count * ny * nx, dtype=info.dtype)
                f.seek(info.data_offset + int(idx[run[0]]) * item)
                got = f.readinto(memoryview(buf).cast("B"))
                if got != buf.nbytes:
                    raise OSError(f"{path}: short read ({got} of {buf.nbytes} bytes)")
                out[start:start + count] = buf.reshape(count, ny, nx)
                start += count
        return out

    def close(self) -> None:
        """Close every file this reader holds."""
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()
