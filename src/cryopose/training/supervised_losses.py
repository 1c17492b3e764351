"""Losses and in-plane augmentation of the supervised orientation regressor (Lian et al. 2022).

``ℓ_qd`` (:func:`quaternion_distance_loss`, and its point-group-aware minimum
:func:`symmetric_quaternion_distance_loss`), ``ℓ_reproj`` (:class:`ReprojectionLoss`) and the
in-plane augmentation that turns an image and its label together (:func:`augment_inplane`);
:mod:`cryopose.training.supervised` trains with them (its docstring gives the loss).
"""

from __future__ import annotations

import math

import torch

from ..data.transforms import rotate_images, rotate_quarter_turns
from ..fourier import fourier_downsample_volume
from ..projection import prepare_volume_ft, project
from ..rotations import inplane_rotation, random_rotations, rotmat_to_quaternion
from ..symmetry import symmetry_operators

__all__ = ["AUGMENTATIONS", "quaternion_distance_loss", "symmetric_quaternion_distance_loss", "ReprojectionLoss",
           "augment_inplane"]

#: Values of ``SupervisedTrainConfig.augment_inplane``.
AUGMENTATIONS = ("none", "quarter", "continuous")


def quaternion_distance_loss(q_pred: torch.Tensor, q_gt: torch.Tensor) -> torch.Tensor:
    """``ℓ_QD = 1 − ⟨q_pred, q_gt⟩²`` per pair, ``(B,)`` (unit quaternions ``(B, 4)``)."""
    return 1.0 - (q_pred * q_gt).sum(-1) ** 2


def _group_quaternions(symmetry: str) -> torch.Tensor:
    return rotmat_to_quaternion(symmetry_operators(symmetry, dtype=torch.float64)).float()


def symmetric_quaternion_distance_loss(q_pred: torch.Tensor, q_gt: torch.Tensor,
                                       group_quaternions: torch.Tensor) -> torch.Tensor:
    """``min_S (1 − ⟨q_pred, q_gt ⊗ q_S⟩²)`` per pair, ``(B,)``: ℓ_QD modulo the point group.

    ``q_gt ⊗ q_S`` is the quaternion of ``R_gt S`` (equivalence ``R ~ R S``).
    """
    from ..rotations import quaternion_multiply

    mates = quaternion_multiply(q_gt[:, None, :], group_quaternions.to(q_gt)[None])  # (B, G, 4)
    return (1.0 - (q_pred[:, None, :] * mates).sum(-1) ** 2).min(dim=1).values


class ReprojectionLoss:
    """``ℓ_reproj``: L1 distance of the reference's projections along two rotations.

    Args:
        reference_volume: ``(n, n, n)`` map (the paper's reference), origin ``n // 2``.
        box_size: Fourier-crop the map to this box (faster; same field of view).
        n_scale_samples: Random rotations used to compute the scale ``mean |P|``.
        seed: Seeds those rotations.

    Calling ``loss(R_pred, R_gt)`` returns ``(B,)`` values
    ``mean_pixels |P(R_pred) − P(R_gt)| / scale``, differentiable in ``R_pred``.
    """

    def __init__(self, reference_volume, *, box_size: int | None = None, n_scale_samples: int = 64,
                 seed: int = 0, device=None):
        vol = torch.as_tensor(reference_volume).float()
        if box_size is not None and int(box_size) < vol.shape[-1]:
            vol = fourier_downsample_volume(vol, int(box_size))
        self.vft = prepare_volume_ft(vol.to(device) if device is not None else vol)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            r = random_rotations(n_scale_samples, generator=g, dtype=torch.float32)
            self.scale = float(project(self.vft, r.to(self.vft.data.device)).abs().mean().clamp_min(1e-12))

    def __call__(self, r_pred: torch.Tensor, r_gt: torch.Tensor) -> torch.Tensor:
        p = project(self.vft, torch.cat([r_pred, r_gt]).to(self.vft.data.device))
        b = r_pred.shape[0]
        return (p[:b] - p[b:]).abs().mean((-2, -1)) / self.scale


def augment_inplane(images: torch.Tensor, rotmats: torch.Tensor, mode: str, *,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn labelled images in their plane by random angles, and their labels with them.

    Args:
        images: ``(B, n, n)`` particle images ``(y, x)``, origin ``n // 2``.
        rotmats: ``(B, 3, 3)`` their RELION rotations.
        mode: ``"none"`` (returned unchanged), ``"quarter"`` (uniform in {0°, 90°, 180°, 270°},
            exact: :func:`cryopose.data.transforms.rotate_quarter_turns`) or ``"continuous"``
            (uniform in [0, 2π), bicubic: :func:`cryopose.data.transforms.rotate_images`).
        generator: Seeds the angles (CPU generator).

    Returns:
        ``(images', rotmats')`` with ``rotmats' = Rz(θ) rotmats``
        (:func:`cryopose.rotations.inplane_rotation`): the turned image is the projection along
        the new label.

    Raises:
        ValueError: Unknown ``mode``.
    """
    if mode not in AUGMENTATIONS:
        raise ValueError(f"augment_inplane must be one of {AUGMENTATIONS}, got {mode!r}")
    if mode == "none":
        return images, rotmats
    b = images.shape[0]
    if mode == "quarter":
        k = torch.randint(0, 4, (b,), generator=generator)
        out = rotate_quarter_turns(images, k.to(images.device))
        theta = k.double() * (math.pi / 2)
    else:
        theta = torch.rand(b, generator=generator, dtype=torch.float64) * (2 * math.pi)
        out = rotate_images(images, theta.to(images.device, images.dtype), mode="bicubic")
    rz = inplane_rotation(theta).to(rotmats.device, rotmats.dtype)
    return out, rz @ rotmats
