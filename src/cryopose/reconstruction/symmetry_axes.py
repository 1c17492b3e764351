"""Find a map's symmetry axes: the rotation that brings a C1 map into a point group's frame.

Ab initio runs in C1 (cryoSPARC, RELION, and here: imposing D2 on β-galactosidase from a
random start stalls), so its map comes out in an arbitrary orientation. Imposing the particle's
point group afterwards — in the polishing rounds, as a homogeneous refinement with symmetry
does — needs the map turned so that its axes are the group's axes in RELION's convention
(``Cn``: the n-fold along z; ``Dn``: also a 2-fold along x; ``T``, ``O``, ``I``: RELION's
settings, :mod:`cryopose.symmetry`). RELION does this with ``relion_align_symmetry``; this is
the same idea: over a grid of rotations ``R`` of SO(3), the score is the mean correlation
between the map and its copies turned by the group's generators expressed in the map's frame
(``R g Rᵀ``), at a low resolution where the map is reliable; the best grid point is refined
locally with halving steps.

Conventions: a map ``V`` aligned by ``R`` is ``W(x) = V(R x)`` (:func:`aligned_volume`); a
pose ``A`` of ``V`` (RELION matrix, map → image) is ``A R`` for ``W``
(:func:`aligned_rotmats`), and origins do not change.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..fourier import fourier_downsample_volume
from ..projection.real_space import rotate_volume, rotated_copies, spherical_mask
from ..rotations_core import axis_angle_to_rotmat
from ..rotations_grids import local_grid, so3_grid
from ..symmetry import _generators, _parse, canonical_symbol

__all__ = ["SymmetryAlignment", "find_symmetry_axes", "aligned_volume", "aligned_rotmats", "symmetry_score"]

#: Box of the global grid search (the map Fourier-cropped to it, at most its own box).
SEARCH_BOX = 24
#: Box of the local refinement of the best grid rotation.
REFINE_BOX = 48


@dataclasses.dataclass(frozen=True)
class SymmetryAlignment:
    """The result of :func:`find_symmetry_axes`.

    Attributes:
        symmetry: The point group (canonical symbol).
        rotation: ``(3, 3)`` float64 ``R``: the aligned map is ``W(x) = V(R x)``.
        score: Mean correlation (inside the map's sphere, at the refinement box) between the
            aligned map and its copies turned by the group's generators: near 1 for a map that
            has the symmetry, lower for one that has not.
        search_resolution_angstrom: Resolution of the maps the score was computed on, Å.
    """

    symmetry: str
    rotation: torch.Tensor
    score: float
    search_resolution_angstrom: float


def _generator_rotations(symmetry: str) -> torch.Tensor:
    """``(K, 3, 3)`` float64: one rotation per generator of the group (its smallest turn)."""
    kind, n = _parse(symmetry)
    mats = [axis_angle_to_rotmat(torch.as_tensor(axis * (2.0 * math.pi / fold))) for fold, axis in _generators(kind, n)
            if fold > 1]
    return torch.stack(mats).double()


def _prepared(volume: torch.Tensor, box: int) -> torch.Tensor:
    v = fourier_downsample_volume(volume.double(), min(int(box), int(volume.shape[-1]))).float()
    return v * spherical_mask(v.shape[-1], v.shape[-1] / 2 - 1, dtype=v.dtype)


def _scores(v: torch.Tensor, rotations: torch.Tensor, gens: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """``(M,)`` mean over generators of corr(V, V turned by ``R g Rᵀ``) for every ``R``."""
    m = v.shape[-1]
    inside = spherical_mask(m, m / 2 - 1, width=0.0, dtype=v.dtype) > 0.5
    a = v[inside]
    a = a - a.mean()
    a = a / a.norm().clamp_min(1e-30)
    out = []
    for start in range(0, rotations.shape[0], chunk):
        r = rotations[start:start + chunk].to(v.dtype)
        ops = (r[:, None] @ gens[None].to(v.dtype) @ r[:, None].transpose(-1, -2)).reshape(-1, 3, 3)
        b = rotated_copies(v, ops)[:, inside]
        b = b - b.mean(dim=1, keepdim=True)
        b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-30)
        out.append((b @ a).reshape(r.shape[0], gens.shape[0]).mean(dim=1))
    return torch.cat(out)


def symmetry_score(volume: torch.Tensor, symmetry: str, rotation: torch.Tensor | None = None, *,
                   box: int = REFINE_BOX) -> float:
    """Mean correlation between a map and its copies turned by the group's generators in the
    frame ``rotation`` (identity: the map is already in the group's frame).

    Args:
        volume: ``(n, n, n)`` map ``(z, y, x)``, origin at ``n // 2``.
        symmetry: Point-group symbol (RELION's).
        rotation: ``(3, 3)`` frame ``R`` (as :attr:`SymmetryAlignment.rotation`), or ``None``.
        box: The map is Fourier-cropped to this box first (at most its own).

    Returns:
        The score in [-1, 1] (1 for C1).

    Raises:
        SymmetryError: Unknown symbol.
    """
    if canonical_symbol(symmetry) == "C1":
        return 1.0
    r = torch.eye(3, dtype=torch.float64) if rotation is None else torch.as_tensor(rotation).double()
    return float(_scores(_prepared(torch.as_tensor(volume), box), r[None], _generator_rotations(symmetry))[0])


def find_symmetry_axes(volume: torch.Tensor, pixel_size_angstrom: float, symmetry: str, *,
                       resolution_angstrom: float | None = None, grid_step_deg: float = 15.0,
                       final_step_deg: float = 0.5) -> SymmetryAlignment:
    """The rotation that brings a map's symmetry axes onto the point group's (RELION's frame).

    A global search over :func:`cryopose.rotations_grids.so3_grid` at ``grid_step_deg`` on the
    map Fourier-cropped to a box of at most :data:`SEARCH_BOX`, then a local refinement of the
    best rotation (a ``3 × 3 × 3`` lattice, step halving down to ``final_step_deg``) at a box of
    at most :data:`REFINE_BOX`; both band-limited to ``resolution_angstrom`` when that is
    coarser than the box's Nyquist. The map should be centred (its density centre at the box
    centre), as ``abinitio``'s centred maps are.

    Args:
        volume: ``(n, n, n)`` map ``(z, y, x)``, origin at ``n // 2``.
        pixel_size_angstrom: Its pixel size, Å.
        symmetry: Point-group symbol (``C1``: the identity, score 1).
        resolution_angstrom: Finest detail to trust, Å (e.g. the map's FSC = 0.143
            resolution); ``None``: the boxes' Nyquist.
        grid_step_deg: Step of the global grid, degrees.
        final_step_deg: Last step of the local refinement, degrees.

    Returns:
        :class:`SymmetryAlignment`.

    Raises:
        SymmetryError: Unknown symbol.
        ValueError: A volume that is not a cube, or a non-positive pixel size.
    """
    sym = canonical_symbol(symmetry)
    v = torch.as_tensor(volume)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"find_symmetry_axes: the map must be a cube, got shape {tuple(v.shape)}")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"find_symmetry_axes: pixel size must be positive, got {pixel_size_angstrom!r}")
    n = int(v.shape[-1])
    fov = n * float(pixel_size_angstrom)

    def box_for(cap: int) -> int:
        if resolution_angstrom is None or not math.isfinite(resolution_angstrom):
            return min(n, cap)
        return int(min(n, cap, max(16, 2 * math.ceil(fov / float(resolution_angstrom)))))

    fine = box_for(REFINE_BOX)
    if sym == "C1":
        return SymmetryAlignment(sym, torch.eye(3, dtype=torch.float64), 1.0, 2 * fov / fine)
    gens = _generator_rotations(sym)
    coarse_v = _prepared(v, box_for(SEARCH_BOX))
    grid = so3_grid(grid_step_deg)
    s = _scores(coarse_v, grid, gens)
    best = grid[int(torch.argmax(s))]
    fine_v = _prepared(v, fine)
    step = grid_step_deg / 2.0
    score = float(_scores(fine_v, best[None], gens)[0])
    while step >= final_step_deg * 0.999:
        cand = local_grid(best, step, 1)
        cs = _scores(fine_v, cand, gens)
        i = int(torch.argmax(cs))
        if float(cs[i]) > score:
            best, score = cand[i], float(cs[i])
        step /= 2.0
    return SymmetryAlignment(sym, best.double(), score, 2 * fov / fine)


def aligned_volume(volume: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """The map in the group's frame: ``W(x) = V(R x)`` (trilinear; zero outside the box).

    Args:
        volume: ``(n, n, n)`` map.
        rotation: ``(3, 3)`` ``R`` of :class:`SymmetryAlignment`.

    Returns:
        ``(n, n, n)`` map, the dtype of ``volume``.
    """
    r = torch.as_tensor(rotation).to(volume.dtype)
    return rotate_volume(volume, r.T)


def aligned_rotmats(rotmats: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Poses of the aligned map: ``A R`` for every pose ``A`` of the original (RELION matrices,
    map → image); the particles' origins are unchanged.

    Args:
        rotmats: ``(N, 3, 3)`` poses.
        rotation: ``(3, 3)`` ``R`` of :class:`SymmetryAlignment`.

    Returns:
        ``(N, 3, 3)`` poses, the dtype of ``rotmats``.
    """
    r = torch.as_tensor(rotmats)
    return r @ torch.as_tensor(np.asarray(rotation), dtype=r.dtype)
