"""Band-limited Fourier samples of images and reference projections, for projection matching.

A real image's centred transform is Hermitian, ``X(−k) = conj X(k)``, so one half-plane holds
all of it. :class:`FourierBand` selects the frequencies ``k = (kx, ky)`` (integer cycles per
box, :mod:`cryopose.fourier` layout) with ``0 < |k| <= radius`` in the half-plane
``kx > 0 or (kx == 0 and ky > 0)``: every Hermitian pair once, the DC term left out (image
offsets carry no pose information and would bias a normalised cross-correlation). Sums over
the band are half of the full-plane sums, so a normalised cross-correlation computed on the
band equals the real-space NCC of the band-passed, mean-free images.

:func:`slice_band` reads reference projections **only at the band frequencies**, with the
coordinates of :func:`cryopose.projection.fourier_slice.slice_coordinates` (trilinear
interpolation of the padded, gridding-corrected transform; same equation as the proven
projector, ``P̂_R(k) = V̂(Rᵀ (kx, ky, 0)ᵀ)``), which makes it as exact as
:func:`cryopose.projection.slice_volume_ft` at a fraction of the cost.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..fourier import centered_fft2, frequency_indices
from ..projection import VolumeFT
from ..projection.fourier_slice import sample_padded

__all__ = ["FourierBand", "make_band", "image_band", "slice_band", "origin_phases_band", "soft_circular_mask"]


@dataclasses.dataclass(frozen=True)
class FourierBand:
    """Half-plane frequencies of an ``n × n`` centred transform within a radius.

    Attributes:
        box_size: Image edge ``n`` in pixels.
        radius: Outer radius in cycles per box (``<= n / 2``; frequencies with ``|k| <= radius``
            and ``|k| < n / 2`` are kept).
        kx, ky: ``(K,)`` float frequencies in cycles per box.
        flat_index: ``(K,)`` int64 positions ``iy * n + ix`` in the flattened ``(n, n)`` transform.
    """

    box_size: int
    radius: float
    kx: torch.Tensor
    ky: torch.Tensor
    flat_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.kx.shape[0])


def make_band(box_size: int, radius: float | None = None, *, device=None) -> FourierBand:
    """Select the half-plane band ``0 < |k| <= radius`` (cycles per box) of an ``n × n`` transform.

    Args:
        box_size: Image edge ``n`` in pixels (>= 4).
        radius: Outer radius in cycles per box; ``None`` or values ``>= n/2`` mean every
            frequency the projector keeps (``|k| < n / 2``).
        device: Device of the index tensors.

    Returns:
        :class:`FourierBand` with ``K`` frequencies (about ``π radius² / 2``).

    Raises:
        ValueError: If ``box_size < 4`` or ``radius < 1``.
    """
    n = int(box_size)
    if n < 4:
        raise ValueError(f"box size must be at least 4 pixels for a search, got {n}")
    r = n / 2.0 if radius is None else min(float(radius), n / 2.0)
    if not r >= 1.0:
        raise ValueError(f"band radius must be at least 1 cycle per box, got {radius}")
    k = frequency_indices(n, device=device)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    k2 = kx**2 + ky**2
    half = (kx > 0) | ((kx == 0) & (ky > 0))
    keep = half & (k2 <= r * r + 1e-6) & (k2 < (n / 2.0) ** 2) & (k2 > 0)
    flat = torch.nonzero(keep.reshape(-1)).reshape(-1)
    return FourierBand(n, r, kx.reshape(-1)[flat].clone(), ky.reshape(-1)[flat].clone(), flat)


def soft_circular_mask(box_size: int, radius_px: float, *, width_px: float = 3.0, device=None,
                       dtype=torch.float32) -> torch.Tensor:
    """``(n, n)`` real-space mask: 1 inside ``radius_px`` of pixel ``n // 2``, raised-cosine edge.

    The edge falls from 1 to 0 between ``radius_px`` and ``radius_px + width_px`` (RELION's soft
    particle mask, ``--particle_diameter``).
    """
    c = frequency_indices(box_size, device=device, dtype=torch.float64)
    y, x = torch.meshgrid(c, c, indexing="ij")
    r = torch.sqrt(x**2 + y**2)
    t = ((r - radius_px) / max(width_px, 1e-6)).clamp(0.0, 1.0)
    return (0.5 * (1.0 + torch.cos(math.pi * t))).to(dtype)


def image_band(images: torch.Tensor, band: FourierBand, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Band samples of real images: complex ``(B, K)`` centred-transform values.

    Args:
        images: ``(B, n, n)`` real images ``(y, x)``, origin at ``n // 2``.
        band: Frequencies to keep (``band.box_size == n``).
        mask: Optional ``(n, n)`` real-space mask applied after removing each image's mean
            inside it (e.g. :func:`soft_circular_mask`).

    Raises:
        ValueError: If the images are not ``(B, n, n)`` with ``n == band.box_size``.
    """
    if images.ndim != 3 or images.shape[-1] != band.box_size or images.shape[-2] != band.box_size:
        raise ValueError(f"images must be (B, {band.box_size}, {band.box_size}), got {tuple(images.shape)}")
    x = images
    if mask is not None:
        m = mask.to(x.dtype)
        mean = (x * m).sum((-2, -1), keepdim=True) / m.sum().clamp_min(1e-12)
        x = (x - mean) * m
    ft = centered_fft2(x).reshape(x.shape[0], -1)
    return ft[:, band.flat_index.to(ft.device)]


def slice_band(volume_ft: VolumeFT, rotmats: torch.Tensor, band: FourierBand) -> torch.Tensor:
    """Reference projections at the band frequencies: complex ``(..., K)``.

    Same interpolation and coordinates as :func:`cryopose.projection.slice_volume_ft`
    (``index = pad · Rᵀ (kx, ky, 0)ᵀ + N // 2``, trilinear, zero outside the padded grid).

    Args:
        volume_ft: Prepared reference (:func:`cryopose.projection.prepare_volume_ft`), box
            ``n == band.box_size``.
        rotmats: ``(..., 3, 3)`` RELION rotation matrices.
        band: Frequencies to read.

    Returns:
        Complex ``(..., K)`` in the dtype of ``volume_ft`` (complex64 for float32).
    """
    if volume_ft.box_size != band.box_size:
        raise ValueError(f"reference box {volume_ft.box_size} != band box {band.box_size}")
    lead = rotmats.shape[:-2]
    r = rotmats.reshape(-1, 3, 3).to(volume_ft.data.dtype)
    kx = band.kx.to(r.device, r.dtype)
    ky = band.ky.to(r.device, r.dtype)
    # (Rᵀ k)_i = Σ_j R_ji k_j with k = (kx, ky, 0): rows 0 and 1 of R
    coords = kx[None, :, None] * r[:, None, 0, :] + ky[None, :, None] * r[:, None, 1, :]  # (M, K, 3) xyz
    idx = coords * volume_ft.pad + volume_ft.size // 2
    out = sample_padded(volume_ft.data, idx[None, :, :, None, :])  # (1, 2, M, K, 1)
    vals = torch.complex(out[0, 0, :, :, 0], out[0, 1, :, :, 0])
    return vals.reshape(*lead, len(band))


def origin_phases_band(shifts_px: torch.Tensor, band: FourierBand) -> torch.Tensor:
    """``exp(+2πi k·s / n)`` at the band frequencies: the phases that give a centred projection
    the RELION origin ``s`` (as :func:`cryopose.projection.origin_phases`).

    Args:
        shifts_px: ``(..., 2)`` RELION origins ``(x, y)`` in pixels.

    Returns:
        Complex ``(..., K)``.
    """
    kx = band.kx.to(shifts_px.device, shifts_px.dtype)
    ky = band.ky.to(shifts_px.device, shifts_px.dtype)
    arg = shifts_px[..., 0, None] * kx + shifts_px[..., 1, None] * ky
    return torch.polar(torch.ones_like(arg), 2.0 * math.pi * arg / band.box_size)
