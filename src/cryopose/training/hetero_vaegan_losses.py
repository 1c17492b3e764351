"""Losses of the invariant heterogeneity VAE-GAN (equations in :mod:`cryopose.training.hetero_vaegan`).

Fake particles, the WGAN-GP critic loss and the encoder + generator loss; the trainer that
alternates them is :func:`cryopose.training.hetero_vaegan.fit_invariant_vaegan`.
"""

from __future__ import annotations

import torch

from ..ctf import compute_ctf
from ..data.dataset import ParticleDataset
from ..models.hetero_vaegan import InvariantVAEGAN
from ..rotations import random_rotations

__all__ = ["sample_ctf_rows", "make_fakes", "critic_loss", "generator_losses"]


def sample_ctf_rows(dataset: ParticleDataset, n: int, generator: torch.Generator) -> torch.Tensor | None:
    """CTFs ``(n, m, m)`` of particles drawn uniformly from the data set (with replacement).

    Evaluated on the working grid and multiplied by the data set's whitening filter, as
    :meth:`ParticleDataset.batch` does for the real particles; ``None`` when the data carry
    neither CTF nor whitening.
    """
    idx = torch.randint(0, len(dataset), (int(n),), generator=generator)
    ctf = None
    if dataset.ctf is not None:
        ctf = compute_ctf(dataset.ctf[idx], dataset.box_size, dataset.pixel_size_angstrom).float()
    if dataset.whitening is not None:
        w = dataset.whitening_for(idx.numpy()).float()
        ctf = w if ctf is None else ctf * w
    return ctf


def make_fakes(model: InvariantVAEGAN, dataset: ParticleDataset, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Noisy fake particles ``(B, m, m)`` of latents ``z`` ``(B, zdim)``: uniform poses, the data set's CTF rows."""
    rotmats = random_rotations(z.shape[0], generator=g, dtype=torch.float32)
    return model.generate_images(z, rotmats, sample_ctf_rows(dataset, z.shape[0], g), g)


def critic_loss(model: InvariantVAEGAN, real: torch.Tensor, fake: torch.Tensor, g: torch.Generator,
                weight_gradient_penalty: float) -> tuple[torch.Tensor, dict[str, float]]:
    """WGAN-GP critic loss ``mean D(x̃) − mean D(x) + λ_GP · GP`` and its parts.

    ``GP = mean (‖∇D(x̂)‖₂ − 1)²`` at ``x̂ = a x + (1 − a) x̃``, ``a ~ U[0, 1]`` per image
    (Gulrajani et al. 2017); the parts are the Wasserstein estimate ``mean D(x) − mean D(x̃)``
    and ``GP``.
    """
    d_real, d_fake = model.critic(real), model.critic(fake)
    a = torch.rand(real.shape[0], 1, 1, generator=g)
    mixed = (a * real + (1.0 - a) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(model.critic(mixed).sum(), mixed, create_graph=True)
    gp = ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
    wdist = d_real.mean() - d_fake.mean()
    return -wdist + weight_gradient_penalty * gp, {"wasserstein": wdist.item(), "gp": gp.item()}


def generator_losses(model: InvariantVAEGAN, dataset: ParticleDataset, real: torch.Tensor,
                     config, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Encoder + generator loss ``L_G`` on a real batch ``(B, m, m)``, and its parts.

    ``config`` is a :class:`~cryopose.training.hetero_vaegan.HeteroVAEGANTrainConfig` (its
    ``weight_*`` fields); the equation is in that module's docstring.
    """
    b = real.shape[0]
    mu, logvar = model.encode(real)
    z_q = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
    z_p = torch.randn(mu.shape, generator=g)
    fakes = make_fakes(model, dataset, torch.cat([z_p, z_q]), g)
    adv = -model.critic(fakes).mean()
    mu_fake, _ = model.encode(fakes)
    latent = ((mu_fake - torch.cat([z_p, z_q.detach()])) ** 2).sum(dim=1).mean()
    kl = (-0.5 * (1.0 + logvar - mu**2 - logvar.exp())).sum(dim=1).mean()
    feature = torch.zeros(())
    if config.weight_feature > 0:
        with torch.no_grad():
            phi_real = model.critic.features(real)
        phi_fake = model.critic.features(fakes[b:])
        feature = ((phi_real - phi_fake) ** 2).mean() / (phi_real**2).mean().clamp_min(1e-8)
    total = (config.weight_adversarial * adv + config.weight_latent * latent + config.weight_kl * kl
             + config.weight_feature * feature)
    return total, {"adv": adv.item(), "latent": latent.item(), "kl": kl.item(), "feature": feature.item()}
