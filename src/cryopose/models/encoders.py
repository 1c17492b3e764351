"""Image encoders: CNNs mapping particle images to feature vectors.

:class:`CryoPoseNetEncoder` is the encoder of CryoPoseNet (Nashed, Poitevin, Gupta, Woollard,
Kagan, Yoon, Ratner, "CryoPoseNet: End-to-end simultaneous learning of single-particle
orientation and 3D map reconstruction from cryo-electron microscopy data", ICCV Workshops
2021): three blocks of ``conv 3×3 → ReLU → conv 3×3 → ReLU → max-pool 2×2`` with 32, 64 and
128 filters, flattened, then a multilayer perceptron of two 512-unit layers. The pose head
(:mod:`cryopose.models.pose_heads`) turns the 512 features into rotations.

Implementation notes: convolutions run in ``channels_last`` memory format, which is several
times faster on CPUs (oneDNN) than the default layout; optional batch normalisation after each
convolution (off in the paper) is available for ablations. For CPU inference
(``cryopose predict --int8``), :meth:`CryoPoseNetEncoder.quantized_for_inference` makes a copy
computing in 8-bit integers (:func:`cryopose.models.quantize.quantize_int8`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .quantize import quantize_int8

__all__ = ["CryoPoseNetEncoder", "encoder_output_size", "fold_batch_norm_"]


def encoder_output_size(box_size: int, n_blocks: int = 3) -> int:
    """Spatial edge of the feature map after ``n_blocks`` 2×2 max-pools (floor division).

    Raises:
        ValueError: If the image is too small to survive the pooling (edge < ``2**n_blocks``).
    """
    m = int(box_size)
    for _ in range(n_blocks):
        m //= 2
    if m < 1:
        raise ValueError(f"images of {box_size} px are too small for {n_blocks} pooling blocks "
                         f"(need at least {2 ** n_blocks} px)")
    return m


def fold_batch_norm_(seq: nn.Sequential) -> nn.Sequential:
    """Fold every batch norm of an eval-mode ``Sequential`` into the conv or linear layer before it.

    In place; returns ``seq``. A ``Conv2d`` followed by ``BatchNorm2d`` (or ``Linear`` followed
    by ``BatchNorm1d``) becomes one layer with the same eval-mode output, to float rounding
    (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval` / ``fuse_linear_bn_eval``); other modules
    are kept as they are. Only for inference: the folded layer no longer tracks statistics.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    mods, out, i = list(seq), [], 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            out.append(fuse_conv_bn_eval(m, nxt))
            i += 2
        elif isinstance(m, nn.Linear) and isinstance(nxt, nn.BatchNorm1d):
            out.append(fuse_linear_bn_eval(m, nxt))
            i += 2
        else:
            out.append(m)
            i += 1
    seq._modules.clear()
    for k, m in enumerate(out):
        seq.add_module(str(k), m)
    return seq


class CryoPoseNetEncoder(nn.Module):
    """CryoPoseNet's CNN + MLP encoder (Nashed et al., ICCV-W 2021).

    Args:
        box_size: Edge ``n`` (pixels) of the input images.
        channels: Filters of the three conv blocks (paper: ``(32, 64, 128)``).
        hidden: Widths of the MLP layers (paper: ``(512, 512)``).
        batch_norm: Batch normalisation after each convolution and MLP layer (not in the paper).

    Input ``(B, n, n)`` or ``(B, 1, n, n)`` float images; output ``(B, hidden[-1])`` features.

    Raises:
        ValueError: Images too small for the pooling (at construction,
            :func:`encoder_output_size`) or of another box than ``box_size`` (in ``forward``).
    """

    def __init__(self, box_size: int, *, channels: tuple[int, ...] = (32, 64, 128),
                 hidden: tuple[int, ...] = (512, 512), batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            for _ in range(2):
                layers.append(nn.Conv2d(c_in, c, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(c))
                layers.append(nn.ReLU(inplace=True))
                c_in = c
            layers.append(nn.MaxPool2d(2))
        self.conv = nn.Sequential(*layers)
        m = encoder_output_size(box_size, len(channels))
        mlp: list[nn.Module] = [nn.Flatten()]
        f_in = c_in * m * m
        for h in hidden:
            mlp.append(nn.Linear(f_in, h))
            if batch_norm:
                mlp.append(nn.BatchNorm1d(h))
            mlp.append(nn.ReLU(inplace=True))
            f_in = h
        self.mlp = nn.Sequential(*mlp)
        self.box_size = int(box_size)
        self.out_features = f_in
        self.int8_core: nn.Module | None = None  # set on the copies of quantized_for_inference
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, n, n)`` (or ``(B, 1, n, n)``) images into ``(B, F)`` features."""
        x = images[:, None] if images.ndim == 3 else images
        if x.shape[-1] != self.box_size or x.shape[-2] != self.box_size:
            raise ValueError(f"encoder expects {self.box_size}-px images, got {tuple(x.shape[-2:])}")
        if self.int8_core is not None:
            return self.int8_core(x.float())
        x = x.contiguous(memory_format=torch.channels_last)
        return self.mlp(self.conv(x))

    @property
    def is_int8(self) -> bool:
        """Whether this copy computes in 8-bit integers (:meth:`quantized_for_inference`)."""
        return self.int8_core is not None

    def quantized_for_inference(self, calibration_images: torch.Tensor, *,
                                batch_size: int = 256) -> "CryoPoseNetEncoder":
        """An int8 CPU copy for ``cryopose predict --int8`` (post-training static quantization).

        :meth:`fused_for_inference` first, then :func:`cryopose.models.quantize.quantize_int8`
        of the conv blocks and the MLP, calibrated on ``calibration_images``; the features come
        out in float. ``self`` is left unchanged; the copy (eval mode, CPU, no gradients) is not
        saved, so quantize again after loading. Speed and change in poses: the README's
        issue-3 section (``benchmarks/predict_int8.py``).

        Args:
            calibration_images: ``(C, n, n)`` or ``(C, 1, n, n)`` images normalised as the
                encoder's inputs are (e.g. the first few hundred particles of the data set).
            batch_size: Images per calibration pass.

        Returns:
            A :class:`CryoPoseNetEncoder` whose ``forward`` runs the int8 network (``is_int8``).

        Raises:
            ValueError: Calibration images of another box, or fewer than one.
            RuntimeError: No quantized CPU engine or no ``torch.ao.quantization`` here.
        """
        n = self.box_size
        raw = torch.as_tensor(calibration_images)
        cal = raw[:, None] if raw.ndim == 3 else raw
        if cal.ndim != 4 or tuple(cal.shape[1:]) != (1, n, n) or cal.shape[0] < 1:
            raise ValueError(f"calibration images must be (C >= 1, {n}, {n}), got {tuple(raw.shape)}")
        fused = self.fused_for_inference().cpu()
        core = nn.Sequential(fused.conv, fused.mlp)
        fused.int8_core = quantize_int8(core, cal.float(), batch_size=batch_size)
        return fused

    def fused_for_inference(self) -> "CryoPoseNetEncoder":
        """A copy in eval mode with every batch normalisation folded into the layer before it.

        Batch norm in eval mode is an affine map per channel, so it folds exactly into the
        preceding convolution's or linear layer's weights and bias
        (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval` / ``fuse_linear_bn_eval``): the same
        outputs (to float rounding) for about 1.3× less time per image on CPU — what amortized
        inference (``cryopose predict``) runs. ``self`` is left unchanged; without batch norm the
        copy is just ``self`` in eval mode.
        """
        fused = copy.deepcopy(self).eval()
        for seq in (fused.conv, fused.mlp):
            fold_batch_norm_(seq)
        return fused.to(memory_format=torch.channels_last)
