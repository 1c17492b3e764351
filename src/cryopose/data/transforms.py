"""Pure preprocessing transforms on image batches ``(B, n, n)`` (torch, no state).

Conventions (:mod:`cryopose.conventions`): images ``(..., y, x)``, origin at ``n // 2``, centred
transforms with DC at ``n // 2``. Contrast is changed only by :func:`invert_contrast`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..fourier import (centered_fft2, centered_ifft2, fourier_downsample_images, frequency_grid_2d,
                       frequency_indices)

__all__ = [
    "Normalization",
    "invert_contrast",
    "downsample",
    "background_mean",
    "background_std",
    "estimate_normalization",
    "normalize",
    "rotate_half_turn",
    "rotate_quarter_turns",
    "rotate_images",
    "low_pass",
    "circular_mask",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Normalization:
    """Image normalisation ``(x − background mean of x) / s`` and optional noise whitening.

    With ``per_image`` (RELION's normalisation, ``relion_preprocess --norm``), ``s`` is each
    image's own background standard deviation, so the background has mean 0 and s.d. 1 in
    every image whatever the ice thickness; otherwise ``s = std`` for all images (the behaviour
    of encoders written before per-image normalisation).

    Attributes:
        std: Global scale (standard deviation of background-subtracted images, working box).
        background_radius: Background is the region outside this radius, as a fraction of
            ``n / 2``; its mean (and, with ``per_image``, its s.d.) is measured per image.
        per_image: Divide by each image's background s.d. instead of ``std``.
        noise_power: Radial noise power spectrum of the normalised images at the working box
            (``n // 2 + 1`` shells, :func:`cryopose.data.preprocess.estimate_noise_spectrum`),
            or ``None``: when given, images and CTFs are whitened with
            :func:`cryopose.data.preprocess.whitening_filter`.
        group_noise_power: Per optics group, ``((rlnOpticsGroup number, power), ...)``, each
            power as ``noise_power`` (RELION's σ² noise model is likewise per optics group:
            detectors, doses and pixel sizes differ between groups): particles of these groups
            are whitened with their group's spectrum, all others with ``noise_power``. ``None``
            when the data have a single group.
    """

    std: float
    background_radius: float = 0.85
    per_image: bool = False
    noise_power: tuple[float, ...] | None = None
    group_noise_power: tuple[tuple[int, tuple[float, ...]], ...] | None = None

    def __post_init__(self):
        if self.noise_power is not None:
            object.__setattr__(self, "noise_power", tuple(float(v) for v in self.noise_power))
        if self.group_noise_power is not None:
            if self.noise_power is None:
                raise ValueError("per-optics-group noise spectra need the pooled noise_power too")
            object.__setattr__(self, "group_noise_power", tuple(
                (int(g), tuple(float(v) for v in power)) for g, power in self.group_noise_power))


def invert_contrast(images: torch.Tensor) -> torch.Tensor:
    """Multiply by −1 (dark particles → bright particles)."""
    return -images


def downsample(images: torch.Tensor, box_size: int) -> torch.Tensor:
    """Fourier-crop ``(B, n, n)`` images to ``(B, m, m)`` (pixel size grows by ``n / m``)."""
    return fourier_downsample_images(images, int(box_size))


def circular_mask(n: int, radius: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(n, n)`` mask: 1 where the distance to ``n // 2`` is below ``radius`` pixels."""
    ky, kx = frequency_grid_2d(n, device=device, dtype=dtype)
    return ((kx * kx + ky * ky) < radius * radius).to(dtype)


def background_mean(images: torch.Tensor, radius_fraction: float = 0.85) -> torch.Tensor:
    """Mean of each image outside a circle of ``radius_fraction · n / 2`` pixels: ``(B,)``."""
    n = images.shape[-1]
    outside = 1.0 - circular_mask(n, radius_fraction * n / 2, device=images.device, dtype=images.dtype)
    if outside.sum() == 0:
        return images.mean(dim=(-2, -1))
    return (images * outside).sum(dim=(-2, -1)) / outside.sum()


def estimate_normalization(images: torch.Tensor, *, background_radius: float = 0.85) -> Normalization:
    """Normalisation from a sample of images ``(B, n, n)`` (already at the working box).

    Raises:
        ValueError: If the sample is empty or constant.
    """
    if images.shape[0] == 0:
        raise ValueError("cannot estimate an image normalisation from zero images")
    x = images - background_mean(images, background_radius)[:, None, None]
    std = float(x.double().std())
    if not (std > 0):
        raise ValueError("the particle images are constant; cannot normalise them")
    return Normalization(std=std, background_radius=background_radius)


def background_std(images: torch.Tensor, radius_fraction: float = 0.85) -> torch.Tensor:
    """Standard deviation of each image outside a circle of ``radius_fraction · n / 2`` pixels: ``(B,)``.

    The whole image is used when the circle leaves no background (tiny boxes).
    """
    n = images.shape[-1]
    outside = 1.0 - circular_mask(n, radius_fraction * n / 2, device=images.device, dtype=images.dtype)
    if outside.sum() < 2:
        return images.flatten(1).std(dim=1)
    mean = (images * outside).sum(dim=(-2, -1)) / outside.sum()
    var = (((images - mean[:, None, None]) * outside).square()).sum(dim=(-2, -1)) / (outside.sum() - 1)
    return var.sqrt()


def normalize(images: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """Subtract each image's background mean and divide by ``norm.std`` (or, with
    ``norm.per_image``, by each image's background s.d.; constant images are left at 0)."""
    x = images - background_mean(images, norm.background_radius)[:, None, None]
    if norm.per_image:
        s = background_std(images, norm.background_radius)
        return x / torch.where(s > 0, s, torch.ones_like(s))[:, None, None]
    return x / norm.std


def rotate_half_turn(images: torch.Tensor) -> torch.Tensor:
    """Rotate images by 180° about pixel ``n // 2``: ``out[y, x] = in[−y, −x]`` (wrapping).

    For even ``n`` the flip is followed by a one-pixel roll so the centre stays at ``n // 2``;
    the row and column at index 0 wrap onto themselves.
    """
    out = torch.flip(images, (-2, -1))
    if images.shape[-1] % 2 == 0:
        out = torch.roll(out, (1, 1), (-2, -1))
    return out


def rotate_quarter_turns(images: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Rotate each image by ``k · 90°`` counter-clockwise in ``(x, y)`` about pixel ``n // 2``.

    Exact (a permutation of pixels, no interpolation): ``out[y, x] = in[R(−k·90°) (x, y)]`` with
    indices taken modulo ``n``, so for even ``n`` the row or column at index 0 wraps onto itself,
    as in :func:`rotate_half_turn`. The projection of a map along RELION rotation ``R`` turned by
    ``θ`` this way is its projection along ``Rz(θ) R``
    (:func:`cryopose.rotations.inplane_rotation`; checked in the tests against the Fourier-slice
    projector).

    Args:
        images: ``(B, n, n)`` square images ``(y, x)``.
        k: Number of quarter turns, an int or a ``(B,)`` integer tensor (any integers; taken
            modulo 4).

    Returns:
        ``(B, n, n)`` tensor.

    Raises:
        ValueError: Non-square images or a ``k`` of the wrong shape.
    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"expected square images (B, n, n), got {tuple(images.shape)}")
    b, n = images.shape[0], images.shape[-1]
    k = torch.as_tensor(k, device=images.device).long()
    if k.ndim == 0:
        k = k.expand(b)
    k = k % 4
    if k.shape != (b,):
        raise ValueError(f"k must be an int or a ({b},) tensor, got shape {tuple(k.shape)}")
    i = torch.arange(n, device=images.device)
    rows, cols = torch.meshgrid(i, i, indexing="ij")
    c2 = 2 * (n // 2)
    # one quarter turn: out[y, x] = in[−x, y] (centred indices), i.e. in[(2c − x) mod n, y]
    src = [(rows, cols), ((c2 - cols) % n, rows), ((c2 - rows) % n, (c2 - cols) % n), (cols, (c2 - rows) % n)]
    out = images.clone()
    for turns in range(1, 4):
        sel = k == turns
        if bool(sel.any()):
            r, cc = src[turns]
            out[sel] = images[sel][:, r, cc]
    return out


def rotate_images(images: torch.Tensor, theta_rad: torch.Tensor, *, mode: str = "bilinear") -> torch.Tensor:
    """Rotate images about pixel ``(n // 2, n // 2)`` by ``θ`` (counter-clockwise in ``(x, y)``).

    Bilinear or bicubic interpolation (``grid_sample``); for multiples of 90° the exact
    :func:`rotate_quarter_turns` turns the same way. A projection along RELION rotation ``R``
    turned by ``θ`` is the projection along ``Rz(θ) R``
    (:func:`cryopose.rotations.inplane_rotation`).

    Args:
        images: ``(B, n, n)`` real images ``(y, x)``.
        theta_rad: ``(B,)`` angles in radians (or a scalar); differentiable.
        mode: ``grid_sample`` interpolation (``"bilinear"`` or ``"bicubic"``).

    Returns:
        ``(B, n, n)``; pixels whose source lies outside the box are 0.
    """
    b, n = images.shape[0], images.shape[-1]
    theta = torch.as_tensor(theta_rad, dtype=images.dtype, device=images.device).expand(b)
    c = frequency_indices(n, device=images.device, dtype=images.dtype)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    # source = Q(−θ) r
    xs = cos * xx + sin * yy
    ys = -sin * xx + cos * yy
    scale = 2.0 / (n - 1)
    grid = torch.stack([(xs + n // 2) * scale - 1.0, (ys + n // 2) * scale - 1.0], dim=-1)
    return F.grid_sample(images[:, None], grid, mode=mode, padding_mode="zeros", align_corners=True)[:, 0]


def low_pass(images: torch.Tensor, radius: float) -> torch.Tensor:
    """Keep centred frequencies with ``|k| < radius`` (cycles per box); hard cut-off."""
    n = images.shape[-1]
    ky, kx = frequency_grid_2d(n, device=images.device, dtype=images.dtype)
    keep = ((kx * kx + ky * ky) < radius * radius).to(images.dtype)
    return centered_ifft2(centered_fft2(images) * keep).real
