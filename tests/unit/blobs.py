"""The unit tests' asymmetric particle: seven Gaussian blobs at random places (not a test module)."""

from __future__ import annotations

import torch

from cryopose.fourier import fourier_downsample_volume
from cryopose.models.volume import spherical_mask


def blob_volume(generator: torch.Generator, box_size: int) -> torch.Tensor:
    """Seven blobs (variance 5 px² on a 48³ grid, centres within ±11 px) drawn from ``generator``,
    Fourier-downsampled to ``box_size`` and masked at radius 10 px: ``(n, n, n)`` float64, no symmetry."""
    k = torch.arange(48, dtype=torch.float64) - 24
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    v = torch.zeros(48, 48, 48, dtype=torch.float64)
    for _ in range(7):
        c = (torch.rand(3, generator=generator, dtype=torch.float64) - 0.5) * 22
        v += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 10.0)
    return fourier_downsample_volume(v, box_size) * spherical_mask(box_size, 10.0, dtype=torch.float64)
