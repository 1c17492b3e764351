"""Rotations: RELION Euler angles, matrices, quaternions, geodesic distance.

Conventions (see :mod:`cryopose.conventions`): rotations travel between modules as matrices
``R`` of shape ``(..., 3, 3)`` acting on column vectors ``(x, y, z)``. RELION's Euler angles
``(rot, tilt, psi)`` in degrees (ZYZ) map to ``R = Rz(psi) Ry(tilt) Rz(rot)`` exactly as
RELION's ``Euler_angles2matrix`` (``src/euler.cpp``), where ``Rz(a) = [[c, s, 0], [-s, c, 0],
[0, 0, 1]]`` and ``Ry(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``. Quaternions are scalar-first
``(w, x, y, z)``, unit norm, and map to ``R`` by the standard (Hamilton) formula.

Other parametrisations:

* **6D / "s2s2"** (Zhou et al., "On the continuity of rotation representations in neural
  networks", CVPR 2019; called ``s2s2`` in cryoDRGN and CryoPoseNet): the first two **columns**
  of ``R`` concatenated, ``x = (R[:, 0], R[:, 1])``; decoded by Gram–Schmidt. cryoDRGN's
  ``SO3_to_s2s2(M)`` keeps the first two *rows* of its matrix, i.e. our ``rotmat_to_sixd(Rᵀ)``.
* **rotation vectors** (axis × angle, radians), right-hand rule:
  ``R = exp([ω]×)`` rotates column vectors by ``|ω|`` about ``ω / |ω|``.
* **SO(3) grids**: the Hopf-fibration / HEALPix grid of Yershova et al., "Generating uniform
  incremental grids on SO(3) using the Hopf fibration", IJRR 2010 (as cryoDRGN's ``so3_grid``
  and RELION's ``--healpix_order``): a HEALPix sphere grid of viewing directions
  ``(rot, tilt)`` × a uniform grid of in-plane angles ``psi``.

The viewing direction of a pose ``R`` is the unit vector, in the volume's frame, along which
the projector integrates: ``d = Rᵀ e_z = (sin tilt cos rot, sin tilt sin rot, cos tilt)``
(the third row of ``R``).

All functions take and return ``torch.Tensor`` (numpy arrays are accepted and converted) and
broadcast over leading batch dimensions; they are exact in float64.

The formats and conversions live in :mod:`cryopose.rotations_core`, the random rotations and
grids in :mod:`cryopose.rotations_grids`; both are re-exported here.
"""

from __future__ import annotations

from . import rotations_core as _core, rotations_grids as _grids
from .rotations_core import *  # noqa: F401,F403  (names listed in rotations_core.__all__)
from .rotations_grids import *  # noqa: F401,F403  (names listed in rotations_grids.__all__)

__all__ = [*_core.__all__, *_grids.__all__]
