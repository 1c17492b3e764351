"""Centring a reconstruction on its density, as RELION's ``--center_classes`` and cryoSPARC's
ab initio do: an ab initio map's origin is wherever the particles' common centre happened to
be, often several pixels off the box centre (a user then has to re-centre it before masking,
symmetrising or fitting a model). Moving the map by ``−c`` and every particle's origin by
``−(R_i c)_xy`` changes no image and no score, so it can be done between refinement rounds.

Derivation, in the conventions of :mod:`cryopose.conventions`: the projector draws density at
map position ``c`` at image position ``(R c)_xy`` of the centred projection, and a particle
with origin ``o`` is that projection translated by ``−o``; so density at ``c`` seen with
origin ``o`` sits where density at ``0`` sits with origin ``o − (R c)_xy``.
"""

from __future__ import annotations

import math

import torch

from ..fourier import centered_fft3, centered_ifft3, frequency_indices

__all__ = ["density_centre_px", "shift_volume", "recentred_origins_angstrom"]


def density_centre_px(volume: torch.Tensor) -> torch.Tensor:
    """Centre of mass of a map's density, relative to the box centre ``n // 2``.

    The weights are the voxel values above the map's mean plus one standard deviation (the
    protein; noise and solvent, which fill the box evenly, would pull the centre towards the
    box centre).

    Args:
        volume: ``(n, n, n)`` map ``(z, y, x)``, density positive.

    Returns:
        ``(3,)`` float64 offset ``(x, y, z)`` in pixels (zero when no voxel is above the threshold).

    Raises:
        ValueError: ``volume`` is not a cubic 3D array.
    """
    v = torch.as_tensor(volume).double()
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"expected a cubic (n, n, n) map, got shape {tuple(v.shape)}")
    w = (v - (v.mean() + v.std())).clamp_min(0.0)
    total = w.sum()
    if not bool(total > 0):
        return torch.zeros(3, dtype=torch.float64)
    idx = torch.arange(v.shape[0], dtype=torch.float64) - v.shape[0] // 2
    z = (w.sum((1, 2)) * idx).sum() / total
    y = (w.sum((0, 2)) * idx).sum() / total
    x = (w.sum((0, 1)) * idx).sum() / total
    return torch.stack([x, y, z])


def shift_volume(volume: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Translate a map by ``shift_px`` ``(x, y, z)`` pixels (density at ``p`` moves to
    ``p + shift``), by a phase ramp in Fourier space (exact for band-limited maps; periodic).

    Args:
        volume: ``(n, n, n)`` map ``(z, y, x)``.
        shift_px: ``(3,)`` translation ``(x, y, z)``, pixels.

    Returns:
        ``(n, n, n)`` translated map, the dtype of ``volume``.
    """
    v = torch.as_tensor(volume)
    n = v.shape[-1]
    s = torch.as_tensor(shift_px, dtype=torch.float64)
    k = frequency_indices(n, dtype=torch.float64)
    arg = (s[2] * k[:, None, None] + s[1] * k[None, :, None] + s[0] * k[None, None, :]) / n
    phase = torch.polar(torch.ones_like(arg), -2.0 * math.pi * arg)
    out = centered_ifft3(centered_fft3(v.double()) * phase).real
    return out.to(v.dtype)


def recentred_origins_angstrom(rotmats: torch.Tensor, origins_angstrom: torch.Tensor | None,
                               centre_angstrom: torch.Tensor) -> torch.Tensor:
    """Origins that show a map moved by ``−centre`` exactly as the old origins showed the map:
    ``o_i − (R_i c)_xy``.

    Args:
        rotmats: ``(N, 3, 3)`` poses (RELION matrices).
        origins_angstrom: ``(N, 2)`` RELION origins in Å, or ``None`` (zero).
        centre_angstrom: ``(3,)`` the map's density centre ``(x, y, z)`` in Å
            (:func:`density_centre_px` times the pixel size).

    Returns:
        ``(N, 2)`` float32 origins in Å.
    """
    r = torch.as_tensor(rotmats).double()
    c = torch.as_tensor(centre_angstrom, dtype=torch.float64)
    moved = (r[:, :2, :] @ c)
    o = torch.zeros(r.shape[0], 2, dtype=torch.float64) if origins_angstrom is None else \
        torch.as_tensor(origins_angstrom).double()
    return (o - moved).float()
