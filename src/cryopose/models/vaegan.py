"""VAE-GAN of Miolane et al. for the latent geometry of cryo-EM images.

Follows Section 3.1 of Miolane, Poitevin, Li, Holmes, "Estimation of orientation and camera
parameters from cryo-electron microscopy images with variational autoencoders and generative
adversarial networks", CVPR Workshops 2020, which builds on the VAE-GAN of Larsen et al.
(ICML 2016):

* **encoder** ``q(z | x) = N(μ(x), diag σ²(x))``: strided 4×4 convolutions with batch
  normalisation and leaky ReLUs, halving the image at each layer down to 4×4 (or 5×5 for odd
  sizes, see :func:`conv_plan`), then two linear maps to ``μ`` and ``log σ²`` of dimension
  ``L`` (3 or 4 in the paper);
* **decoder** ``p(x | z)``: a linear map to a 4×4 feature map, then transposed convolutions
  (``decoder_depth`` of them; extra depth adds stride-1 refinement layers) back to the image;
  it outputs logits, and the reconstruction loss is the binary cross-entropy against the
  image scaled to [0, 1];
* **discriminator**: the encoder's convolutional trunk with a single logit output.

The loss (one minibatch; sums over pixels, means over the batch):

``L = L_rec(BCE) + λ_reg · KL(q(z|x) ‖ N(0, I)) + λ_GAN · L_GAN + λ_cone · mean (μ₁² + μ₂² − μ₃²)²``

where ``L_GAN`` is the generator's non-saturating loss on reconstructions and on decodings of
prior samples, and the cone term (λ_cone = 1 in the paper) asks the latent means to lie on the
cone ``μ₁² + μ₂² = μ₃²`` — in-plane rotation then moves an image around the cone's axis and
defocus along it. The losses are computed in :mod:`cryopose.training.latent_losses`; this module
holds only the networks. No physics inside (:mod:`cryopose.models` rule).

Implementation note: convolutions run in ``channels_last`` memory format, several times faster
on CPUs (oneDNN).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

__all__ = ["VAEGANConfig", "conv_plan", "VAEEncoder", "VAEDecoder", "Discriminator", "VAEGAN"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEGANConfig:
    """Shape of the VAE-GAN networks.

    Attributes:
        box_size: Edge ``n`` of the input images, pixels (>= 8).
        latent_dim: Dimension ``L`` of the Gaussian latent (paper: 3 or 4; >= 3 for the cone).
        channels: Filters of the first convolution; each later one doubles, capped at
            ``8 · channels``.
        decoder_depth: Number of (transposed) convolution layers of the decoder (>= the
            number of up-samplings that :func:`conv_plan` needs; extra layers are stride-1).
        discriminator_channels: Filters of the discriminator's first convolution.

    Raises:
        ValueError: On construction, for a box below 8 px, ``latent_dim < 3`` or a decoder too
            shallow to reach the box.
    """

    box_size: int
    latent_dim: int = 3
    channels: int = 16
    decoder_depth: int = 4
    discriminator_channels: int = 8

    def __post_init__(self):
        if int(self.box_size) < 8:
            raise ValueError(f"VAE-GAN needs images of at least 8 px, got {self.box_size}")
        if int(self.latent_dim) < 3:
            raise ValueError(f"latent_dim must be >= 3 (the cone needs three axes), got {self.latent_dim}")
        n_up = len(conv_plan(int(self.box_size))) - 1
        if int(self.decoder_depth) < n_up:
            raise ValueError(f"decoder_depth must be >= {n_up} for {self.box_size} px images, "
                             f"got {self.decoder_depth}")


def conv_plan(box_size: int) -> list[int]:
    """Feature-map edges of the encoder: ``[n, ceil(n/2), ...]`` down to an edge of at most 5.

    Each step is a 4×4 convolution of stride 2 and padding 1 (even edge) or a 3×3 one of
    stride 2 and padding 1 (odd edge), so ``m → ceil(m/2)``; the decoder mirrors it.
    """
    sizes = [int(box_size)]
    while sizes[-1] > 5:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def _down(c_in: int, c_out: int, m: int, *, batch_norm: bool) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 4 if m % 2 == 0 else 3, stride=2, padding=1, bias=not batch_norm)
    layers: list[nn.Module] = [conv]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


def _widths(n_layers: int, channels: int) -> list[int]:
    return [min(channels * 2**i, channels * 8) for i in range(n_layers)]


class _Trunk(nn.Module):
    """Strided conv trunk ``(B, 1, n, n) → (B, C·m·m)`` features."""

    def __init__(self, box_size: int, channels: int, *, batch_norm: bool):
        super().__init__()
        plan = conv_plan(box_size)
        widths = _widths(len(plan) - 1, channels)
        layers: list[nn.Module] = []
        c_in = 1
        for m, c in zip(plan[:-1], widths):
            layers += _down(c_in, c, m, batch_norm=batch_norm)
            c_in = c
        self.net = nn.Sequential(*layers)
        self.out_features = c_in * plan[-1] ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x[:, None]
        x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x).flatten(1)


class VAEEncoder(nn.Module):
    """Images ``(B, n, n)`` → ``(μ, log σ²)``, each ``(B, L)``."""

    def __init__(self, config: VAEGANConfig):
        super().__init__()
        self.trunk = _Trunk(config.box_size, config.channels, batch_norm=True)
        self.mu = nn.Linear(self.trunk.out_features, config.latent_dim)
        self.logvar = nn.Linear(self.trunk.out_features, config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)``, each ``(B, L)``, of images ``(B, n, n)``; log σ² clamped to [−12, 8]."""
        h = self.trunk(x)
        return self.mu(h), self.logvar(h).clamp(-12.0, 8.0)


class VAEDecoder(nn.Module):
    """Latents ``(B, L)`` → image logits ``(B, n, n)`` (apply a sigmoid for [0, 1] images)."""

    def __init__(self, config: VAEGANConfig):
        super().__init__()
        plan = conv_plan(config.box_size)
        n_up = len(plan) - 1
        widths = _widths(n_up, config.channels)[::-1]
        self.start = (widths[0] if widths else config.channels, plan[-1])
        self.fc = nn.Linear(config.latent_dim, self.start[0] * plan[-1] ** 2)
        layers: list[nn.Module] = [nn.LeakyReLU(0.2, inplace=True)]
        c_in = self.start[0]
        extra = int(config.decoder_depth) - n_up
        for i in range(extra):  # stride-1 refinements at the coarsest scale
            layers += [nn.Conv2d(c_in, c_in, 3, padding=1, bias=False), nn.BatchNorm2d(c_in),
                       nn.LeakyReLU(0.2, inplace=True)]
        rev = plan[::-1]
        for j in range(n_up):
            m_out = rev[j + 1]
            last = j == n_up - 1
            c_out = 1 if last else widths[j + 1]
            even = m_out % 2 == 0
            # ConvTranspose2d: out = (m-1)·2 − 2·1 + k + output_padding
            k, op = (4, 0) if even else (3, 0)
            if not even and (rev[j] - 1) * 2 - 2 + 3 != m_out:
                op = 1
            layers.append(nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=1, output_padding=op, bias=last))
            if not last:
                layers += [nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.box_size = config.box_size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Image logits ``(B, n, n)`` of latents ``(B, L)``."""
        c, m = self.start
        h = self.fc(z).view(-1, c, m, m).contiguous(memory_format=torch.channels_last)
        out = self.net(h)[:, 0]
        if out.shape[-1] != self.box_size:  # pragma: no cover - guarded by conv_plan
            raise RuntimeError(f"decoder produced {out.shape[-1]} px, expected {self.box_size}")
        return out


class Discriminator(nn.Module):
    """Images ``(B, n, n)`` in [0, 1] → logits ``(B,)`` (real = positive)."""

    def __init__(self, config: VAEGANConfig):
        super().__init__()
        self.trunk = _Trunk(config.box_size, config.discriminator_channels, batch_norm=False)
        self.head = nn.Linear(self.trunk.out_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` (real = positive) of images ``(B, n, n)`` in [0, 1]."""
        return self.head(self.trunk(x))[:, 0]


class VAEGAN(nn.Module):
    """Encoder, decoder and discriminator of the VAE-GAN (Miolane et al. 2020, Sec. 3.1).

    Args:
        config: :class:`VAEGANConfig`.
    """

    def __init__(self, config: VAEGANConfig):
        super().__init__()
        self.config = config
        self.encoder = VAEEncoder(config)
        self.decoder = VAEDecoder(config)
        self.discriminator = Discriminator(config)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``z = μ + σ · ε`` with ``ε ~ N(0, I)`` drawn from ``generator``."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """``(logits of the reconstruction (B, n, n), μ, log σ², z)``."""
        mu, logvar = self.encoder(x)
        z = self.reparameterize(mu, logvar, generator) if self.training else mu
        return self.decoder(z), mu, logvar, z

    def n_parameters(self) -> int:
        """Number of trainable parameters (all three networks)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

