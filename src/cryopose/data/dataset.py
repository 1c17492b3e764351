"""Particle data at the working box, batch by batch: images, CTFs and shifts for training.

:class:`ParticleDataset` wraps a lazily read :class:`~cryopose.io.particles.ParticleStack` (or any
object with ``len`` and ``[indices] → (B, n, n)`` tensors, e.g. :class:`TensorStack`) and its
:class:`~cryopose.io.particles.ParticleMetadata`. A batch is read, optionally contrast-inverted,
Fourier-cropped to the working box ``m`` (pixel size ``p · n / m``), normalised
(:mod:`cryopose.data.transforms`) and returned with the particles' CTFs evaluated on the
working grid and their shifts converted from Å to working pixels. When the preprocessed data
fit in ``cache_limit_mb`` they are computed once (chunk by chunk, so the source is never held
whole) and kept; otherwise every batch is read from disk.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..conventions import shifts_angstrom_to_pixels
from ..ctf import compute_ctf
from ..errors import UserError
from ..fourier import centered_fft2, centered_ifft2
from .preprocess import CentringResult, NoiseSpectrum, centre_particles, estimate_noise_spectrum, whitening_filter
from .transforms import Normalization, downsample, estimate_normalization, invert_contrast, normalize

__all__ = ["ParticleBatch", "ParticleDataset", "TensorStack", "centre_images", "MIN_GROUP_PARTICLES",
           "GROUP_SAMPLE"]

#: Optics groups with fewer particles share the pooled noise spectrum (a spectrum from fewer
#: backgrounds is noisy at low frequency, where a shell holds few pixels).
MIN_GROUP_PARTICLES = 50
#: Particles per optics group read to estimate its noise spectrum.
GROUP_SAMPLE = 300


class TensorStack:
    """In-memory images ``(N, n, n)`` behaving like a :class:`ParticleStack` (``len``, ``[idx]``)."""

    def __init__(self, images: torch.Tensor):
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be (N, n, n), got {tuple(images.shape)}")
        self.images = images.float()
        self.box_size = int(images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index) -> torch.Tensor:
        return self.images[torch.as_tensor(np.asarray(index), dtype=torch.long)]

    def iter_chunks(self, chunk_size: int):
        """Yield ``(indices, images)`` in order, ``chunk_size`` at a time (as
        :meth:`cryopose.io.particles.ParticleStack.iter_chunks`)."""
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        for start in range(0, len(self), int(chunk_size)):
            idx = np.arange(start, min(start + int(chunk_size), len(self)), dtype=np.int64)
            yield idx, self.images[start:start + idx.size]


@dataclasses.dataclass(frozen=True)
class ParticleBatch:
    """A batch at the working box.

    Attributes:
        indices: ``(B,)`` int64 particle positions in the data set.
        images: ``(B, m, m)`` float32 normalised images.
        ctf: ``(B, m, m)`` CTF on the centred working grid (times the whitening filter when the
            data are whitened), or ``None`` without CTF metadata and whitening.
        shifts_px: ``(B, 2)`` RELION origins in working pixels, or ``None`` without shifts.
    """

    indices: torch.Tensor
    images: torch.Tensor
    ctf: torch.Tensor | None
    shifts_px: torch.Tensor | None

    def to(self, device, *, non_blocking: bool = False) -> "ParticleBatch":
        """The batch with images, CTFs and shifts on ``device`` (``indices`` stay on the CPU)."""
        dev = torch.device(device)

        def move(t):
            return None if t is None else t.to(dev, non_blocking=non_blocking)

        if self.images.device == dev:
            return self
        return ParticleBatch(indices=self.indices, images=move(self.images), ctf=move(self.ctf),
                             shifts_px=move(self.shifts_px))

    def pin_memory(self) -> "ParticleBatch":
        """The batch in page-locked memory (called by a ``DataLoader`` with ``pin_memory=True``)."""
        def pin(t):
            return None if t is None else t.pin_memory()

        return ParticleBatch(indices=self.indices, images=pin(self.images), ctf=pin(self.ctf),
                             shifts_px=pin(self.shifts_px))


class ParticleDataset:
    """Particles preprocessed to a working box.

    Args:
        stack: Image source: ``len(stack)`` and ``stack[indices] → (B, n, n)`` float tensors.
        metadata: Matching metadata (pixel size, optional CTF and shifts).
        box_size: Working box ``m <= n`` (Fourier crop); ``None`` keeps ``n``.
        invert: Invert contrast first (dark particles).
        use_ctf: Evaluate the CTF from ``metadata.ctf`` (ignored when there is none).
        use_shifts: Use ``metadata.shifts_angstrom`` (ignored when there are none).
        normalization: Fixed normalisation (e.g. an encoder's, for ``predict``); by default
            estimated from up to 1,000 particles.
        per_image: When estimating the normalisation: RELION's per-image background
            normalisation (mean 0, s.d. 1 outside the particle circle) instead of one global scale.
        whiten: When estimating the normalisation: also estimate the noise power spectrum from
            the background (:func:`cryopose.data.preprocess.estimate_noise_spectrum`) and
            whiten the images; the CTFs of :meth:`batch` are then multiplied by the same
            filter, so model predictions are whitened with the images. With several optics
            groups (``metadata.optics_group``), each group of at least
            :data:`MIN_GROUP_PARTICLES` particles gets its own spectrum (from up to
            :data:`GROUP_SAMPLE` of its particles), as RELION's noise model.
        cache_limit_mb: Keep the preprocessed images in memory when they fit.
        chunk_size: Images read at a time when caching or estimating.

    Raises:
        UserError: Empty data set, a working box larger than the images or below 8 px.
    """

    def __init__(self, stack, metadata, *, box_size: int | None = None, invert: bool = False,
                 use_ctf: bool = True, use_shifts: bool = True, normalization: Normalization | None = None,
                 per_image: bool = False, whiten: bool = False, cache_limit_mb: float = 1024.0,
                 chunk_size: int = 1000):
        n_src = int(getattr(stack, "box_size", None) or metadata.box_size)
        if len(stack) == 0:
            raise UserError("the particle set is empty")
        if len(stack) != len(metadata):
            raise UserError(f"{len(stack)} images but {len(metadata)} metadata rows")
        m = n_src if box_size is None else int(box_size)
        if m > n_src:
            raise UserError(f"working box {m} px is larger than the images ({n_src} px)")
        if m < 8:
            raise UserError(f"working box {m} px is too small (at least 8 px)")
        self.stack, self.metadata = stack, metadata
        self.source_box_size = n_src
        self.box_size = m
        self.pixel_size_angstrom = float(metadata.pixel_size_angstrom) * n_src / m
        self.invert = bool(invert)
        self.ctf = metadata.ctf if use_ctf else None
        self.shifts_angstrom = metadata.shifts_angstrom if use_shifts else None
        self.chunk_size = int(chunk_size)
        self._cache: torch.Tensor | None = None
        if normalization is None:
            sample = np.unique(np.linspace(0, len(stack) - 1, min(len(stack), 1000)).round().astype(np.int64))
            raw = self._raw(sample)
            normalization = dataclasses.replace(estimate_normalization(raw), per_image=bool(per_image))
            if whiten:
                spectrum = estimate_noise_spectrum(normalize(raw, normalization),
                                                   pixel_size_angstrom=self.pixel_size_angstrom,
                                                   particle_radius_fraction=normalization.background_radius)
                normalization = dataclasses.replace(normalization, noise_power=spectrum.power,
                                                    group_noise_power=self._group_spectra(normalization))
        self.normalization = normalization
        self.whitening: torch.Tensor | None = None
        self._filters: torch.Tensor | None = None  # (1 + G, m, m): pooled, then per group
        self._filter_of: torch.Tensor | None = None  # (N,) row of _filters for each particle
        if normalization.noise_power is not None:
            self.whitening = whitening_filter(normalization.noise_power, m)
            self._set_group_filters(normalization)
        if len(stack) * m * m * 4 / 2**20 <= cache_limit_mb:
            parts = [self._prepared(np.arange(s, min(s + self.chunk_size, len(stack))))
                     for s in range(0, len(stack), self.chunk_size)]
            self._cache = torch.cat(parts)

    def __len__(self) -> int:
        return len(self.metadata)

    def _group_spectra(self, normalization: Normalization):
        """``((group, power), ...)`` for the optics groups with at least
        :data:`MIN_GROUP_PARTICLES` particles when there are several groups, else ``None``."""
        groups = self.metadata.optics_group
        if groups is None:
            return None
        groups = np.asarray(groups)
        values, counts = np.unique(groups, return_counts=True)
        if values.size < 2:
            return None
        out = []
        for g, c in zip(values.tolist(), counts.tolist()):
            if c < MIN_GROUP_PARTICLES:
                continue
            pos = np.flatnonzero(groups == g)
            pick = pos[np.unique(np.linspace(0, pos.size - 1, min(pos.size, GROUP_SAMPLE)).round().astype(np.int64))]
            spec = estimate_noise_spectrum(normalize(self._raw(pick), normalization),
                                           pixel_size_angstrom=self.pixel_size_angstrom,
                                           particle_radius_fraction=normalization.background_radius)
            out.append((int(g), spec.power))
        return tuple(out) or None

    def _set_group_filters(self, normalization: Normalization) -> None:
        """Per-particle whitening filters from the per-group spectra (particles of other groups,
        or without a group, use the pooled filter)."""
        if normalization.group_noise_power is None or self.metadata.optics_group is None:
            return
        rows = [self.whitening] + [whitening_filter(power, self.box_size) for _, power in normalization.group_noise_power]
        self._filters = torch.stack(rows)
        of = np.zeros(len(self.metadata), dtype=np.int64)
        groups = np.asarray(self.metadata.optics_group)
        for k, (g, _) in enumerate(normalization.group_noise_power, start=1):
            of[groups == g] = k
        self._filter_of = torch.from_numpy(of)

    def whitening_for(self, indices) -> torch.Tensor | None:
        """Whitening filters ``(B, m, m)`` (centred grid) of these particles, each its optics
        group's (or the pooled one), or ``None`` when the data are not whitened."""
        if self.whitening is None:
            return None
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if self._filters is None:
            return self.whitening.expand(idx.shape[0], -1, -1)
        return self._filters[self._filter_of[idx]]

    @property
    def noise_spectra_by_group(self) -> dict[int, NoiseSpectrum]:
        """``{optics group: NoiseSpectrum}`` of the groups with their own spectrum (empty when
        one spectrum serves every particle)."""
        groups = self.normalization.group_noise_power or ()
        return {g: NoiseSpectrum(power=power, box_size=self.box_size, pixel_size_angstrom=self.pixel_size_angstrom)
                for g, power in groups}

    @property
    def is_cached(self) -> bool:
        """The preprocessed images are held in memory (else every batch is read from the source)."""
        return self._cache is not None

    def _raw(self, idx: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(self.stack[idx]).float()
        if self.invert:
            x = invert_contrast(x)
        return downsample(x, self.box_size) if self.box_size != self.source_box_size else x

    def _prepared(self, idx: np.ndarray) -> torch.Tensor:
        x = normalize(self._raw(idx), self.normalization)
        if self.whitening is not None:
            x = centered_ifft2(centered_fft2(x) * self.whitening_for(idx)).real
        return x

    @property
    def noise_spectrum(self) -> NoiseSpectrum | None:
        """The noise spectrum the data are whitened with (measured here, or given with the
        normalisation, e.g. an encoder's), or ``None`` without whitening."""
        power = self.normalization.noise_power
        if power is None:
            return None
        return NoiseSpectrum(power=power, box_size=self.box_size, pixel_size_angstrom=self.pixel_size_angstrom)

    def invert_contrast(self) -> None:
        """Flip the contrast of every image from now on (after contrast detection).

        The normalisation and the noise spectrum do not depend on the sign, so they are kept;
        a cache is negated in place.
        """
        self.invert = not self.invert
        if self._cache is not None:
            self._cache.neg_()

    def images(self, indices) -> torch.Tensor:
        """Normalised working-box images ``(B, m, m)`` of the given particles."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self._cache is not None:
            return self._cache[torch.from_numpy(idx)]
        order = np.argsort(idx, kind="stable")  # read stacks in order, return in the caller's
        out = torch.empty(idx.shape[0], self.box_size, self.box_size)
        out[torch.from_numpy(order)] = self._prepared(idx[order])
        return out

    def batch(self, indices) -> ParticleBatch:
        """Everything the model needs for these particles (:class:`ParticleBatch`)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        t = torch.from_numpy(idx)
        ctf = None
        if self.ctf is not None:
            ctf = compute_ctf(self.ctf[t], self.box_size, self.pixel_size_angstrom)
        if self.whitening is not None:
            w = self.whitening_for(idx)
            ctf = w if ctf is None else ctf * w
        shifts = None
        if self.shifts_angstrom is not None:
            shifts = shifts_angstrom_to_pixels(self.shifts_angstrom[t].float(), self.pixel_size_angstrom)
        return ParticleBatch(indices=t, images=self.images(idx), ctf=ctf, shifts_px=shifts)


def centre_images(images, metadata, *, iterations: int = 3, use_ctf: bool = True) -> CentringResult:
    """:func:`cryopose.data.preprocess.centre_particles` on raw images, for commands without a training data set.

    The images are read as a :class:`cryopose.data.dataset.ParticleDataset` at their own box,
    RELION-normalised per image and whitened (the centring and the contrast sign then do not
    depend on each micrograph's noise level), their origins ignored. ``iterations=1`` is enough
    for the contrast alone.

    Args:
        images: ``len`` and ``[indices] → (B, m, m)`` images (e.g.
            :class:`cryopose.search.run.ResampledImages`), any contrast.
        metadata: Their metadata on that grid (pixel size and box of the images, CTF).
        iterations: Passes of :func:`~cryopose.data.preprocess.centre_particles`.
        use_ctf: Use the metadata's CTF.

    Returns:
        :class:`~cryopose.data.preprocess.CentringResult` (origins in the images' pixels).
    """
    ds = ParticleDataset(images, metadata, use_shifts=False, use_ctf=use_ctf, per_image=True, whiten=True)
    return centre_particles(ds, iterations=iterations)
