"""In-plane helpers shared by the latent-space trainers (:mod:`cryopose.training.rotinv`,
:mod:`cryopose.training.latent`): a soft circular mask, random in-plane angles, the angle
conventions between the image turn ``θ`` and RELION's ``ψ`` (``ψ_new = ψ − θ``, derived in
:mod:`cryopose.training.rotinv`), angle wrapping and a low-pass of images.
"""

from __future__ import annotations

import math

import torch

from ..fourier import frequency_indices

__all__ = ["circular_mask", "random_angles", "theta_to_psi_deg", "psi_deg_to_theta", "spatial_vae_angle_to_theta",
           "wrap_angle", "lowpass_images"]


def circular_mask(n: int, *, radius_fraction: float = 1.0, soft_edge_px: float = 2.0, device=None,
                  dtype=torch.float32) -> torch.Tensor:
    """Soft circular mask ``(n, n)``: 1 inside radius ``radius_fraction · n / 2 − soft_edge_px``,
    a raised-cosine fall to 0 at ``radius_fraction · n / 2`` (centre ``n // 2``)."""
    c = frequency_indices(n, device=device, dtype=torch.float64)
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    outer = radius_fraction * n / 2.0
    inner = max(0.0, outer - soft_edge_px)
    t = ((r - inner) / max(outer - inner, 1e-9)).clamp(0.0, 1.0)
    return (0.5 * (1.0 + torch.cos(math.pi * t))).to(dtype)


def random_angles(n: int, *, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """``n`` angles uniform in ``[0, 2π)`` (radians)."""
    return torch.rand(n, generator=generator, dtype=dtype) * (2.0 * math.pi)


def theta_to_psi_deg(theta_rad):
    """Image rotation ``θ`` (radians, counter-clockwise) → the ``rlnAnglePsi`` change it makes, degrees (``−θ``)."""
    return -torch.rad2deg(torch.as_tensor(theta_rad))


def psi_deg_to_theta(psi_deg):
    """``rlnAnglePsi`` (degrees) → the image rotation ``θ = −ψ`` that makes it from ``ψ = 0`` (radians)."""
    return -torch.deg2rad(torch.as_tensor(psi_deg))


def spatial_vae_angle_to_theta(angle_rad):
    """spatial-VAE's coordinate rotation ``θ_sv`` → the image rotation ``θ = −θ_sv`` of :func:`rotate_images`."""
    return -torch.as_tensor(angle_rad)


def wrap_angle(a: torch.Tensor) -> torch.Tensor:
    """Angles wrapped to ``(−π, π]`` (radians); differentiable almost everywhere."""
    return torch.atan2(torch.sin(a), torch.cos(a))


def lowpass_images(images: torch.Tensor, fraction: float | None) -> torch.Tensor:
    """Zero the Fourier components above ``fraction`` × Nyquist (``None`` or >= 1: unchanged)."""
    if fraction is None or fraction >= 1.0:
        return images
    from ..fourier import centered_fft2, centered_ifft2

    n = images.shape[-1]
    k = frequency_indices(n, device=images.device, dtype=images.dtype)
    mask = ((k[:, None] ** 2 + k[None, :] ** 2) <= (fraction * n / 2.0) ** 2).to(images.dtype)
    return centered_ifft2(centered_fft2(images) * mask).real.to(images.dtype)
