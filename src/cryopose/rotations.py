"""Rotations: RELION Euler angles, matrices, quaternions, geodesic distance.

Conventions (see :mod:`cryopose.conventions`): rotations travel between modules as matrices
``R`` of shape ``(..., 3, 3)`` acting on column vectors ``(x, y, z)``. RELION's Euler angles
``(rot, tilt, psi)`` in degrees (ZYZ) map to ``R = Rz(psi) Ry(tilt) Rz(rot)`` exactly as
RELION's ``Euler_angles2matrix`` (``src/euler.cpp``), where ``Rz(a) = [[c, s, 0], [-s, c, 0],
[0, 0, 1]]`` and ``Ry(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``. Quaternions are scalar-first
``(w, x, y, z)``, unit norm, and map to ``R`` by the standard (Hamilton) formula.

All functions take and return ``torch.Tensor`` (numpy arrays are accepted and converted) and
broadcast over leading batch dimensions.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "as_tensor",
    "relion_euler_to_rotmat",
    "rotmat_to_relion_euler",
    "quaternion_to_rotmat",
    "rotmat_to_quaternion",
    "geodesic_distance_deg",
]


def as_tensor(x, dtype=None) -> torch.Tensor:
    """Return ``x`` as a floating-point tensor (float64 for numpy float64 input)."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        t = torch.as_tensor(np.asarray(x))
    if dtype is not None:
        return t.to(dtype)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


def relion_euler_to_rotmat(angles_deg) -> torch.Tensor:
    """RELION ``(rot, tilt, psi)`` in degrees → rotation matrices.

    Args:
        angles_deg: ``(..., 3)`` Euler angles ``(rot, tilt, psi)`` in degrees (ZYZ, RELION).

    Returns:
        ``(..., 3, 3)`` matrices identical to RELION's ``Euler_angles2matrix``.
    """
    a = torch.deg2rad(as_tensor(angles_deg))
    ca, sa = torch.cos(a[..., 0]), torch.sin(a[..., 0])
    cb, sb = torch.cos(a[..., 1]), torch.sin(a[..., 1])
    cg, sg = torch.cos(a[..., 2]), torch.sin(a[..., 2])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], dim=-1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], dim=-1),
        torch.stack([sc, ss, cb], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def rotmat_to_relion_euler(rotmats) -> torch.Tensor:
    """Rotation matrices → RELION ``(rot, tilt, psi)`` in degrees, ``tilt`` in [0, 180].

    Follows RELION's ``Euler_matrix2angles``: at the gimbal lock (``tilt`` 0 or 180) ``rot``
    is set to 0 and the whole in-plane rotation is put in ``psi``.

    Args:
        rotmats: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 3)`` angles in degrees, ``rot, psi`` in (-180, 180].
    """
    r = as_tensor(rotmats)
    abs_sb = torch.sqrt(r[..., 0, 2] ** 2 + r[..., 1, 2] ** 2)
    tilt = torch.atan2(abs_sb, r[..., 2, 2])
    rot = torch.atan2(r[..., 2, 1], r[..., 2, 0])
    psi = torch.atan2(r[..., 1, 2], -r[..., 0, 2])
    gimbal = abs_sb < 1e-6
    up = r[..., 2, 2] > 0
    psi_up = torch.atan2(-r[..., 1, 0], r[..., 0, 0])
    psi_down = torch.atan2(r[..., 1, 0], -r[..., 0, 0])
    rot = torch.where(gimbal, torch.zeros_like(rot), rot)
    psi = torch.where(gimbal, torch.where(up, psi_up, psi_down), psi)
    tilt = torch.where(gimbal, torch.where(up, torch.zeros_like(tilt), torch.full_like(tilt, math.pi)), tilt)
    return torch.rad2deg(torch.stack([rot, tilt, psi], dim=-1))


def quaternion_to_rotmat(q) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` scalar-first ``(w, x, y, z)`` → matrices ``(..., 3, 3)``.

    The input is normalised first, so any non-zero 4-vector is accepted (as the quaternion
    head of a network produces). ``q`` and ``-q`` give the same matrix.
    """
    q = as_tensor(q)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, dim=-2)


def rotmat_to_quaternion(rotmats) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` → unit quaternions ``(..., 4)`` ``(w, x, y, z)``, ``w >= 0``.

    Uses the numerically stable branch on the largest diagonal term (Shepperd's method).
    """
    r = as_tensor(rotmats)
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    # Four candidate (unnormalised) quaternions; pick the one with the largest norm.
    cands = torch.stack([
        torch.stack([1 + m00 + m11 + m22, r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1),
        torch.stack([r[..., 2, 1] - r[..., 1, 2], 1 + m00 - m11 - m22, r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0]], -1),
        torch.stack([r[..., 0, 2] - r[..., 2, 0], r[..., 0, 1] + r[..., 1, 0], 1 - m00 + m11 - m22, r[..., 1, 2] + r[..., 2, 1]], -1),
        torch.stack([r[..., 1, 0] - r[..., 0, 1], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1], 1 - m00 - m11 + m22], -1),
    ], dim=-2)
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    idx = diag.argmax(dim=-1)
    q = torch.gather(cands, -2, idx[..., None, None].expand(*idx.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def geodesic_distance_deg(r1, r2) -> torch.Tensor:
    """Geodesic (angular) distance between rotations in degrees, in [0, 180].

    ``d = arccos((trace(R1ᵀ R2) - 1) / 2)``, computed with ``atan2`` for accuracy near 0.

    Args:
        r1, r2: ``(..., 3, 3)`` broadcastable rotation matrices.
    """
    r1, r2 = as_tensor(r1), as_tensor(r2)
    rel = r1.transpose(-1, -2) @ r2
    tr = rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2]
    axis = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]], -1)
    return torch.rad2deg(torch.atan2(axis.norm(dim=-1), tr - 1))
