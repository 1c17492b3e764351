"""Real-space projector: rotate the volume by trilinear interpolation, then sum along z; and the
real-space rotation and soft spherical mask of a volume that the models and the symmetry-axis
search share.

Slow and blurrier than the Fourier-slice projector; it exists to test it (an independent
implementation of ``I(x, y) = ∫ V(Rᵀ (x, y, z)) dz``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..fourier import frequency_indices

__all__ = ["project_real_space", "rotate_volume", "rotated_copies", "spherical_mask"]


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


def spherical_mask(n: int, radius: float, *, width: float = 2.0, device=None,
                   dtype=torch.float32) -> torch.Tensor:
    """Soft spherical mask ``(n, n, n)``: 1 inside ``radius`` px, cosine edge of ``width`` px."""
    k = frequency_indices(n, device=device, dtype=dtype)
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    r = torch.sqrt(x * x + y * y + z * z)
    edge = torch.clamp((r - radius) / max(width, 1e-6), 0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(torch.pi * edge))


def rotate_volume(volume: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate a volume about its centre: ``V'(x) = V(gᵀ x)`` (trilinear, zero outside; differentiable).

    Args:
        volume: ``(n, n, n)`` real volume ``(z, y, x)``, origin at ``n // 2``.
        rotation: ``(3, 3)`` rotation ``g`` acting on ``(x, y, z)``.

    Returns:
        ``(n, n, n)`` rotated volume, the dtype of ``volume``.
    """
    return rotated_copies(volume, torch.as_tensor(rotation)[None])[0]


def rotated_copies(volume: torch.Tensor, operators: torch.Tensor) -> torch.Tensor:
    """``(G, n, n, n)``: ``V(gᵀ x)`` for every ``g`` of ``operators`` ``(G, 3, 3)`` (trilinear,
    zero outside the box; differentiable), the volume ``(n, n, n)`` ``(z, y, x)`` with its origin at ``n // 2``."""
    n = volume.shape[-1]
    c = frequency_indices(n, device=volume.device, dtype=volume.dtype)
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    ops = operators.to(device=volume.device, dtype=volume.dtype)
    src = torch.einsum("gji,pj->gpi", ops, r)  # rows (gᵀ r)ᵀ
    grid = ((src + n // 2) * (2.0 / (n - 1)) - 1.0).reshape(1, -1, n, n, 3)
    samples = F.grid_sample(volume[None, None], grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)
    return samples.reshape(ops.shape[0], n, n, n)
