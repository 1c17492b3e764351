"""Every convention of cryopose in one place, with the converters that use them.

==================  ===========================================================================
topic               decision
==================  ===========================================================================
axes                images ``(..., y, x)``; volumes ``(..., z, y, x)`` as mrcfile reads them;
                    vector components ``(x, y, z)``.
real-space origin   index ``n // 2`` on every axis, for even and odd ``n`` (RELION's origin for
                    even boxes; ``relion_project`` draws odd boxes one pixel off, at
                    ``n // 2 + 1`` in x and y — a RELION quirk measured in ``tests/oracle``).
centred FFT         ``fftshift(fftn(ifftshift(x)))``; DC at index ``n // 2``
                    (:mod:`cryopose.fourier`).
frequency           integer index ``k = j - n // 2``; cycles/Å ``k / (n * pixel_size)``;
                    Nyquist ``1 / (2 * pixel_size)``.
rotations           matrices ``R`` of shape ``(..., 3, 3)`` between modules. ``R`` is RELION's
                    ``Euler_angles2matrix(rot, tilt, psi) = Rz(psi) Ry(tilt) Rz(rot)``
                    (:func:`cryopose.rotations.relion_euler_to_rotmat`). The projector makes
                    ``image(x, y) = ∫ V(Rᵀ (x, y, z)ᵀ) dz``: the volume is rotated by ``R`` and
                    projected along ``z``; in Fourier space the image frequency ``(kx, ky)`` reads
                    the volume's transform at ``Rᵀ (kx, ky, 0)ᵀ``. Proven against
                    ``relion_project`` by ``tests/oracle``.
shifts              Å, same sign as ``rlnOriginXAngst/YAngst``: the translation that re-centres
                    the particle, so a particle with origin ``(ox, oy)`` is the centred
                    projection translated by ``(−ox, −oy)`` (its centre sits at pixel
                    ``n // 2 − o / pixel_size``), as ``relion_project`` draws it. Pixels only
                    inside :mod:`cryopose.projection`.
CTF                 RELION/CTFFIND parameters: defocus in Å, positive = underfocus,
                    ``defocus_u >= defocus_v``, astigmatism angle in degrees from the x axis,
                    Cs in mm, voltage in kV, amplitude contrast as a ratio, phase shift in
                    degrees. ``CTF(k) = sin(χ(k))`` with
                    ``χ = π λ Δf(θ) |k|² − (π/2) Cs λ³ |k|⁴ + φ + arcsin(w)``,
                    ``Δf(θ) = (Δu + Δv)/2 + (Δu − Δv)/2 · cos 2(θ − α)``; positive at low
                    frequency (RELION's ``-sin(K1 Δf' k² + K2 k⁴ − K5 − K3)`` with ``Δf' = −Δf``),
                    checked against ``relion_project --ctf``. Optional ``exp(−B |k|² / 4)``.
contrast            density is positive and projects bright; inverted-contrast data (dark
                    particles) are handled by an explicit ``invert_contrast`` step, never by
                    flipping the CTF.
pixel size          travels with the data; a zero, missing or disagreeing pixel size raises
                    :class:`PixelSizeError`, never a silent 1 Å.
handedness          right-handed; pose metrics report the better hand and which one.
==================  ===========================================================================
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PixelSizeError",
    "center_index",
    "check_pixel_size",
    "shifts_angstrom_to_pixels",
    "shifts_pixels_to_angstrom",
]


class PixelSizeError(ValueError):
    """A pixel size is missing, non-positive, or two sources disagree."""


def center_index(n: int) -> int:
    """Index of the real-space origin (and of the Fourier DC term) on an axis of length ``n``."""
    return n // 2


def check_pixel_size(value, *, source: str, other=None, other_source: str = "", rtol: float = 1e-3) -> float:
    """Validate a pixel size and, optionally, that a second source agrees with it.

    Args:
        value: Pixel size in Å/px.
        source: Where ``value`` came from (file and field), quoted in the error.
        other: An optional second pixel size in Å/px that must agree within ``rtol``.
        other_source: Where ``other`` came from.
        rtol: Relative tolerance for agreement.

    Returns:
        The pixel size as a float.

    Raises:
        PixelSizeError: If ``value`` is missing, not finite or not positive, or disagrees with
            ``other``.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PixelSizeError(f"{source}: pixel size {value!r} is not a number") from None
    if not np.isfinite(v) or v <= 0:
        raise PixelSizeError(f"{source}: pixel size must be positive, got {value!r} Å")
    if other is not None:
        o = float(other)
        if not np.isclose(v, o, rtol=rtol):
            raise PixelSizeError(
                f"pixel sizes disagree: {v:g} Å from {source} vs {o:g} Å from {other_source}; "
                "pass --pixel-size to choose one"
            )
    return v


def shifts_angstrom_to_pixels(shifts_angstrom, pixel_size_angstrom: float):
    """Convert shifts ``(..., 2)`` ``(x, y)`` from Å to pixels (same sign)."""
    return shifts_angstrom / pixel_size_angstrom


def shifts_pixels_to_angstrom(shifts_pixels, pixel_size_angstrom: float):
    """Convert shifts ``(..., 2)`` ``(x, y)`` from pixels to Å (same sign)."""
    return shifts_pixels * pixel_size_angstrom
