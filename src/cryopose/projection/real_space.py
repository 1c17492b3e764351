"""Real-space projector: rotate the volume by trilinear interpolation, then sum along z.

Slow and blurrier than the Fourier-slice projector; it exists to test it (an independent
implementation of ``I(x, y) = ∫ V(Rᵀ (x, y, z)) dz``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..fourier import frequency_indices

__all__ = ["project_real_space"]


def project_real_space(volume: torch.Tensor, rotmats: torch.Tensor) -> torch.Tensor:
    """Project a volume by real-space rotation and summation along z.

    Args:
        volume: ``(n, n, n)`` real volume ``(z, y, x)``, origin at ``n // 2``.
        rotmats: ``(B, 3, 3)`` rotation matrices (RELION convention).

    Returns:
        ``(B, n, n)`` images ``(y, x)``.
    """
    n = volume.shape[-1]
    c = frequency_indices(n, device=volume.device, dtype=volume.dtype)
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.stack([x, y, z], dim=-1).reshape(-1, 3)  # (n^3, 3) positions (x, y, z)
    out = []
    for rot in rotmats.to(volume.dtype):
        src = r @ rot  # rows: (Rᵀ r)ᵀ
        idx = src + n // 2
        grid = (idx * 2.0 / (n - 1) - 1.0).reshape(1, n, n, n, 3)
        rotated = F.grid_sample(volume[None, None], grid, mode="bilinear", padding_mode="zeros",
                                align_corners=True)[0, 0]
        out.append(rotated.sum(dim=0))
    return torch.stack(out)
