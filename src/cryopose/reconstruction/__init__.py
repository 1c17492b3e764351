"""Known-pose reconstruction: CTF-weighted Fourier-slice backprojection, half maps, FSC Wiener filter."""

from .backprojection import (
    Backprojector,
    FilterOptions,
    ReconstructionResult,
    radial_filter,
    random_half_sets,
    reconstruct,
    reconstruct_from_tensors,
    soft_mask_outside_map,
)

__all__ = [
    "Backprojector",
    "FilterOptions",
    "ReconstructionResult",
    "radial_filter",
    "random_half_sets",
    "reconstruct",
    "reconstruct_from_tensors",
    "soft_mask_outside_map",
]
