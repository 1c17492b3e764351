"""The image maker of :func:`cryopose.simulate.simulator.simulate_particles`: noise-free
CTF-modulated projections of a chunk of particles (structure, mixture or junk), the SNR
calibration on the first chunk, junk scaling, white noise and contrast inversion. The order
of random draws is the simulator's (see :mod:`cryopose.simulate.simulator`). Internal: no public names.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..ctf import compute_ctf
from ..errors import UserError
from ..fourier import centered_fft2, centered_ifft2
from ..projection import VolumeFT
from .junk import NOT_JUNK, blob_images, scale_to_variance
from .mixture import MixtureRenderer
from .noise import noise_sigma_for_snr, signal_variance
from .render import SliceRenderer

if TYPE_CHECKING:
    from .simulator import GroundTruth, SimulationConfig

__all__: list[str] = []


class _ChunkMaker:
    """Makes the noise-free and noisy images of a chunk of particles."""

    def __init__(self, vft: VolumeFT, junk_vft: VolumeFT | None, pixel_size_angstrom: float,
                 truth: GroundTruth, config: SimulationConfig):
        self.main = SliceRenderer(vft) if isinstance(vft, VolumeFT) else \
            MixtureRenderer([SliceRenderer(v) for v in vft], truth.weights)
        self.junk = SliceRenderer(junk_vft) if junk_vft is not None else None
        self.n = self.main.n
        self.apix = pixel_size_angstrom
        self.truth, self.config = truth, config
        self.target_variance: float | None = None
        self.sigma = 0.0

    def _project(self, renderer: SliceRenderer, idx: np.ndarray) -> torch.Tensor:
        """Noise-free CTF-modulated projections of particles ``idx`` (absolute indices)."""
        t = torch.from_numpy(idx)
        ctf = None if self.truth.ctf is None else self.truth.ctf[t]
        if isinstance(renderer, MixtureRenderer):
            return renderer.render(idx, self.truth.rotmats[t], shifts_px=self.truth.shifts_angstrom[t] / self.apix,
                                   ctf=ctf, pixel_size_angstrom=self.apix)
        return renderer.render(self.truth.rotmats[t], shifts_px=self.truth.shifts_angstrom[t] / self.apix,
                               ctf=ctf, pixel_size_angstrom=self.apix)

    def clean(self, sl: slice, generator: torch.Generator) -> tuple[torch.Tensor, np.ndarray]:
        """Noise-free images of particles ``sl`` (junk at unit variance) and their labels."""
        labels = self.truth.junk_types[sl]
        b = labels.shape[0]
        images = torch.zeros(b, self.n, self.n, dtype=torch.float32)
        structure = np.flatnonzero((labels == NOT_JUNK) | (labels == "offcentre"))
        if structure.size:
            images[torch.from_numpy(structure)] = self._project(self.main, structure + sl.start)
        other = np.flatnonzero(labels == "other")
        if other.size:
            if self.junk is None:
                raise UserError("junk type 'other' needs a second structure (--junk-structure)")
            images[torch.from_numpy(other)] = scale_to_variance(self._project(self.junk, other + sl.start), 1.0)
        blob = np.flatnonzero(labels == "blob")
        if blob.size:
            blobs = blob_images(blob.size, self.n, generator=generator)
            if self.truth.ctf is not None:
                ctf = compute_ctf(self.truth.ctf[torch.from_numpy(blob + sl.start)], self.n, self.apix)
                blobs = centered_ifft2(centered_fft2(blobs) * ctf).real
            images[torch.from_numpy(blob)] = scale_to_variance(blobs, 1.0)
        return images, labels

    def calibrate(self, images: torch.Tensor, labels: np.ndarray, sl: slice) -> None:
        """Set the target signal variance (and σ) from the true particles of the first chunk."""
        good = labels == NOT_JUNK
        if good.any():
            var = signal_variance(images[torch.from_numpy(np.flatnonzero(good))])
        else:  # no true particle in the first chunk: project the structure at its poses
            var = signal_variance(self._project(self.main, np.arange(sl.start, sl.stop)))
        self.target_variance = float(var.mean())
        if self.config.snr is not None:
            self.sigma = noise_sigma_for_snr(self.target_variance, self.config.snr)

    def scale_junk(self, images: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
        """Scale ``blob`` and ``other`` junk (unit variance so far) to the target variance."""
        junk_scaled = (labels == "other") | (labels == "blob")
        if junk_scaled.any():
            idx = torch.from_numpy(np.flatnonzero(junk_scaled))
            images[idx] = images[idx] * math.sqrt(self.target_variance)
        return images

    def add_noise(self, images: torch.Tensor, labels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """Add the white noise and invert the contrast if asked (returns a new tensor)."""
        noise_only = labels == "noise"
        if self.sigma > 0 or noise_only.any():
            noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
            if self.sigma > 0:
                noisy = images + self.sigma * noise
            else:  # no data-set noise: pure-noise junk gets the mean signal variance
                scale = torch.from_numpy(noise_only.astype(np.float32) * math.sqrt(self.target_variance))
                noisy = images + noise * scale[:, None, None]
        else:
            noisy = images.clone()
        return noisy.neg_() if self.config.invert_contrast else noisy
