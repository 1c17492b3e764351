"""Losses of the rotation-invariant autoencoder (Bibas et al. 2021) and of spatial-VAE
(Bepler et al. 2019); the loss and its weights are derived in :mod:`cryopose.training.rotinv`,
which trains with them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .inplane import wrap_angle

if TYPE_CHECKING:
    from .rotinv import RotInvTrainConfig

__all__ = ["angle_loss", "angle_vector_loss", "rotinv_angle_objective", "image_loss"]


def angle_loss(theta_true: torch.Tensor, theta_pred: torch.Tensor) -> torch.Tensor:
    """Bibas et al.'s periodic angle loss ``mean(exp(|wrap(θ − θ̂)|) − 1)`` (radians)."""
    return torch.expm1(wrap_angle(theta_true - theta_pred).abs()).mean()


def angle_vector_loss(theta_true: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``mean ‖v − (cos θ, sin θ)‖²`` on the angle head's raw 2-vector ``v`` ``(B, 2)``."""
    target = torch.stack([torch.cos(theta_true), torch.sin(theta_true)], dim=1).to(vector.dtype)
    return (vector - target).pow(2).sum(1).mean()


def rotinv_angle_objective(theta_true: torch.Tensor, vector: torch.Tensor, config: RotInvTrainConfig,
                           epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The angle terms of the training loss at ``epoch`` (0-based): ``(weighted periodic loss,
    weighted vector loss)``.

    The periodic loss ``exp(|θ − θ̂|) − 1`` is convex in the circular error, so when an image's
    angle is (still) ambiguous between two modes ``θ`` and ``θ + π`` — the encoder has found the
    particle's long axis but not its polarity, or the data are nearly 2-fold symmetric — its
    minimiser is the *midpoint* between the modes, ±90° from both; an encoder trained on it alone
    gets stuck with errors clustered at ±90°. The squared error of the raw head vector to
    ``(cos θ, sin θ)`` is minimised by the conditional mean direction instead, which points to the
    likelier mode (and shrinks the vector where the modes are equally likely), so the polarity can
    still be learned. The periodic loss (weight ``lambda_angle``) joins after the first
    ``angle_warmup_fraction`` of the epochs.
    """
    lv = config.lambda_vector * angle_vector_loss(theta_true, vector) if config.lambda_vector > 0 else vector.sum() * 0
    warm = epoch < int(round(config.angle_warmup_fraction * config.epochs))
    if config.lambda_angle == 0 or warm:
        return vector.sum() * 0, lv
    theta_hat = torch.atan2(vector[:, 1], vector[:, 0])
    return config.lambda_angle * angle_loss(theta_true, theta_hat), lv


def image_loss(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``mean over images of (‖x − x̂‖₂ + ‖x − x̂‖₁) / n`` for ``(B, n, n)`` images."""
    d = (target - pred).flatten(1)
    n = target.shape[-1]
    return ((d.pow(2).sum(1) + 1e-12).sqrt() + d.abs().sum(1)).mean() / n


def _gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, generator) -> torch.Tensor:
    a = torch.rand(real.shape[0], 1, generator=generator, dtype=real.dtype)
    mix = (a * real + (1 - a) * fake).requires_grad_(True)
    g, = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return (g.norm(dim=1) - 1.0).pow(2).mean()


def _spatial_vae_loss(out: dict, x: torch.Tensor, model, config: RotInvTrainConfig) -> dict[str, torch.Tensor]:
    cfg = model.config
    rec = 0.5 * (x - out["recon"]).pow(2).flatten(1).sum(1).mean() / config.obs_std**2
    zmu, zls = out["z_mu"], out["z_logstd"]
    kl_z = (0.5 * (zmu.pow(2) + torch.exp(2 * zls)) - zls - 0.5).sum(1).mean()
    s2 = cfg.theta_prior_std**2
    tmu, tls = out["theta_mu"], out["theta_logstd"]
    kl_t = (0.5 * (tmu.pow(2) + torch.exp(2 * tls)) / s2 - tls + 0.5 * math.log(s2) - 0.5).mean()
    kl_tr = torch.zeros((), dtype=x.dtype)
    if cfg.translation:
        st2 = cfg.translation_prior_std**2
        m, ls = out["t_mu"], out["t_logstd"]
        kl_tr = (0.5 * (m.pow(2) + torch.exp(2 * ls)) / st2 - ls + 0.5 * math.log(st2) - 0.5).sum(1).mean()
    return {"total": rec + kl_z + kl_t + kl_tr, "rec": rec, "kl_z": kl_z, "kl_theta": kl_t}
