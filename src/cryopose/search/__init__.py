"""Exhaustive, CTF- and symmetry-aware projection matching (the classical pose-search baseline).

* :mod:`~cryopose.search.band`: half-plane Fourier bands, band-limited reference slices.
* :mod:`~cryopose.search.projection_matching`: :func:`search_poses` (global grid + coarse-to-fine
  local refinement), :func:`local_search`, :func:`score_poses`.
* :mod:`~cryopose.search.run`: :func:`search_particles`, what ``cryopose search`` calls.
"""

from .projection_matching import (SearchConfig, SearchResult, asymmetric_so3_grid, local_search, score_poses,
                                  search_poses, shift_lattice)
from .run import ResampledImages, search_particles, working_grid

__all__ = [
    "SearchConfig",
    "SearchResult",
    "asymmetric_so3_grid",
    "shift_lattice",
    "search_poses",
    "local_search",
    "score_poses",
    "ResampledImages",
    "search_particles",
    "working_grid",
]
