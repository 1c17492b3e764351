"""Simulated particle data sets with ground truth (``cryopose simulate``).

* :mod:`~cryopose.simulate.volumes`: MRC map → requested grid; PDB/mmCIF → electron density.
* :mod:`~cryopose.simulate.poses`: uniform SO(3) or in-plane rotations; shifts in a disc.
* :mod:`~cryopose.simulate.ctf_sampling`: defocus range, defocus list, or a CTF table.
* :mod:`~cryopose.simulate.noise`: the SNR definition and white Gaussian noise.
* :mod:`~cryopose.simulate.junk`: outlier particles (noise, blobs, other structure, off-centre).
* :mod:`~cryopose.simulate.mixture`: discrete mixtures of several maps and morphs between two.
* :mod:`~cryopose.simulate.simulator`: :func:`simulate_particles` (streams ``.mrcs`` + ``.star``)
  and :func:`simulate_in_memory`.
"""

from .ctf_sampling import load_ctf_table, sample_ctf
from .junk import JUNK_TYPES, NOT_JUNK, parse_junk_types
from .mixture import TRUE_CLASS_COLUMN, TRUE_MORPH_COLUMN, MixtureSpec, load_volumes
from .noise import measure_snr, noise_sigma_for_snr, signal_variance, snr_from_db, snr_to_db
from .poses import in_plane_rotations, sample_rotations, sample_shifts, view_directions
from .simulator import (GroundTruth, SimulationConfig, SimulationResult, sample_ground_truth, simulate_in_memory,
                        simulate_particles)
from .volumes import load_volume, model_to_density, resample_volume

__all__ = [
    "JUNK_TYPES",
    "NOT_JUNK",
    "GroundTruth",
    "MixtureSpec",
    "TRUE_CLASS_COLUMN",
    "TRUE_MORPH_COLUMN",
    "SimulationConfig",
    "SimulationResult",
    "in_plane_rotations",
    "load_ctf_table",
    "load_volume",
    "load_volumes",
    "measure_snr",
    "model_to_density",
    "noise_sigma_for_snr",
    "parse_junk_types",
    "resample_volume",
    "sample_ctf",
    "sample_ground_truth",
    "sample_rotations",
    "sample_shifts",
    "signal_variance",
    "simulate_in_memory",
    "simulate_particles",
    "snr_from_db",
    "snr_to_db",
    "view_directions",
]
