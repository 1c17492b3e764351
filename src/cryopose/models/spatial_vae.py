"""spatial-VAE (Bepler, Zhong, Kelley, Brignole, Berger, NeurIPS 2019), the baseline of Bibas et al.

The generative model renders an image as a function of pixel coordinates: pixel ``j`` at
coordinates ``x_j`` (in [−1, 1]², origin at ``n // 2``) has intensity
``g([R(θ) x_j + t], z)`` where ``g`` is an MLP of the (transformed) coordinate and the content
latent ``z``, ``R(θ)`` the rotation by the latent angle ``θ`` and ``t`` an optional latent
translation. The inference network (an MLP on the flattened image, tanh units, as in the
paper) outputs Gaussian posteriors ``q(z)``, ``q(θ)`` and ``q(t)``; priors are ``N(0, I)`` for
``z``, ``N(0, σ_θ²)`` for ``θ`` (``σ_θ = π`` by default, the paper's choice for uniform
rotations) and ``N(0, σ_t²)`` for ``t``. ``θ`` rotates the **coordinates**, so the rendered
content turns by ``−θ``; :func:`cryopose.training.inplane.spatial_vae_angle_to_theta` maps it to
the image-rotation convention of :mod:`cryopose.training.rotinv`.

Networks only; the ELBO is in :mod:`cryopose.training.rotinv`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

__all__ = ["SpatialVAEConfig", "SpatialVAE", "coordinate_grid"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpatialVAEConfig:
    """Shape of spatial-VAE.

    Attributes:
        box_size: Image edge ``n`` (pixels, >= 4).
        latent_dim: Content latent dimension (>= 1).
        hidden: Width of the hidden layers of both MLPs (paper: 500).
        generator_layers: Hidden layers of the coordinate MLP (paper: 2).
        inference_layers: Hidden layers of the inference MLP (paper: 2).
        translation: Infer a latent translation as well.
        theta_prior_std: ``σ_θ`` of the angle prior, radians.
        translation_prior_std: ``σ_t`` of the translation prior, in units of half the box.

    Raises:
        ValueError: On construction, for out-of-range values.
    """

    box_size: int
    latent_dim: int = 2
    hidden: int = 500
    generator_layers: int = 2
    inference_layers: int = 2
    translation: bool = False
    theta_prior_std: float = 3.141592653589793
    translation_prior_std: float = 0.1

    def __post_init__(self):
        if int(self.box_size) < 4 or int(self.latent_dim) < 1 or int(self.hidden) < 1:
            raise ValueError(f"bad spatial-VAE shape: box {self.box_size}, latent {self.latent_dim}, hidden {self.hidden}")
        if not (self.theta_prior_std > 0 and self.translation_prior_std > 0):
            raise ValueError("prior standard deviations must be positive")


def coordinate_grid(n: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Pixel coordinates ``(n·n, 2)`` as ``(x, y)`` in units of ``n / 2`` pixels, origin at ``n // 2``
    (row-major over ``(y, x)``, the layout of a flattened image)."""
    c = (torch.arange(n, dtype=dtype, device=device) - n // 2) / (n / 2.0)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


class _Generator(nn.Module):
    def __init__(self, config: SpatialVAEConfig):
        super().__init__()
        h = config.hidden
        self.coord = nn.Linear(2, h)
        self.latent = nn.Linear(config.latent_dim, h, bias=False)
        layers: list[nn.Module] = []
        for _ in range(config.generator_layers - 1):
            layers += [nn.Tanh(), nn.Linear(h, h)]
        layers += [nn.Tanh(), nn.Linear(h, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, coords: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``coords (B, P, 2)``, ``z (B, Z)`` → intensities ``(B, P)``."""
        return self.net(self.coord(coords) + self.latent(z)[:, None, :])[..., 0]


class SpatialVAE(nn.Module):
    """Inference MLP + coordinate generator (Bepler et al. 2019).

    ``forward(x, generator)`` with ``x`` ``(B, n, n)`` samples the posterior (means in eval mode)
    and returns a dict with ``recon (B, n, n)``, ``z_mu, z_logstd (B, Z)``,
    ``theta_mu, theta_logstd (B,)``, ``t_mu, t_logstd (B, 2)`` (zeros without translation).
    """

    def __init__(self, config: SpatialVAEConfig):
        super().__init__()
        self.config = config
        n = config.box_size
        self.n_out = config.latent_dim + 1 + (2 if config.translation else 0)
        layers: list[nn.Module] = [nn.Flatten()]
        d_in = n * n
        for _ in range(config.inference_layers):
            layers += [nn.Linear(d_in, config.hidden), nn.Tanh()]
            d_in = config.hidden
        layers.append(nn.Linear(d_in, 2 * self.n_out))
        self.inference = nn.Sequential(*layers)
        self.generator = _Generator(config)
        self.register_buffer("coords", coordinate_grid(n), persistent=False)

    def posterior(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Means and log standard deviations of ``q(z, θ, t | x)``."""
        out = self.inference(x)
        mu, logstd = out[:, : self.n_out], out[:, self.n_out:].clamp(-10.0, 5.0)
        zd = self.config.latent_dim
        res = {"theta_mu": mu[:, 0], "theta_logstd": logstd[:, 0],
               "z_mu": mu[:, 1:1 + zd], "z_logstd": logstd[:, 1:1 + zd]}
        if self.config.translation:
            res["t_mu"], res["t_logstd"] = mu[:, 1 + zd:], logstd[:, 1 + zd:]
        else:
            zeros = torch.zeros(x.shape[0], 2, dtype=x.dtype, device=x.device)
            res["t_mu"], res["t_logstd"] = zeros, zeros
        return res

    def render(self, z: torch.Tensor, theta: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``(B, n, n)`` of content ``z`` with coordinates rotated by ``θ`` (and shifted by ``t``)."""
        n = self.config.box_size
        c, s = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        x, y = self.coords[None, :, 0], self.coords[None, :, 1]
        xr = c * x - s * y
        yr = s * x + c * y
        coords = torch.stack([xr, yr], dim=-1)
        if t is not None:
            coords = coords + t[:, None, :]
        return self.generator(coords, z).view(-1, n, n)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """:meth:`posterior` of ``x`` plus ``"recon"``, the ``(B, n, n)`` image rendered from a sample
        of it (reparameterised, drawn with ``generator``; the means in eval mode)."""
        post = self.posterior(x)

        def sample(mu, logstd):
            if not self.training:
                return mu
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
            return mu + torch.exp(logstd) * eps

        z = sample(post["z_mu"], post["z_logstd"])
        theta = sample(post["theta_mu"], post["theta_logstd"])
        t = sample(post["t_mu"], post["t_logstd"]) if self.config.translation else None
        post["recon"] = self.render(z, theta, t)
        return post

    def n_parameters(self) -> int:
        """Trainable parameters (inference network and generator)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
