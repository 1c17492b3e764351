"""Particle metadata: what a STAR or ``.cs`` file says about each particle, in cryopose's
conventions (:mod:`cryopose.conventions`): RELION rotation matrices, shifts in Å with the sign
of ``rlnOriginXAngst``, :class:`cryopose.ctf.CTFParams`.

Its own module so that the readers (:mod:`cryopose.io.star`, :mod:`cryopose.io.cryosparc`) and
:mod:`cryopose.io.particles` (which dispatches to them) import it without a circle.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from ..conventions import check_pixel_size
from ..ctf import CTFParams

__all__ = ["ParticleMetadata", "positions"]


def positions(index, n: int) -> np.ndarray:
    """Normalise an int, slice, boolean mask or index array to an int64 position array."""
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    if isinstance(index, (int, np.integer)):
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"particle index {i} out of range for {n} particles")
        return np.array([i % n], dtype=np.int64)
    if isinstance(index, slice):
        return np.arange(n, dtype=np.int64)[index]
    arr = np.asarray(index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean mask has shape {arr.shape}, expected ({n},)")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise IndexError(f"particle indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.min() < -n or arr.max() >= n:
        bad = arr[(arr < -n) | (arr >= n)][0]
        raise IndexError(f"particle index {int(bad)} out of range for {n} particles")
    return arr % n


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ParticleMetadata:
    """Per-particle metadata of a data set, in cryopose conventions.

    Attributes:
        pixel_size_angstrom: Pixel size of the images in Å (one per data set).
        box_size: Image edge ``n`` in pixels, or ``None`` when the file does not say and no
            image could be opened (metadata-only RELION 3.0 files).
        rotmats: ``(N, 3, 3)`` float32 RELION matrices
            ``relion_euler_to_rotmat(rot, tilt, psi)``, or ``None`` (no poses).
        shifts_angstrom: ``(N, 2)`` float32 ``(x, y)`` in Å, sign of
            ``rlnOriginXAngst/YAngst``, or ``None``.
        ctf: :class:`CTFParams` of ``N`` particles, or ``None``.
        image_paths: ``N`` absolute stack paths, or ``None``.
        image_indices: ``(N,)`` int64 0-based image positions in their stacks, or ``None``.
        optics_group: ``(N,)`` int64 RELION optics group numbers (1-based), or ``None``.
        table: The particle table as read (unknown columns pass through when written back).
            Its index is the 0-based row of the source table, so after :meth:`subset`
            ``table.index + 1`` still names the row in the source file.
        optics: RELION 3.1+ optics table, or ``None``.
        source: The file the metadata came from (quoted in error messages).

    Raises:
        ValueError: Fields of different lengths or wrong shapes.
        PixelSizeError: Pixel size missing or not positive.
    """

    pixel_size_angstrom: float
    box_size: int | None
    rotmats: torch.Tensor | None = None
    shifts_angstrom: torch.Tensor | None = None
    ctf: CTFParams | None = None
    image_paths: list[str] | None = None
    image_indices: np.ndarray | None = None
    optics_group: np.ndarray | None = None
    table: pd.DataFrame | None = None
    optics: pd.DataFrame | None = None
    source: str = "<memory>"

    def __post_init__(self):
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        put("pixel_size_angstrom", check_pixel_size(self.pixel_size_angstrom, source=f"{self.source}"))
        if self.box_size is not None:
            if int(self.box_size) < 1:
                raise ValueError(f"{self.source}: box_size must be positive, got {self.box_size}")
            put("box_size", int(self.box_size))
        lengths = {}
        if self.rotmats is not None:
            r = torch.as_tensor(self.rotmats).float()
            if r.ndim != 3 or r.shape[1:] != (3, 3):
                raise ValueError(f"rotmats must be (N, 3, 3), got {tuple(r.shape)}")
            put("rotmats", r)
            lengths["rotmats"] = r.shape[0]
        if self.shifts_angstrom is not None:
            s = torch.as_tensor(self.shifts_angstrom).float()
            if s.ndim != 2 or s.shape[1] != 2:
                raise ValueError(f"shifts_angstrom must be (N, 2), got {tuple(s.shape)}")
            put("shifts_angstrom", s)
            lengths["shifts_angstrom"] = s.shape[0]
        if self.ctf is not None:
            lengths["ctf"] = len(self.ctf)
        if self.image_paths is not None:
            put("image_paths", [str(p) for p in self.image_paths])
            lengths["image_paths"] = len(self.image_paths)
        for name in ("image_indices", "optics_group"):
            value = getattr(self, name)
            if value is not None:
                arr = np.asarray(value).astype(np.int64).reshape(-1)
                put(name, arr)
                lengths[name] = arr.shape[0]
        if self.table is None:
            if not lengths:
                raise ValueError("ParticleMetadata needs a table or at least one per-particle field")
            put("table", pd.DataFrame(index=pd.RangeIndex(next(iter(lengths.values())))))
        lengths["table"] = len(self.table)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{self.source}: per-particle fields have different lengths: {lengths}")

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, indices) -> "ParticleMetadata":
        """Select particles by int, slice, boolean mask or index array (order kept as given)."""
        pos = positions(indices, len(self))
        t = torch.from_numpy(pos)
        return dataclasses.replace(
            self,
            rotmats=None if self.rotmats is None else self.rotmats[t],
            shifts_angstrom=None if self.shifts_angstrom is None else self.shifts_angstrom[t],
            ctf=None if self.ctf is None else self.ctf[t],
            image_paths=None if self.image_paths is None else [self.image_paths[i] for i in pos],
            image_indices=None if self.image_indices is None else self.image_indices[pos],
            optics_group=None if self.optics_group is None else self.optics_group[pos],
            table=self.table.iloc[pos],
        )

    @property
    def has_origins(self) -> bool:
        """Whether the particles carry origins: not absent and not all zero (a picker writes none)."""
        return self.shifts_angstrom is not None and bool((self.shifts_angstrom.abs() > 0).any())

    def replace(self, **changes) -> "ParticleMetadata":
        """A copy with some fields changed (``dataclasses.replace``; validated again)."""
        return dataclasses.replace(self, **changes)
