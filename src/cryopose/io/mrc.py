"""MRC/MRCS maps and image stacks (MRC2014, as read and written by RELION and cryoSPARC).

Arrays follow :mod:`cryopose.conventions`: volumes are ``(z, y, x)``, stacks ``(N, y, x)``,
float32. Reading is strict about what matters and tolerant about what real files get wrong:

* The file size must hold the data the header announces (else "truncated" naming the file),
  the mode must be a real-valued MRC mode (0, 1, 2, 6, 12) and the dimensions positive.
* A missing ``MAP`` id string or a zero machine stamp is tolerated (read with
  ``mrcfile``'s permissive mode, byte order from the header) because RELION and cryoDRGN
  write such files and RELION reads them; the contract asked for ``permissive=False``, but
  ``particles/relion31_5ptcl/relion31.mrcs`` and ``maps/10076_class*_32.mrc`` would then not load.
* Header voxel sizes are often wrong (see ``shared/data/README.md``): an explicit pixel size
  always wins, and a zero header with no explicit value raises :class:`PixelSizeError`.

Writes are atomic (:mod:`cryopose.io.atomic`), stacks without a memory map: float32, origin 0.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import threading
import warnings
from pathlib import Path

import mrcfile
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from ..conventions import PixelSizeError
from ..errors import InputFileError
from .atomic import atomic_path

__all__ = ["MapData", "read_map", "write_map", "write_stack", "StackWriter", "open_stack",
           "stack_array", "read_header_info"]

_MODE_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}
_HEADER_BYTES = 1024
_CACHE_SIZE = 128


@dataclasses.dataclass(frozen=True)
class MapData:
    """A density map read from an MRC file.

    Attributes:
        volume: float32 array ``(z, y, x)`` (axis order already resolved from mapc/mapr/maps).
        pixel_size_angstrom: Voxel edge in Å (the explicit value if one was given, else the
            header's voxel size along x).
        voxel_size_angstrom: Header (or explicit) voxel size ``(x, y, z)`` in Å; differs from
            ``pixel_size_angstrom`` only for anisotropic maps such as EMD-3001.
    """

    volume: np.ndarray
    pixel_size_angstrom: float
    voxel_size_angstrom: tuple[float, float, float] | None = None


@dataclasses.dataclass(frozen=True)
class _HeaderInfo:
    shape: tuple[int, int, int]  # (nz, ny, nx) as stored (sections, rows, columns)
    dtype: np.dtype
    voxel_size: tuple[float, float, float]  # (x, y, z) Å
    axis_map: tuple[int, int, int]  # (mapc, mapr, maps)
    ispg: int
    data_offset: int = 1024  # bytes before the first voxel (header + extended header)


def _check_file(path: Path) -> int:
    if not path.exists():
        raise InputFileError(path, "no such file")
    if not path.is_file():
        raise InputFileError(path, "not a regular file")
    return path.stat().st_size


def _parse_header(raw: bytes):
    """Header record in the file's byte order: from the machine stamp (0x44 little, 0x11 big),
    else (zero stamps are common) the order in which the mode is valid, as mrcfile does."""
    little = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder("<"))[0]
    big = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder(">"))[0]
    stamp = int(little["machst"][0])
    if stamp == 0x44:
        return little
    if stamp == 0x11:
        return big
    return big if int(little["mode"]) not in _MODE_DTYPES and int(big["mode"]) in _MODE_DTYPES else little


def _read_header(path: Path) -> _HeaderInfo:
    """Read and validate an MRC header; check the file holds all the data it announces."""
    size = _check_file(path)
    if size < _HEADER_BYTES:
        raise InputFileError(path, f"truncated: an MRC file needs a {_HEADER_BYTES}-byte header "
                                   f"but the file holds only {size} bytes")
    with open(path, "rb") as f:
        raw = f.read(_HEADER_BYTES)
    h = _parse_header(raw)
    mode = int(h["mode"])
    nx, ny, nz = int(h["nx"]), int(h["ny"]), int(h["nz"])
    if mode not in _MODE_DTYPES:
        raise InputFileError(path, f"not a readable MRC file: mode {mode} is not a supported real "
                                   "mode (0, 1, 2, 6, 12); is this really an MRC file?")
    if nx <= 0 or ny <= 0 or nz < 0:
        raise InputFileError(path, f"not a readable MRC file: header dimensions {nx}×{ny}×{nz}")
    dtype = np.dtype(_MODE_DTYPES[mode]).newbyteorder(h.dtype["mode"].byteorder)
    nsymbt = max(int(h["nsymbt"]), 0)
    expected = _HEADER_BYTES + nsymbt + nx * ny * nz * dtype.itemsize
    if size < expected:
        raise InputFileError(path, f"truncated: header says {nz} images of {ny}×{nx} (mode {mode}) "
                                   f"but file holds only {size} bytes, {expected} expected")
    mx, my, mz = int(h["mx"]), int(h["my"]), int(h["mz"])
    cella = (float(h["cella"]["x"]), float(h["cella"]["y"]), float(h["cella"]["z"]))
    vox = tuple(c / m if m > 0 else 0.0 for c, m in zip(cella, (mx, my, mz)))
    axis_map = (int(h["mapc"]), int(h["mapr"]), int(h["maps"]))
    if sorted(axis_map) != [1, 2, 3]:
        axis_map = (1, 2, 3)  # invalid axis map (seen in old files): assume the standard order
    return _HeaderInfo(shape=(nz, ny, nx), dtype=dtype, voxel_size=vox, axis_map=axis_map,
                       ispg=int(h["ispg"]), data_offset=_HEADER_BYTES + nsymbt)


def read_header_info(path: str | os.PathLike) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Validate an MRC file's header and size without reading its data.

    Returns:
        ``((nz, ny, nx), (voxel_x, voxel_y, voxel_z))``: the stored shape (images of a
        stack along ``nz``) and the header voxel size in Å (zero when unset).

    Raises:
        InputFileError: Missing, truncated or unreadable file.
    """
    info = _read_header(Path(path))
    return info.shape, info.voxel_size


def _pixel_size(path: Path, voxel: tuple[float, float, float], explicit, what: str) -> float:
    if explicit is not None:
        try:
            value = float(explicit)
        except (TypeError, ValueError):
            raise PixelSizeError(f"{path}: pixel size {explicit!r} is not a number") from None
        if not np.isfinite(value) or value <= 0:
            raise PixelSizeError(f"{path}: pixel size must be positive, got {explicit!r} Å")
        return value
    vx = voxel[0]
    if not np.isfinite(vx) or vx <= 0:
        raise PixelSizeError(f"{path}: the MRC header has no pixel size (voxel size {vx:g} Å) "
                             f"for this {what}; pass --pixel-size (pixel_size_angstrom=...)")
    return float(vx)


def read_map(path: str | os.PathLike, *, pixel_size_angstrom: float | None = None,
             require_cubic: bool = False) -> MapData:
    """Read a 3D density map (MRC2014, any axis order) into memory.

    Args:
        path: ``.mrc``/``.map`` file.
        pixel_size_angstrom: Voxel size in Å; overrides the header (headers are often wrong).
        require_cubic: Demand an ``n×n×n`` map with isotropic voxels (what the projector and
            reconstruction need).

    Returns:
        :class:`MapData` with ``volume`` float32 ``(z, y, x)``: the stored (section, row,
        column) axes are permuted using the header's ``maps/mapr/mapc``, so EMD-3001 (stored
        as 25 sections × 43 rows × 73 columns with columns along z) comes back as
        ``(73, 25, 43)``.

    Raises:
        InputFileError: Missing, truncated or unreadable file; a 2D image; or, with
            ``require_cubic``, a non-cubic map or anisotropic voxels.
        PixelSizeError: Header voxel size zero and no ``pixel_size_angstrom`` given.
    """
    path = Path(path)
    info = _read_header(path)
    nz, ny, nx = info.shape
    if nz <= 1:
        raise InputFileError(path, f"holds a 2D image ({ny}×{nx}), not a 3D map")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                data = np.asarray(mrc.data, dtype=np.float32)
    except (ValueError, OSError) as err:
        raise InputFileError(path, f"cannot read the map data ({err})") from None
    data = data.reshape(info.shape)
    # data axes are (maps, mapr, mapc) in terms of physical axes 1=x, 2=y, 3=z.
    stored = (info.axis_map[2], info.axis_map[1], info.axis_map[0])
    volume = np.ascontiguousarray(np.transpose(data, [stored.index(a) for a in (3, 2, 1)]))
    pixel = _pixel_size(path, info.voxel_size, pixel_size_angstrom, "map")
    voxel = (pixel,) * 3 if pixel_size_angstrom is not None else info.voxel_size
    if require_cubic:
        if len(set(volume.shape)) != 1:
            z, y, x = volume.shape
            raise InputFileError(path, f"map is {x}×{y}×{z} voxels (x×y×z); cryopose needs a cubic "
                                       "n×n×n map here: pad or crop it first")
        if not np.allclose(voxel, voxel[0], rtol=1e-3):
            raise InputFileError(path, "voxels are anisotropic ({:g}, {:g}, {:g} Å); resample the map "
                                       "to cubic voxels or pass --pixel-size".format(*voxel))
    if not np.isfinite(volume).all():
        raise InputFileError(path, "map contains NaN or infinite values")
    return MapData(volume=volume, pixel_size_angstrom=pixel, voxel_size_angstrom=tuple(float(v) for v in voxel))


def _as_float32(array, what: str, ndim: int) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    if arr.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-dimensional, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return arr


def _check_write_pixel(pixel_size_angstrom) -> float:
    value = float(pixel_size_angstrom)
    if not np.isfinite(value) or value <= 0:
        raise PixelSizeError(f"cannot write a pixel size of {pixel_size_angstrom!r} Å; it must be positive")
    return value


def write_map(path: str | os.PathLike, volume, pixel_size_angstrom: float) -> None:
    """Write a 3D map as MRC2014 float32, atomically.

    Args:
        path: Output ``.mrc`` path.
        volume: ``(z, y, x)`` array or tensor (any float dtype; written as float32).
        pixel_size_angstrom: Voxel size in Å (written to the header for x, y and z).

    The header has origin 0, ``nxstart = nystart = nzstart = 0``, axis order 1, 2, 3,
    space group 1 (a single volume) and min/max/mean/rms statistics.

    Raises:
        ValueError: ``volume`` not 3D or not finite.
        PixelSizeError: ``pixel_size_angstrom`` not positive.
    """
    arr = _as_float32(volume, "volume", 3)
    px = _check_write_pixel(pixel_size_angstrom)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=False) as mrc:
            mrc.set_data(arr)
            mrc.set_volume()
            mrc.voxel_size = px
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.update_header_stats()


def write_stack(path: str | os.PathLike, images, pixel_size_angstrom: float) -> None:
    """Write an image stack ``(N, n, n)`` as an MRCS file (float32, space group 0), atomically.

    Args:
        path: Output ``.mrcs`` path.
        images: ``(N, n, n)`` array or tensor, ``N >= 1``.
        pixel_size_angstrom: Pixel size in Å.

    Raises:
        ValueError: Not 3D, empty, non-square or not finite.
        PixelSizeError: ``pixel_size_angstrom`` not positive.
    """
    arr = _as_float32(images, "images", 3)
    if arr.shape[0] == 0:
        raise ValueError("cannot write an empty stack (0 images)")
    with StackWriter(path, arr.shape[0], arr.shape[1], pixel_size_angstrom) as writer:
        writer.write(0, arr)


class StackWriter:
    """Write a large MRCS stack in chunks without holding it in memory.

    The file is written with ordinary writes (never through a memory map, which dies of
    ``SIGBUS`` when the disk fills up) under a temporary name beside ``path``
    (:func:`cryopose.io.atomic.atomic_path`): :meth:`write` writes each chunk at its place
    after the 1024-byte header; :meth:`close` checks every image was written, writes the
    header with its statistics, fsyncs and renames the file to ``path``. Any error (a full
    disk is an ``OSError``, raised as :class:`~cryopose.errors.OutputError` naming ``path``)
    removes the temporary file; used as a context manager, an exception inside the block does too.

    Args:
        path: Output ``.mrcs`` path.
        n_images: Number of images ``N`` (>= 1).
        box_size: Image edge ``n`` in pixels.
        pixel_size_angstrom: Pixel size in Å.

    Raises:
        ValueError: ``n_images`` or ``box_size`` not positive.
        PixelSizeError: ``pixel_size_angstrom`` not positive.
        cryopose.errors.OutputError: The file cannot be created or written.
    """

    def __init__(self, path: str | os.PathLike, n_images: int, box_size: int, pixel_size_angstrom: float):
        if int(n_images) < 1:
            raise ValueError(f"StackWriter: n_images must be >= 1, got {n_images}")
        if int(box_size) < 1:
            raise ValueError(f"StackWriter: box_size must be >= 1, got {box_size}")
        self.path = Path(path)
        self.n_images, self.box_size = int(n_images), int(box_size)
        self.pixel_size_angstrom = _check_write_pixel(pixel_size_angstrom)
        self._written = np.zeros(self.n_images, dtype=bool)
        self._stats = [np.inf, -np.inf, 0.0, 0.0]  # min, max, sum, sum of squares
        self._header = _stack_header(self.n_images, self.box_size, self.pixel_size_angstrom)
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._file = None
        self._guarded(lambda: setattr(self, "_file", open(self._tmp, "xb")))
        self._guarded(lambda: self._file.write(self._header.tobytes()))

    def _guarded(self, action):
        """Run a file operation; on any error discard the temp file and re-raise (as OutputError)."""
        try:
            return action()
        except BaseException as err:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise

    def write(self, start: int, images) -> None:
        """Write ``images`` ``(B, n, n)`` at positions ``start .. start + B - 1`` (0-based).

        Raises:
            ValueError: Wrong shape, non-finite values, range outside the stack, or closed.
            cryopose.errors.OutputError: The write failed (a full disk); the file is discarded.
        """
        if self._file is None:
            raise ValueError(f"StackWriter for {self.path} is closed")
        arr = _as_float32(images, "images", 3)
        b = arr.shape[0]
        if arr.shape[1:] != (self.box_size, self.box_size):
            raise ValueError(f"images have shape {arr.shape[1:]}, expected ({self.box_size}, {self.box_size})")
        if start < 0 or start + b > self.n_images:
            raise ValueError(f"images {start}..{start + b - 1} outside the stack of {self.n_images}")
        offset = 1024 + start * self.box_size ** 2 * 4

        def put():  # native float32, as the header says (machine stamp)
            self._file.seek(offset)
            self._file.write(arr.tobytes())
        self._guarded(put)
        self._written[start:start + b] = True
        if b:
            a64 = arr.astype(np.float64)
            self._stats[0] = min(self._stats[0], float(a64.min()))
            self._stats[1] = max(self._stats[1], float(a64.max()))
            self._stats[2] += float(a64.sum())
            self._stats[3] += float(np.square(a64).sum())

    def close(self) -> None:
        """Finish the file and move it to ``path``.

        Raises:
            ValueError: Some images were never written (the temporary file is discarded).
            cryopose.errors.OutputError: Writing, syncing or renaming failed (file discarded).
        """
        if self._file is None:
            return
        missing = np.flatnonzero(~self._written)
        if missing.size:
            self.abort()
            raise ValueError(f"StackWriter for {self.path}: {missing.size} of {self.n_images} images were "
                             f"never written (first: {int(missing[0])}); file discarded")
        count = self.n_images * self.box_size ** 2
        mean = self._stats[2] / count
        h = self._header
        h.dmin, h.dmax, h.dmean = self._stats[0], self._stats[1], mean
        h.rms = float(np.sqrt(max(self._stats[3] / count - mean ** 2, 0.0)))

        def finish():
            self._file.seek(0)
            self._file.write(h.tobytes())
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        self._guarded(finish)
        self._file = None
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        """Discard the temporary file; ``path`` is left untouched."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = None
        err = RuntimeError("aborted")
        try:
            self._atomic.__exit__(RuntimeError, err, None)
        except RuntimeError:
            pass

    def __enter__(self) -> "StackWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _stack_header(n_images: int, box_size: int, pixel_size_angstrom: float):
    """MRC2014 header record of an ``(N, n, n)`` float32 stack (space group 0, origin 0)."""
    from mrcfile.mrcinterpreter import MrcInterpreter
    m = MrcInterpreter()
    m._create_default_attributes()
    # a zero-stride view stands for the data: it sets shape and mode, uses no memory
    m._data = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(n_images, box_size, box_size),
                                              strides=(0, 0, 0))
    m.update_header_from_data()
    m.set_image_stack()
    m.voxel_size = pixel_size_angstrom
    m.header.origin = (0.0, 0.0, 0.0)
    return m.header


class _MmapCache:
    """Per-process LRU cache of open read-only ``mrcfile`` memory maps."""

    def __init__(self, size: int):
        self.size = size
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path):
        try:
            st = path.stat()
        except OSError:
            _check_file(path)
            raise
        key = (os.getpid(), str(path), st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            mrc = self._items.get(key)
            if mrc is not None and mrc.data is not None:
                self._items.move_to_end(key)
                return mrc
        info = _read_header(path)
        if info.shape[0] == 0:
            raise InputFileError(path, f"empty stack: header says 0 images of {info.shape[1]}×{info.shape[2]}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
        if mrc.data is None:
            mrc.close()
            raise InputFileError(path, "cannot read the image data (unsupported or corrupt MRC file)")
        with self._lock:
            self._items[key] = mrc
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                _, old = self._items.popitem(last=False)
                old.close()
        return mrc

    def clear(self) -> None:
        with self._lock:
            for mrc in self._items.values():
                mrc.close()
            self._items.clear()


_CACHE = _MmapCache(_CACHE_SIZE)


def open_stack(path: str | os.PathLike):
    """Open an MRCS stack as a cached, read-only memory map.

    The header and file size are validated first (:func:`read_header_info`), then the file is
    opened with ``mrcfile.mmap(path, mode="r")`` (permissive about a missing ``MAP`` id or
    machine stamp only; see the module docstring). Handles are cached per process (keyed by
    path, inode, mtime and size, at most 128 open files, least recently used closed first),
    so repeated calls are cheap and a rewritten file is reopened. Do not ``close()`` the
    returned object while others may use it (a closed handle is reopened on the next call).

    Args:
        path: ``.mrcs``/``.mrc`` stack.

    Returns:
        The ``mrcfile`` ``MrcMemmap``; ``.data`` is ``(N, ny, nx)``, or ``(ny, nx)`` for a
        one-image file. :func:`stack_array` always gives ``(N, ny, nx)``.

    Raises:
        InputFileError: Missing, truncated ("truncated: header says N images of n×n but file
            holds only M bytes"), unreadable, or holding 0 images.
    """
    path = Path(path).absolute()
    try:
        return _CACHE.get(path)
    except InputFileError:
        raise
    except (ValueError, OSError) as err:
        raise InputFileError(path, f"cannot memory-map the stack ({err})") from None


def stack_array(mrc) -> np.ndarray:
    """The ``(N, ny, nx)`` read-only data array of an :func:`open_stack` handle (no copy)."""
    data = mrc.data
    if data.ndim == 2:
        data = data[None]
    return data
