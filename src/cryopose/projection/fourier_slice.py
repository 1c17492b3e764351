"""Differentiable Fourier-slice projector and its exact adjoint.

The volume ``(n, n, n)`` is divided by the trilinear gridding kernel's transform
(``sinc²`` per axis on the padded grid), zero-padded to ``N = pad · n`` and transformed once
(:func:`prepare_volume_ft`). An image of rotation ``R`` reads the padded transform at
``pad · Rᵀ (kx, ky, 0)`` by trilinear interpolation (:func:`slice_volume_ft`), frequencies
with ``|k| >= n / 2`` are set to zero, and the inverse centred 2D FFT gives the image
(:func:`project`). This is the scheme of RELION's ``Projector`` (padding factor 2, trilinear
interpolation, gridding correction) — see ``tests/oracle`` for the comparison with
``relion_project``. Gradients flow to the volume and to the rotation matrices
(``torch.nn.functional.grid_sample``). :func:`insert_slices` is the exact adjoint of the
interpolation (a trilinear scatter), the building block of backprojection and reconstruction.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..fourier import centered_fft2, centered_fft3, centered_ifft2, centered_ifft3, frequency_indices
from .shifts import origin_phases

__all__ = [
    "VolumeFT",
    "gridding_correction",
    "prepare_volume_ft",
    "slice_coordinates",
    "slice_volume_ft",
    "insert_slices",
    "slice_mask",
    "sample_padded",
    "project",
    "backproject",
]


@dataclasses.dataclass(frozen=True)
class VolumeFT:
    """Padded, gridding-corrected centred 3D transform of a volume, ready for slicing.

    Attributes:
        data: ``(1, 2, N, N, N)`` real tensor (real and imaginary parts as channels), ``N = pad·n``.
        box_size: Edge ``n`` of the original volume and of the projected images, pixels.
        pad: Padding factor (integer >= 1).
    """

    data: torch.Tensor
    box_size: int
    pad: int

    @property
    def size(self) -> int:
        """Edge ``N`` of the padded transform."""
        return int(self.data.shape[-1])

    def complex(self) -> torch.Tensor:
        """The transform as a complex ``(N, N, N)`` tensor."""
        return torch.complex(self.data[0, 0], self.data[0, 1])


def gridding_correction(n: int, pad: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Real-space apodisation of trilinear interpolation on a ``pad``-times padded grid.

    Returns ``g(x, y, z) = sinc²(x/N) sinc²(y/N) sinc²(z/N)`` on the ``n³`` grid
    (``N = pad·n``, ``x`` measured from ``n // 2``, ``sinc(t) = sin(πt)/(πt)``). Dividing a
    volume by ``g`` before the transform undoes the blur of trilinear interpolation (RELION uses
    the radial form of the same correction).
    """
    x = frequency_indices(n, device=device, dtype=torch.float64) / (pad * n)
    s = torch.sinc(x) ** 2
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).to(dtype)


def _pad_volume(volume: torch.Tensor, size: int) -> torch.Tensor:
    n = volume.shape[-1]
    start = size // 2 - n // 2
    lo, hi = start, size - start - n
    return F.pad(volume, (lo, hi, lo, hi, lo, hi))


def prepare_volume_ft(volume: torch.Tensor, *, pad: int = 2, gridding: bool = True) -> VolumeFT:
    """Gridding-correct, pad and Fourier-transform a volume for slicing (differentiable).

    Args:
        volume: ``(n, n, n)`` real volume ``(z, y, x)``, origin at ``n // 2``, any real dtype.
        pad: Padding factor; 2 (RELION's default) keeps interpolation errors small.
        gridding: Divide by the trilinear kernel's transform first (RELION does). The correction
            is exact on average over sub-voxel positions; at exactly grid-aligned slices (the
            identity pose) it over-corrects, so tests of exact axis sums turn it off.

    Returns:
        :class:`VolumeFT` of size ``N = pad·n``.

    Raises:
        ValueError: If the volume is not a cube or ``pad < 1``.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume must be a cube (n, n, n), got shape {tuple(volume.shape)}")
    if pad < 1:
        raise ValueError(f"pad must be >= 1, got {pad}")
    n = volume.shape[-1]
    corrected = volume / gridding_correction(n, pad, device=volume.device, dtype=volume.dtype) if gridding else volume
    ft = centered_fft3(_pad_volume(corrected, pad * n))
    return VolumeFT(torch.view_as_real(ft).permute(3, 0, 1, 2)[None].contiguous(), n, pad)


def slice_coordinates(rotmats: torch.Tensor, box_size: int, pad: int) -> torch.Tensor:
    """Padded-grid indices ``(B, n, n, 3)`` ``(x, y, z)`` read by each image pixel ``(ky, kx)``.

    ``index = pad · Rᵀ (kx, ky, 0)ᵀ + N // 2`` with ``k`` in cycles per box.
    """
    k = frequency_indices(box_size, device=rotmats.device, dtype=rotmats.dtype)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    plane = torch.stack([kx, ky, torch.zeros_like(kx)], dim=-1)  # (n, n, 3)
    # (Rᵀ k)_i = Σ_j R_ji k_j  ->  row vector k @ R
    coords = torch.einsum("yxj,bji->byxi", plane, rotmats)
    return coords * pad + (pad * box_size) // 2


def slice_mask(box_size: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(n, n)`` mask of the frequencies an image keeps: ``|k| < n / 2`` (cycles per box)."""
    k = frequency_indices(box_size, device=device, dtype=dtype)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return ((kx**2 + ky**2) < (box_size / 2.0) ** 2).to(dtype)


def sample_padded(data: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of a padded transform at padded-grid indices, zero outside the grid
    (``grid_sample`` with ``align_corners=True``; differentiable in both arguments), the sample
    points split over the CPU's threads.

    PyTorch's CPU kernel of 3D ``grid_sample`` (2.x) spreads its work over the batch only, so one
    volume read at millions of points ran no faster with two threads than with one. Here the
    points are cut into ``torch.get_num_threads()`` batch entries reading the same (expanded, not
    copied) volume; the values and gradients are identical, and on two threads the search's band
    slices and a training step's slices (forward and backward) take 1.35–1.9× less time
    (``benchmarks/slice_threads.py``, docs/results/scale.md). On a GPU the call is passed through.

    Args:
        data: ``(1, C, N, N, N)`` real tensor (e.g. :attr:`VolumeFT.data`), ``(z, y, x)``.
        index: ``(1, D, H, W, 3)`` ``(x, y, z)`` indices into the padded grid (voxel units,
            ``0 … N − 1``; e.g. :func:`slice_coordinates`).

    Returns:
        ``(1, C, D, H, W)`` samples.
    """
    grid = index * (2.0 / (data.shape[-1] - 1)) - 1.0
    threads = torch.get_num_threads()
    d = int(grid.shape[1])
    if data.device.type != "cpu" or data.shape[0] != 1 or grid.shape[0] != 1 or threads < 2 or d < 2:
        return F.grid_sample(data, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    t = min(threads, d)
    per = -(-d // t)
    g = grid[0]
    if per * t > d:
        g = torch.cat([g, g.new_zeros((per * t - d, *g.shape[1:]))])
    out = F.grid_sample(data.expand(t, *data.shape[1:]), g.reshape(t, per, *g.shape[1:]), mode="bilinear",
                        padding_mode="zeros", align_corners=True)  # (t, C, per, H, W)
    out = out.transpose(0, 1).reshape(1, data.shape[1], t * per, *out.shape[3:])
    return out[:, :, :d]


def slice_volume_ft(volume_ft: VolumeFT, rotmats: torch.Tensor) -> torch.Tensor:
    """Central slices of a prepared transform: centred image transforms ``(B, n, n)`` (complex).

    Args:
        volume_ft: Output of :func:`prepare_volume_ft`.
        rotmats: ``(B, 3, 3)`` rotation matrices (RELION convention), same device; gradients
            flow to them and to ``volume_ft.data``.

    Returns:
        Complex ``(B, n, n)``, DC at ``[n//2, n//2]``, zero where ``|k| >= n/2``.
    """
    n = volume_ft.box_size
    rotmats = rotmats.to(volume_ft.data.dtype)
    out = sample_padded(volume_ft.data, slice_coordinates(rotmats, n, volume_ft.pad)[None])  # (1, 2, B, n, n)
    mask = slice_mask(n, device=out.device, dtype=out.dtype)
    return torch.complex(out[0, 0] * mask, out[0, 1] * mask)


def insert_slices(slices: torch.Tensor, rotmats: torch.Tensor, *, pad: int = 2,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Adjoint of the slice interpolation: trilinear scatter of slices into a padded grid.

    ``<slice_volume_ft(V), S> = <V, insert_slices(S)>`` (complex inner product, masked
    frequencies excluded). Used for backprojection (data ``CTF·X``) and for the weights
    (``CTF²``, real input).

    Args:
        slices: ``(B, n, n)`` centred slices, real or complex.
        rotmats: ``(B, 3, 3)`` rotations.
        pad: Padding factor of the target grid (``N = pad·n``).
        out: Optional ``(N, N, N)`` accumulator (same dtype as ``slices``) added to in place.

    Returns:
        ``(N, N, N)`` tensor of the dtype of ``slices`` (accumulator if given).
    """
    n = slices.shape[-1]
    size = pad * n
    idx = slice_coordinates(rotmats.to(torch.float64), n, pad).reshape(-1, 3)
    mask = slice_mask(n, device=slices.device).reshape(-1) > 0
    values = slices.reshape(slices.shape[0], -1)[:, mask].reshape(-1)
    idx = idx.reshape(slices.shape[0], n * n, 3)[:, mask].reshape(-1, 3)
    if out is None:
        out = torch.zeros((size, size, size), dtype=slices.dtype, device=slices.device)
    i0 = torch.floor(idx)
    frac = (idx - i0).to(torch.float64)
    i0 = i0.long()
    flat = out.view(-1)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = ((frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                     * (frac[:, 2] if dz else 1 - frac[:, 2]))
                xi, yi, zi = i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz
                ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size) & (zi >= 0) & (zi < size)
                lin = (zi * size + yi) * size + xi
                flat.index_add_(0, lin[ok], (values[ok] * w[ok].to(values.real.dtype)))
    return out


def project(volume: torch.Tensor | VolumeFT, rotmats: torch.Tensor, *, shifts_px: torch.Tensor | None = None,
            ctf: torch.Tensor | None = None, pad: int = 2, return_fourier: bool = False) -> torch.Tensor:
    """Project a volume at the given poses (Fourier-slice theorem), optionally shifted and CTF'd.

    Args:
        volume: ``(n, n, n)`` real volume or a prepared :class:`VolumeFT` (re-use it across batches).
        rotmats: ``(B, 3, 3)`` RELION rotation matrices.
        shifts_px: ``(B, 2)`` RELION origins ``(x, y)`` in pixels: the content is drawn at ``−s``
            (:func:`cryopose.projection.shifts.origin_phases`).
        ctf: ``(B, n, n)`` CTF on the centred grid (:func:`cryopose.ctf.compute_ctf`).
        pad: Padding factor when ``volume`` is a tensor.
        return_fourier: Return the centred image transforms instead of real images.

    Returns:
        ``(B, n, n)`` real images (sum of density along the beam; no normalisation), or complex
        transforms if ``return_fourier``.
    """
    vft = volume if isinstance(volume, VolumeFT) else prepare_volume_ft(volume, pad=pad)
    ft = slice_volume_ft(vft, rotmats)
    if ctf is not None:
        ft = ft * ctf
    if shifts_px is not None:
        ft = ft * origin_phases(shifts_px.to(ft.real.dtype), vft.box_size)
    return ft if return_fourier else centered_ifft2(ft).real


def backproject(images: torch.Tensor, rotmats: torch.Tensor, *, pad: int = 2) -> torch.Tensor:
    """Exact adjoint of :func:`project` (no CTF, no shift): images ``(B, n, n)`` → volume ``(n, n, n)``.

    ``<project(V, R), U> = <V, backproject(U, R)>`` for real ``V, U``. This is the unweighted,
    uncorrected backprojection; for a reconstruction use :mod:`cryopose.reconstruction`.
    """
    n = images.shape[-1]
    size = pad * n
    ft = centered_fft2(images.to(torch.complex128 if images.dtype == torch.float64 else torch.complex64)) / (n * n)
    grid = insert_slices(ft, rotmats, pad=pad)
    vol = (centered_ifft3(grid) * size**3).real
    start = size // 2 - n // 2
    vol = vol[start:start + n, start:start + n, start:start + n]
    return vol / gridding_correction(n, pad, device=vol.device, dtype=vol.dtype)
