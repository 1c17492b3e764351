"""Invariant VAE-GAN for heterogeneity (the thesis among the project's sources): networks only.

Four parts (losses and training in :mod:`cryopose.training.hetero_vaegan`):

* **Invariant encoder** ``q(z | x) = N(μ(x), diag σ²(x))`` (:class:`InvariantEncoder`). The image
  ``x`` ``(n, n)`` is Fourier-transformed and only its amplitude ``|X(k)| / n`` is kept: the
  amplitude of the discrete transform is *exactly* invariant to cyclic integer shifts (a shift
  only multiplies ``X`` by a phase), so no polyphase sampling is needed. The amplitude is read by
  bilinear interpolation on a polar grid ``(r, θ)``, ``r = 0 … n/2 − 1`` pixels (one radius per
  Fourier shell, the outermost shell left out so that every interpolation neighbour lies in
  the symmetric index range ``[−n/2 + 1, n/2 − 1]``) and ``θ = π i / n_θ``, ``i < n_θ`` (half a
  turn suffices: the amplitude of a real image is centrosymmetric). An in-plane rotation of the
  image by ``α`` rotates the amplitude by ``α``, i.e. cyclically shifts the polar grid along
  ``θ`` by ``α n_θ / π`` samples. The polar map goes through convolutions that are *cyclic* in
  ``θ`` (circular padding, stride 1 along ``θ``; zero padding and stride 2 along ``r``), which
  commute with those shifts, and is then pooled (mean and max) over ``θ``: the features are
  exactly invariant to rotations by multiples of ``π / n_θ`` (90° included when ``n_θ`` is
  even) and, through interpolation, approximately to any angle. Why the Fourier amplitude and
  a polar grid rather than Gabor filters or real-space polar sampling: it gives both
  invariances exactly, with one FFT and one ``grid_sample``, at any box; real-space polar
  sampling needs the particle centred, and a Gabor bank is only invariant to the angles it
  samples. What it costs: the phase is lost (an image and its point mirror ``x(−r)``, or
  images with equal power spectra, look alike), which is why the generator is physical and
  the critic judges the same invariant features of real and generated images.
* **Generator** ``z → V(z)`` (:class:`BasisGenerator`): a map per latent through a learned
  basis, ``V(z) = s · m ⊙ (B₀ + Σ_k c_k(z) B_k)``, ``c = MLP(z)``, ``K`` basis volumes
  ``B_k`` ``(n, n, n)``, a soft spherical support ``m`` and a density scale ``s`` set from the
  data. Projection is linear, so a batch of ``B`` latents costs ``K + 1`` volume transforms
  (:func:`cryopose.projection.prepare_volume_ft`, RELION's gridding and padding) and
  ``K + 1`` central slices at the batch's poses (:func:`cryopose.projection.slice_volume_ft`),
  not ``B`` volumes. Images are ``Re F⁻¹[CTF · Σ_k c_k slice_k]`` (no shift: the encoder and
  critic do not see shifts).
* **Noise generator** (:class:`NoiseGenerator`): ``"gaussian"`` adds ``σ ε`` with a trainable
  ``σ = exp(log σ)`` (start 1, the s.d. of whitened, normalised particles); ``"poisson"`` adds
  shot noise in its Gaussian (reparameterised) approximation, ``sqrt(softplus(x + b) / d) ε``,
  with trainable background ``b`` and dose ``d``; ``"none"`` adds nothing (ablation).
* **Critic** (:class:`InvariantCritic`): the same invariant trunk (own weights, no
  normalisation layers, as WGAN-GP asks) and a scalar score; :meth:`InvariantCritic.features`
  gives the pooled features used by the learned-similarity (Larsen et al. 2016) term.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..fourier import centered_fft2, centered_ifft2
from ..projection import prepare_volume_ft, slice_volume_ft
from .volume import spherical_mask

__all__ = ["HeteroVAEGANConfig", "NOISE_MODELS", "polar_amplitude", "InvariantTrunk", "InvariantEncoder",
           "InvariantCritic", "BasisGenerator", "NoiseGenerator", "InvariantVAEGAN"]

#: Noise generators: trainable Gaussian, Poisson (Gaussian approximation), none (ablation).
NOISE_MODELS = ("gaussian", "poisson", "none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeteroVAEGANConfig:
    """Shape of the invariant VAE-GAN.

    Attributes:
        box_size: Working box ``n`` (pixels, >= 8) of images and generated maps.
        zdim: Latent dimension.
        n_theta: Angular samples of the polar grid over half a turn (even, >= 4).
        channels: Filters of the invariant trunk's first convolution (then ×2).
        hidden: Width of the encoder's and critic's hidden layer.
        n_basis: Basis volumes ``K`` of the generator (besides the mean volume).
        generator_hidden: Width of the generator's coefficient MLP.
        mask_radius_fraction: Radius of the generator's soft spherical support, fraction of ``n/2``.
        noise_model: One of :data:`NOISE_MODELS`.
        pad: Padding factor of the projector (2, as RELION).
        basis_init_std: Standard deviation of the basis volumes' random start (parameter
            units; the mean volume starts at 0.05): large enough that the latent changes the
            first fakes visibly, so that the latent-reconstruction term has a signal.

    Raises:
        ValueError: On construction, for values out of range.
    """

    box_size: int
    zdim: int = 8
    n_theta: int = 32
    channels: int = 16
    hidden: int = 128
    n_basis: int = 8
    generator_hidden: int = 64
    mask_radius_fraction: float = 0.9
    noise_model: str = "gaussian"
    pad: int = 2
    basis_init_std: float = 0.02

    def __post_init__(self):
        if int(self.box_size) < 8:
            raise ValueError(f"the VAE-GAN needs a box of at least 8 px, got {self.box_size}")
        if int(self.zdim) < 1:
            raise ValueError(f"zdim must be >= 1, got {self.zdim}")
        if int(self.n_theta) < 4 or int(self.n_theta) % 2:
            raise ValueError(f"n_theta must be even and >= 4, got {self.n_theta}")
        if int(self.n_basis) < 1:
            raise ValueError(f"n_basis must be >= 1, got {self.n_basis}")
        if not 0.0 < float(self.mask_radius_fraction) <= 1.0:
            raise ValueError(f"mask_radius_fraction must be in (0, 1], got {self.mask_radius_fraction}")
        if self.noise_model not in NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {', '.join(NOISE_MODELS)}, got {self.noise_model!r}")


def _polar_grid(n: int, n_theta: int) -> torch.Tensor:
    """``(1, n_r, n_θ, 2)`` ``grid_sample`` coordinates of the polar samples of an ``n × n`` map."""
    r = torch.arange(n // 2, dtype=torch.float64)  # 0 … n/2 − 1
    theta = torch.arange(n_theta, dtype=torch.float64) * (math.pi / n_theta)
    kx = r[:, None] * torch.cos(theta)[None]
    ky = r[:, None] * torch.sin(theta)[None]
    to_grid = lambda k: (k + n // 2) * (2.0 / (n - 1)) - 1.0  # noqa: E731 - align_corners=True
    return torch.stack([to_grid(kx), to_grid(ky)], dim=-1)[None].float()


def polar_amplitude(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Fourier amplitude ``|X(k)| / n`` of images ``(B, n, n)`` on a polar grid → ``(B, 1, n_r, n_θ)``.

    ``grid`` is ``(1, n_r, n_θ, 2)`` from the module's buffer (bilinear, ``align_corners=True``).
    Invariant to cyclic integer shifts; a rotation of the image is a cyclic shift along ``θ``.
    """
    n = images.shape[-1]
    amp = centered_fft2(images).abs()[:, None] / n
    return F.grid_sample(amp, grid.expand(images.shape[0], -1, -1, -1).to(amp.dtype), mode="bilinear",
                         padding_mode="zeros", align_corners=True)


class _CyclicConv(nn.Module):
    """3×3 convolution, circular along ``θ`` (last axis, stride 1), zero-padded along ``r``."""

    def __init__(self, c_in: int, c_out: int, *, stride_r: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=(stride_r, 1), padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 0, 0), mode="circular")
        return self.conv(F.pad(x, (0, 0, 1, 1)))


class InvariantTrunk(nn.Module):
    """Images ``(B, n, n)`` → features ``(B, out_features)`` invariant to shifts and in-plane rotations.

    Polar Fourier amplitude (:func:`polar_amplitude`), three cyclic convolutions (``c``, ``2c``,
    ``2c`` filters; stride 2 along ``r`` in the last two), leaky ReLUs, optional per-image group
    normalisation (statistics over all of ``θ``, so invariance is kept), then the mean and the
    maximum over ``θ``, flattened.
    """

    def __init__(self, box_size: int, n_theta: int, channels: int, *, norm: bool):
        super().__init__()
        n_r = box_size // 2
        self.register_buffer("grid", _polar_grid(box_size, n_theta), persistent=False)
        c = int(channels)
        layers: list[nn.Module] = []
        for c_in, c_out, stride in ((1, c, 1), (c, 2 * c, 2), (2 * c, 2 * c, 2)):
            layers.append(_CyclicConv(c_in, c_out, stride_r=stride))
            if norm:
                layers.append(nn.GroupNorm(min(4, c_out), c_out))
            layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*layers)
        r_out = n_r
        for stride in (1, 2, 2):
            r_out = (r_out - 1) // stride + 1
        self.out_features = 2 * (2 * c) * r_out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Invariant features ``(B, out_features)`` of images ``(B, n, n)``."""
        h = self.net(polar_amplitude(images, self.grid))
        return torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1).flatten(1)


class InvariantEncoder(nn.Module):
    """Images ``(B, n, n)`` → ``(μ, log σ²)``, each ``(B, zdim)``, invariant to shifts and in-plane rotations."""

    def __init__(self, config: HeteroVAEGANConfig):
        super().__init__()
        self.trunk = InvariantTrunk(config.box_size, config.n_theta, config.channels, norm=True)
        self.fc = nn.Sequential(nn.Linear(self.trunk.out_features, config.hidden), nn.LeakyReLU(0.2))
        self.mu = nn.Linear(config.hidden, config.zdim)
        self.logvar = nn.Linear(config.hidden, config.zdim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)`` of images ``(B, n, n)``; ``log σ²`` clamped to [−10, 4]."""
        h = self.fc(self.trunk(images))
        return self.mu(h), self.logvar(h).clamp(-10.0, 4.0)


class InvariantCritic(nn.Module):
    """Wasserstein critic ``(B, n, n) → (B,)`` on the invariant features (larger = more real)."""

    def __init__(self, config: HeteroVAEGANConfig):
        super().__init__()
        self.trunk = InvariantTrunk(config.box_size, config.n_theta, config.channels, norm=False)
        self.fc = nn.Sequential(nn.Linear(self.trunk.out_features, config.hidden), nn.LeakyReLU(0.2))
        self.out = nn.Linear(config.hidden, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Hidden features ``(B, hidden)`` (the learned similarity of Larsen et al. 2016)."""
        return self.fc(self.trunk(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Critic scores ``(B,)``."""
        return self.out(self.features(images))[:, 0]


class BasisGenerator(nn.Module):
    """Latent ``z`` → 3D map ``V(z) = s · m ⊙ (B₀ + Σ_k c_k(z) B_k)`` and its projections.

    Args:
        config: :class:`HeteroVAEGANConfig`.
        generator: Seeded source of the initial basis (i.i.d. Gaussian, s.d. 0.05 for the
            mean volume and ``config.basis_init_std`` for the others; parameter units).
    """

    def __init__(self, config: HeteroVAEGANConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        n, k = int(config.box_size), int(config.n_basis)
        self.box_size, self.pad = n, int(config.pad)
        self.mean = nn.Parameter(0.05 * torch.randn(n, n, n, generator=generator))
        self.basis = nn.Parameter(float(config.basis_init_std) * torch.randn(k, n, n, n, generator=generator))
        h = int(config.generator_hidden)
        self.coefficients = nn.Sequential(nn.Linear(config.zdim, h), nn.LeakyReLU(0.2), nn.Linear(h, h),
                                          nn.LeakyReLU(0.2), nn.Linear(h, k))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("mask", spherical_mask(n, config.mask_radius_fraction * n / 2.0))

    def volumes(self, z: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, n, n, n)`` ``(z, y, x)``, origin ``n // 2``, of latents ``(B, zdim)``."""
        c = self.coefficients(z)
        v = self.mean[None] + torch.einsum("bk,kzyx->bzyx", c, self.basis)
        return v * (self.scale * self.mask)

    def project(self, z: torch.Tensor, rotmats: torch.Tensor, ctf: torch.Tensor | None = None) -> torch.Tensor:
        """Clean images ``(B, n, n)`` of the maps of ``z`` ``(B, zdim)`` at poses ``(B, 3, 3)``.

        ``Re F⁻¹[CTF · (slice(B₀) + Σ_k c_k slice(B_k))] · s`` with the masked basis sliced by
        :func:`cryopose.projection.slice_volume_ft` (the same image as
        :func:`cryopose.projection.project` of ``V(z)``, by linearity). ``ctf`` is ``(B, n, n)``
        on the centred grid (times the whitening filter of whitened data) or ``None``.
        """
        c = self.coefficients(z)
        weights = torch.cat([torch.ones_like(c[:, :1]), c], dim=1)  # (B, K + 1)
        ft = None
        for j, vol in enumerate(torch.cat([self.mean[None], self.basis]).unbind(0)):
            sl = slice_volume_ft(prepare_volume_ft(vol * self.mask, pad=self.pad), rotmats)
            term = weights[:, j, None, None] * sl
            ft = term if ft is None else ft + term
        if ctf is not None:
            ft = ft * ctf.to(ft.real.dtype)
        return centered_ifft2(ft).real * self.scale


class NoiseGenerator(nn.Module):
    """Adds noise with trainable parameters to clean images ``(B, n, n)`` (see the module docstring).

    Args:
        kind: One of :data:`NOISE_MODELS`.
    """

    def __init__(self, kind: str = "gaussian"):
        super().__init__()
        if kind not in NOISE_MODELS:
            raise ValueError(f"noise model must be one of {', '.join(NOISE_MODELS)}, got {kind!r}")
        self.kind = kind
        self.log_sigma = nn.Parameter(torch.zeros(()))
        self.log_dose = nn.Parameter(torch.zeros(()))
        self.background = nn.Parameter(torch.ones(()))

    @property
    def sigma(self) -> float:
        """Current Gaussian noise s.d. (image units)."""
        return float(self.log_sigma.detach().exp())

    def forward(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy images, same shape as ``clean``; differentiable in the noise parameters."""
        if self.kind == "none":
            return clean
        eps = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=clean.device)
        if self.kind == "gaussian":
            return clean + self.log_sigma.exp() * eps
        std = torch.sqrt(F.softplus(clean + self.background) * torch.exp(-self.log_dose) + 1e-6)
        return clean + std * eps


class InvariantVAEGAN(nn.Module):
    """Encoder, generator, noise generator and critic of the invariant VAE-GAN.

    Args:
        config: :class:`HeteroVAEGANConfig`.
        generator: Seeded source of the initial weights (the whole model is initialised inside
            ``torch.random.fork_rng`` seeded from it, so the global RNG is left alone).
    """

    def __init__(self, config: HeteroVAEGANConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.config = config
            self.encoder = InvariantEncoder(config)
            self.generator = BasisGenerator(config, generator=generator)
            self.noise = NoiseGenerator(config.noise_model)
            self.critic = InvariantCritic(config)

    def generator_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder, generator and noise generator (everything but the critic)."""
        return [p for name, p in self.named_parameters() if not name.startswith("critic.")]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)`` ``(B, zdim)`` of images ``(B, n, n)``."""
        return self.encoder(images)

    def generate_images(self, z: torch.Tensor, rotmats: torch.Tensor, ctf: torch.Tensor | None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy generated particles ``(B, n, n)`` of latents ``(B, zdim)`` at poses ``(B, 3, 3)``."""
        return self.noise(self.generator.project(z, rotmats, ctf), generator)
