"""Preprocessing of raw particles: noise spectrum and whitening, contrast, and centring.

Particles as a picker hands them over are off-centre (no origins), their noise is coloured
(more power at low frequency: ice, detector), and their contrast may be either sign. The
functions here act on working-box images already normalised by
:mod:`cryopose.data.transforms` and are used by :class:`cryopose.data.dataset.ParticleDataset`
and :func:`cryopose.pipelines.abinitio.run_abinitio`:

* :func:`estimate_noise_spectrum` — the radially averaged noise power spectrum, measured on the
  background (pixels outside the particle circle), as RELION's initial σ² noise model and
  cryoSPARC's noise whitening do;
* :func:`whitening_filter` — ``W(k) = (P(|k|) / mean P)^(-1/2)``; images are multiplied by ``W``
  in Fourier space and so are the model's CTFs, so the residual the training minimises is the
  white-noise residual of the whitened data (the negative log-likelihood of Gaussian noise of
  spectrum ``P``, up to a constant);
* :func:`centre_particles` — translational alignment of every image to a rotationally
  symmetric reference (the rotational average of the aligned, CTF-corrected images), CTF-aware,
  by FFT cross-correlation, iterated; it also tells the contrast: the sign of the correlation
  of the images with the first, positive, blob.

Conventions (:mod:`cryopose.conventions`): images ``(B, n, n)`` ``(y, x)``, centred transforms
with DC at ``n // 2``, origins in pixels with RELION's sign (the particle's content sits at
``−origin``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..fourier import centered_fft2, centered_ifft2, frequency_indices, radial_index_2d
from ..projection import origin_phases
from .transforms import circular_mask

__all__ = ["NoiseSpectrum", "estimate_noise_spectrum", "whitening_filter", "CentringResult", "centre_particles",
           "radial_average"]


@dataclasses.dataclass(frozen=True)
class NoiseSpectrum:
    """Radially averaged noise power spectrum of working-box images.

    Attributes:
        power: ``(n // 2 + 1,)`` mean power ``|Y(k)|² / n²`` per pixel-variance unit in each
            integer shell ``round(|k|) = 0 .. n // 2`` (cycles per box); shell 0 is the DC.
        box_size: Working box ``n`` in pixels.
        pixel_size_angstrom: Working pixel size in Å (shell ``j`` is ``j / (n · p)`` Å⁻¹).
    """

    power: tuple[float, ...]
    box_size: int
    pixel_size_angstrom: float

    def frequencies_per_angstrom(self) -> np.ndarray:
        """``(n // 2 + 1,)`` shell frequencies in Å⁻¹."""
        return np.arange(len(self.power)) / (self.box_size * self.pixel_size_angstrom)

    def colour_ratio(self) -> float:
        """Power at low frequency (shells 1 .. n/8) over power at high (n/4 .. n/2): 1 for white noise."""
        p = np.asarray(self.power)
        n = self.box_size
        lo = p[1:max(2, n // 8 + 1)].mean()
        hi = p[max(1, n // 4):n // 2 + 1].mean()
        return float(lo / hi) if hi > 0 else float("inf")


def radial_average(values: torch.Tensor, *, max_shell: int | None = None) -> torch.Tensor:
    """Mean of a centred ``(..., n, n)`` array in integer shells ``round(|k|)``: ``(..., n//2 + 1)``.

    Frequencies beyond ``n // 2`` (the corners) are left out.
    """
    n = values.shape[-1]
    shells = radial_index_2d(n, device=values.device).round().long().reshape(-1)
    m = (n // 2 + 1) if max_shell is None else int(max_shell) + 1
    keep = shells < m
    flat = values.reshape(*values.shape[:-2], -1)[..., keep]
    idx = shells[keep]
    total = torch.zeros(*values.shape[:-2], m, dtype=flat.dtype, device=values.device)
    total.index_add_(-1, idx, flat)
    count = torch.zeros(m, dtype=flat.dtype, device=values.device).index_add_(0, idx, torch.ones_like(idx, dtype=flat.dtype))
    return total / count.clamp_min(1)


def estimate_noise_spectrum(images: torch.Tensor, *, pixel_size_angstrom: float,
                            particle_radius_fraction: float = 0.75) -> NoiseSpectrum:
    """Noise power spectrum from the background of images ``(B, n, n)``.

    The pixels outside a circle of ``particle_radius_fraction · n / 2`` pixels are kept (the
    rest set to 0, the kept region's mean removed per image), their power spectrum computed and
    radially averaged, and divided by the kept fraction of the box, so that white noise of
    variance σ² per pixel gives ``σ²`` in every shell. The mask's spectrum smooths the estimate
    over about ``n / (n − 2r)`` shells; the particles' own signal leaks in only through
    molecules that reach beyond the circle (neighbours), as in RELION's and cryoSPARC's estimates.

    Args:
        images: ``(B, n, n)`` images, ``B >= 1`` (normalised, at the working box).
        pixel_size_angstrom: Their pixel size in Å.
        particle_radius_fraction: Particle circle as a fraction of ``n / 2``, in ``(0, 1)``.

    Returns:
        :class:`NoiseSpectrum`.

    Raises:
        ValueError: No images, a fraction outside ``(0, 1)``, or a background that is constant.
    """
    if images.ndim != 3 or images.shape[0] < 1:
        raise ValueError(f"need images (B, n, n) with B >= 1, got {tuple(images.shape)}")
    if not 0 < particle_radius_fraction < 1:
        raise ValueError(f"particle_radius_fraction must be in (0, 1), got {particle_radius_fraction}")
    n = images.shape[-1]
    x = images.double()
    outside = 1.0 - circular_mask(n, particle_radius_fraction * n / 2.0, dtype=torch.float64)
    frac = float(outside.mean())
    mean = (x * outside).sum(dim=(-2, -1)) / outside.sum()
    bg = (x - mean[:, None, None]) * outside
    power = centered_fft2(bg).abs().square().mean(dim=0) / (n * n * frac)
    radial = radial_average(power)
    if not bool((radial[1:] > 0).all()):
        raise ValueError("the image background is constant; cannot estimate a noise spectrum")
    radial[0] = radial[1]  # the DC of a mean-free background is 0: take the first shell's
    return NoiseSpectrum(power=tuple(float(v) for v in radial), box_size=n,
                         pixel_size_angstrom=float(pixel_size_angstrom))


def whitening_filter(spectrum: NoiseSpectrum | tuple | list, box_size: int) -> torch.Tensor:
    """Centred ``(n, n)`` filter ``W(k) = (P(|k|) / mean P)^(-1/2)`` that makes the noise white.

    ``P`` is interpolated linearly between shells; frequencies beyond the last shell (the
    corners) take its value. Normalised by the mean power over shells ``1 .. n/2`` so that the
    whitened noise keeps about the same variance.

    Args:
        spectrum: A :class:`NoiseSpectrum` or its ``power`` sequence (``n // 2 + 1`` shells).
        box_size: ``n``, the box the spectrum was measured at.

    Returns:
        ``(n, n)`` float32 tensor, positive.

    Raises:
        ValueError: If the spectrum has the wrong length or non-positive values.
    """
    power = torch.as_tensor(spectrum.power if isinstance(spectrum, NoiseSpectrum) else spectrum, dtype=torch.float64)
    n = int(box_size)
    if power.ndim != 1 or power.shape[0] != n // 2 + 1:
        raise ValueError(f"a noise spectrum for a {n}-px box has {n // 2 + 1} shells, got {tuple(power.shape)}")
    if not bool((power > 0).all()):
        raise ValueError("the noise spectrum must be positive in every shell")
    power = power / power[1:].mean()
    r = radial_index_2d(n).double().clamp(max=n // 2)
    lo = r.floor().long()
    hi = (lo + 1).clamp(max=n // 2)
    t = r - lo
    p = power[lo] * (1 - t) + power[hi] * t
    return p.rsqrt().float()


@dataclasses.dataclass(frozen=True)
class CentringResult:
    """Outcome of :func:`centre_particles`.

    Attributes:
        shifts_px: ``(N, 2)`` RELION origins ``(x, y)`` in working pixels that centre each image
            on the reference.
        contrast_sign: ``+1`` when the particles are brighter than the background (as cryopose
            expects), ``−1`` when they are dark.
        contrast_fraction: Fraction of the particles whose best correlation with the first,
            positive, blob is positive (near 1 bright, near 0 dark, near 0.5 undecided).
        reference_profile: ``(n // 2 + 1,)`` radial Fourier profile of the final reference.
    """

    shifts_px: torch.Tensor
    contrast_sign: int
    contrast_fraction: float
    reference_profile: torch.Tensor


def _blob_profile(n: int, radius_px: float) -> torch.Tensor:
    """Radial Fourier profile of the projection of a uniform ball of ``radius_px`` pixels."""
    k = torch.arange(n // 2 + 1, dtype=torch.float64) / n  # cycles per pixel
    # projection of a ball is a 2D "hemisphere" disc; its transform ~ j_1-like; use a Gaussian
    # of the same second moment (smooth, positive, no ringing)
    sigma = radius_px / math.sqrt(5.0)
    return torch.exp(-2.0 * (math.pi * sigma * k) ** 2)


def centre_particles(dataset, *, iterations: int = 3, max_shift_fraction: float = 0.25,
                     resolution_fraction: float = 0.5, initial_radius_fraction: float = 0.5,
                     chunk: int = 1000, progress: bool = False) -> CentringResult:
    """Centre every particle on the rotational average of the data (reference-free 2D centring).

    Each image ``Y`` is cross-correlated (FFT, whitened data as the dataset gives them) with its
    CTF times a rotationally symmetric reference ``B(|k|)``, over ``1 <= |k| <=
    resolution_fraction · n / 2``; the peak within ``max_shift_fraction · n`` pixels of the
    centre gives its origin. The reference then becomes the radial average of the Wiener
    (CTF-corrected) mean of the centred images, and the alignment is repeated. The first
    reference is a Gaussian blob with the second moment of a ball of
    ``initial_radius_fraction · n / 2`` pixels; the first pass takes the peak of ``|CC|``, and
    the sign at the peaks tells the contrast (the data are flipped for the later passes when
    they are dark). This is the translational part of reference-free 2D classification
    (RELION's ``--center_classes``, EMAN2's centring on the rotational average), reduced to
    one class, which suffices to take the picker's offsets (several pixels) down to about a
    pixel of the working box before ab initio.

    Args:
        dataset: :class:`cryopose.data.dataset.ParticleDataset` (``images``, ``batch``,
            ``box_size``); its own origins are ignored.
        iterations: Alignment passes (>= 1).
        max_shift_fraction: Largest origin per axis, as a fraction of the box.
        resolution_fraction: Band used, as a fraction of Nyquist.
        initial_radius_fraction: Radius of the first blob, as a fraction of ``n / 2``.
        chunk: Images per batch.
        progress: Show a progress bar.

    Returns:
        :class:`CentringResult`.

    Raises:
        ValueError: ``iterations < 1`` or fractions outside ``(0, 1]``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for name, v in (("max_shift_fraction", max_shift_fraction), ("resolution_fraction", resolution_fraction),
                    ("initial_radius_fraction", initial_radius_fraction)):
        if not 0 < v <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {v}")
    n = dataset.box_size
    n_total = len(dataset)
    r = radial_index_2d(n)
    band = ((r >= 1) & (r <= resolution_fraction * n / 2.0)).float()
    shells = r.round().long().clamp(max=n // 2)
    c = frequency_indices(n)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    lim = max_shift_fraction * n
    window = ((xx.abs() <= lim) & (yy.abs() <= lim)).reshape(-1)
    profile = _blob_profile(n, initial_radius_fraction * n / 2.0).float()
    shifts = torch.zeros(n_total, 2)
    sign, positive_fraction = 1, float("nan")
    for it in range(iterations):
        num, den, n_positive = _align_pass(dataset, profile[shells] * band, sign, shifts, window, xx, yy,
                                           first=it == 0, chunk=chunk,
                                           desc=f"centring {it + 1}/{iterations}", progress=progress)
        if it == 0:
            positive_fraction = n_positive / n_total
            sign = 1 if positive_fraction >= 0.5 else -1
            if sign < 0:
                # the first pass averaged the images as they came; flip the reference with them
                num = -num
        profile = _next_profile(num, den, profile)
    return CentringResult(shifts_px=shifts, contrast_sign=sign, contrast_fraction=float(positive_fraction),
                          reference_profile=profile)


def _align_pass(dataset, ref2d: torch.Tensor, sign: int, shifts: torch.Tensor, window: torch.Tensor,
                xx: torch.Tensor, yy: torch.Tensor, *, first: bool, chunk: int, desc: str, progress: bool):
    """One centring pass: every image's origin against the reference ``ref2d`` ``(n, n)``
    (centred Fourier grid), written into ``shifts`` ``(N, 2)`` px; the peak of ``|CC|`` on the
    ``first`` pass, of ``CC`` after.

    Returns:
        ``(Σ C·Y of the centred images (n, n) complex, Σ C² (n, n), number of images whose
        peak is positive — counted on the first pass only)``.
    """
    from tqdm import tqdm

    n, n_total = dataset.box_size, len(dataset)
    num = torch.zeros(n, n, dtype=torch.complex64)
    den = torch.zeros(n, n)
    n_positive = 0
    for s in tqdm(range(0, n_total, chunk), desc=desc, disable=not progress):
        idx = np.arange(s, min(s + chunk, n_total))
        batch = dataset.batch(idx)
        y = centered_fft2(batch.images) * sign
        ctf = batch.ctf if batch.ctf is not None else torch.ones(1, n, n)
        # CC(x) = Σ_k Y(k) conj(C B)(k) e^{2πi k·x/n}: peaks at the content's displacement d
        cc = centered_ifft2(y * ctf * ref2d).real.reshape(len(idx), -1)
        score = cc.abs() if first else cc
        score = score.masked_fill(~window, float("-inf"))
        best = score.argmax(dim=1)
        if first:
            n_positive += int((cc[torch.arange(len(idx)), best] > 0).sum())
        d = torch.stack([xx.reshape(-1)[best], yy.reshape(-1)[best]], dim=1)
        shifts[idx] = -d  # the origin that moves content at d back (projection.origin_phases)
        centred = y * origin_phases(-d, n).conj()
        num += (centred * ctf).sum(dim=0)
        den += (ctf * ctf).sum(dim=0) if batch.ctf is not None else float(len(idx))
    return num, den, n_positive


def _next_profile(num: torch.Tensor, den: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
    """The next reference's radial profile: the radial average of the Wiener mean ``num / (den +
    0.1 <den>)``, scaled to a peak of 1 at low frequency (``profile`` kept if that peak is 0)."""
    n = num.shape[-1]
    mean = (num / (den + 0.1 * den.mean())).real
    prof = radial_average(mean[None].double())[0].float()
    prof[0] = prof[1]
    peak = float(prof[1:max(2, n // 8)].abs().max())
    return prof / peak if peak > 0 else profile
