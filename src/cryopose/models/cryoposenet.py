"""CryoPoseNet: an amortized pose encoder trained jointly with a voxel map through the physics.

Follows Nashed et al., "CryoPoseNet: End-to-end simultaneous learning of single-particle
orientation and 3D map reconstruction from cryo-electron microscopy data", ICCV Workshops 2021:
a CNN (:class:`~cryopose.models.encoders.CryoPoseNetEncoder`) maps each image to its pose, a
learnable voxel volume (:class:`~cryopose.models.volume.VoxelVolume`) is sliced at that pose by
the differentiable Fourier-slice projector, multiplied by the particle's CTF and shifted, and
compared with the image. Additions from later work, each optional:

* several pose hypotheses per image with the loss on the best (multiple-choice learning, as in
  cryoSPIN, Shekarforoush et al. 2024);
* cryoAI's symmetrised loss (Levy et al., ECCV 2022): the encoder also sees the image rotated
  by 180° in-plane, and the better of ``E(Y)`` and ``F · E(R_π Y)`` is kept, with
  ``F = diag(−1, −1, 1)`` the in-plane half-turn (the pose of ``R_π Y`` is ``F R`` when that of
  ``Y`` is ``R``; see :data:`HALF_TURN`);
* a shift head predicting a correction to the metadata's shifts.

Rendering (:meth:`CryoPoseNet.render`) calls :mod:`cryopose.projection` only; images are centred
transforms normalised by ``1/n`` so that sums over Fourier pixels equal sums over real pixels.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..projection import VolumeFT, origin_phases, slice_volume_ft
from .encoders import CryoPoseNetEncoder
from .pose_heads import PoseHead, ShiftHead
from .volume import VoxelVolume

__all__ = ["CryoPoseNet", "EncoderOutput", "HALF_TURN", "rotate_half_turn_poses"]

#: In-plane rotation by 180° as a rotation of the pose: ``image(R_π Y) ↔ pose HALF_TURN @ R``.
HALF_TURN = torch.tensor([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])


def rotate_half_turn_poses(rotmats: torch.Tensor) -> torch.Tensor:
    """Poses ``(..., 3, 3)`` of images turned by 180° in-plane: ``diag(−1, −1, 1) @ R``.

    The projector draws ``I(r) = ∫ V(Rᵀ (r, z)) dz``; turning the image, ``I(−r)``, is the
    projection at ``R' = F R`` with ``F = diag(−1, −1, 1)``. Equivalently (RELION angles)
    ``psi → psi + 180°``.
    """
    f = HALF_TURN.to(device=rotmats.device, dtype=rotmats.dtype)
    return f @ rotmats


@dataclasses.dataclass(frozen=True)
class EncoderOutput:
    """What the encoder says about a batch.

    Attributes:
        rotmats: ``(B, H, 3, 3)`` pose hypotheses (RELION matrices).
        shifts_px: ``(B, 2)`` predicted shift corrections in working-box pixels (RELION origin
            sign), or ``None`` without a shift head.
    """

    rotmats: torch.Tensor
    shifts_px: torch.Tensor | None


class CryoPoseNet(nn.Module):
    """Encoder + pose head (+ shift head) + voxel volume.

    Args:
        box_size: Working box ``n`` (pixels) of images and volume.
        pose_param: ``"s2s2"`` (default), ``"quaternion"`` or ``"euler"``.
        n_hypotheses: Pose hypotheses per image (``H``).
        shift_head: Predict a shift correction per image.
        max_shift_px: Bound of the shift head per axis, working-box pixels.
        channels, hidden, batch_norm: Encoder architecture (:class:`CryoPoseNetEncoder`).
        volume_init, volume_init_std, mask_radius, symmetry_operators, generator: Volume
            (:class:`VoxelVolume`).
    """

    def __init__(self, *, box_size: int, pose_param: str = "s2s2", n_hypotheses: int = 1,
                 shift_head: bool = False, max_shift_px: float = 4.0,
                 channels: tuple[int, ...] = (32, 64, 128), hidden: tuple[int, ...] = (512, 512),
                 batch_norm: bool = False, volume_init: str = "noise", volume_init_std: float = 0.1,
                 mask_radius: float | None = None, symmetry_operators: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.box_size = int(box_size)
        self.encoder = CryoPoseNetEncoder(box_size, channels=channels, hidden=hidden, batch_norm=batch_norm)
        self.pose_head = PoseHead(self.encoder.out_features, kind=pose_param, n_hypotheses=n_hypotheses)
        self.shift_head = ShiftHead(self.encoder.out_features, max_shift=max_shift_px) if shift_head else None
        self.volume = VoxelVolume(box_size, init=volume_init, init_std=volume_init_std,
                                  mask_radius=mask_radius, symmetry_operators=symmetry_operators,
                                  generator=generator)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder and heads (everything but the volume)."""
        return [p for name, p in self.named_parameters() if not name.startswith("volume.")]

    def encode(self, images: torch.Tensor, *, precision: str = "32") -> EncoderOutput:
        """Poses (and shift corrections) of real-space images ``(B, n, n)``.

        Args:
            images: ``(B, n, n)`` float32 images on the model's device.
            precision: ``--precision`` of the encoder's convolutions and linear layers
                (:func:`cryopose.runtime.autocast_context`); the pose and shift heads (the
                rotation parameterisation's normalisations) always run in float32.
        """
        from ..runtime import autocast_context

        with autocast_context(images.device, precision):
            feats = self.encoder(images)
        feats = feats.float()
        shifts = self.shift_head(feats) if self.shift_head is not None else None
        return EncoderOutput(self.pose_head(feats), shifts)

    def render(self, volume_ft: VolumeFT, rotmats: torch.Tensor, *, ctf: torch.Tensor | None = None,
               shifts_px: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted particle transforms for every hypothesis.

        Args:
            volume_ft: ``self.volume.prepare()`` (once per batch).
            rotmats: ``(B, H, 3, 3)`` poses.
            ctf: ``(B, n, n)`` CTF on the centred grid, or ``None``.
            shifts_px: ``(B, 2)`` RELION origins in working-box pixels, or ``None``.

        Returns:
            Complex ``(B, H, n, n)`` centred transforms divided by ``n`` (zero for ``|k| >= n/2``).
        """
        b, h = rotmats.shape[:2]
        n = self.box_size
        ft = slice_volume_ft(volume_ft, rotmats.reshape(b * h, 3, 3)).reshape(b, h, n, n) / n
        if ctf is not None:
            ft = ft * ctf[:, None].to(ft.real.dtype)
        if shifts_px is not None:
            ft = ft * origin_phases(shifts_px.to(ft.real.dtype), n)[:, None]
        return ft
