"""Supervised orientation regression network (Lian, Huang, Zhang & Ling, Acta Cryst. D 78, 2022).

The paper's network is a VGG16 convolutional feature extractor (ImageNet-pretrained there),
two further convolutional layers, a max pooling and a fully connected regressor whose output,
an unnormalised 4-vector, is normalised to a unit quaternion (axis-angle is compared as an
alternative, their Table 3). Pretrained weights are not available here (and ImageNet features
of 3-channel photographs are of doubtful value for single-channel cryo-EM images), so the
VGG-style extractor is trained from scratch:

=====================  ==========================================================================
stage                  layers (``w`` = ``config.width``)
=====================  ==========================================================================
input                  ``(B, n, n)`` image, standardised per image (zero mean, unit std)
VGG blocks 1…``d``     ``[conv 3×3 → BN → ReLU] × convs_per_block → max-pool 2×2``, channels
                       ``w, 2w, 4w, 8w, 8w`` (VGG16 doubles up to 512 = 8·64; ``d`` =
                       ``n_blocks``)
two further convs      ``conv 3×3 → BN → ReLU`` twice, ``head_channels`` channels
max pooling            2×2, then flatten (``head_channels · s²`` features, ``s = n / 2^(d+1)``;
                       spatial layout is kept, as the paper's pooled 7×7 VGG grid does)
regressor              ``Linear(·, hidden) → ReLU → Linear(hidden, 4 | 3 | 6 | 9)``
output                 quaternion ``q / |q|`` (scalar first), rotation vector (radians), or
                       (not in the paper) two columns of ``R`` / a 3×3 matrix
=====================  ==========================================================================

Rotations are RELION matrices (:mod:`cryopose.conventions`); the quaternion maps to ``R`` by
:func:`cryopose.rotations.quaternion_to_rotmat`, the rotation vector by
:func:`cryopose.rotations.axis_angle_to_rotmat`. Two further outputs, not in the paper, are
continuous maps onto SO(3), which quaternions and rotation vectors are not (a network must
jump somewhere between ``q`` and ``−q``, or at ``|ω| = π``): ``"s2s2"``, the first two columns
of ``R`` made orthonormal by Gram–Schmidt (Zhou et al., CVPR 2019;
:func:`cryopose.rotations.sixd_to_rotmat`), and ``"svd"``, a 3×3 matrix projected onto SO(3)
by SVD (Levinson et al., NeurIPS 2020; :func:`cryopose.rotations.project_to_rotmat`).

Batch normalisation is not in VGG16 (it came later) but makes training from scratch stable;
``batch_norm=False`` removes it.

For inference on a CPU, :meth:`OrientationRegressor.quantized_for_inference` makes a copy whose
convolutions and linear layers compute in 8-bit integers (post-training static quantization,
calibrated on a batch of particle images; ``cryopose predict --int8``). The README's issue-4
section gives its speed and its effect on the pose errors.

:func:`load_pose_model` reads a checkpoint written by
:func:`cryopose.training.supervised.save_checkpoint` (``model_kind: "supervised"``) and returns
a callable ``images -> (rotmats, None)`` for ``cryopose predict``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os

import torch
from torch import nn

from ..fourier import fourier_downsample_images
from .quantize import INT8_CALIBRATION_PARTICLES, quantize_int8
from ..rotations import (axis_angle_to_rotmat, project_to_rotmat, quaternion_to_rotmat, rotmat_to_quaternion,
                         sixd_to_rotmat)

__all__ = [
    "MODEL_KIND",
    "REPRESENTATIONS",
    "INT8_CALIBRATION_PARTICLES",
    "SupervisedModelConfig",
    "OrientationRegressor",
    "rotvec_to_quaternion",
    "SupervisedPosePredictor",
    "load_pose_model",
]

#: Value of ``model_kind`` in checkpoints of this module.
MODEL_KIND = "supervised"
#: Output parametrisations of the regressor.
REPRESENTATIONS = ("quaternion", "axis_angle", "s2s2", "svd")
_OUTPUT_SIZES = {"quaternion": 4, "axis_angle": 3, "s2s2": 6, "svd": 9}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SupervisedModelConfig:
    """Architecture of :class:`OrientationRegressor`.

    Attributes:
        box_size: Input image edge ``n`` in pixels (>= ``2**(n_blocks + 1)``).
        representation: ``"quaternion"`` (paper default), ``"axis_angle"`` (paper's Table 3),
            ``"s2s2"`` or ``"svd"`` (continuous, not in the paper; module docstring).
        width: Channels of the first VGG block (VGG16: 64).
        n_blocks: Number of VGG blocks (each halves the image; VGG16: 5). Default
            ``floor(log2(n / 4))``, leaving a 4×4 grid for a power-of-two box (2×2 after the
            final pooling): 3 blocks at 32 px, 4 at 64 px.
        convs_per_block: Convolutions per block (VGG16: 2, 2, 3, 3, 3; here one number).
        head_channels: Channels of the two further convolutions.
        hidden: Units of the fully connected hidden layer.
        batch_norm: Batch normalisation after every convolution.
    """

    box_size: int
    representation: str = "quaternion"
    width: int = 32
    n_blocks: int | None = None
    convs_per_block: int = 2
    head_channels: int = 256
    hidden: int = 512
    batch_norm: bool = True

    def __post_init__(self):
        if self.n_blocks is None:
            object.__setattr__(self, "n_blocks", max(1, int(math.floor(math.log2(max(int(self.box_size), 8) / 4)))))
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {self.representation!r}")
        if int(self.box_size) < 2 ** (int(self.n_blocks) + 1):
            raise ValueError(f"box {self.box_size} px is too small for {self.n_blocks} pooling blocks and the "
                             "final pooling")
        for name in ("width", "n_blocks", "convs_per_block", "head_channels", "hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def final_grid(self) -> int:
        """Edge of the feature grid after the final pooling, ``n // 2^(n_blocks + 1)``."""
        return int(self.box_size) // 2 ** (int(self.n_blocks) + 1)

    @property
    def output_size(self) -> int:
        """4 (quaternion), 3 (rotation vector), 6 (s2s2) or 9 (svd)."""
        return _OUTPUT_SIZES[self.representation]


def _conv(c_in: int, c_out: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


def rotvec_to_quaternion(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation vectors ``(..., 3)`` (radians) → unit quaternions ``(..., 4)`` ``(w, x, y, z)``.

    ``q = (cos(θ/2), sin(θ/2) ω/θ)`` with ``θ = |ω|``; the series ``sin(θ/2)/θ ≈ 1/2 − θ²/48``
    below ``θ² = 1e-6`` keeps it and its gradient finite at 0. Same rotation as
    :func:`cryopose.rotations.axis_angle_to_rotmat`.
    """
    t2 = (rotvec * rotvec).sum(-1, keepdim=True)
    small = t2 < 1e-6
    t = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
    half_sinc = torch.where(small, 0.5 - t2 / 48.0, torch.sin(t / 2) / t)
    w = torch.where(small, 1.0 - t2 / 8.0, torch.cos(t / 2))
    return torch.cat([w, rotvec * half_sinc], dim=-1)


class OrientationRegressor(nn.Module):
    """VGG-style CNN regressing a particle image's orientation (Lian et al. 2022).

    Args:
        config: :class:`SupervisedModelConfig`.

    Forward:
        ``images (B, n, n)`` → raw outputs ``(B, 4)`` (unnormalised quaternion), ``(B, 3)``
        (rotation vector), ``(B, 6)`` (two unnormalised columns of ``R``) or ``(B, 9)`` (a 3×3
        matrix, row-major). Use :meth:`to_quaternion` and :meth:`to_rotmat` to decode.
    """

    def __init__(self, config: SupervisedModelConfig):
        super().__init__()
        self.config = config
        c = config
        layers: list[nn.Module] = []
        c_in = 1
        for b in range(c.n_blocks):
            c_out = c.width * min(2 ** b, 8)
            for _ in range(c.convs_per_block):
                layers += _conv(c_in, c_out, c.batch_norm)
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head_convs = nn.Sequential(*_conv(c_in, c.head_channels, c.batch_norm),
                                        *_conv(c.head_channels, c.head_channels, c.batch_norm))
        self.pool = nn.MaxPool2d(2)
        self.regressor = nn.Sequential(nn.Linear(c.head_channels * c.final_grid**2, c.hidden), nn.ReLU(inplace=True),
                                       nn.Linear(c.hidden, c.output_size))
        self.int8_core: nn.Module | None = None  # set on the copies of quantized_for_inference

    @staticmethod
    def standardize(images: torch.Tensor) -> torch.Tensor:
        """Per-image zero mean, unit standard deviation (scale-free input)."""
        mean = images.mean((-2, -1), keepdim=True)
        std = images.std((-2, -1), keepdim=True).clamp_min(1e-8)
        return (images - mean) / std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(B, 4 | 3 | 6 | 9)`` of raw images ``(B, n, n)`` (standardised here).

        Decode them with :meth:`to_quaternion` / :meth:`to_rotmat`.

        Raises:
            ValueError: Images not of shape ``(B, n, n)`` with ``n = config.box_size``.
        """
        n = self.config.box_size
        if images.ndim != 3 or images.shape[-1] != n or images.shape[-2] != n:
            raise ValueError(f"expected images (B, {n}, {n}), got {tuple(images.shape)}")
        x = self.standardize(images.float())[:, None]
        if self.int8_core is not None:
            return self.int8_core(x)
        return _layers(self, x.contiguous(memory_format=torch.channels_last))

    @property
    def is_int8(self) -> bool:
        """Whether this copy computes in 8-bit integers (:meth:`quantized_for_inference`)."""
        return self.int8_core is not None

    def quantized_for_inference(self, calibration_images: torch.Tensor, *,
                                batch_size: int = 256) -> "OrientationRegressor":
        """A CPU copy computing in 8-bit integers: post-training static quantization.

        The batch norms are folded first (:meth:`fused_for_inference`); then every convolution,
        linear layer, ReLU and pooling runs on int8 activations and weights (per-channel weight
        scales), with activation ranges observed on ``calibration_images``
        (:func:`cryopose.models.quantize.quantize_int8`: PyTorch FX graph mode quantization
        with the CPU quantized engine's defaults). The per-image standardisation
        and the decoding of the outputs stay in float. ``self`` is left unchanged.

        The copy is for inference only (eval mode, CPU, no gradients) and is not saved in
        checkpoints: quantize again after loading. How much it changes the poses depends on the
        network; the README's issue-4 section gives the measured change.

        Args:
            calibration_images: ``(C, n, n)`` particle images like those to be posed (e.g. the
                first few hundred of the data set), raw (standardised here).
            batch_size: Images per calibration pass.

        Returns:
            An :class:`OrientationRegressor` whose ``forward`` runs the int8 network
            (``is_int8`` true).

        Raises:
            ValueError: Calibration images of the wrong shape, or fewer than one.
            RuntimeError: This PyTorch build has no quantized CPU engine or no
                ``torch.ao.quantization`` (deprecated upstream; present in the pinned release).
        """
        n = self.config.box_size
        cal = torch.as_tensor(calibration_images)
        if cal.ndim != 3 or cal.shape[-2:] != (n, n) or cal.shape[0] < 1:
            raise ValueError(f"calibration images must be (C >= 1, {n}, {n}), got {tuple(cal.shape)}")
        fused = self.fused_for_inference().cpu()
        int8 = quantize_int8(_Core(fused), self.standardize(cal.float().cpu())[:, None], batch_size=batch_size)
        fused.int8_core = int8
        return fused

    def fused_for_inference(self) -> "OrientationRegressor":
        """A copy in eval mode with every batch norm folded into the convolution before it.

        Same outputs to float rounding, less time per image (what ``cryopose predict`` and
        :class:`SupervisedPosePredictor` run); ``self`` is left unchanged. See
        :func:`cryopose.models.encoders.fold_batch_norm_`.
        """
        from .encoders import fold_batch_norm_

        fused = copy.deepcopy(self).eval()
        fold_batch_norm_(fused.features)
        fold_batch_norm_(fused.head_convs)
        return fused.to(memory_format=torch.channels_last)

    def to_quaternion(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw outputs → unit quaternions ``(B, 4)`` ``(w, x, y, z)`` (differentiable)."""
        rep = self.config.representation
        if rep == "quaternion":
            return raw / raw.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        if rep == "axis_angle":
            return rotvec_to_quaternion(raw)
        return rotmat_to_quaternion(self.to_rotmat(raw))

    def to_rotmat(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw outputs → RELION rotation matrices ``(B, 3, 3)`` (differentiable)."""
        rep = self.config.representation
        if rep == "quaternion":
            return quaternion_to_rotmat(raw)
        if rep == "axis_angle":
            return axis_angle_to_rotmat(raw)
        if rep == "s2s2":
            return sixd_to_rotmat(raw)
        return project_to_rotmat(raw.reshape(*raw.shape[:-1], 3, 3))

    def predict_rotmat(self, images: torch.Tensor, *, test_time_turns: bool = False,
                       symmetry: str = "C1") -> torch.Tensor:
        """Rotations ``(B, 3, 3)`` of images ``(B, n, n)``, optionally averaged over quarter turns.

        With ``test_time_turns`` every image is also turned by 90°, 180° and 270° in its plane
        (:func:`cryopose.data.transforms.rotate_quarter_turns`, a pixel permutation); the
        prediction ``R̂_k`` for the image turned by ``θ_k`` estimates ``Rz(θ_k) R``
        (:func:`cryopose.rotations.inplane_rotation`, the relation the ``"quarter"``
        augmentation of :func:`cryopose.training.supervised_losses.augment_inplane` trains), so
        ``Rz(θ_k)ᵀ R̂_k`` are four estimates of ``R``. They are averaged modulo the point group
        ``symmetry`` by :func:`cryopose.symmetry.mean_rotation_modulo` (test-time augmentation,
        not in the paper; 4 × the inference time). Call in eval mode, without gradients.
        """
        if not test_time_turns:
            return self.to_rotmat(self(images))
        from ..data.transforms import rotate_quarter_turns
        from ..rotations import inplane_rotation
        from ..symmetry import mean_rotation_modulo

        b = images.shape[0]
        k = torch.arange(4, device=images.device).repeat_interleave(b)
        r = self.to_rotmat(self(rotate_quarter_turns(images.repeat(4, 1, 1), k))).double()
        rz = inplane_rotation(k.double().cpu() * (math.pi / 2)).to(r.device)
        return mean_rotation_modulo((rz.transpose(-1, -2) @ r).reshape(4, b, 3, 3), symmetry).to(images.dtype)


def _layers(m, x: torch.Tensor) -> torch.Tensor:
    """Standardised ``(B, 1, n, n)`` images → raw outputs: the layers of ``m`` after the standardisation."""
    return m.regressor(m.pool(m.head_convs(m.features(x))).flatten(1))


class _Core(nn.Module):
    """The layers of an :class:`OrientationRegressor` after the standardisation, as one module (to quantize)."""

    def __init__(self, model: OrientationRegressor):
        super().__init__()
        self.features, self.head_convs, self.pool, self.regressor = (model.features, model.head_convs, model.pool,
                                                                     model.regressor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _layers(self, x)


class SupervisedPosePredictor:
    """Callable ``images (B, n, n) -> (rotmats (B, 3, 3), None)`` around a trained regressor.

    Images whose box differs from the model's are Fourier-resampled to it first (same field of
    view assumed, e.g. the full-size particles of a model trained on downsampled ones). No
    shifts are predicted (the paper's network regresses orientation only), hence ``None``.

    Attributes:
        model: The :class:`OrientationRegressor` (eval mode, batch norm folded:
            :meth:`OrientationRegressor.fused_for_inference`).
        box_size: Model input box.
        pixel_size_angstrom: Pixel size the model was trained at (Å), or ``None``.
        symmetry: Point group of the training reference.
        model_kind: ``"supervised"``.
        batch_size: Images per forward pass.
    """

    model_kind = MODEL_KIND

    def __init__(self, model: OrientationRegressor, *, pixel_size_angstrom: float | None = None,
                 symmetry: str = "C1", batch_size: int = 256):
        self.model = model.fused_for_inference()
        self.box_size = model.config.box_size
        self.pixel_size_angstrom = pixel_size_angstrom
        self.symmetry = symmetry
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor):
        x = torch.as_tensor(images).float()
        if x.ndim == 2:
            x = x[None]
        if x.shape[-1] != self.box_size:
            if x.shape[-1] < self.box_size:
                raise ValueError(f"images of {x.shape[-1]} px are smaller than the model's {self.box_size} px box")
            x = fourier_downsample_images(x, self.box_size)
        dev = next(self.model.parameters()).device
        out = []
        for start in range(0, x.shape[0], self.batch_size):
            raw = self.model(x[start:start + self.batch_size].to(dev))
            out.append(self.model.to_rotmat(raw).cpu())
        rot = torch.cat(out) if out else torch.zeros(0, 3, 3)
        return rot, None


def load_pose_model(path: str | os.PathLike, *, map_location="cpu") -> SupervisedPosePredictor:
    """Load a supervised checkpoint as a pose predictor.

    Args:
        path: ``.pt`` file written by :func:`cryopose.training.supervised.save_checkpoint`.
        map_location: Device for the weights (the file is read on the CPU, then moved).

    Returns:
        :class:`SupervisedPosePredictor`: ``predictor(images) -> (rotmats, None)``.

    Raises:
        FileNotFoundError: Missing file.
        InputFileError: (a ``ValueError``) An unreadable file, one that ``weights_only``
            loading refuses (it could run code:
            :func:`cryopose.training.checkpoint.read_torch_file`), or a ``model_kind`` other
            than ``"supervised"``.
    """
    from ..errors import InputFileError
    from ..training.checkpoint import read_torch_file

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model checkpoint: {path}")
    ckpt = read_torch_file(path, "model file")
    kind = ckpt.get("model_kind") if isinstance(ckpt, dict) else None
    if kind != MODEL_KIND:
        raise InputFileError(path, f"model_kind is {kind!r}, expected {MODEL_KIND!r}")
    model = OrientationRegressor(SupervisedModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.to(map_location)
    return SupervisedPosePredictor(model, pixel_size_angstrom=ckpt.get("pixel_size_angstrom"),
                                   symmetry=ckpt.get("symmetry", "C1"))

