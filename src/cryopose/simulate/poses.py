"""Ground-truth poses and shifts for simulated particles.

Rotations are RELION matrices ``R`` (:mod:`cryopose.conventions`): the projector integrates the
volume along the viewing direction ``d = Rᵀ e_z`` (the third row of ``R``). Shifts are in Å
with the sign of ``rlnOriginXAngst/YAngst`` (the particle's centre sits at ``−shift``).
All randomness comes from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from ..rotations import random_rotations, relion_euler_to_rotmat

__all__ = ["sample_rotations", "in_plane_rotations", "sample_shifts", "shifts_on_circle", "view_directions"]


def sample_rotations(n: int, *, generator: torch.Generator, in_plane_only: bool = False,
                     view_rot_tilt_deg: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """``n`` ground-truth rotations: uniform on SO(3), or in-plane rotations of one view.

    Args:
        n: Number of rotations (>= 0).
        generator: Source of randomness.
        in_plane_only: Keep one viewing direction (:func:`in_plane_rotations`) instead of
            drawing uniformly (Haar measure, :func:`cryopose.rotations.random_rotations`).
        view_rot_tilt_deg: RELION ``(rot, tilt)`` of that view, degrees.

    Returns:
        ``(n, 3, 3)`` float64 RELION rotation matrices.
    """
    if in_plane_only:
        return in_plane_rotations(n, view_rot_tilt_deg=view_rot_tilt_deg, generator=generator)
    return random_rotations(n, generator=generator, dtype=torch.float64)


def in_plane_rotations(n: int, *, view_rot_tilt_deg: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Rotations that share one viewing direction and differ by a uniform in-plane angle.

    ``R = Rz(psi) Ry(tilt) Rz(rot)`` (RELION ZYZ) with fixed ``(rot, tilt)`` and ``psi``
    uniform in [0°, 360°): every image is the same projection rotated in the image plane, all
    with the viewing direction ``(sin tilt cos rot, sin tilt sin rot, cos tilt)``.

    Returns:
        ``(n, 3, 3)`` float64 matrices.
    """
    rot, tilt = (float(v) for v in view_rot_tilt_deg)
    if not (math.isfinite(rot) and math.isfinite(tilt)):
        raise UserError(f"view angles must be finite, got rot={rot}, tilt={tilt}")
    psi = torch.rand(n, generator=generator, dtype=torch.float64) * 360.0
    angles = torch.stack([torch.full_like(psi, rot), torch.full_like(psi, tilt), psi], dim=-1)
    return relion_euler_to_rotmat(angles)


def sample_shifts(n: int, *, shift_max_angstrom: float, generator: torch.Generator) -> torch.Tensor:
    """Shifts drawn uniformly (by area) in a disc of radius ``shift_max_angstrom``.

    ``r = R √u``, ``φ = 2π v`` with ``u, v`` uniform in [0, 1).

    Returns:
        ``(n, 2)`` float64 ``(x, y)`` shifts in Å (RELION origin sign); zeros if the radius is 0.

    Raises:
        UserError: Negative or non-finite radius.
    """
    r_max = float(shift_max_angstrom)
    if not math.isfinite(r_max) or r_max < 0:
        raise UserError(f"--shift-max-angstrom must be >= 0, got {shift_max_angstrom}")
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    if r_max == 0:
        return torch.zeros(n, 2, dtype=torch.float64)
    r = r_max * torch.sqrt(u[:, 0])
    phi = 2.0 * math.pi * u[:, 1]
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi)], dim=-1)


def shifts_on_circle(n: int, *, radius_min_angstrom: float, radius_max_angstrom: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Shifts with a radius uniform in ``[radius_min, radius_max]`` and a uniform direction.

    Returns:
        ``(n, 2)`` float64 shifts in Å.
    """
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    r = radius_min_angstrom + (radius_max_angstrom - radius_min_angstrom) * u[:, 0]
    phi = 2.0 * math.pi * u[:, 1]
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi)], dim=-1)


def view_directions(rotmats: torch.Tensor) -> torch.Tensor:
    """Viewing directions ``Rᵀ e_z`` (the third rows of ``R``), ``(..., 3)`` unit vectors."""
    return rotmats[..., 2, :]
