"""Pose heads: linear maps from encoder features to rotation matrices and shifts.

Three rotation parameterisations, as compared in CryoPoseNet (Nashed et al., ICCV-W 2021) and
cryoAI (Levy et al., ECCV 2022):

* ``"euler"``: three numbers read as RELION ZYZ angles ``(rot, tilt, psi)`` in **radians**,
  mapped by :func:`cryopose.rotations.relion_euler_to_rotmat` (discontinuous on SO(3)).
* ``"quaternion"``: four numbers, normalised, scalar first ``(w, x, y, z)``
  (:func:`cryopose.rotations.quaternion_to_rotmat`; double cover, also discontinuous).
* ``"s2s2"`` (default): six numbers, two 3-vectors orthonormalised by Gram–Schmidt into the first
  two columns of ``R`` (Zhou et al., CVPR 2019; :func:`cryopose.rotations.sixd_to_rotmat`),
  continuous on SO(3).

Every head can emit ``H`` hypotheses per image (multiple-choice learning: the loss keeps the best
one, as in cryoSPIN, Shekarforoush et al. 2024); outputs are ``(B, H, 3, 3)`` RELION matrices
(see :mod:`cryopose.conventions`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..rotations import quaternion_to_rotmat, relion_euler_to_rotmat, sixd_to_rotmat

__all__ = ["POSE_PARAMETERISATIONS", "PoseHead", "ShiftHead", "params_to_rotmat"]

POSE_PARAMETERISATIONS = {"euler": 3, "quaternion": 4, "s2s2": 6}


def params_to_rotmat(params: torch.Tensor, kind: str) -> torch.Tensor:
    """Map raw head outputs ``(..., d)`` to rotation matrices ``(..., 3, 3)``.

    Args:
        params: ``(..., 3)`` Euler angles in radians, ``(..., 4)`` quaternions or ``(..., 6)``
            6D vectors, according to ``kind``.
        kind: ``"euler"``, ``"quaternion"`` or ``"s2s2"``.

    Raises:
        ValueError: On an unknown ``kind`` or a last dimension that does not match it.
    """
    if kind not in POSE_PARAMETERISATIONS:
        raise ValueError(f"unknown pose parameterisation {kind!r}; choose from {sorted(POSE_PARAMETERISATIONS)}")
    if params.shape[-1] != POSE_PARAMETERISATIONS[kind]:
        raise ValueError(f"{kind} needs {POSE_PARAMETERISATIONS[kind]} numbers, got {params.shape[-1]}")
    if kind == "euler":
        return relion_euler_to_rotmat(torch.rad2deg(params))
    if kind == "quaternion":
        return quaternion_to_rotmat(params)
    return sixd_to_rotmat(params)


class PoseHead(nn.Module):
    """Linear layer from features to ``H`` rotations per image.

    Args:
        in_features: Encoder feature size ``F``.
        kind: ``"euler"``, ``"quaternion"`` or ``"s2s2"``.
        n_hypotheses: ``H`` >= 1 poses per image.

    Input ``(B, F)``; output ``(B, H, 3, 3)`` rotation matrices (dtype of the input).
    """

    def __init__(self, in_features: int, *, kind: str = "s2s2", n_hypotheses: int = 1):
        super().__init__()
        if kind not in POSE_PARAMETERISATIONS:
            raise ValueError(f"unknown pose parameterisation {kind!r}; choose from {sorted(POSE_PARAMETERISATIONS)}")
        if n_hypotheses < 1:
            raise ValueError(f"n_hypotheses must be >= 1, got {n_hypotheses}")
        self.kind = kind
        self.n_hypotheses = int(n_hypotheses)
        self.dim = POSE_PARAMETERISATIONS[kind]
        self.linear = nn.Linear(in_features, self.dim * self.n_hypotheses)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` features → ``(B, H, 3, 3)`` rotations."""
        raw = self.linear(features).reshape(features.shape[0], self.n_hypotheses, self.dim)
        return params_to_rotmat(raw, self.kind)


class ShiftHead(nn.Module):
    """Linear layer from features to an in-plane shift correction, bounded by ``tanh``.

    Args:
        in_features: Encoder feature size ``F``.
        max_shift: Largest shift magnitude per axis, in the caller's units (pixels of the
            working box in :class:`cryopose.models.cryoposenet.CryoPoseNet`).

    Input ``(B, F)``; output ``(B, 2)`` shifts ``(x, y)`` (RELION origin sign), initialised to 0.
    """

    def __init__(self, in_features: int, *, max_shift: float):
        super().__init__()
        if not (max_shift > 0 and math.isfinite(max_shift)):
            raise ValueError(f"max_shift must be positive, got {max_shift}")
        self.max_shift = float(max_shift)
        self.linear = nn.Linear(in_features, 2)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` features → ``(B, 2)`` shifts."""
        return self.max_shift * torch.tanh(self.linear(features))
