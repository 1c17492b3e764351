"""Particle metadata and lazily read particle images: the two objects every data set becomes.

:class:`ParticleMetadata` (defined in :mod:`cryopose.io.metadata`, re-exported here) holds what
a STAR or ``.cs`` file says about each particle, already converted to cryopose conventions
(:mod:`cryopose.conventions`): RELION rotation matrices, shifts in Å with the sign of
``rlnOriginXAngst``, :class:`cryopose.ctf.CTFParams`. :class:`ParticleStack` reads the images
on demand through cached memory maps, a batch at a time, so a data set of 10^6 images never has
to fit in memory. :func:`load_particles` makes both from a ``.star``, ``.cs`` or bare ``.mrcs``
file (the readers import :mod:`cryopose.io.metadata`, not this module: no import circle).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from ..conventions import check_pixel_size
from ..errors import InputFileError
from . import cryosparc, star
from .metadata import ParticleMetadata, positions
from .mrc import open_stack, read_header_info, stack_array

__all__ = ["ParticleMetadata", "ParticleStack", "load_particles"]


class ParticleStack:
    """Lazily read particle images from MRCS stacks.

    Args:
        image_paths: ``N`` stack paths (one per particle; repeated paths are stored once).
        image_indices: ``(N,)`` 0-based image positions in their stacks.
        box_size: Expected image edge ``n`` in pixels.
        pixel_size_angstrom: Pixel size in Å.
        source: The metadata file the particles came from (quoted in errors).
        rows: ``(N,)`` 1-based rows of ``source`` (defaults to ``1..N``).
        missing_hint: Appended to the error when a stack file does not exist.

    Indexing with an int, slice, boolean mask or index array returns a float32
    ``torch.Tensor`` ``(B, n, n)`` (an int gives ``B = 1``). Reads are grouped by file and go
    through :func:`cryopose.io.mrc.open_stack` memory maps, copying only the requested images;
    the copy made by :meth:`streamed` reads at byte offsets instead
    (:class:`cryopose.io.stream.PositionalReader`: bounded open files, memory flat in ``N``).

    Raises:
        InputFileError: On read, naming ``source``, the 1-based row, the stack and the
            problem: missing stack, image index outside the stack (with the valid range),
            wrong image size, NaN/inf pixels, truncated stack.
    """

    def __init__(self, image_paths, image_indices, box_size: int, pixel_size_angstrom: float, *,
                 source: str = "<memory>", rows=None, missing_hint: str = ""):
        codes, uniques = pd.factorize(pd.Series(list(image_paths), dtype=object), sort=False)
        self._files = [str(u) for u in uniques]
        self._file_ids = codes.astype(np.int32)
        self._indices = np.asarray(image_indices, dtype=np.int64).reshape(-1)
        n = len(self._file_ids)
        if self._indices.shape[0] != n:
            raise ValueError(f"{n} image paths but {self._indices.shape[0]} image indices")
        self._rows = np.arange(1, n + 1) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if self._rows.shape[0] != n:
            raise ValueError(f"{n} images but {self._rows.shape[0]} row numbers")
        if int(box_size) < 1:
            raise ValueError(f"box_size must be positive, got {box_size}")
        self.box_size = int(box_size)
        self.pixel_size_angstrom = check_pixel_size(pixel_size_angstrom, source=str(source))
        self.source = str(source)
        self.missing_hint = missing_hint
        self._reader = None  # a PositionalReader once streamed()

    def streamed(self, max_open_files: int | None = None) -> "ParticleStack":
        """The same particles read by positional reads through an LRU of open files.

        Memory maps keep every page read mapped (counted in the process's memory); positional
        reads do not, so a pass over 10^6 particles leaves the memory where it was
        (:mod:`cryopose.io.stream`). Same images, same errors.

        Args:
            max_open_files: Open files kept per process (default
                :data:`cryopose.io.stream.DEFAULT_MAX_OPEN_FILES`).
        """
        from .stream import DEFAULT_MAX_OPEN_FILES, PositionalReader

        out = self.subset(slice(None))
        out._reader = PositionalReader(max_open_files or DEFAULT_MAX_OPEN_FILES)
        return out

    @property
    def is_streamed(self) -> bool:
        """Reads go through positional reads (:meth:`streamed`), not memory maps."""
        return self._reader is not None

    def __len__(self) -> int:
        return int(self._file_ids.shape[0])

    @property
    def image_paths(self) -> list[str]:
        """The stack path of every particle."""
        return [self._files[c] for c in self._file_ids]

    @property
    def image_indices(self) -> np.ndarray:
        """0-based image positions (a copy)."""
        return self._indices.copy()

    def subset(self, indices) -> "ParticleStack":
        """A stack of the selected particles (int, slice, mask or index array)."""
        pos = positions(indices, len(self))
        out = ParticleStack([self._files[c] for c in self._file_ids[pos]], self._indices[pos], self.box_size,
                            self.pixel_size_angstrom, source=self.source, rows=self._rows[pos],
                            missing_hint=self.missing_hint)
        out._reader = self._reader
        return out

    def _groups(self, pos: np.ndarray):
        """Split positions into groups that share a stack file: yields (file id, positions)."""
        fids = self._file_ids[pos]
        order = np.argsort(fids, kind="stable")
        cuts = np.flatnonzero(np.diff(fids[order])) + 1
        for part in np.split(order, cuts):
            if part.size:
                yield int(fids[part[0]]), part

    def _open(self, fid: int, row: int):
        return _in_context(open_stack, self._files[fid], self.source, row, self.missing_hint)

    def _check_range(self, fid: int, n_images: int, shape, pos: np.ndarray) -> None:
        path = self._files[fid]
        if tuple(shape) != (self.box_size, self.box_size):
            raise InputFileError(self.source, f"images in {path} are {shape[0]}×{shape[1]} pixels but the "
                                              f"box size is {self.box_size}", row=int(self._rows[pos[0]]))
        idx = self._indices[pos]
        bad = np.flatnonzero((idx < 0) | (idx >= n_images))
        if bad.size:
            p = pos[bad[0]]
            raise InputFileError(self.source, f"image {int(self._indices[p]) + 1}@{path} is out of range: the "
                                              f"stack holds {n_images} images (valid 1..{n_images})",
                                 row=int(self._rows[p]))

    def read(self, index) -> np.ndarray:
        """Read images as a float32 numpy array ``(B, n, n)`` (same indexing as ``[]``)."""
        pos = positions(index, len(self))
        n = self.box_size
        out = np.empty((pos.shape[0], n, n), dtype=np.float32)
        for fid, part in self._groups(pos):
            p = pos[part]
            if self._reader is not None:
                out[part] = self._read_positional(fid, p)
                continue
            arr = stack_array(self._open(fid, int(self._rows[p[0]])))
            self._check_range(fid, arr.shape[0], arr.shape[1:], p)
            idx = self._indices[p]
            if idx.size > 1 and np.all(np.diff(idx) == 1):
                block = arr[idx[0]:idx[-1] + 1]
            else:
                block = arr[idx]
            out[part] = block
        finite = np.isfinite(out).all(axis=(1, 2))
        if not finite.all():
            k = int(np.flatnonzero(~finite)[0])
            p = pos[k]
            raise InputFileError(self.source, f"image {int(self._indices[p]) + 1}@{self._files[self._file_ids[p]]} "
                                              "has NaN or infinite pixels", row=int(self._rows[p]))
        return out

    def _read_positional(self, fid: int, p: np.ndarray) -> np.ndarray:
        """Images at positions ``p`` (one stack file) by positional reads."""
        path = self._files[fid]
        info = _in_context(self._reader.header, path, self.source, int(self._rows[p[0]]), self.missing_hint)
        self._check_range(fid, info.shape[0], info.shape[1:], p)
        return self._reader.read(path, self._indices[p])

    def __getitem__(self, index) -> torch.Tensor:
        return torch.from_numpy(self.read(index))

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(indices, images)`` over the whole stack in order, ``chunk_size`` at a time.

        ``indices`` is an int64 array of particle positions, ``images`` a float32 tensor
        ``(B, n, n)``.
        """
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        for start in range(0, len(self), int(chunk_size)):
            idx = np.arange(start, min(start + int(chunk_size), len(self)), dtype=np.int64)
            yield idx, self[idx]

    def check(self) -> None:
        """Check every stack exists, has the right image size and holds every index.

        Reads only the headers (no pixel data). :func:`load_particles` calls it so a bad
        data set fails before training starts rather than hours into it.

        Raises:
            InputFileError: As for reads (not the NaN check, which needs the pixels).
        """
        if len(self) == 0:
            return
        for fid, part in self._groups(np.arange(len(self))):
            path = self._files[fid]
            (nz, ny, nx), _ = _in_context(read_header_info, path, self.source, int(self._rows[part[0]]),
                                          self.missing_hint)
            if nz == 0:
                raise InputFileError(path, f"empty stack: header says 0 images of {ny}×{nx}")
            self._check_range(fid, nz, (ny, nx), part)


def _in_context(func, path: str, source: str, row: int, hint: str):
    """Call ``func(path)`` on a stack; its errors are re-raised naming the metadata file and row."""
    if not os.path.exists(path):
        raise InputFileError(source, f"stack file not found: {path}" + (f"; {hint}" if hint else ""), row=row)
    try:
        return func(path)
    except InputFileError as err:
        if os.path.abspath(source) == os.path.abspath(path):
            raise
        msg, prefix = str(err), f"{err.path}: "
        detail = msg[len(prefix):] if msg.startswith(prefix) else msg
        raise InputFileError(source, f"cannot read stack {path}: {detail}", row=row) from None


def load_particles(path: str | os.PathLike, *, pixel_size_angstrom: float | None = None,
                   ctf_star: str | os.PathLike | None = None,
                   datadir: str | os.PathLike | None = None,
                   optics_group: int | str | None = None) -> tuple[ParticleStack, ParticleMetadata]:
    """Load a particle data set: lazy images plus metadata.

    Dispatches on the suffix: ``.star`` (:func:`cryopose.io.star.read_star`), ``.cs``
    (:func:`cryopose.io.cryosparc.read_cs`), ``.mrcs``/``.mrc`` (a bare stack: pixel size from
    the explicit argument or the header, no poses or CTF unless ``ctf_star`` names a STAR
    file whose rows, one per image in stack order, supply them). Every stack is checked
    (:meth:`ParticleStack.check`) before returning.

    Args:
        path: ``.star``, ``.cs``, ``.mrcs`` or ``.mrc`` file.
        pixel_size_angstrom: Explicit pixel size in Å; must agree with the metadata file
            (overrides a bare stack's header, which is often wrong).
        ctf_star: For a bare stack only: STAR file with CTF (and optionally poses) per image.
        datadir: The CLI's ``--datadir``. For ``.star``: one more folder images may be read
            from, and relative ``N@stack`` names are tried against it after the current folder
            and the STAR file's folder (:func:`cryopose.io.star.read_star`). For ``.cs``: the
            folder cryoSPARC's ``blob/path`` is relative to, tried first.
        optics_group: The CLI's ``--optics-group``: keep only the particles of this optics group,
            an ``rlnOpticsGroup`` number or ``rlnOpticsGroupName`` (STAR), or a group number
            (``.cs``: ``ctf/exp_group_id`` + 1). Not for a bare stack.

    Returns:
        ``(stack, metadata)`` with ``len(stack) == len(metadata)``.

    Raises:
        InputFileError: Unknown suffix, unreadable file, missing stacks, bad indices, a
            ``ctf_star`` whose row count differs from the stack's image count, a STAR image
            name whose stack lies outside the STAR file's folder, the current folder and
            ``datadir`` (real paths, symlinks followed), one image named by two rows
            (:func:`refuse_duplicate_images`).
        PixelSizeError: Missing or disagreeing pixel sizes.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    hint = ""
    if suffix == ".star":
        if ctf_star is not None:
            raise InputFileError(path, "ctf_star is only for a bare .mrcs stack; a STAR file carries its own CTF")
        meta = star.read_star(path, pixel_size_angstrom=pixel_size_angstrom, datadir=datadir,
                              optics_groups=None if optics_group is None else [optics_group])
        hint = ("image names are resolved relative to the current folder (as RELION does), then the STAR "
                "file's folder" + (", then --datadir" if datadir is not None else "; pass --datadir DIR to "
                                   "look in another folder"))
    elif suffix == ".cs":
        if ctf_star is not None:
            raise InputFileError(path, "ctf_star is only for a bare .mrcs stack; a .cs file carries its own CTF")
        meta = cryosparc.read_cs(path, pixel_size_angstrom=pixel_size_angstrom, datadir=datadir)
        if optics_group is not None:
            meta = _cs_optics_group(path, meta, optics_group)
        hint = cryosparc.missing_stack_hint(path, datadir)
    elif suffix in (".mrcs", ".mrc"):
        if optics_group is not None:
            raise InputFileError(path, "--optics-group needs a STAR or .cs file; a bare stack has no optics groups")
        meta = _bare_stack_metadata(path, pixel_size_angstrom, ctf_star, star)
    else:
        raise InputFileError(path, f"unknown particle file type {suffix!r}; expected .star, .cs, .mrcs or .mrc")
    if meta.image_paths is None:
        raise InputFileError(path, "the file names no particle images")
    refuse_duplicate_images(path, meta)
    box = meta.box_size
    if box is None:
        first = meta.image_paths[0]
        (_, ny, nx), _ = _in_context(read_header_info, first, str(path), int(meta.table.index[0]) + 1, hint)
        if ny != nx:
            raise InputFileError(first, f"images are {ny}×{nx}; cryopose needs square images")
        box = ny
        meta = meta.replace(box_size=box)
    stack = ParticleStack(meta.image_paths, meta.image_indices, box, meta.pixel_size_angstrom,
                          source=str(path), rows=meta.table.index.to_numpy() + 1, missing_hint=hint)
    stack.check()
    return stack, meta


def _cs_optics_group(path: Path, meta: ParticleMetadata, group) -> ParticleMetadata:
    """The particles of one optics group of a ``.cs`` file (RELION numbering: exp_group_id + 1)."""
    have = sorted(set(np.asarray(meta.optics_group).tolist())) if meta.optics_group is not None else [1]
    text = str(group).strip()
    if not text.isdigit() or int(text) not in have:
        raise InputFileError(path, f"no optics group {text!r} (groups: {', '.join(map(str, have))}; a .cs file "
                                   "numbers them ctf/exp_group_id + 1)")
    if meta.optics_group is None:
        return meta
    return meta.subset(np.flatnonzero(np.asarray(meta.optics_group) == int(text)))


def refuse_duplicate_images(path, meta: ParticleMetadata) -> None:
    """Refuse particles that name one image twice (the same image index of the same stack, after
    resolving the paths): the particle would count twice in a reconstruction, its FSC and a
    training, and two poses for one image make no sense. (Reading the metadata alone, as
    :func:`cryopose.io.star.read_star` does, accepts them.)

    Raises:
        InputFileError: Naming the file, the first repeated image and its rows (1-based, as
            in the table), and how many rows repeat an earlier one.
    """
    key = pd.Series([f"{i}@{p}" for i, p in zip(np.asarray(meta.image_indices).tolist(), meta.image_paths)])
    dup = key.duplicated(keep=False).to_numpy()
    if not dup.any():
        return
    at = np.flatnonzero((key == key[dup].iloc[0]).to_numpy())
    rows = (meta.table.index.to_numpy()[at] + 1).tolist() if meta.table is not None else (at + 1).tolist()
    name = (meta.table["rlnImageName"].iloc[at[0]] if meta.table is not None and "rlnImageName" in meta.table
            else key.iloc[at[0]])
    n = int(key.duplicated().sum())
    raise InputFileError(path, f"rows {', '.join(map(str, rows[:5]))} name the same image {name!r} ({n} repeated "
                               f"row{'s' if n > 1 else ''} in all); each particle image must appear once (remove the "
                               "repeated rows, e.g. of a concatenated or symmetry-expanded file)")


def _bare_stack_metadata(path: Path, pixel_size_angstrom, ctf_star, star) -> ParticleMetadata:
    from .mrc import _pixel_size  # shared zero-header rule and message

    (nz, ny, nx), voxel = read_header_info(path)
    if nz == 0:
        raise InputFileError(path, f"empty stack: header says 0 images of {ny}×{nx}")
    if ny != nx:
        raise InputFileError(path, f"images are {ny}×{nx}; cryopose needs square images")
    paths = [str(path.absolute())] * nz
    indices = np.arange(nz, dtype=np.int64)
    if ctf_star is None:
        px = _pixel_size(path, voxel, pixel_size_angstrom, "stack")
        return ParticleMetadata(pixel_size_angstrom=px, box_size=ny, image_paths=paths, image_indices=indices,
                                source=str(path))
    meta = star.read_star(ctf_star, pixel_size_angstrom=pixel_size_angstrom, require_image_names=False)
    if len(meta) != nz:
        raise InputFileError(ctf_star, f"has {len(meta)} particle rows but {path} holds {nz} images; "
                                       "ctf_star needs one row per image, in stack order")
    if meta.box_size is not None and meta.box_size != ny:
        raise InputFileError(ctf_star, f"says box size {meta.box_size} but {path} holds {ny}×{nx} images")
    return meta.replace(image_paths=paths, image_indices=indices, box_size=ny)
