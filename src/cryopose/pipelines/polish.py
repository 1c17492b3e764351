"""Local pose polishing after amortized inference: the semi-amortized last step of ``abinitio``.

The encoder's poses are right to a few degrees — the precision a regression from one noisy
image reaches, and the working box (Fourier-cropped, usually half the particles' box) caps the
detail it can see. cryoSPIN (Shekarforoush et al. 2024) and cryoDRGN-AI (Levy et al. 2024)
therefore end amortized inference with per-particle optimisation of the poses. Here it is
done as RELION's local refinement does it: the map is reconstructed from the current poses at
the particles' full box (:func:`cryopose.reconstruction.reconstruct`), every pose is refined
on a local lattice around it with the step halving from ``start_step_deg`` to
``final_step_deg`` (:func:`cryopose.search.projection_matching.local_search`: CTF-aware
normalised cross-correlation, symmetry-aware), and the map is reconstructed again.

Both half sets are aligned against the combined map of the round before, as cryoSPARC's ab
initio and homogeneous refinement before its last iteration do (the half maps stay
independent reconstructions, but the FSC between them is then slightly optimistic; the
resolution against the truth is what ``benchmarks/abinitio.py`` reports).
"""

from __future__ import annotations

import torch

from ..search.projection_matching import SearchConfig, local_search

__all__ = ["polish_poses"]


def polish_poses(stack, metadata, rotmats: torch.Tensor, reference: torch.Tensor, *, symmetry: str = "C1",
                 start_step_deg: float = 3.75, final_step_deg: float = 0.9375,
                 particle_chunk: int = 256, shift_step_angstrom: float = 0.0,
                 max_resolution_angstrom: float | None = None, return_shifts: bool = False):
    """Refine poses (and optionally origins) locally against a map at the particles' box.

    Args:
        stack: Particle images (``len`` and ``stack[indices] → (B, n, n)``), as read by
            :func:`cryopose.io.particles.load_particles` (same contrast as the map).
        metadata: Their :class:`~cryopose.io.particles.ParticleMetadata` (pixel size, CTF,
            origins in Å, the starting origins).
        rotmats: ``(N, 3, 3)`` starting poses (RELION matrices).
        reference: ``(n, n, n)`` map on the particles' grid (e.g. reconstructed from ``rotmats``).
        symmetry: Point group of the map; poses are returned in RELION's asymmetric unit.
        start_step_deg: First lattice step, degrees (about the starting poses' error).
        final_step_deg: Last lattice step, degrees.
        particle_chunk: Particles scored at a time (bounds memory).
        shift_step_angstrom: First step of the ``3 × 3`` origin lattice searched with each
            rotation lattice, Å, halving with the angular step down to a quarter pixel
            (0 = keep the origins).
        max_resolution_angstrom: Ignore frequencies finer than this (Å), e.g. the map's
            FSC = 0.143 resolution: they carry no signal of the map, and leaving them out makes
            polishing cheaper at large boxes. ``None`` = Nyquist.
        return_shifts: Also return the refined origins.

    Returns:
        ``(N, 3, 3)`` float32 refined poses, or ``(poses, origins)`` with ``return_shifts``
        (``(N, 2)`` float32 RELION origins in Å).

    Raises:
        UserError: Inconsistent inputs (from :func:`local_search`).
    """
    cfg = SearchConfig(symmetry=symmetry, final_step_deg=float(final_step_deg), particle_chunk=int(particle_chunk),
                       max_resolution_angstrom=max_resolution_angstrom)
    res = local_search(stack, reference, float(metadata.pixel_size_angstrom), rotmats.float(),
                       metadata.shifts_angstrom, ctf=metadata.ctf, config=cfg, start_step_deg=float(start_step_deg),
                       shift_step_angstrom=float(shift_step_angstrom))
    if return_shifts:
        return res.rotmats.float(), res.shifts_angstrom.float()
    return res.rotmats.float()
