"""RELION STAR particle files (3.0, 3.1, 5.0): the only module that knows ``rln*`` names.

Reading (:func:`read_star`) accepts

* RELION 3.0: one loop block (``data_``, ``data_images``, ``data_particles`` or any single
  block, e.g. ``data_model_class_1``), origins ``rlnOriginX/Y`` in pixels (converted to Å
  with the pixel size), pixel size from ``rlnImagePixelSize`` or
  ``rlnDetectorPixelSize [µm] · 1e4 / rlnMagnification``, CTF optics values per particle;
* RELION 3.1: ``data_optics`` + ``data_particles`` in either order, ``rlnOriginXAngst/YAngst``,
  voltage, Cs and amplitude contrast per optics group, broadcast to the particles;
* RELION 5: as 3.1; extra optics columns (beam tilt, Zernike, mag matrix) pass through.

Conversions: ``rotmats = relion_euler_to_rotmat(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)``;
``shifts_angstrom = (rlnOriginXAngst, rlnOriginYAngst)`` (same sign); defocus in Å,
``rlnDefocusAngle`` and ``rlnPhaseShift`` in degrees as in :class:`cryopose.ctf.CTFParams`
(defocus U and V are kept as written, even when U < V).

Writing (:func:`write_star`) always produces RELION 3.1 format, which RELION 3.1, 4 and 5
read (checked with ``relion_star_printtable``, ``relion_stack_create`` and
``relion_reconstruct`` in the tests).

Image names (``N@stack`` in ``rlnImageName``) follow RELION's convention: relative names are
relative to the folder the program runs in (the project folder), so written files name
stacks so that they resolve from the current folder. When reading, relative names are tried
against the current folder, then the STAR file's folder, then ``datadir``, and stacks are
read only inside those folders (real paths, symlinks followed).

The reader lives in :mod:`cryopose.io.star_read`, the writer in :mod:`cryopose.io.star_write`;
both are re-exported here.
"""

from __future__ import annotations

from .star_read import read_star
from .star_write import write_star

__all__ = ["read_star", "write_star"]
