"""Half sets, the FSC-derived Wiener/tau² filter and the result of a reconstruction.

The second stage of :mod:`cryopose.reconstruction` (the first, the Fourier-slice insertion, is
:mod:`cryopose.reconstruction.backprojection`): particles are split into two half sets
(RELION's ``rlnRandomSubset`` when present, else a seeded random split), the half maps'
FSC gives the spectral SNR, and the SNR sets the regulariser of the full map (see the
docstring of :mod:`cryopose.reconstruction.backprojection`, items 2-6, for the equations).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

__all__ = [
    "FilterOptions",
    "ReconstructionResult",
    "assign_half_sets",
    "finish_reconstruction",
    "random_half_sets",
]


def random_half_sets(n_particles: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Balanced random split into half sets: ``(N,)`` int64 of 0 (half 1) and 1 (half 2).

    The first ``ceil(N / 2)`` positions of a random permutation go to half 1.
    """
    perm = torch.randperm(n_particles, generator=generator)
    out = torch.ones(n_particles, dtype=torch.int64)
    out[perm[: (n_particles + 1) // 2]] = 0
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class ReconstructionResult:
    """Output of :func:`cryopose.reconstruction.reconstruct`.

    Attributes:
        volume: ``(n, n, n)`` float32 map ``(z, y, x)``, origin at ``n // 2``; same density
            scale as the map whose projections the images are (projection = sum along the beam).
        pixel_size_angstrom: Voxel size in Å.
        half_maps: The two half-set maps, or ``None``. With the default single pass
            (``FilterOptions.fsc_iterations = 1``) they are nearly unregularised
            (``SSNR = 1 / tikhonov``), like ``relion_reconstruct --subset 1/2`` output; later
            passes regularise them with the previous pass's FSC.
        fsc_frequency_per_angstrom: ``(n // 2 + 1,)`` shell frequencies (cycles/Å), or ``None``.
        fsc: ``(n // 2 + 1,)`` FSC between the half maps, or ``None``.
        resolution_fsc0p5_angstrom: Half-map FSC = 0.5 resolution, Å (``None`` without halves).
        resolution_fsc0p143_angstrom: Half-map FSC = 0.143 resolution, Å.
        n_particles: Particles per half set (``(n1, n2)``) or ``(N,)``.
        symmetry: Point group applied.
        half_source: ``"rlnRandomSubset"``, ``"random"``, ``"given"`` or ``"none"``.
        regularization: Text description of the filter used.
    """

    volume: torch.Tensor
    pixel_size_angstrom: float
    half_maps: tuple[torch.Tensor, torch.Tensor] | None = None
    fsc_frequency_per_angstrom: torch.Tensor | None = None
    fsc: torch.Tensor | None = None
    resolution_fsc0p5_angstrom: float | None = None
    resolution_fsc0p143_angstrom: float | None = None
    n_particles: tuple[int, ...] = ()
    symmetry: str = "C1"
    half_source: str = "none"
    regularization: str = ""

    def fsc_report(self) -> dict:
        """The half-map FSC as :func:`cryopose.metrics.fsc.fsc_report`'s dict plus run facts.

        Raises:
            ValueError: If the reconstruction has no half maps.
        """
        from ..metrics.fsc import report_from_curve

        if self.fsc is None:
            raise ValueError("this reconstruction has no half maps, hence no FSC")
        rep = report_from_curve(self.fsc_frequency_per_angstrom, self.fsc, self.pixel_size_angstrom,
                                box_size=int(self.volume.shape[-1]))
        rep.update({"fsc_between": "half maps (gold standard, no solvent mask)", "symmetry": self.symmetry,
                    "n_particles_per_half": list(self.n_particles), "half_sets_from": self.half_source,
                    "regularization": self.regularization})
        return rep


def _halves_from_table(table, n: int):
    if table is None or "rlnRandomSubset" not in getattr(table, "columns", ()):
        return None
    vals = np.asarray(table["rlnRandomSubset"].to_numpy(), dtype=np.float64)
    if vals.shape[0] != n or not np.all(np.isin(vals, (1.0, 2.0))) or len(np.unique(vals)) < 2:
        return None
    return torch.from_numpy(vals.astype(np.int64) - 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilterOptions:
    """How the accumulated grids become maps (:mod:`cryopose.reconstruction.backprojection`, items 3-6).

    Attributes:
        fsc_iterations: Passes over the half maps; the first uses ``SSNR = 1 / tikhonov``, each
            later one the FSC of the previous pass (RELION's half maps are likewise regularised
            by the FSC of the previous iteration).
        tikhonov: ``λ / <W>_shell`` before any FSC is known, and for ``half_maps=False``.
        ssnr_scale: RELION's ``tau2_fudge``: multiplies every FSC-derived SSNR.
        full_map_ssnr: How the half-map FSC ``f`` becomes the full map's SSNR: ``"wiener"``
            (default; ``SSNR = 2 f / (1 − f)``, twice the half-set SSNR ``f / (1 − f)``: the
            MMSE filter) or ``"relion"`` (RELION's ``updateSSNRarrays`` for the joined map:
            ``C = sqrt(2f / (1 + f))``, the expected correlation with the truth, then
            ``SSNR = C / (1 − C)``; damps less). The FSC against the truth is the same for both
            (it ignores a radial scale); the map's amplitudes differ.
        mask_corners: Apply :func:`soft_mask_outside_map` (radius ``n/2``, 3-voxel cosine edge)
            to every map, as RELION does.
    """

    fsc_iterations: int = 1
    tikhonov: float = 1e-3
    ssnr_scale: float = 1.0
    full_map_ssnr: str = "wiener"
    mask_corners: bool = True

    def __post_init__(self):
        if self.full_map_ssnr not in ("relion", "wiener"):
            raise ValueError(f"full_map_ssnr must be 'relion' or 'wiener', got {self.full_map_ssnr!r}")
        if not (self.tikhonov > 0 and self.ssnr_scale > 0 and self.fsc_iterations >= 1):
            raise ValueError("tikhonov and ssnr_scale must be > 0 and fsc_iterations >= 1")

    def describe(self) -> str:
        """One-line description recorded with the result."""
        full = ("C/(1-C), C = sqrt(2 FSC/(1 + FSC)) (RELION, joined map)" if self.full_map_ssnr == "relion"
                else "2 FSC/(1 - FSC)")
        corners = "masked (RELION softMaskOutsideMap)" if self.mask_corners else "kept"
        return (f"Wiener/tau2 as RELION: V = D / (W + <W>_shell / SSNR), its shell-mean damping applied last "
                f"(after crop and corner mask); full map SSNR = {full}; half maps SSNR = FSC/(1 - FSC); FSC of "
                f"the half maps clamped to [0.001, 0.999]; {self.fsc_iterations} half-map pass(es), the first "
                f"with SSNR = {1 / self.tikhonov:g}; SSNR scale {self.ssnr_scale:g}; corners {corners}")


def finish_reconstruction(bp, pixel_size: float, *, half_maps: bool, symmetry: str, half_source: str,
                          options: FilterOptions) -> ReconstructionResult:
    """Turn the grids of a :class:`~cryopose.reconstruction.backprojection.Backprojector` into maps.

    With ``half_maps``: half maps (set 0 and 1, first with ``SSNR = 1 / tikhonov``), their FSC,
    ``fsc_iterations − 1`` further passes, then the full map filtered with the SSNR of the last
    FSC (``options.full_map_ssnr``). Without: one Tikhonov-regularised map of set 0.

    Args:
        bp: The backprojector (``n_sets`` 2 with ``half_maps``, else 1).
        pixel_size: Pixel size in Å (for the FSC frequencies).
        half_maps: Whether ``bp`` holds two half sets.
        symmetry: Point group applied (recorded).
        half_source: Where the half sets came from (recorded).
        options: The filter settings.

    Returns:
        :class:`ReconstructionResult`.
    """
    from ..metrics.fsc import first_crossing, fourier_shell_correlation

    mc = options.mask_corners
    counts = tuple(int(c) for c in bp.n_inserted)
    if not half_maps:
        d, w = bp.grids()
        vol = bp.volume(d, w, options.tikhonov * bp.shell_mean_weight(w), mask_corners=mc)
        return ReconstructionResult(volume=vol.float(), pixel_size_angstrom=pixel_size, n_particles=counts,
                                    symmetry=symmetry, half_source="none",
                                    regularization=f"Tikhonov: V = D / (W + {options.tikhonov:g} <W>_shell), "
                                                   "shell-mean damping applied last")
    (d1, w1), (d2, w2) = bp.grids(0), bp.grids(1)
    m1, m2 = bp.shell_mean_weight(w1), bp.shell_mean_weight(w2)
    snr = torch.full_like(m1, 1.0 / options.tikhonov)
    for _ in range(int(options.fsc_iterations)):
        h1, h2 = bp.volume(d1, w1, m1 / snr, mask_corners=mc), bp.volume(d2, w2, m2 / snr, mask_corners=mc)
        freq, fsc = fourier_shell_correlation(h1, h2, pixel_size_angstrom=pixel_size)
        f = fsc.clamp(0.001, 0.999)
        snr = options.ssnr_scale * f / (1.0 - f)
    d, w = d1 + d2, w1 + w2
    if options.full_map_ssnr == "relion":
        c = torch.sqrt(2.0 * f / (1.0 + f)).clamp(0.001, 0.999)
        full_snr = options.ssnr_scale * c / (1.0 - c)
    else:
        full_snr = options.ssnr_scale * 2.0 * f / (1.0 - f)
    vol = bp.volume(d, w, bp.shell_mean_weight(w) / full_snr, mask_corners=mc)
    res = {}
    for tag, thr in (("0p5", 0.5), ("0p143", 0.143)):
        q, _ = first_crossing(fsc, freq, thr)
        res[tag] = 1.0 / q if q > 0 else math.inf
    return ReconstructionResult(volume=vol.float(), pixel_size_angstrom=pixel_size,
                                half_maps=(h1.float(), h2.float()), fsc_frequency_per_angstrom=freq, fsc=fsc,
                                resolution_fsc0p5_angstrom=res["0p5"], resolution_fsc0p143_angstrom=res["0p143"],
                                n_particles=counts, symmetry=symmetry, half_source=half_source,
                                regularization=options.describe())


def assign_half_sets(n_total: int, half_maps: bool, half_sets, table, generator, src: str
                     ) -> tuple[torch.Tensor, str]:
    """Half set (0 or 1) of every particle, and where the assignment came from.

    Order of preference: ``half_sets`` given by the caller (``"given"``), RELION's
    ``rlnRandomSubset`` column (1/2) of ``table`` when it is complete and uses both values
    (``"rlnRandomSubset"``; keeps the gold-standard halves of a refinement), else
    :func:`random_half_sets` with ``generator`` (``"random"``). Without ``half_maps`` every
    particle is in set 0 (``"none"``).

    Raises:
        cryopose.errors.UserError: Fewer than 2 particles with ``half_maps`` (message names ``src``).
        ValueError: ``half_sets`` of the wrong length or with values other than 0/1.
    """
    from ..errors import UserError

    if not half_maps:
        return torch.zeros(n_total, dtype=torch.int64), "none"
    if n_total < 2:
        raise UserError(f"{src}: half maps need at least 2 particles, got {n_total}")
    if half_sets is not None:
        sets = torch.as_tensor(half_sets).long().reshape(-1)
        if sets.shape[0] != n_total or not bool(((sets == 0) | (sets == 1)).all()):
            raise ValueError(f"half_sets must be ({n_total},) of 0/1")
        return sets, "given"
    sets = _halves_from_table(table, n_total)
    if sets is not None:
        return sets, "rlnRandomSubset"
    return random_half_sets(n_total, generator=generator), "random"


