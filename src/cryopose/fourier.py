"""Centred FFTs, frequency grids and radial shells (torch).

Layout: the centred transform of an axis of length ``n`` has its DC term at index ``n // 2``;
the frequency of index ``j`` is ``k = j - n // 2`` cycles per box, i.e. ``k / (n * pixel_size)``
cycles/Å. Real-space origin is also at ``n // 2``. Transforms use numpy/torch's default
normalisation (forward unnormalised, inverse divided by the number of samples).
"""

from __future__ import annotations

import torch

__all__ = [
    "centered_fft2",
    "centered_ifft2",
    "centered_fft3",
    "centered_ifft3",
    "frequency_indices",
    "frequency_grid_2d",
    "radial_index_2d",
    "radial_index_3d",
    "fourier_crop_2d",
    "fourier_crop_3d",
    "fourier_downsample_images",
    "fourier_downsample_volume",
]


def centered_fft2(x: torch.Tensor) -> torch.Tensor:
    """Centred 2D FFT over the last two axes: ``fftshift(fft2(ifftshift(x)))``."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def centered_ifft2(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`centered_fft2` (complex output; take ``.real`` for real images)."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def centered_fft3(x: torch.Tensor) -> torch.Tensor:
    """Centred 3D FFT over the last three axes."""
    dims = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def centered_ifft3(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`centered_fft3` (complex output)."""
    dims = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def frequency_indices(n: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Integer frequencies ``j - n // 2`` for ``j = 0..n-1`` as a float tensor of shape ``(n,)``."""
    return torch.arange(n, device=device, dtype=dtype) - (n // 2)


def frequency_grid_2d(n: int, pixel_size_angstrom: float | None = None, *, device=None,
                      dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequency grid ``(ky, kx)`` of a centred ``n x n`` transform.

    Args:
        n: Box size in pixels.
        pixel_size_angstrom: If given, frequencies are in cycles/Å; otherwise in cycles per box
            (integer indices ``j - n // 2``).

    Returns:
        ``(ky, kx)``, each of shape ``(n, n)``; ``ky`` varies along axis 0 (rows, y).
    """
    k = frequency_indices(n, device=device, dtype=dtype)
    if pixel_size_angstrom is not None:
        k = k / (n * pixel_size_angstrom)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return ky, kx


def radial_index_2d(n: int, *, device=None) -> torch.Tensor:
    """Radius ``|k|`` in cycles per box of every pixel of a centred ``n x n`` transform."""
    ky, kx = frequency_grid_2d(n, device=device)
    return torch.sqrt(kx**2 + ky**2)


def radial_index_3d(n: int, *, device=None) -> torch.Tensor:
    """Radius ``|k|`` in cycles per box of every voxel of a centred ``n^3`` transform."""
    k = frequency_indices(n, device=device)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.sqrt(kx**2 + ky**2 + kz**2)


def _crop_slices(n: int, m: int) -> slice:
    start = n // 2 - m // 2
    return slice(start, start + m)


def fourier_crop_2d(ft: torch.Tensor, m: int) -> torch.Tensor:
    """Keep the central ``m x m`` frequencies of a centred 2D transform ``(..., n, n)``."""
    s = _crop_slices(ft.shape[-1], m)
    return ft[..., s, s]


def fourier_crop_3d(ft: torch.Tensor, m: int) -> torch.Tensor:
    """Keep the central ``m^3`` frequencies of a centred 3D transform ``(..., n, n, n)``."""
    s = _crop_slices(ft.shape[-1], m)
    return ft[..., s, s, s]


def fourier_downsample_images(images: torch.Tensor, m: int) -> torch.Tensor:
    """Downsample images ``(..., n, n)`` to ``(..., m, m)`` by Fourier cropping.

    Pixel values keep their scale (a constant image stays the same constant); the pixel size
    grows by ``n / m``; the origin pixel ``n // 2`` maps to ``m // 2``. Real images go through
    half-spectrum transforms (``rfft2``/``irfft2``), complex ones through the centred full
    transforms; both give the real part of the inverse of the centred ``m × m`` crop. Raises
    ``ValueError`` if ``m > n``.
    """
    n = images.shape[-1]
    if m > n:
        raise ValueError(f"cannot Fourier-crop a {n}-px box to {m} px")
    if m == n:
        return images
    if images.is_complex():
        return _centred_downsample_images(images, m)
    return _rfft_downsample_images(images, m)


def _centred_downsample_images(images: torch.Tensor, m: int) -> torch.Tensor:
    """:func:`fourier_downsample_images` by its definition: centred full transforms, crop, real part."""
    n = images.shape[-1]
    return centered_ifft2(fourier_crop_2d(centered_fft2(images), m)).real * (m * m) / (n * n)


def _rfft_downsample_images(images: torch.Tensor, m: int) -> torch.Tensor:
    """Real-input :func:`fourier_downsample_images` by half-spectrum transforms (several × faster).

    Same result, to float rounding, as the real part of the centred crop's inverse: the kept
    frequencies are ``−m//2 … (m−1)//2`` on each axis, and for even ``m`` the Nyquist row and
    column (``±m/2``, one frequency at ``m`` px) hold the mean of the input's ``−m/2`` and
    ``+m/2`` coefficients, which is what taking the real part does there.
    """
    n = images.shape[-1]
    dims = (-2, -1)
    f = torch.fft.rfft2(torch.fft.ifftshift(images, dim=dims), dim=dims)  # (..., n, n//2 + 1)
    half = m // 2
    n_pos, n_neg = (m + 1) // 2, m // 2  # rows of frequencies 0…, and …−1
    cols = f[..., :half + 1]
    out = torch.cat([cols[..., :n_pos, :], cols[..., n - n_neg:, :]], dim=-2)
    if m % 2 == 0:
        # row −m/2 stands for ±m/2: the mean of the two; at the self-conjugate corner the real
        # part of the +m/2 coefficient (c2r keeps only the real part of such bins)
        out[..., n_pos, :] = 0.5 * (cols[..., n - half, :] + cols[..., half, :])
        out[..., n_pos, half] = cols[..., half, half].real.to(out.dtype)
    x = torch.fft.irfft2(out, s=(m, m), dim=dims)
    return torch.fft.fftshift(x, dim=dims) * (m * m) / (n * n)


def fourier_downsample_volume(volume: torch.Tensor, m: int) -> torch.Tensor:
    """Downsample a volume ``(..., n, n, n)`` to ``m^3`` by Fourier cropping (values keep scale)."""
    n = volume.shape[-1]
    if m > n:
        raise ValueError(f"cannot Fourier-crop a {n}-px box to {m} px")
    if m == n:
        return volume
    ft = fourier_crop_3d(centered_fft3(volume), m)
    return centered_ifft3(ft).real * (m**3) / (n**3)
