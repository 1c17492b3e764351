"""Rotation-invariant autoencoder of Bibas et al. for in-plane angles and canonical images.

Follows Bibas, Weiss-Dicker, Cohen, Cahan, Greenspan, "Learning Rotation Invariant Features
for Cryogenic Electron Microscopy Image Reconstruction" (2021):

* the **encoder** maps an image to a content code ``c`` (meant to be invariant to in-plane
  rotation) and one in-plane angle ``θ̂``; the angle head outputs a 2-vector whose direction is
  ``(cos θ̂, sin θ̂)`` (no wrap-around discontinuity);
* the **decoder** renders the canonical, unrotated image from ``c`` alone;
* a **critic** (Wasserstein, with gradient penalty) regularises the content codes.

The paper trains it by rotating each training image by a random angle and asking for that
angle and for the unrotated image (:mod:`cryopose.training.rotinv_losses` has the losses). Our
reading of its "Wasserstein critic": a WAE-GAN critic (Tolstikhin et al. 2018) between the
content codes and a standard normal prior — an image-space critic would push the decoder
towards the training images' noise. Angle convention: ``θ`` is the counter-clockwise image
rotation of :func:`cryopose.data.transforms.rotate_images` (``ψ`` decreases by ``θ``).

Networks only; no physics inside.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

__all__ = ["RotInvConfig", "RotInvAutoencoder", "LatentCritic"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RotInvConfig:
    """Shape of the rotation-invariant autoencoder.

    Attributes:
        box_size: Image edge ``n`` (pixels, >= 16, divisible by 8).
        content_dim: Dimension of the content code.
        channels: Filters of the first convolutions (then ×2 and ×4 in the strided ones).
        hidden: Width of the fully connected layer after the convolutions.
        critic_hidden: Width of the latent critic's two hidden layers.

    Raises:
        ValueError: On construction, for a box not divisible by 8 or below 16 px.
    """

    box_size: int
    content_dim: int = 32
    channels: int = 16
    hidden: int = 256
    critic_hidden: int = 128

    def __post_init__(self):
        if int(self.box_size) < 16 or int(self.box_size) % 8:
            raise ValueError(f"the rotation-invariant autoencoder needs a box of >= 16 px divisible by 8, "
                             f"got {self.box_size} (Fourier-crop or pad the images)")
        if int(self.content_dim) < 1:
            raise ValueError(f"content_dim must be >= 1, got {self.content_dim}")


def _down(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.2, inplace=True)]


class _Encoder(nn.Module):
    def __init__(self, config: RotInvConfig):
        super().__init__()
        c = config.channels
        self.features = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                      nn.LeakyReLU(0.2, inplace=True), *_down(c, c), *_down(c, 2 * c),
                                      *_down(2 * c, 4 * c))
        m = config.box_size // 8
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * c * m * m, config.hidden), nn.LeakyReLU(0.2, inplace=True))
        self.content = nn.Linear(config.hidden, config.content_dim)
        self.angle = nn.Linear(config.hidden, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(self.features(x[:, None].contiguous(memory_format=torch.channels_last)))
        return self.content(h), self.angle(h)


class _Decoder(nn.Module):
    def __init__(self, config: RotInvConfig):
        super().__init__()
        c = config.channels
        self.m = config.box_size // 8
        self.c4 = 4 * c
        self.fc = nn.Sequential(nn.Linear(config.content_dim, config.hidden), nn.LeakyReLU(0.2, inplace=True),
                                nn.Linear(config.hidden, 4 * c * self.m * self.m), nn.LeakyReLU(0.2, inplace=True))
        layers: list[nn.Module] = []
        for c_in, c_out in ((4 * c, 2 * c), (2 * c, c), (c, c)):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        h = self.fc(c).view(-1, self.c4, self.m, self.m).contiguous(memory_format=torch.channels_last)
        return self.net(h)[:, 0]


class LatentCritic(nn.Module):
    """Wasserstein critic on content codes ``(B, D) → (B,)`` (larger = more prior-like)."""

    def __init__(self, config: RotInvConfig):
        super().__init__()
        h = config.critic_hidden
        self.net = nn.Sequential(nn.Linear(config.content_dim, h), nn.LeakyReLU(0.2), nn.Linear(h, h),
                                 nn.LeakyReLU(0.2), nn.Linear(h, 1))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """Critic scores ``(B,)`` of content codes ``(B, D)``."""
        return self.net(c)[:, 0]


class RotInvAutoencoder(nn.Module):
    """Encoder (content code + angle), canonical decoder and latent critic (Bibas et al. 2021).

    ``forward(x)`` with ``x`` of shape ``(B, n, n)`` returns ``(canonical image (B, n, n),
    angle θ̂ (B,) radians in (−π, π], content code (B, D), raw angle vector (B, 2))``.
    """

    def __init__(self, config: RotInvConfig):
        super().__init__()
        self.config = config
        self.encoder = _Encoder(config)
        self.decoder = _Decoder(config)
        self.critic = LatentCritic(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(content code, θ̂ in radians, raw angle vector)``."""
        c, v = self.encoder(x)
        return c, torch.atan2(v[:, 1], v[:, 0]), v

    def forward(self, x: torch.Tensor):
        """``(canonical image (B, n, n), θ̂ (B,) radians, content code (B, D), raw angle vector (B, 2))``."""
        c, theta, v = self.encode(x)
        return self.decoder(c), theta, c, v

    def n_parameters(self) -> int:
        """Trainable parameters of all three networks."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
