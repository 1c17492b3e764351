"""Differentiable Fourier-slice projection, its adjoint (backprojection), shifts, and a
real-space reference projector for tests.

Equation (see :mod:`cryopose.conventions`): for a rotation ``R`` (RELION's matrix) and a shift
``s`` (pixels, RELION origin sign), the image is

``I(r) = ∫ V(Rᵀ (r + s, z)) dz``  ⇔  ``Î(k) = V̂(Rᵀ (k, 0)) · exp(+2πi k·s / n)``

(RELION's origin sign: the particle's centre sits at ``−s``; ``relion_project`` agrees).

and with a CTF, ``Î(k) ← CTF(k) · Î(k)``.
"""

from .fourier_slice import (
    VolumeFT,
    backproject,
    insert_slices,
    prepare_volume_ft,
    project,
    slice_volume_ft,
)
from .real_space import project_real_space
from .shifts import apply_fourier_shifts, fourier_shift_phases, origin_phases

__all__ = [
    "VolumeFT",
    "prepare_volume_ft",
    "slice_volume_ft",
    "insert_slices",
    "project",
    "backproject",
    "project_real_space",
    "fourier_shift_phases",
    "apply_fourier_shifts",
    "origin_phases",
]
