"""Learnable voxel volume, Fourier-transformed once per batch for slicing.

As in CryoPoseNet (Nashed et al., ICCV-W 2021) the map is an explicit ``n³`` voxel grid of
learnable densities ``(z, y, x)``, origin at ``n // 2`` (:mod:`cryopose.conventions`). Each batch
calls :meth:`VoxelVolume.prepare` once, which applies the optional real-space support mask and
point-group symmetrisation and hands the result to the physics
(:func:`cryopose.projection.prepare_volume_ft`, padding 2 and gridding correction as RELION);
slices are then read by trilinear interpolation (:func:`cryopose.projection.slice_volume_ft`).

The stored parameter is dimensionless; the density is ``scale · parameter`` so that Adam's
per-coordinate step (``~lr``) is a sensible fraction of the expected voxel value whatever the
image normalisation (the trainer sets ``scale`` from the data).
"""

from __future__ import annotations

import torch
from torch import nn

from ..projection import VolumeFT, prepare_volume_ft
from ..projection.real_space import rotate_volume, rotated_copies, spherical_mask

__all__ = ["VoxelVolume", "rotate_volume", "spherical_mask", "symmetrize_volume"]


def symmetrize_volume(volume: torch.Tensor, operators: torch.Tensor) -> torch.Tensor:
    """Average a volume over a point group: ``V_sym(x) = (1/|G|) Σ_g V(gᵀ x)`` (differentiable).

    Args:
        volume: ``(n, n, n)`` real volume ``(z, y, x)``, origin at ``n // 2``.
        operators: ``(G, 3, 3)`` rotation matrices acting on ``(x, y, z)``, a closed group
            (identity included), e.g. from :func:`cryopose.symmetry.symmetry_operators`.

    Returns:
        ``(n, n, n)`` volume invariant (up to trilinear interpolation) under every operator.
    """
    if operators.shape[0] <= 1:
        return volume
    return rotated_copies(volume, operators).mean(dim=0)


class VoxelVolume(nn.Module):
    """A learnable ``n³`` density grid.

    Args:
        box_size: Edge ``n`` in voxels.
        init: ``"zeros"`` or ``"noise"`` (i.i.d. Gaussian parameters of std ``init_std``).
        init_std: Standard deviation of the ``"noise"`` start (parameter units).
        mask_radius: Radius of the soft spherical support in voxels (``None``: no mask).
        symmetry_operators: ``(G, 3, 3)`` point-group rotations imposed on the density, or
            ``None`` for C1.
        generator: Seeded source for the ``"noise"`` initialisation.
    """

    def __init__(self, box_size: int, *, init: str = "noise", init_std: float = 0.1,
                 mask_radius: float | None = None, symmetry_operators: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        n = int(box_size)
        if init == "zeros":
            data = torch.zeros(n, n, n)
        elif init == "noise":
            data = init_std * torch.randn(n, n, n, generator=generator)
        else:
            raise ValueError(f"unknown volume init {init!r}; choose 'zeros' or 'noise'")
        self.param = nn.Parameter(data)
        self.register_buffer("scale", torch.ones(()))
        mask = spherical_mask(n, mask_radius) if mask_radius is not None else torch.ones(n, n, n)
        self.register_buffer("mask", mask)
        ops = symmetry_operators if symmetry_operators is not None else torch.eye(3)[None]
        self.register_buffer("operators", torch.as_tensor(ops, dtype=torch.float32))
        self.box_size = n

    def density(self) -> torch.Tensor:
        """The current density ``(n, n, n)``: ``scale · param``, masked and symmetrised."""
        v = self.param * self.scale * self.mask
        return symmetrize_volume(v, self.operators)

    def prepare(self, *, pad: int = 2) -> VolumeFT:
        """Fourier-transform the density once for slicing (:func:`prepare_volume_ft`)."""
        return prepare_volume_ft(self.density(), pad=pad)
