"""The half-turn branch of an in-plane angle known modulo 180° (latent orbits, second plane).

The VAE-GAN's second equivariant plane (order ``k₂ = 2``, :mod:`cryopose.training.latent`)
gives the in-plane angle precisely but only modulo 180°: most single views have far more
power in the second angular harmonic than in the first (β-gal off its symmetry axes: ~25 %
against ~4 % of the non-symmetric power), and the first plane ``(μ₁, μ₂)`` then often stays
flat. The missing bit — ``ψ`` or ``ψ + 180°`` — is read from the images themselves:

1. each image is turned by its estimate ``ψ̂`` (mod 180°) into a common frame, where it is
   ``A`` or ``A`` turned by 180°;
2. its half-turn antisymmetric part ``b_i = a_i − rot180(a_i)``, low-passed below the first
   CTF zero (30 Å by default, where the CTF has one sign for 0.5–3.5 µm of defocus), is
   ``+b`` or ``−b``;
3. the sign of ``⟨b_i, r⟩`` with ``r`` the first principal axis of the ``b_i`` (power
   iteration on a subset) is the branch: ``ψ̂ + 180°`` where it is negative.

The branch labels are defined up to one global flip, which is part of the global offset the
latent frame leaves free anyway.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["half_turn_branch", "angles_from_planes"]


def _antisymmetric_lowpass(x: torch.Tensor, psi_deg: np.ndarray, radius_index: float, turn_deg: float) -> torch.Tensor:
    """``(B, m·m)`` low-passed ``turn_deg``-antisymmetric parts of ``x`` turned by ``psi_deg``."""
    from ..data.transforms import rotate_images, rotate_quarter_turns
    from ..fourier import centered_fft2, centered_ifft2, frequency_indices

    x = x.to(torch.float64)
    a = rotate_images(x, torch.from_numpy(np.radians(psi_deg)).to(torch.float64))
    if turn_deg % 90.0 == 0.0:
        b = a - rotate_quarter_turns(a, int(turn_deg // 90) % 4)
    else:
        b = a - rotate_images(a, torch.full((a.shape[0],), math.radians(turn_deg), dtype=a.dtype))
    m = x.shape[-1]
    k = frequency_indices(m, dtype=torch.float64)
    mask = ((k[:, None] ** 2 + k[None, :] ** 2) <= radius_index ** 2).to(torch.float64)
    return centered_ifft2(centered_fft2(b) * mask).real.flatten(1)


def half_turn_branch(batches, psi_deg, *, pixel_size_angstrom: float | None = None,
                     lowpass_angstrom: float = 30.0, n_reference: int = 4000, iterations: int = 30,
                     seed: int = 0, turn_deg: float = 180.0) -> tuple[np.ndarray, float]:
    """Branch ``0`` (``ψ̂``) or ``1`` (``ψ̂ + turn_deg``) of every particle (see the module docstring).

    Args:
        batches: Callable ``f(index_array) -> (B, m, m)`` tensor of the images the network saw
            (:func:`cryopose.training.latent.prepare_batch`), for indices into ``psi_deg``.
        psi_deg: ``(N,)`` in-plane estimates modulo ``turn_deg`` (degrees), running with RELION's ``ψ``
            (the equivariance prior's sign).
        pixel_size_angstrom: Pixel size of those images (Å); ``None`` low-passes at half
            Nyquist instead of ``lowpass_angstrom``.
        lowpass_angstrom: Low-pass resolution (Å), > 2 pixels.
        n_reference: Particles (a seeded random subset) that define the principal axis.
        iterations: Power iterations.
        seed: Seed of the subset and the start vector.
        turn_deg: The ambiguity, ``360°/k₂`` (180° for ``k₂ = 2``; 90° for a 2-fold symmetric
            view with ``k₂ = 4``, whose images repeat every 180°).

    Returns:
        ``(branch (N,) int64 in {0, 1}, separation)``: ``separation`` is the mean ``|⟨b_i, r⟩|``
        over its standard deviation on the subset (large when the two branches are distinct).

    Raises:
        ValueError: An empty ``psi_deg`` or a non-positive low-pass.
    """
    psi = np.asarray(psi_deg, dtype=np.float64).reshape(-1)
    n = psi.shape[0]
    if n == 0 or not lowpass_angstrom > 0:
        raise ValueError(f"need particles and a positive low-pass, got {n} and {lowpass_angstrom}")
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(n, size=min(n, int(n_reference)), replace=False))
    first = batches(sub[:1])
    m = int(first.shape[-1])
    radius = m / 4.0 if pixel_size_angstrom is None else min(m / 2.0, m * pixel_size_angstrom / lowpass_angstrom)
    parts = [_antisymmetric_lowpass(batches(sub[i:i + 512]), psi[sub[i:i + 512]], radius, turn_deg)
             for i in range(0, len(sub), 512)]
    bmat = torch.cat(parts)
    r = torch.from_numpy(rng.standard_normal(bmat.shape[1]))
    for _ in range(int(iterations)):
        r = bmat.T @ (bmat @ r)
        r = r / (r.norm() + 1e-300)
    proj_sub = (bmat @ r).numpy()
    separation = float(np.mean(np.abs(proj_sub)) / (np.std(np.abs(proj_sub)) + 1e-300))
    branch = np.empty(n, dtype=np.int64)
    for i in range(0, n, 512):
        idx = np.arange(i, min(n, i + 512))
        branch[idx] = (_antisymmetric_lowpass(batches(idx), psi[idx], radius, turn_deg) @ r).numpy() < 0
    return branch, separation if math.isfinite(separation) else 0.0


def angles_from_planes(z, planes, symmetry_order: int, fit_mask, images, pixel_size) -> tuple[np.ndarray, dict]:
    """In-plane angles from the equivariant latent planes (``angle_from="auto"`` of
    :class:`cryopose.analysis.latent_orbits.OrbitAnalysisConfig`).

    Args:
        z: ``(N, L)`` latent means.
        planes: ``((j, k), ...)`` as in :func:`~cryopose.analysis.latent_geometry.plane_angles`.
        symmetry_order: ``k`` of the view's symmetric projection (1 = none).
        fit_mask: ``(N,)`` particles whose mean centres the planes, or ``None`` (all).
        images: Callable as ``batches`` of :func:`half_turn_branch`, or ``None``.
        pixel_size: Pixel size of those images (Å) or ``None``.

    Returns:
        ``(ψ̂ (N,) degrees, metrics dict)`` (``plane_consistency``, ``angle_branch_from``,
        ``branch_separation`` where they apply).

    Raises:
        ValueError: Planes outside the latent or orders that cannot be combined.

    Single plane of order k: ``φ/k``. With two planes whose angles disagree (``R < 0.5`` in
    :func:`~cryopose.analysis.latent_geometry.combine_planes`: the first plane stayed flat)
    and ``images``, the branch comes from the images
    (:func:`cryopose.analysis.latent_branch.half_turn_branch`). With a symmetric view
    (``symmetry_order`` k > the first plane's order) the result is taken modulo ``360°/k``."""
    from .latent_geometry import angle_from_polar, combine_planes, plane_angles

    phis = plane_angles(z, planes, fit_mask=fit_mask)
    k1 = planes[0][1]
    info: dict = {}
    if len(planes) < 2:
        psi = angle_from_polar(phis[0], symmetry_order=k1)
    else:
        k2 = planes[1][1]
        psi, info["plane_consistency"] = combine_planes(phis[0], phis[1], order1=k1, order2=k2)
        info["angle_branch_from"] = "first plane"
        if info["plane_consistency"] < 0.5 and images is not None and k2 == 2 * k1:
            fine = (phis[1] / k2) % (360.0 / k2)
            branch, info["branch_separation"] = half_turn_branch(images, fine, pixel_size_angstrom=pixel_size,
                                                                 turn_deg=360.0 / k2)
            psi = (fine + branch * (360.0 / k2)) % (360.0 / k1)
            info["angle_branch_from"] = "images"
    return psi % (360.0 / max(int(symmetry_order), k1)), info
