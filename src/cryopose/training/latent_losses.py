"""Losses of the VAE-GAN latent model (Miolane et al., CVPR-W 2020, Sec. 3.1), one batch at a time.

:func:`vaegan_losses` gives the encoder/decoder terms (BCE summed over pixels, KL, GAN, cone
and the rotation-equivariance prior), ``_discriminator_loss`` the discriminator's; the loss
and its weights are described in :mod:`cryopose.training.latent`, which trains with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.vaegan import VAEGAN
from .latent_config import LatentTrainConfig

__all__ = ["vaegan_losses"]


def _kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def _cone(mu: torch.Tensor) -> torch.Tensor:
    return (mu[:, 0] ** 2 + mu[:, 1] ** 2 - mu[:, 2] ** 2).pow(2).mean()


def vaegan_losses(model: VAEGAN, x: torch.Tensor, config: LatentTrainConfig, *, generator: torch.Generator | None = None,
                  lambda_reg: float | None = None) -> dict[str, torch.Tensor]:
    """Encoder/decoder losses of one batch (see the module docstring).

    Args:
        model: The VAE-GAN (train or eval mode: eval uses ``z = μ``).
        x: ``(B, m, m)`` images in [0, 1].
        config: Loss weights.
        generator: Source of the latent noise and prior samples.
        lambda_reg: Override of ``config.lambda_reg`` (KL warm-up).

    Returns:
        Dict with ``total``, ``rec``, ``kl``, ``cone``, ``gan`` (0 when ``λ_GAN = 0``) and the
        detached ``recon`` (sigmoid images) and ``prior`` (decoded prior samples or ``None``).
    """
    lam_reg = config.lambda_reg if lambda_reg is None else lambda_reg
    logits, mu, logvar, _ = model(x, generator)
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1).mean()
    kl = _kl(mu, logvar)
    cone = _cone(mu)
    total = rec + lam_reg * kl + config.lambda_cone * cone
    gan = torch.zeros((), dtype=x.dtype)
    prior = None
    equi = torch.zeros((), dtype=x.dtype)
    if config.lambda_equivariance > 0 and model.training:
        equi = _equivariance(model, x, mu, generator, planes=config.equivariant_planes(),
                             split=config.equivariance_normalization == "split")
        total = total + config.lambda_equivariance * equi
    if config.lambda_gan > 0 and model.training:
        zp = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        prior = torch.sigmoid(model.decoder(zp))
        recon = torch.sigmoid(logits)
        disc = model.discriminator
        for p in disc.parameters():
            p.requires_grad_(False)
        gan = F.softplus(-disc(recon)).mean() + F.softplus(-disc(prior)).mean()
        for p in disc.parameters():
            p.requires_grad_(True)
        total = total + config.lambda_gan * gan
        prior = prior.detach()
    return {"total": total, "rec": rec, "kl": kl, "cone": cone, "gan": gan, "equi": equi,
            "recon": torch.sigmoid(logits.detach()), "prior": prior}


def _equivariance(model: VAEGAN, x: torch.Tensor, mu: torch.Tensor, generator: torch.Generator | None, *,
                  planes: tuple[tuple[int, int], ...] = ((0, 1),), split: bool = False) -> torch.Tensor:
    """Rotation-equivariance prior (an addition to the paper).

    Each image is turned by a random ``θ`` (:func:`cryopose.data.transforms.rotate_images`,
    which lowers ``ψ`` by ``θ``); its latent mean must be that of the original with every
    plane ``(μ_j, μ_j+1)`` of ``planes`` (``(j, k)`` pairs: ``(0, 1)`` is ``(μ₁, μ₂)`` of a
    view without symmetry) turned by ``−k θ`` and the other coordinates unchanged, so that the
    polar angle of a plane moves with ``k ψ`` and the in-plane orbit is a circle about the
    invariant axes. ``split=False``: the squared error divided by ``mean |μ|²`` (shrinking
    the whole latent does not satisfy it, but a plane much smaller than ``μ₃`` is nearly
    free); ``split=True``: the error of each plane and of the invariant rest each divided by
    its own mean square, so that shrinking a plane does not pay.
    """
    from ..data.transforms import rotate_images
    from .inplane import random_angles

    theta = random_angles(x.shape[0], generator=generator, dtype=x.dtype)
    mu_rot, _ = model.encoder(rotate_images(x, theta))
    target = mu.clone()
    rest = torch.ones(mu.shape[1], dtype=torch.bool)
    for j, k in planes:
        c, s = torch.cos(k * theta), torch.sin(k * theta)
        # turn (μj, μj+1) by −kθ: (c μj + s μj+1, −s μj + c μj+1)
        target[:, j] = c * mu[:, j] + s * mu[:, j + 1]
        target[:, j + 1] = -s * mu[:, j] + c * mu[:, j + 1]
        rest[j:j + 2] = False
    d = (mu_rot - target).pow(2)
    sq = mu.detach().pow(2)
    if not split:
        return d.sum(1).mean() / (sq.sum(1).mean() + 1e-6)
    groups = [slice(j, j + 2) for j, _ in planes] + ([rest] if bool(rest.any()) else [])
    return sum(d[:, g].sum(1).mean() / (sq[:, g].sum(1).mean() + 1e-6) for g in groups)


def _discriminator_loss(model: VAEGAN, x: torch.Tensor, recon: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    d = model.discriminator
    return F.softplus(-d(x)).mean() + F.softplus(d(recon)).mean() + F.softplus(d(prior)).mean()
