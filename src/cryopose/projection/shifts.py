"""Fourier-space image shifts (pixels only live inside :mod:`cryopose.projection`)."""

from __future__ import annotations

import math

import torch

from ..fourier import frequency_grid_2d

__all__ = ["fourier_shift_phases", "apply_fourier_shifts", "origin_phases"]


def fourier_shift_phases(shifts_px: torch.Tensor, box_size: int) -> torch.Tensor:
    """Phase ramps that translate centred image transforms by ``shifts_px``.

    Multiplying a centred transform by ``exp(−2πi (kx sx + ky sy) / n)`` moves the image content
    by ``+s`` pixels (towards larger x and y). This is a plain translation; for RELION origins use
    :func:`origin_phases`.

    Args:
        shifts_px: ``(B, 2)`` shifts ``(sx, sy)`` in pixels (float, sub-pixel allowed).
        box_size: Image edge ``n`` in pixels.

    Returns:
        Complex tensor ``(B, n, n)``; differentiable in ``shifts_px``.
    """
    ky, kx = frequency_grid_2d(box_size, device=shifts_px.device, dtype=shifts_px.dtype)
    arg = kx[None] * shifts_px[:, 0, None, None] + ky[None] * shifts_px[:, 1, None, None]
    return torch.polar(torch.ones_like(arg), -2.0 * math.pi * arg / box_size)


def apply_fourier_shifts(images_ft: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Translate centred image transforms ``(B, n, n)`` by ``shifts_px`` ``(B, 2)`` pixels."""
    return images_ft * fourier_shift_phases(shifts_px, images_ft.shape[-1])


def origin_phases(shifts_px: torch.Tensor, box_size: int) -> torch.Tensor:
    """Phase ramps that turn a centred projection into a particle with RELION origin ``shifts_px``.

    RELION's ``rlnOriginX/Y`` (and ``rlnOriginXAngst/YAngst``) is the translation that re-centres
    the particle, so the particle's content sits at ``−origin``: ``relion_project`` draws the
    projection translated by ``−s`` (checked in ``tests/oracle``). Multiply a centred projection by
    these phases to make the particle; multiply a particle by their conjugate to centre it.

    Args:
        shifts_px: ``(B, 2)`` RELION origins ``(x, y)`` in pixels.
        box_size: Image edge ``n`` in pixels.

    Returns:
        Complex ``(B, n, n)``: ``exp(+2πi (kx sx + ky sy) / n)``.
    """
    return fourier_shift_phases(-shifts_px, box_size)
