"""Junk particles for outlier-detection benchmarks.

A fraction ``F`` of the particles (exactly ``round(F · N)``, chosen at random) is replaced by
junk, the types taking turns so that each listed type gets an equal share (±1):

``noise``
    no signal: the image is the data set's white noise alone (if the data set has no noise,
    noise of the mean signal variance, so the image is not blank).
``blob``
    ice-like contamination: 1–3 smooth, elongated Gaussian blobs (σ 6–20 % of the box) at
    random places in the box, modulated by the particle's CTF and scaled to the mean signal
    variance of the true particles.
``other``
    a projection of a different structure (``--junk-structure``, a map or model put on the
    same grid) at the particle's recorded pose, shift and CTF, scaled to the same mean
    signal variance, so that intensity alone does not give it away.
``offcentre``
    the true structure shifted off-centre by about a quarter of the box (radius uniform in
    20–30 % of the box edge, random direction); the STAR records the true (large) shift.

The labels are written to the STAR file as ``rlnCryoposeIsOutlier`` (0/1) and
``rlnCryoposeJunkType`` (``none`` for true particles).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

from ..errors import UserError
from ..fourier import frequency_indices
from .poses import shifts_on_circle

__all__ = ["JUNK_TYPES", "NOT_JUNK", "parse_junk_types", "assign_junk", "blob_images", "offcentre_shifts",
           "scale_to_variance"]

JUNK_TYPES = ("noise", "blob", "other", "offcentre")
NOT_JUNK = "none"
_OFFCENTRE_RADIUS = (0.20, 0.30)  # fraction of the box edge


def parse_junk_types(types: str | Iterable[str]) -> tuple[str, ...]:
    """Validate junk type names from a comma-separated string or a sequence.

    Raises:
        UserError: Empty list or an unknown name (the message lists the valid ones).
    """
    items = types.split(",") if isinstance(types, str) else list(types)
    out = tuple(dict.fromkeys(t.strip().lower().replace("off-centre", "offcentre").replace("offcenter", "offcentre")
                              for t in items if t.strip()))
    if not out:
        raise UserError(f"no junk types given; choose from {','.join(JUNK_TYPES)}")
    bad = [t for t in out if t not in JUNK_TYPES]
    if bad:
        raise UserError(f"unknown junk type(s) {','.join(bad)}; choose from {','.join(JUNK_TYPES)}")
    return out


def assign_junk(n: int, fraction: float, types: tuple[str, ...], *, generator: torch.Generator) -> np.ndarray:
    """Label each particle ``none`` or one of ``types``.

    Args:
        n: Number of particles.
        fraction: Junk fraction in [0, 1).
        types: Junk types (:func:`parse_junk_types`).
        generator: Source of randomness (one ``randperm(n)``, drawn even when ``fraction`` is 0).

    Returns:
        ``(n,)`` array of ``str`` labels with exactly ``round(fraction · n)`` junk entries.

    Raises:
        UserError: ``fraction`` outside [0, 1).
    """
    f = float(fraction)
    if not (math.isfinite(f) and 0.0 <= f < 1.0):
        raise UserError(f"--junk-fraction must be in [0, 1), got {fraction}")
    perm = torch.randperm(n, generator=generator).numpy()
    count = int(round(f * n))
    labels = np.full(n, NOT_JUNK, dtype=object)
    if count:
        labels[perm[:count]] = np.asarray(types, dtype=object)[np.arange(count) % len(types)]
    return labels.astype(str)


def blob_images(count: int, box_size: int, *, generator: torch.Generator) -> torch.Tensor:
    """Smooth positive blob images (before CTF and scaling).

    Each image is the sum of 1–3 anisotropic Gaussians ``a · exp(−½ rᵀ Σ⁻¹ r)`` with centres
    uniform within ±35 % of the box around ``n // 2``, axis σ uniform in 6–20 % of the box,
    a random orientation and amplitude ``a`` uniform in [0.5, 1].

    Returns:
        float32 ``(count, n, n)``.
    """
    n = box_size
    out = torch.zeros(count, n, n, dtype=torch.float64)
    if count == 0:
        return out.float()
    k = frequency_indices(n, dtype=torch.float64)
    yy, xx = torch.meshgrid(k, k, indexing="ij")
    n_blobs = torch.randint(1, 4, (count,), generator=generator)
    params = torch.rand(count, 3, 6, generator=generator, dtype=torch.float64)
    for b in range(3):
        use = (n_blobs > b).to(torch.float64)[:, None, None]
        p = params[:, b]
        cx, cy = (p[:, 0] - 0.5) * 0.7 * n, (p[:, 1] - 0.5) * 0.7 * n
        s1, s2 = (0.06 + 0.14 * p[:, 2]) * n, (0.06 + 0.14 * p[:, 3]) * n
        th = math.pi * p[:, 4]
        amp = 0.5 + 0.5 * p[:, 5]
        dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
        c, s = torch.cos(th)[:, None, None], torch.sin(th)[:, None, None]
        u, v = c * dx + s * dy, -s * dx + c * dy
        g = torch.exp(-0.5 * ((u / s1[:, None, None]) ** 2 + (v / s2[:, None, None]) ** 2))
        out += use * amp[:, None, None] * g
    return out.float()


def offcentre_shifts(count: int, box_size: int, pixel_size_angstrom: float, *,
                     generator: torch.Generator) -> torch.Tensor:
    """Shifts of about a quarter box (radius uniform in 20–30 % of the box edge), in Å.

    Returns:
        float64 ``(count, 2)`` shifts in Å (RELION origin sign).
    """
    edge = box_size * pixel_size_angstrom
    return shifts_on_circle(count, radius_min_angstrom=_OFFCENTRE_RADIUS[0] * edge,
                            radius_max_angstrom=_OFFCENTRE_RADIUS[1] * edge, generator=generator)


def scale_to_variance(images: torch.Tensor, target_variance: float) -> torch.Tensor:
    """Scale each image ``(B, n, n)`` so its pixel variance equals ``target_variance``.

    Images with zero variance are returned unchanged.
    """
    var = images.reshape(images.shape[0], -1).to(torch.float64).var(dim=1, unbiased=False)
    scale = torch.where(var > 0, torch.sqrt(target_variance / var.clamp_min(1e-300)), torch.ones_like(var))
    return images * scale.to(images.dtype)[:, None, None]
