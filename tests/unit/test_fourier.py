"""Fourier cropping of images: physics (band-limited signals, the origin) and the two code paths."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.fourier import centered_fft2, centered_ifft2, fourier_crop_2d, fourier_downsample_images


def _centred_crop_reference(x: torch.Tensor, m: int) -> torch.Tensor:
    """The definition: crop the centred spectrum to m × m, invert, keep the real part."""
    n = x.shape[-1]
    return centered_ifft2(fourier_crop_2d(centered_fft2(x), m)).real * (m * m) / (n * n)


@pytest.mark.parametrize("n,m", [(64, 32), (64, 31), (63, 32), (63, 31), (34, 33), (65, 64), (9, 2), (8, 1)])
def test_real_path_equals_centred_crop(n, m):
    g = torch.Generator().manual_seed(n * 100 + m)
    x = torch.randn(3, 2, n, n, generator=g, dtype=torch.float64)
    out = fourier_downsample_images(x, m)
    assert out.shape == (3, 2, m, m) and out.dtype == torch.float64
    torch.testing.assert_close(out, _centred_crop_reference(x, m), atol=1e-12, rtol=0)
    # complex input keeps the centred path
    torch.testing.assert_close(fourier_downsample_images(x.to(torch.complex128), m),
                               _centred_crop_reference(x.to(torch.complex128), m), atol=1e-12, rtol=0)


@pytest.mark.parametrize("n,m", [(64, 32), (63, 32), (48, 21)])
def test_band_limited_image_is_resampled_exactly_about_the_origin(n, m):
    """A cosine below the coarse Nyquist, phased about pixel n//2, is the same cosine about m//2."""
    ky, kx, phase = 3, -5, 0.7  # cycles per box, |k| < m / 2
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64),
                            indexing="ij")
    fine = torch.cos(2 * math.pi * (ky * (yy - n // 2) + kx * (xx - n // 2)) / n + phase) + 0.25
    yc, xc = torch.meshgrid(torch.arange(m, dtype=torch.float64), torch.arange(m, dtype=torch.float64),
                            indexing="ij")
    coarse = torch.cos(2 * math.pi * (ky * (yc - m // 2) + kx * (xc - m // 2)) / m + phase) + 0.25
    torch.testing.assert_close(fourier_downsample_images(fine, m), coarse, atol=1e-12, rtol=0)


def test_downsample_rejects_upsampling_and_passes_same_size():
    x = torch.randn(2, 16, 16)
    assert fourier_downsample_images(x, 16) is x
    with pytest.raises(ValueError, match="cannot Fourier-crop a 16-px box to 20 px"):
        fourier_downsample_images(x, 20)
