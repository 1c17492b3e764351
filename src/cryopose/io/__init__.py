"""File formats: MRC maps and stacks, RELION STAR, cryoSPARC ``.cs``; the output layer (checks,
atomic writes; :mod:`cryopose.io.outputs`).

``io/`` is the only package that knows file-format column names and converts their
conventions; everything it returns is in :mod:`cryopose.conventions` (rotation matrices,
shifts in Å, RELION CTF parameters). Importing it has no side effects.
"""

from .atomic import atomic_path, atomic_write, atomic_write_text
from .cryosparc import read_cs
from .mrc import MapData, StackWriter, open_stack, read_map, write_map, write_stack
from .particles import ParticleMetadata, ParticleStack, load_particles
from .star import read_star, write_star

__all__ = [
    "atomic_path", "atomic_write", "atomic_write_text",
    "MapData", "read_map", "write_map", "write_stack", "StackWriter", "open_stack",
    "ParticleMetadata", "ParticleStack", "load_particles",
    "read_star", "write_star", "read_cs",
]
