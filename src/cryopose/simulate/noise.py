"""Additive white Gaussian noise at a requested signal-to-noise ratio.

**SNR definition** (the one used by ``cryopose simulate --snr``):

``SNR = mean_i var(S_i) / σ²``

where ``S_i`` is the noise-free, CTF-modulated image of particle ``i`` (after shift), its
variance taken over all ``n × n`` pixels of the box (the image mean removed), the mean taken
over the particles of the data set that show the structure (junk excluded), and ``σ`` the
standard deviation of i.i.d. Gaussian noise added to every pixel of every image — **one σ for
the whole data set**. This is the noise of ``relion_project --add_noise --white_noise σ``:
RELION 3.1 adds ``N(0, σ² / (2 n²))`` to the real and imaginary parts of every coefficient of
the (forward-normalised) half transform, which after its inverse FFT is white Gaussian noise
of standard deviation σ per pixel (exactly, except for the few self-conjugate coefficients
whose imaginary part the real inverse FFT drops), so a cryopose simulation and a RELION one
with the σ that cryopose reports have the same noise level (``benchmarks/simulate.py``
measures both). ``SNR_dB = 10 log10(SNR)``.

Because the variance is taken over the whole box (not a particle mask), the SNR depends on
the box size: the same particle in a box twice as large has about a quarter of the per-pixel
signal variance.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError

__all__ = ["snr_from_db", "snr_to_db", "signal_variance", "noise_sigma_for_snr", "add_white_noise", "measure_snr"]


def snr_from_db(snr_db: float) -> float:
    """``10 ** (snr_db / 10)`` (linear SNR from decibels)."""
    value = float(snr_db)
    if not math.isfinite(value):
        raise UserError(f"SNR in dB must be finite, got {snr_db}")
    return 10.0 ** (value / 10.0)


def snr_to_db(snr: float) -> float:
    """``10 log10(snr)`` (decibels from a linear SNR > 0)."""
    return 10.0 * math.log10(snr)


def signal_variance(images: torch.Tensor) -> torch.Tensor:
    """Per-image variance over all pixels (population variance, mean removed).

    Args:
        images: ``(B, n, n)`` images.

    Returns:
        ``(B,)`` float64 variances.
    """
    x = images.reshape(images.shape[0], -1).to(torch.float64)
    return x.var(dim=1, unbiased=False)


def noise_sigma_for_snr(mean_signal_variance: float, snr: float) -> float:
    """Noise standard deviation ``σ = sqrt(mean_signal_variance / snr)``.

    Raises:
        UserError: ``snr`` not positive and finite.
    """
    if not (math.isfinite(snr) and snr > 0):
        raise UserError(f"SNR must be positive, got {snr}")
    return math.sqrt(float(mean_signal_variance) / snr)


def add_white_noise(images: torch.Tensor, sigma: float, *, generator: torch.Generator) -> torch.Tensor:
    """Return ``images + σ · z`` with ``z`` i.i.d. standard normal per pixel (same dtype)."""
    if sigma == 0:
        return images
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return images + sigma * noise


def measure_snr(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """SNR of a simulated set measured from its noise-free and noisy images.

    ``mean_i var(clean_i) / var(noisy − clean)`` (noise variance pooled over all pixels),
    the definition of the module docstring.
    """
    noise = (noisy.to(torch.float64) - clean.to(torch.float64)).reshape(-1)
    return float(signal_variance(clean).mean() / noise.var(unbiased=False))
