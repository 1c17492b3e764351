"""``abinitio --symmetry``: the C1 ab initio map brought into the point group's frame.

Ab initio trains in C1 (cryoSPARC and RELION do the same; imposing D2 on β-galactosidase from
a random start stalled here), so its map has an arbitrary orientation. Before the polishing
rounds impose the particles' point group (a homogeneous refinement with symmetry), the
encoder's map is centred on its density (the origins move with it, when they are estimated),
its symmetry axes are found (:func:`cryopose.reconstruction.symmetry_axes.find_symmetry_axes`,
as ``relion_align_symmetry``), and every pose ``A`` becomes ``A R``. ``encoder.pt`` records
``R`` (``frame_rotation``), so that ``cryopose predict`` gives poses in the same frame.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..conventions import shifts_angstrom_to_pixels

__all__ = ["align_to_symmetry", "SYMMETRY_SCORE_WARNING"]

#: A symmetry score (:func:`~cryopose.reconstruction.symmetry_axes.symmetry_score`) below this
#: is reported as a warning: the map does not look like the point group given. The true β-gal
#: map scores 0.99 in D2 (0.79 in D4, 0.74 in T); the C1 map of a realistic 20,000-particle
#: ab initio run (12.6 Å) 0.77 in D2.
SYMMETRY_SCORE_WARNING = 0.5


def align_to_symmetry(inference, shifts_a, rec, meta, dataset, config, prep: dict, *, encoder_path=None):
    """Find the symmetry axes of the encoder's map and turn the poses into the group's frame.

    Args:
        inference: The encoder's :class:`~cryopose.training.trainer.PoseInference`.
        shifts_a: ``(N, 2)`` origins in Å (estimated), or ``None`` (the input's are kept, and
            the map is taken as centred by them).
        rec: The C1 reconstruction from ``inference``'s poses (``volume``, FSC resolution).
        meta: The metadata of ``rec``'s grid (its pixel size).
        dataset: The working-box dataset (its pixel size converts the origins to working pixels).
        config: The run's :class:`~cryopose.training.config.AbinitioConfig` (``symmetry``).
        prep: The run's preprocessing record; returned with ``symmetry_axes`` (score,
            rotation, resolution used) and ``map_centring_angstrom`` added.
        encoder_path: The run's ``encoder.pt``, written again with ``frame_rotation`` (``R``).

    Returns:
        ``(inference with turned poses and moved origins, origins in Å or None, prep)``.
    """
    from ..reconstruction.symmetry_axes import aligned_rotmats, find_symmetry_axes
    from .polish import centred

    apix = float(meta.pixel_size_angstrom)
    volume = rec.volume.float()
    moved = torch.zeros(3, dtype=torch.float64)
    if shifts_a is not None:
        volume, shifts_a, moved = centred(volume, inference.rotmats, shifts_a, apix)
    res = rec.resolution_fsc0p143_angstrom
    found = find_symmetry_axes(volume, apix, config.symmetry,
                               resolution_angstrom=res if res is not None and math.isfinite(res) else None)
    inference = dataclasses.replace(
        inference, rotmats=aligned_rotmats(inference.rotmats.float(), found.rotation.float()),
        shifts_px=inference.shifts_px if shifts_a is None else shifts_angstrom_to_pixels(
            shifts_a.float(), dataset.pixel_size_angstrom))
    record = {"symmetry": found.symmetry, "score": found.score,
              "rotation": found.rotation.tolist(),
              "search_resolution_angstrom": found.search_resolution_angstrom}
    prep = {**prep, "symmetry_axes": record, "map_centring_angstrom": [float(v) for v in moved]}
    if encoder_path is not None:  # predict turns the encoder's poses into this frame too
        from ..training.checkpoint import load_checkpoint, save_checkpoint

        save_checkpoint(encoder_path, {**load_checkpoint(encoder_path), "frame_rotation": found.rotation.tolist()})
    return inference, shifts_a, prep
