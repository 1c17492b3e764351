"""Options and result of the VAE-GAN latent training (:mod:`cryopose.training.latent`).

:class:`LatentTrainConfig` holds every option of :func:`cryopose.training.latent.train_vaegan`
and checks it on construction; :class:`ImageScaling` is the affine map of pixel values to
[0, 1] the networks see; :class:`LatentTrainResult` is what a training run returns. The loss
weights are relative to the BCE summed over the pixels of an image (see the module docstring
of :mod:`cryopose.training.latent`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..errors import UserError
from ..models.vaegan import VAEGAN, VAEGANConfig

__all__ = ["ImageScaling", "LatentTrainConfig", "LatentTrainResult"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageScaling:
    """Affine map of (preprocessed) pixel values to [0, 1]: ``clip((x − low) / (high − low), 0, 1)``.

    Attributes:
        low, high: Pixel values mapped to 0 and 1 (data set quantiles, :func:`cryopose.training.latent.fit_scaling`).
    """

    low: float
    high: float

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Scale and clip ``x`` to [0, 1]."""
        return ((x - self.low) / (self.high - self.low)).clamp_(0.0, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatentTrainConfig:
    """Options of :func:`cryopose.training.latent.train_vaegan`.

    The loss weights are relative to the BCE **summed** over the pixels of an image (nats per
    image). The paper's code averages the BCE over pixels instead, so its ``λ`` correspond to
    ``λ · m²`` here for ``m × m`` network inputs; its cone weight 1 is therefore a strong cone
    (the default 100 here, at 32 px). The defaults were chosen on simulated in-plane data
    (``benchmarks/inplane.py``) and checked on relion_project single views
    (``benchmarks/latent_views.py``: the second equivariant plane, ``latent_dim=5`` and the
    ``split`` normalisation); ``latent_dim=3, lambda_equivariance=0`` is the paper's model.

    Attributes:
        latent_dim: Latent dimension ``L`` (paper: 3 or 4).
        train_box_size: Fourier-downsample the images to this edge before the networks
            (``None``: the data's box). Not in the paper; it makes CPU training 4× faster at 32 px.
        channels: First-layer filters of encoder/decoder (:class:`VAEGANConfig`).
        decoder_depth: Decoder layers (``None``: the minimum for the box).
        epochs: Passes over the training images.
        batch_size: Images per step (paper: 16).
        learning_rate: Adam learning rate.
        betas: Adam ``(β₁, β₂)`` (paper: ``(0.9, 0.999)``).
        final_lr_fraction: Cosine decay of the learning rate over the epochs down to this
            fraction of it (1 = constant, as in the paper).
        lambda_reg: Weight of the KL term.
        lambda_gan: Weight of the generator's GAN loss (0 = plain VAE, no discriminator).
        lambda_cone: Weight of the cone prior (paper: 1).
        lambda_equivariance: Weight of the rotation-equivariance prior (not in the paper; 0 =
            off): see :func:`cryopose.training.latent.vaegan_losses`.
        equivariance_order: ``k`` of the prior: ``(μ₁, μ₂)`` turns by ``−k θ`` when the image
            turns by ``θ``. Use the ``k`` of a ``k``-fold symmetric view (its images repeat
            every ``360°/k``, so only the quotient angle can be encoded).
        equivariance_order_2: Order ``k₂`` of a second equivariant plane ``(μ₄, μ₅)``, which the
            prior turns by ``−k₂ θ`` (``None``: ``2 k`` when ``latent_dim >= 5``, else none;
            0 = none). Views whose first angular harmonic is weak (β-gal: ~4 % of the
            non-symmetric power against ~25 % in the second) leave ``(μ₁, μ₂)`` nearly flat,
            while the ``k₂`` plane gives ``ψ`` modulo ``360°/k₂`` precisely; the analysis takes
            the branch from ``(μ₁, μ₂)`` (:func:`cryopose.analysis.latent_geometry.combine_planes`).
        equivariance_normalization: ``"total"`` or ``"split"`` (see :mod:`cryopose.training.latent`).
        mask_radius_fraction: Multiply every image by a soft circular mask of this radius
            (fraction of ``n/2``) so that in-plane rotations keep the image inside the box
            (``None`` = no mask).
        kl_warmup_epochs: Ramp ``λ_reg`` linearly from 0 over this many epochs (0 = off).
        validation_fraction: Held-out fraction for the validation loss, in [0, 0.5].
        invert_contrast: Multiply images by −1 first (dark particles → bright).
        scaling_quantiles: Pixel quantiles mapped to 0 and 1.
        scaling_sample: Images used to estimate the quantiles.
        seed: Seed of the split, initialisation, batches and latent noise.

    Raises:
        UserError: Values out of range (on construction).
    """

    latent_dim: int = 5
    train_box_size: int | None = 32
    channels: int = 16
    decoder_depth: int | None = None
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    final_lr_fraction: float = 0.05
    lambda_reg: float = 0.01
    lambda_gan: float = 0.0
    lambda_cone: float = 100.0
    lambda_equivariance: float = 10.0
    equivariance_order: int = 1
    equivariance_order_2: int | None = None
    equivariance_normalization: str = "split"
    mask_radius_fraction: float | None = 1.0
    kl_warmup_epochs: int = 0
    validation_fraction: float = 0.1
    invert_contrast: bool = False
    scaling_quantiles: tuple[float, float] = (0.001, 0.999)
    scaling_sample: int = 512
    seed: int = 0

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        put("betas", tuple(float(b) for b in self.betas))
        put("scaling_quantiles", tuple(float(q) for q in self.scaling_quantiles))
        if int(self.latent_dim) < 3:
            raise UserError(f"latent dimension must be >= 3 (the cone needs three axes), got {self.latent_dim}")
        if self.train_box_size is not None and int(self.train_box_size) < 8:
            raise UserError(f"training box must be >= 8 px, got {self.train_box_size}")
        if int(self.epochs) < 1 or int(self.batch_size) < 2:
            raise UserError(f"need epochs >= 1 and batch size >= 2, got {self.epochs} and {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UserError(f"learning rate must be positive, got {self.learning_rate}")
        if self.mask_radius_fraction is not None and not (0.0 < self.mask_radius_fraction <= 1.5):
            raise UserError(f"mask radius fraction must be in (0, 1.5], got {self.mask_radius_fraction}")
        for name in ("lambda_reg", "lambda_gan", "lambda_cone", "lambda_equivariance"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise UserError(f"{name} must be >= 0, got {v}")
        if self.equivariance_normalization not in ("total", "split"):
            raise UserError(f"equivariance normalisation must be total or split, got {self.equivariance_normalization!r}")
        if int(self.equivariance_order) < 1:
            raise UserError(f"equivariance order must be >= 1, got {self.equivariance_order}")
        k2 = self.equivariance_order_2
        if k2 is not None and (int(k2) < 0 or (int(k2) > 0 and int(self.latent_dim) < 5)):
            raise UserError(f"equivariance order 2 must be >= 0 and needs latent dimension >= 5, got {k2} "
                            f"with L = {self.latent_dim}")
        if not (0.0 < self.final_lr_fraction <= 1.0):
            raise UserError(f"final learning-rate fraction must be in (0, 1], got {self.final_lr_fraction}")
        if not (0.0 <= self.validation_fraction <= 0.5):
            raise UserError(f"validation fraction must be in [0, 0.5], got {self.validation_fraction}")
        lo, hi = self.scaling_quantiles
        if not (0.0 <= lo < hi <= 1.0):
            raise UserError(f"scaling quantiles must satisfy 0 <= low < high <= 1, got {self.scaling_quantiles}")

    def equivariant_planes(self) -> tuple[tuple[int, int], ...]:
        """``((latent index of the plane's first axis, order), ...)`` the prior turns: ``(0, k)``
        and, with a second plane, ``(3, k₂)``; empty when ``lambda_equivariance`` is 0."""
        if self.lambda_equivariance <= 0:
            return ()
        k2 = self.equivariance_order_2
        if k2 is None:
            k2 = 2 * int(self.equivariance_order) if int(self.latent_dim) >= 5 else 0
        planes = ((0, int(self.equivariance_order)),)
        return planes + ((3, int(k2)),) if k2 else planes

    def model_config(self, box_size: int) -> VAEGANConfig:
        """The :class:`VAEGANConfig` for images of ``box_size`` px (after downsampling)."""
        from ..models.vaegan import conv_plan

        m = self.network_box(box_size)
        depth = self.decoder_depth if self.decoder_depth is not None else len(conv_plan(m)) - 1
        try:
            return VAEGANConfig(box_size=m, latent_dim=int(self.latent_dim), channels=int(self.channels),
                                decoder_depth=int(depth))
        except ValueError as err:
            raise UserError(str(err)) from None

    def network_box(self, box_size: int) -> int:
        """Edge of the images the networks see."""
        return int(box_size) if self.train_box_size is None else min(int(box_size), int(self.train_box_size))


@dataclasses.dataclass
class LatentTrainResult:
    """Outcome of :func:`cryopose.training.latent.train_vaegan`.

    Attributes:
        model: The trained :class:`VAEGAN` (eval mode).
        scaling: The pixel scaling it was trained with.
        config: The training options.
        history: One dict per epoch (losses, validation loss, seconds).
        train_indices, validation_indices: The split (0-based positions in ``source``).
        box_size: Edge of the input images (before downsampling).
    """

    model: VAEGAN
    scaling: ImageScaling
    config: LatentTrainConfig
    history: list[dict]
    train_indices: np.ndarray
    validation_indices: np.ndarray
    box_size: int

    @property
    def validation_loss(self) -> float:
        """Validation loss of the last epoch (``nan`` without a validation split)."""
        return float(self.history[-1]["val_loss"]) if self.history else math.nan
