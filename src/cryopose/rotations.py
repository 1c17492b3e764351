"""Rotations: RELION Euler angles, matrices, quaternions, geodesic distance.

Conventions (see :mod:`cryopose.conventions`): rotations travel between modules as matrices
``R`` of shape ``(..., 3, 3)`` acting on column vectors ``(x, y, z)``. RELION's Euler angles
``(rot, tilt, psi)`` in degrees (ZYZ) map to ``R = Rz(psi) Ry(tilt) Rz(rot)`` exactly as
RELION's ``Euler_angles2matrix`` (``src/euler.cpp``), where ``Rz(a) = [[c, s, 0], [-s, c, 0],
[0, 0, 1]]`` and ``Ry(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``. Quaternions are scalar-first
``(w, x, y, z)``, unit norm, and map to ``R`` by the standard (Hamilton) formula.

Other parametrisations:

* **6D / "s2s2"** (Zhou et al., "On the continuity of rotation representations in neural
  networks", CVPR 2019; called ``s2s2`` in cryoDRGN and CryoPoseNet): the first two **columns**
  of ``R`` concatenated, ``x = (R[:, 0], R[:, 1])``; decoded by Gram–Schmidt. cryoDRGN's
  ``SO3_to_s2s2(M)`` keeps the first two *rows* of its matrix, i.e. our ``rotmat_to_sixd(Rᵀ)``.
* **rotation vectors** (axis × angle, radians), right-hand rule:
  ``R = exp([ω]×)`` rotates column vectors by ``|ω|`` about ``ω / |ω|``.
* **SO(3) grids**: the Hopf-fibration / HEALPix grid of Yershova et al., "Generating uniform
  incremental grids on SO(3) using the Hopf fibration", IJRR 2010 (as cryoDRGN's ``so3_grid``
  and RELION's ``--healpix_order``): a HEALPix sphere grid of viewing directions
  ``(rot, tilt)`` × a uniform grid of in-plane angles ``psi``.

The viewing direction of a pose ``R`` is the unit vector, in the volume's frame, along which
the projector integrates: ``d = Rᵀ e_z = (sin tilt cos rot, sin tilt sin rot, cos tilt)``
(the third row of ``R``).

All functions take and return ``torch.Tensor`` (numpy arrays are accepted and converted) and
broadcast over leading batch dimensions; they are exact in float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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
    "random_rotations",
    "healpix_order_for_step",
    "SphereGrid",
    "sphere_grid",
    "inplane_grid",
    "inplane_rotation",
    "so3_grid",
    "local_grid",
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


# --------------------------------------------------------------------------------------------
# Random rotations and SO(3) grids
# --------------------------------------------------------------------------------------------


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> torch.Tensor:
    """``n`` rotations drawn uniformly (Haar measure) on SO(3).

    Normalised 4D Gaussian vectors are uniform on S³, i.e. uniform unit quaternions
    (Shoemake, "Uniform random rotations", Graphics Gems III, 1992; cryoDRGN's ``random_SO3``).

    Args:
        n: Number of rotations.
        generator: Source of randomness (seeded by the caller for reproducibility).
        dtype: Floating dtype of the output.
        device: Device of the output (must match ``generator``'s device when one is given).

    Returns:
        ``(n, 3, 3)`` rotation matrices.

    Raises:
        ValueError: If ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"random_rotations: n must be >= 0, got {n}")
    q = torch.randn(n, 4, generator=generator, dtype=dtype, device=device)
    return quaternion_to_rotmat(q)


def healpix_order_for_step(step_deg: float) -> int:
    """Smallest HEALPix order ``k`` (``nside = 2**k``) whose nominal step ``60° / nside`` is at
    most ``step_deg``.

    The nominal step is RELION's (``--healpix_order k`` ↔ ``60 / 2**k`` degrees: 0 → 60°,
    1 → 30°, 2 → 15°, 3 → 7.5°, …) and cryoDRGN's (in-plane step ``360° / (6 nside)``).

    Raises:
        ValueError: If ``step_deg`` is not a positive finite number.
    """
    step = float(step_deg)
    if not math.isfinite(step) or step <= 0:
        raise ValueError(f"angular step must be a positive number of degrees, got {step_deg!r}")
    k = 0
    while 60.0 / 2**k > step * (1 + 1e-9):
        k += 1
    return k


def _healpix_ring_centres(nside: int) -> tuple[np.ndarray, np.ndarray]:
    """HEALPix pixel centres in RING order: ``(z = cos θ, φ)`` arrays of length ``12 nside²``.

    Górski et al., ApJ 622:759 (2005), eqs. 4–9; the longitude of the first pixel of each ring
    follows healpy/HEALPix C++ (``φ = (j − f) π / (2 nside)``, ``f = 1`` if ``i + nside`` is odd
    else ``1/2``), so pixel indices match ``healpy.pix2ang(nside, p)``.
    """
    zs, phis = [], []
    for i in range(1, 4 * nside):
        if i < nside or i > 3 * nside:  # polar caps
            ii = i if i < nside else 4 * nside - i
            z = 1.0 - ii * ii / (3.0 * nside * nside)
            z = z if i < nside else -z
            j = np.arange(1, 4 * ii + 1)
            phi = (j - 0.5) * math.pi / (2 * ii)
        else:  # equatorial belt
            z = 4.0 / 3.0 - 2.0 * i / (3.0 * nside)
            f = 1.0 if (i + nside) % 2 == 1 else 0.5
            j = np.arange(1, 4 * nside + 1)
            phi = (j - f) * math.pi / (2 * nside)
        zs.append(np.full(j.shape, z))
        phis.append(phi)
    return np.concatenate(zs), np.concatenate(phis)


class SphereGrid(NamedTuple):
    """A grid of viewing directions.

    Attributes:
        directions: ``(M, 3)`` unit vectors ``d = Rᵀ e_z`` in the volume frame.
        rot_tilt_deg: ``(M, 2)`` RELION ``(rot, tilt)`` in degrees of the same directions
            (``rot`` in [0, 360), ``tilt`` in (0, 180)).
    """

    directions: torch.Tensor
    rot_tilt_deg: torch.Tensor


def sphere_grid(step_deg: float, *, dtype: torch.dtype = torch.float64, device=None) -> SphereGrid:
    """HEALPix grid of viewing directions with nominal spacing at most ``step_deg``.

    ``nside = 2**healpix_order_for_step(step_deg)``; ``12 nside²`` equal-area pixel centres in
    RING order, ``tilt = θ`` (colatitude), ``rot = φ``. Measured mean nearest-neighbour spacing
    is ``0.94–0.97 × 60° / nside`` (58.2°, 28.5°, 14.1°, 7.07° for ``nside`` 1, 2, 4, 8).

    Args:
        step_deg: Requested angular step in degrees (> 0).
        dtype, device: Of the returned tensors.

    Returns:
        :class:`SphereGrid` ``(directions (M, 3), rot_tilt_deg (M, 2))``.

    Raises:
        ValueError: If ``step_deg`` is not positive.
    """
    nside = 2 ** healpix_order_for_step(step_deg)
    z, phi = _healpix_ring_centres(nside)
    z_t = torch.as_tensor(z, dtype=dtype, device=device)
    phi_t = torch.as_tensor(phi, dtype=dtype, device=device)
    sin_t = torch.sqrt((1 - z_t) * (1 + z_t))
    dirs = torch.stack([sin_t * torch.cos(phi_t), sin_t * torch.sin(phi_t), z_t], dim=-1)
    tilt = torch.atan2(sin_t, z_t)
    return SphereGrid(dirs, torch.rad2deg(torch.stack([phi_t, tilt], dim=-1)))


def inplane_grid(step_deg: float, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Uniform in-plane angles ``psi`` in degrees matching :func:`sphere_grid`'s resolution.

    ``6 nside`` angles ``psi_i = i · 360° / (6 nside)``, ``i = 0 … 6 nside − 1`` (step
    ``60° / nside``, as RELION's and cryoDRGN's in-plane grid), ``nside`` from
    :func:`healpix_order_for_step`.

    Returns:
        ``(6 nside,)`` angles in degrees, in [0, 360).
    """
    n_psi = 6 * 2 ** healpix_order_for_step(step_deg)
    return torch.arange(n_psi, dtype=dtype, device=device) * (360.0 / n_psi)


def inplane_rotation(theta_rad) -> torch.Tensor:
    """``Rz(θ)``: the rotation that turns a particle's projection in the image plane.

    If ``P_R`` is the projection of a map along RELION rotation ``R`` (``(y, x)`` images, origin
    ``n // 2``), then ``P_R`` turned by ``θ`` counter-clockwise in ``(x, y)`` is the projection
    along ``Rz(θ) R`` with ``Rz(θ) = [[cos θ, −sin θ, 0], [sin θ, cos θ, 0], [0, 0, 1]]``
    (checked against the Fourier-slice projector in the tests). In RELION's angles
    ``Rz(θ) = Euler_angles2matrix(0, 0, −θ)`` (:func:`relion_euler_to_rotmat`): turning the image
    by ``θ`` lowers ``psi`` by ``θ``. Used to turn a labelled image and its label together
    (:func:`cryopose.data.transforms.rotate_quarter_turns`).

    Args:
        theta_rad: Angles in radians, any shape ``S`` (float or tensor).

    Returns:
        ``S + (3, 3)`` rotation matrices (float64 unless ``theta_rad`` is a floating tensor).
    """
    t = torch.as_tensor(theta_rad)
    if not t.is_floating_point():
        t = t.double()
    z = torch.zeros_like(t)
    return relion_euler_to_rotmat(torch.stack([z, z, -torch.rad2deg(t)], -1))


def so3_grid(step_deg: float, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Near-uniform grid on SO(3): HEALPix directions × in-plane angles (Hopf fibration).

    Follows Yershova et al., IJRR 2010 (and cryoDRGN's ``so3_grid``, RELION's HEALPix
    sampling): every direction ``(rot, tilt)`` of :func:`sphere_grid` is combined with every
    ``psi`` of :func:`inplane_grid` into ``R = Rz(psi) Ry(tilt) Rz(rot)``. The Haar measure in
    these coordinates is ``sin(tilt) d rot d tilt d psi``, so equal-area directions × uniform
    ``psi`` gives cells of equal volume. Ordering is direction-major:
    ``index = i_direction * n_psi + i_psi``.

    Size ``72 nside³`` for ``nside = 2**k``. Achieved spacing, measured as the mean geodesic
    distance from each grid rotation to its nearest neighbour (nominal step ``60°/nside``):

    =====  =====  =========  =======  ==========================  ==============
    order  nside  rotations  nominal  NN spacing mean (min–max)   covering radius
    =====  =====  =========  =======  ==========================  ==============
    0      1      72         60°      60.0° (60.0–60.0)           ≈ 50°
    1      2      576        30°      29.7° (29.7–29.8)           ≈ 25°
    2      4      4 608      15°      14.6° (13.1–15.0)           ≈ 12.8°
    3      8      36 864     7.5°     7.22° (6.19–7.50)           ≈ 6.1°
    =====  =====  =========  =======  ==========================  ==============

    (NN spacing: geodesic distance from each grid rotation to its nearest neighbour; covering
    radius: largest distance from 5 000 random rotations to the nearest grid rotation.
    Measured with this implementation; ``tests/unit/test_rotations.py`` checks the band.)

    Args:
        step_deg: Requested angular step in degrees (> 0); the grid is at least this fine.
        dtype, device: Of the returned tensor.

    Returns:
        ``(72 nside³, 3, 3)`` rotation matrices.

    Raises:
        ValueError: If ``step_deg`` is not positive.
    """
    sphere = sphere_grid(step_deg, dtype=dtype, device=device)
    psi = inplane_grid(step_deg, dtype=dtype, device=device)
    m, p = sphere.rot_tilt_deg.shape[0], psi.shape[0]
    angles = torch.cat([
        sphere.rot_tilt_deg[:, None, :].expand(m, p, 2),
        psi[None, :, None].expand(m, p, 1),
    ], dim=-1).reshape(m * p, 3)
    return relion_euler_to_rotmat(angles)


def local_grid(rotmats, step_deg: float, n_steps: int) -> torch.Tensor:
    """Rotations on a cubic lattice around given rotations, for coarse-to-fine refinement.

    Perturbations are ``Δ = exp([ω]×)`` with ``ω = step · (i, j, k)``, ``i, j, k ∈
    {−n_steps … n_steps}`` (radians from ``step_deg``), applied on the left:
    ``R' = Δ R``. Left perturbations act in the image frame: ``ω_z`` is an in-plane rotation,
    ``ω_x, ω_y`` tilt the viewing direction. Every ``R'`` lies within
    ``√3 · n_steps · step_deg`` of ``R``; the centre (``index = K // 2``) is ``R`` itself.

    Args:
        rotmats: ``(..., 3, 3)`` centre rotations.
        step_deg: Lattice spacing in degrees (> 0).
        n_steps: Lattice half-width (>= 0); ``K = (2 n_steps + 1)³`` rotations per centre.

    Returns:
        ``(..., K, 3, 3)`` rotations; offsets in lexicographic ``(i, j, k)`` order.

    Raises:
        ValueError: If ``step_deg <= 0`` or ``n_steps < 0``.
    """
    r = as_tensor(rotmats)
    if not (float(step_deg) > 0 and math.isfinite(float(step_deg))):
        raise ValueError(f"local_grid: step_deg must be positive, got {step_deg!r}")
    if int(n_steps) != n_steps or n_steps < 0:
        raise ValueError(f"local_grid: n_steps must be an integer >= 0, got {n_steps!r}")
    ks = torch.arange(-n_steps, n_steps + 1, dtype=r.dtype, device=r.device)
    lattice = torch.stack(torch.meshgrid(ks, ks, ks, indexing="ij"), dim=-1).reshape(-1, 3)
    delta = axis_angle_to_rotmat(lattice * math.radians(step_deg))
    return delta @ r[..., None, :, :]
