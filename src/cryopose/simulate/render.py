"""Fast forward-only evaluation of :func:`cryopose.projection.project` for simulation.

:class:`SliceRenderer` computes the images of :func:`cryopose.projection.project` (with a
prepared :class:`~cryopose.projection.VolumeFT`)::

    X(k) = CTF(k) · V̂_pad(pad · Rᵀ (k, 0) + N//2) · exp(+2πi k·s / n)   for |k| < n/2, else 0
    I    = Re F⁻¹_centred[X]

with the same padded, gridding-corrected transform, the same trilinear interpolation
(``grid_sample(align_corners=True)`` semantics: zero outside the padded grid) and the same
frequency mask, so its images equal ``project()``'s to float32 rounding (the tests check
~1e-6 relative, even and odd boxes). It is faster on CPU because:

* ``Re F⁻¹[X] = F⁻¹[H]`` with ``H(k) = (X(k) + conj X(−k)) / 2`` the Hermitian part, so
  only the half plane ``kx > 0`` (plus ``kx = 0, ky >= 0``) is computed and a real inverse
  FFT (``irfft2``) is used. ``V̂_pad`` is the transform of a real volume, so
  ``V̂_pad(−c) = conj V̂_pad(c)`` and ``H = X`` on the half plane — except where the
  trilinear neighbourhood reaches a face of the padded grid (for even ``N`` the plane of
  frequency ``−N/2`` has no mirror inside the grid, which reads zero there); for those few
  outer-ring points (any coordinate within a voxel of a face) ``X(−k)`` is interpolated too
  and ``H`` is formed exactly.
* the neighbours are gathered with ``numpy.take`` — two row gathers from a table holding,
  for each voxel, its ``(x, x+1, y+1, x+1 y+1)`` neighbours (boxes up to ~140 px), else eight
  gathers — from a complex table with a zero plane around the grid (so no bounds checks are
  needed: ``−1 < coordinate < N`` inside the mask), only at the frequencies inside the mask;
* the shift phases are a product of two 1D phase tables (separable), with the output
  ``fftshift`` folded in as a phase; no autograd.

It exists for :mod:`cryopose.simulate` only (no gradients); training code uses ``project()``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ctf import CTFParams, compute_ctf
from ..fourier import frequency_indices
from ..projection import VolumeFT

__all__ = ["SliceRenderer"]


class SliceRenderer:
    """Batched forward projector equal to ``project(volume_ft, R, shifts_px=s, ctf=compute_ctf(...))``.

    Args:
        volume_ft: Output of :func:`cryopose.projection.prepare_volume_ft`.
        sub_batch: Images interpolated at a time (keeps the temporaries in cache); default
            ``max(1, 2**18 // n²)`` (64 images at 64 px).
        max_table_bytes: Largest neighbour table (``32 (N+1)³`` bytes, boxes up to ~140 px by
            default) for the two-gather path; larger boxes gather the eight neighbours from the
            plain ``8 (N+1)³``-byte table.
    """

    def __init__(self, volume_ft: VolumeFT, *, sub_batch: int | None = None,
                 max_table_bytes: int = 600 * 2**20):
        n, size, pad = volume_ft.box_size, volume_ft.size, volume_ft.pad
        self.n, self.size, self.pad = n, size, pad
        self.sub_batch = int(sub_batch) if sub_batch is not None else max(1, 2**18 // (n * n))
        stride = size + 2  # one zero plane before and after the grid along each axis
        table = torch.zeros(stride, stride, stride, dtype=torch.complex64)
        table[1:size + 1, 1:size + 1, 1:size + 1] = volume_ft.complex().detach().to(torch.complex64)
        flat = table.reshape(-1).numpy()
        self._stride = stride
        if 32 * stride**3 <= max_table_bytes:
            # rows (x, x+1, y+1 x, y+1 x+1): one row gather per z plane instead of four
            rows4 = np.stack([flat, np.roll(flat, -1), np.roll(flat, -stride), np.roll(flat, -stride - 1)], axis=1)
            self._rows4 = np.ascontiguousarray(rows4)
            self._table = None
        else:
            self._rows4 = None
            self._table = flat
        self._offsets = [dz * stride * stride + dy * stride + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
        k = frequency_indices(n, dtype=torch.float32)
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        inside = (kx**2 + ky**2) < (n / 2.0) ** 2  # cryopose.projection.fourier_slice.slice_mask
        half = inside & ((kx > 0) | ((kx == 0) & (ky >= 0)))
        self._half = half
        self.kx, self.ky = kx[half].numpy(), ky[half].numpy()
        self._grid_index = torch.from_numpy(np.flatnonzero(half.reshape(-1).numpy()))
        self._spec_index = torch.from_numpy((self.ky.astype(np.int64) % n) * (n // 2 + 1) + self.kx.astype(np.int64))
        # kx = 0, ky > 0 entries are mirrored to (0, -ky) to keep column 0 Hermitian
        axis = (self.kx == 0) & (self.ky > 0)
        self._axis = torch.from_numpy(np.flatnonzero(axis))
        self._axis_index = torch.from_numpy(((-self.ky[axis].astype(np.int64)) % n) * (n // 2 + 1))
        # only the outer ring can come within a voxel of the padded grid's faces (|pad k| > N//2 - 2)
        self._ring = np.flatnonzero(np.sqrt(self.kx**2 + self.ky**2) * pad > size // 2 - 2.5)
        self._kx_index = torch.from_numpy(self.kx.astype(np.int64) + n // 2)
        self._ky_index = torch.from_numpy(self.ky.astype(np.int64) + n // 2)
        kint = frequency_indices(n, dtype=torch.float64)
        self._k = kint
        # output fftshift (roll by n // 2 along x and y) as a spectral phase, per axis
        self._roll = -2.0 * math.pi * kint * (n // 2) / n

    @property
    def n_points(self) -> int:
        """Number of half-plane frequencies computed per image."""
        return int(self.kx.shape[0])

    def _trilinear(self, coords: np.ndarray) -> np.ndarray:
        """Trilinear samples (complex64) of the padded transform at ``coords`` ``(..., 3)`` (x, y, z)."""
        base = np.floor(coords)
        frac = coords - base
        b = base.astype(np.int64)
        lin = (((b[..., 2] + 1) * self._stride + b[..., 1] + 1) * self._stride + b[..., 0] + 1).reshape(-1)
        frac = frac.reshape(-1, 3)
        if self._rows4 is not None:
            r0 = np.take(self._rows4, lin, axis=0)  # (K, 4): x0 y0, x1 y0, x0 y1, x1 y1 at z0
            r1 = np.take(self._rows4, lin + self._stride * self._stride, axis=0)  # same at z0 + 1
            v = [r0[:, 0], r0[:, 1], r0[:, 2], r0[:, 3], r1[:, 0], r1[:, 1], r1[:, 2], r1[:, 3]]
        else:
            v = [np.take(self._table, lin + off) for off in self._offsets]  # order (dz, dy, dx)
        fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
        c00 = v[0] + (v[1] - v[0]) * fx
        c01 = v[2] + (v[3] - v[2]) * fx
        c10 = v[4] + (v[5] - v[4]) * fx
        c11 = v[6] + (v[7] - v[6]) * fx
        c0 = c00 + (c01 - c00) * fy
        c1 = c10 + (c11 - c10) * fy
        return (c0 + (c1 - c0) * fz).astype(np.complex64, copy=False).reshape(coords.shape[:-1])

    def _hermitian_slice(self, rotmats: np.ndarray) -> np.ndarray:
        """Hermitian part ``H`` of the central slices on the half plane, ``(B, P)`` complex64."""
        half = np.float32(self.size // 2)
        r = rotmats.astype(np.float32)
        # coordinate i (x, y, z) = pad (kx R_0i + ky R_1i) + N//2, as slice_coordinates
        coords = (self.kx[None, :, None] * r[:, None, 0, :] + self.ky[None, :, None] * r[:, None, 1, :])
        coords = coords * np.float32(self.pad) + half
        values = self._trilinear(coords)
        ring = coords[:, self._ring]
        edge = ((ring < 1.0) | (ring > self.size - 2.0)).any(axis=-1)
        if edge.any():
            bi, ri = np.nonzero(edge)
            pi = self._ring[ri]
            mirror = (-(self.kx[pi, None] * r[bi, 0, :] + self.ky[pi, None] * r[bi, 1, :])
                      * np.float32(self.pad) + half)
            values[bi, pi] = 0.5 * (values[bi, pi] + np.conj(self._trilinear(mirror)))
        return values

    def _phases(self, shifts_px: torch.Tensor | None, b: int) -> torch.Tensor:
        """``(B, P)`` complex64: ``exp(+2πi k·s/n)`` times the output-roll phase."""
        n = self.n
        if shifts_px is None:
            s = torch.zeros(b, 2, dtype=torch.float64)
        else:
            s = shifts_px.to(torch.float64)
        ones = torch.ones(b, n, dtype=torch.float64)
        ex = torch.polar(ones, 2.0 * math.pi * s[:, :1] * self._k / n + self._roll).to(torch.complex64)
        ey = torch.polar(ones, 2.0 * math.pi * s[:, 1:] * self._k / n + self._roll).to(torch.complex64)
        return ex[:, self._kx_index] * ey[:, self._ky_index]

    @torch.no_grad()
    def render(self, rotmats: torch.Tensor, *, shifts_px: torch.Tensor | None = None,
               ctf: CTFParams | torch.Tensor | None = None, pixel_size_angstrom: float | None = None) -> torch.Tensor:
        """Images of the volume at the given poses.

        Args:
            rotmats: ``(B, 3, 3)`` RELION rotation matrices.
            shifts_px: ``(B, 2)`` RELION origins ``(x, y)`` in pixels (content drawn at ``−s``).
            ctf: :class:`~cryopose.ctf.CTFParams` of ``B`` particles (needs
                ``pixel_size_angstrom``) or a precomputed ``(B, n, n)`` CTF grid.
            pixel_size_angstrom: Pixel size in Å for ``CTFParams``.

        Returns:
            float32 ``(B, n, n)`` images, equal to ``project()``'s to float32 rounding.

        Raises:
            ValueError: ``CTFParams`` without ``pixel_size_angstrom``.
        """
        if isinstance(ctf, CTFParams) and pixel_size_angstrom is None:
            raise ValueError("SliceRenderer.render: CTFParams need pixel_size_angstrom")
        b, n = rotmats.shape[0], self.n
        rot_np = rotmats.detach().cpu().to(torch.float32).numpy()
        out = torch.empty(b, n, n, dtype=torch.float32)
        for start in range(0, b, self.sub_batch):
            sl = slice(start, min(start + self.sub_batch, b))
            nb = sl.stop - sl.start
            vals = torch.from_numpy(self._hermitian_slice(rot_np[sl]))
            if ctf is not None:
                grid = compute_ctf(ctf[sl], n, pixel_size_angstrom) if isinstance(ctf, CTFParams) else ctf[sl]
                vals = vals * grid.reshape(nb, n * n).index_select(1, self._grid_index)
            vals = vals * self._phases(None if shifts_px is None else shifts_px[sl], nb)
            spec = torch.zeros(nb, n * (n // 2 + 1), dtype=torch.complex64)
            spec.index_copy_(1, self._spec_index, vals)
            spec.index_copy_(1, self._axis_index, vals.index_select(1, self._axis).conj())
            out[sl] = torch.fft.irfft2(spec.reshape(nb, n, n // 2 + 1), s=(n, n))
        return out
