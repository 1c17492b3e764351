"""Fresh labelled training images made from the reference map (not in Lian et al. 2022).

The supervised regressor of :mod:`cryopose.training.supervised` learns from a fixed set of
labelled particles: a few thousand poses, each with one noise realisation. The reference map
that ``ℓ_reproj`` needs can make as many further labelled images as training wants — a
projection at a uniformly random orientation, with the CTF and shift of a randomly drawn
labelled particle, on the same scale and with white noise of the same level as the labelled
particles::

    x = α · P_CTF(R, s) + σ ε,    R ~ uniform SO(3),  (CTF, s) ~ the labelled particles,  ε ~ N(0, 1)

``α`` (the reference's scale in the images' units) and ``σ`` (the noise level) are measured on
the labelled particles themselves (:meth:`ReferenceProjections.from_labelled`): with ``c_i`` the
CTF-modulated, shifted projection at the label of particle ``x_i`` (both with their means
removed), ``α = Σ⟨x_i, c_i⟩ / Σ⟨c_i, c_i⟩`` (least squares) and ``σ² = mean (x_i − α c_i)²``
over pixels. Label errors and any mismatch between reference and particles land in ``σ``, so
the synthetic images are, if anything, noisier than the data.

Training on a share of such images (``SupervisedTrainConfig.synthetic_fraction``) gives the
network a new orientation and a new noise realisation at every step. What it cannot give is
what the reference lacks: where the particles differ from the map (heterogeneity, a map from a
related structure, a wrong hand), the synthetic images teach the map, not the particles; keep a
share of real labelled particles in each batch for that reason. The README's issue-4 section
gives the measured effect (in the simulated benchmarks the reference is the map that made the
particles, the most favourable case).

Images are made by :class:`cryopose.simulate.render.SliceRenderer` (the projector of
:func:`cryopose.projection.project`, forward only) on the network's grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ctf import CTFParams
from ..fourier import fourier_downsample_volume
from ..projection import prepare_volume_ft
from ..rotations import random_rotations
from ..simulate.render import SliceRenderer

__all__ = ["ReferenceProjections"]


class ReferenceProjections:
    """Source of synthetic labelled images ``α · P_CTF(R, s) + σ ε`` (module docstring).

    Args:
        reference_volume: ``(m, m, m)`` reference map, same field of view as the images
            (Fourier-cropped to ``box_size`` if larger).
        box_size: Edge ``n`` of the images made, pixels (the network's input box).
        pixel_size_angstrom: Pixel size of those images, Å (for the CTF and the shifts).
        ctf: :class:`~cryopose.ctf.CTFParams` of the particles to draw CTFs from, or ``None``
            (no CTF).
        shifts_angstrom: ``(K, 2)`` RELION origins ``(x, y)`` in Å to draw shifts from (same
            rows as ``ctf`` when both are given), or ``None`` (centred).
        scale: ``α``, the reference's scale in the images' units (> 0).
        noise_sigma: ``σ`` of the white noise, images' units (>= 0).
        seed: Seeds orientations, drawn rows and noise.

    Raises:
        ValueError: A non-cubic reference, a box larger than the reference, ``scale <= 0``,
            ``noise_sigma < 0``, or ``ctf`` and ``shifts_angstrom`` of different lengths.
    """

    def __init__(self, reference_volume, *, box_size: int, pixel_size_angstrom: float,
                 ctf: CTFParams | None = None, shifts_angstrom=None, scale: float = 1.0,
                 noise_sigma: float = 0.0, seed: int = 0):
        vol = torch.as_tensor(reference_volume).detach().float().cpu()
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"the reference must be a cubic (m, m, m) map, got shape {tuple(vol.shape)}")
        n = int(box_size)
        if n > vol.shape[-1]:
            raise ValueError(f"box {n} px is larger than the reference's {vol.shape[-1]} px")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"the reference's scale in the images must be > 0, got {scale}")
        if not (math.isfinite(noise_sigma) and noise_sigma >= 0):
            raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
        if n < vol.shape[-1]:
            vol = fourier_downsample_volume(vol, n)
        self.shifts_angstrom = None if shifts_angstrom is None else torch.as_tensor(shifts_angstrom).float()
        if self.shifts_angstrom is not None and self.shifts_angstrom.shape[-1] != 2:
            raise ValueError(f"shifts_angstrom must be (K, 2), got {tuple(self.shifts_angstrom.shape)}")
        if ctf is not None and self.shifts_angstrom is not None and len(ctf) != self.shifts_angstrom.shape[0]:
            raise ValueError(f"{len(ctf)} CTF rows but {self.shifts_angstrom.shape[0]} shifts")
        self.box_size = n
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.ctf = ctf
        self.scale = float(scale)
        self.noise_sigma = float(noise_sigma)
        with torch.no_grad():
            self._renderer = SliceRenderer(prepare_volume_ft(vol))
        self._generator = torch.Generator().manual_seed(int(seed))

    @property
    def n_rows(self) -> int:
        """Number of (CTF, shift) rows drawn from (1 with neither)."""
        if self.ctf is not None:
            return len(self.ctf)
        return 1 if self.shifts_angstrom is None else int(self.shifts_angstrom.shape[0])

    def clean(self, rotmats: torch.Tensor, rows) -> torch.Tensor:
        """Noise-free images ``α · P_CTF(R, s)`` ``(B, n, n)`` at ``rotmats`` with the CTF and shift of ``rows``."""
        t = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        ctf = None if self.ctf is None else self.ctf[t]
        shifts = None if self.shifts_angstrom is None else self.shifts_angstrom[t] / self.pixel_size_angstrom
        out = self._renderer.render(rotmats.float(), shifts_px=shifts, ctf=ctf,
                                    pixel_size_angstrom=self.pixel_size_angstrom)
        return out.mul_(self.scale)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` fresh images and labels: ``(images (B, n, n) float32, rotmats (B, 3, 3) float32)``."""
        b = int(batch_size)
        rot = random_rotations(b, generator=self._generator, dtype=torch.float32)
        rows = torch.randint(0, self.n_rows, (b,), generator=self._generator).numpy()
        x = self.clean(rot, rows)
        if self.noise_sigma > 0:
            x += self.noise_sigma * torch.randn(x.shape, generator=self._generator)
        return x, rot

    @property
    def snr(self) -> float:
        """Mean ``var(α P_CTF) / σ²`` over 256 orientations (``inf`` without noise)."""
        g = torch.Generator().manual_seed(1)
        rot = random_rotations(256, generator=g, dtype=torch.float32)
        rows = torch.randint(0, self.n_rows, (256,), generator=g).numpy()
        var = float(self.clean(rot, rows).var(dim=(-2, -1)).mean())
        return math.inf if self.noise_sigma == 0 else var / self.noise_sigma ** 2

    @classmethod
    def from_labelled(cls, images, rotmats, reference_volume, *, indices, pixel_size_angstrom: float,
                      ctf: CTFParams | None = None, shifts_angstrom=None, max_particles: int = 1000,
                      seed: int = 0) -> "ReferenceProjections":
        """A source whose scale and noise level are measured on labelled particles (module docstring).

        Args:
            images: ``N`` images ``(n, n)`` (tensor or ``source[index_array]``), the network's grid.
            rotmats: ``(N, 3, 3)`` label rotations (RELION).
            reference_volume: Reference map, same field of view as the images.
            indices: Positions of the labelled particles to learn from (the training split);
                CTFs and shifts are drawn from these rows.
            pixel_size_angstrom: Pixel size of ``images``, Å.
            ctf: :class:`~cryopose.ctf.CTFParams` of all ``N`` particles, or ``None``.
            shifts_angstrom: ``(N, 2)`` label shifts in Å, or ``None`` (centred).
            max_particles: At most this many of ``indices`` (evenly spaced) measure ``α, σ``.
            seed: As for the constructor.

        Raises:
            ValueError: No labelled particle, mismatched lengths, or ``α <= 0`` (the reference
                does not match the particles at their labels: wrong labels, contrast or map).
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise ValueError("no labelled particles to measure the signal and noise on")
        n_img = len(images)
        rot = torch.as_tensor(rotmats).float()
        if rot.shape != (n_img, 3, 3):
            raise ValueError(f"{n_img} images but rotmats of shape {tuple(rot.shape)}")
        if ctf is not None and len(ctf) != n_img:
            raise ValueError(f"{n_img} images but {len(ctf)} CTF rows")
        if shifts_angstrom is not None and len(shifts_angstrom) != n_img:
            raise ValueError(f"{n_img} images but {len(shifts_angstrom)} shifts")
        t = torch.as_tensor(idx)
        sub_ctf = None if ctf is None else ctf[t]
        sub_shifts = None if shifts_angstrom is None else torch.as_tensor(shifts_angstrom).float()[t]
        first = images[idx[:1]] if not isinstance(images, torch.Tensor) else images[t[:1]]
        src = cls(reference_volume, box_size=int(torch.as_tensor(first).shape[-1]),
                  pixel_size_angstrom=pixel_size_angstrom, ctf=sub_ctf, shifts_angstrom=sub_shifts, seed=seed)
        pick = np.unique(np.linspace(0, idx.size - 1, min(int(max_particles), idx.size)).round().astype(np.int64))
        xx, xc, cc, npx = 0.0, 0.0, 0.0, 0
        for s in range(0, pick.size, 256):
            rows = pick[s:s + 256]
            x = torch.as_tensor(images[idx[rows]] if not isinstance(images, torch.Tensor)
                                else images[t[rows]]).double()
            c = src.clean(rot[t[rows]], rows).double()
            x = x - x.mean((-2, -1), keepdim=True)
            c = c - c.mean((-2, -1), keepdim=True)
            xx += float((x * x).sum())
            xc += float((x * c).sum())
            cc += float((c * c).sum())
            npx += x.numel()
        if not cc > 0:
            raise ValueError("the reference projects to flat images at the labels; check the reference")
        alpha = xc / cc
        if not alpha > 0:
            raise ValueError(f"the reference anti-correlates or does not correlate with the labelled particles at "
                             f"their labels (scale {alpha:.3g}): check the labels, the contrast (--invert-contrast) "
                             "and the reference")
        sigma2 = max(0.0, xx - 2 * alpha * xc + alpha * alpha * cc) / npx  # mean (x − αc)²
        src.scale, src.noise_sigma = alpha, math.sqrt(sigma2)
        return src
