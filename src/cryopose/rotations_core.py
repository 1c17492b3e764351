"""Rotation formats and their conversions: RELION Euler angles, matrices, quaternions, 6D,
rotation vectors, geodesic distance (re-exported by :mod:`cryopose.rotations`, which states
the conventions).
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
    "quaternion_multiply",
    "quaternion_conjugate",
    "rotmat_to_sixd",
    "sixd_to_rotmat",
    "axis_angle_to_rotmat",
    "rotmat_to_axis_angle",
    "project_to_rotmat",
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


# --------------------------------------------------------------------------------------------
# Quaternion algebra
# --------------------------------------------------------------------------------------------


def quaternion_multiply(q1, q2) -> torch.Tensor:
    """Hamilton product ``q1 ⊗ q2`` of scalar-first quaternions ``(w, x, y, z)``.

    Composition matches matrices: ``quaternion_to_rotmat(q1 ⊗ q2) ==
    quaternion_to_rotmat(q1) @ quaternion_to_rotmat(q2)`` (``q2`` is applied first).

    Args:
        q1, q2: ``(..., 4)`` broadcastable quaternions (need not be unit).

    Returns:
        ``(..., 4)`` product, not renormalised.
    """
    q1, q2 = as_tensor(q1), as_tensor(q2)
    w1, x1, y1, z1 = q1.unbind(-1)
    w2, x2, y2, z2 = q2.unbind(-1)
    return torch.stack([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ], dim=-1)


def quaternion_conjugate(q) -> torch.Tensor:
    """Conjugate ``(w, -x, -y, -z)`` of scalar-first quaternions ``(..., 4)``.

    For a unit quaternion this is the inverse rotation: its matrix is the transpose.
    """
    q = as_tensor(q)
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


# --------------------------------------------------------------------------------------------
# 6D ("s2s2") representation
# --------------------------------------------------------------------------------------------


def rotmat_to_sixd(rotmats) -> torch.Tensor:
    """Rotation matrices → 6D ("s2s2") vectors: the first two columns of ``R``.

    Follows Zhou et al., CVPR 2019. ``x[..., 0:3] = R[..., :, 0]`` and
    ``x[..., 3:6] = R[..., :, 1]``. (cryoDRGN's ``SO3_to_s2s2`` keeps rows instead: it equals
    ``rotmat_to_sixd(R.transpose(-1, -2))``.)

    Args:
        rotmats: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 6)`` vectors.
    """
    r = as_tensor(rotmats)
    return torch.cat([r[..., :, 0], r[..., :, 1]], dim=-1)


def sixd_to_rotmat(x, eps: float = 1e-12) -> torch.Tensor:
    """6D ("s2s2") vectors → rotation matrices by Gram–Schmidt (Zhou et al., CVPR 2019).

    ``b1 = a1 / |a1|``, ``b2 = (a2 - (b1·a2) b1) / |…|``, ``b3 = b1 × b2``, and
    ``R = [b1 b2 b3]`` **as columns**, the inverse of :func:`rotmat_to_sixd`. Differentiable;
    any input whose two halves are not parallel maps to a proper rotation (``det = +1``).

    Args:
        x: ``(..., 6)``; ``x[..., 0:3]`` is the (unnormalised) first column, ``x[..., 3:6]`` the
            second.
        eps: Floor on vector norms, keeping degenerate inputs finite.

    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    x = as_tensor(x)
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(eps)
    u2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = u2 / u2.norm(dim=-1, keepdim=True).clamp_min(eps)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


# --------------------------------------------------------------------------------------------
# Rotation vectors (axis-angle)
# --------------------------------------------------------------------------------------------


def _skew(v: torch.Tensor) -> torch.Tensor:
    """``[v]×``: ``(..., 3)`` → ``(..., 3, 3)`` with ``[v]× u = v × u``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([
        torch.stack([o, -z, y], -1),
        torch.stack([z, o, -x], -1),
        torch.stack([-y, x, o], -1),
    ], dim=-2)


def axis_angle_to_rotmat(rotvec) -> torch.Tensor:
    """Rotation vectors (axis × angle in radians) → rotation matrices (Rodrigues' formula).

    ``R = I + (sin θ / θ) [ω]× + ((1 − cos θ) / θ²) [ω]×²`` with ``θ = |ω|``; right-hand rule on
    column vectors. The coefficients switch to their Taylor series for ``θ² < 1e-6``, so the
    result and its gradient are exact and finite at and near ``ω = 0``.

    Args:
        rotvec: ``(..., 3)`` rotation vectors in radians (any length; ``θ`` beyond ``π`` wraps).

    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    w = as_tensor(rotvec)
    theta2 = (w * w).sum(-1)
    small = theta2 < 1e-6
    t2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    t_safe = torch.sqrt(t2_safe)
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(t_safe) / t_safe)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, (1 - torch.cos(t_safe)) / t2_safe)
    k = _skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def rotmat_to_axis_angle(rotmats) -> torch.Tensor:
    """Rotation matrices → rotation vectors (axis × angle, radians, angle in [0, π]).

    Computed through the quaternion (Shepperd's method, ``w >= 0``):
    ``θ = 2 atan2(|v|, w)``, ``ω = θ v / |v|``, with the series ``2/w (1 − |v|²/(3w²))`` for
    ``θ / |v|`` when ``|v| < 1e-6``. Accurate near 0 and near π (at exactly π the sign of the
    axis is arbitrary, as both ``±π n`` describe the same rotation).

    Args:
        rotmats: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 3)`` rotation vectors in radians, ``|ω| <= π``.
    """
    q = rotmat_to_quaternion(rotmats)
    w, v = q[..., 0], q[..., 1:]
    s = v.norm(dim=-1)
    small = s < 1e-6
    s_safe = torch.where(small, torch.ones_like(s), s)
    w_safe = torch.where(small, w, torch.ones_like(w))
    factor = torch.where(
        small,
        2.0 / w_safe * (1 - s * s / (3 * w_safe * w_safe)),
        2.0 * torch.atan2(s, w) / s_safe,
    )
    return v * factor[..., None]


def project_to_rotmat(mats) -> torch.Tensor:
    """Nearest rotation (Frobenius norm) to each ``(..., 3, 3)`` matrix, by SVD.

    ``U diag(1, 1, det(U Vᵀ)) Vᵀ`` for ``M = U Σ Vᵀ`` (the orthogonal Procrustes / Kabsch
    solution); used for chordal L2 means of rotations.

    Args:
        mats: ``(..., 3, 3)`` real matrices.

    Returns:
        ``(..., 3, 3)`` proper rotations (``det = +1``).
    """
    m = as_tensor(mats)
    u, _, vh = torch.linalg.svd(m)
    d = torch.linalg.det(u @ vh)
    ones = torch.ones_like(d)
    corr = torch.diag_embed(torch.stack([ones, ones, torch.sign(d) + (d == 0).to(d.dtype)], -1))
    return u @ corr @ vh
