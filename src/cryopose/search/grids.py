"""Rotation and shift grids of the global projection-matching search (re-exported by
:mod:`cryopose.search.projection_matching`): the Hopf/HEALPix SO(3) grid restricted to one
asymmetric unit (Yershova et al. 2010, RELION's ``--healpix_order``) and the square shift lattice.
"""

from __future__ import annotations

import math

import torch

from ..rotations import inplane_grid, relion_euler_to_rotmat, sphere_grid
from ..symmetry import asymmetric_unit_mask

__all__ = ["asymmetric_so3_grid", "shift_lattice"]


def asymmetric_so3_grid(step_deg: float, symmetry: str = "C1", *, dtype=torch.float32) -> torch.Tensor:
    """Hopf/HEALPix SO(3) grid with viewing directions restricted to one asymmetric unit.

    Directions of :func:`cryopose.rotations.sphere_grid` kept by
    :func:`cryopose.symmetry.asymmetric_unit_mask` (ties kept on both sides, so coverage is
    never lost), each with every in-plane angle of :func:`cryopose.rotations.inplane_grid`;
    ``R = Rz(psi) Ry(tilt) Rz(rot)``, direction-major order.

    Returns:
        ``(J, 3, 3)``; ``J ≈ 72 nside³ / G`` for a group of order ``G``.
    """
    sphere = sphere_grid(step_deg)
    keep = asymmetric_unit_mask(sphere.directions, symmetry)
    rot_tilt = sphere.rot_tilt_deg[keep]
    psi = inplane_grid(step_deg)
    m, p = rot_tilt.shape[0], psi.shape[0]
    angles = torch.cat([rot_tilt[:, None, :].expand(m, p, 2), psi[None, :, None].expand(m, p, 1)], -1)
    return relion_euler_to_rotmat(angles.reshape(m * p, 3)).to(dtype)


def shift_lattice(radius_px: float, step_px: float) -> torch.Tensor:
    """Square-lattice shifts ``(S, 2)`` (pixels) of step ``step_px`` inside the disc ``|s| <= radius``.

    Always contains ``(0, 0)`` (first row).
    """
    if radius_px <= 0:
        return torch.zeros(1, 2)
    m = int(math.floor(radius_px / step_px + 1e-9))
    k = torch.arange(-m, m + 1, dtype=torch.float32) * step_px
    sy, sx = torch.meshgrid(k, k, indexing="ij")
    pts = torch.stack([sx.reshape(-1), sy.reshape(-1)], -1)
    pts = pts[(pts**2).sum(-1) <= radius_px**2 + 1e-6]
    order = torch.argsort((pts**2).sum(-1), stable=True)
    return pts[order]
