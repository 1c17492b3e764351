"""Run diagnostics a user can act on: view coverage and the sampling compensation factor,
shifts at their bound, resolution far from what the data allow, undecided contrast.

Nothing here needs the truth: every check reads what a run produced (poses, origins, half-map
FSC, the preprocessing record), so it applies to real data. Each failed check becomes one
sentence with what to change, printed by the command and kept in ``summary.json`` and the
report (cryoSPARC's and RELION's job logs warn in the same spirit, e.g. about a
low-effective-sampling angular distribution).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..rotations_grids import sphere_grid
from ..symmetry import expand_by_symmetry, symmetry_order

__all__ = ["ViewCoverage", "view_coverage", "sampling_compensation_factor", "run_warnings", "N_VIEW_BINS",
           "SCF_BAND_DEG", "UNDERSAMPLED_LEVEL", "UNDERSAMPLED_WARN"]

#: Equal-area bins of the sphere of viewing directions (36 in rot × 18 in cos(tilt)).
N_VIEW_BINS = 36 * 18

#: Half-width of the band around each great circle in which :func:`sampling_compensation_factor`
#: counts viewing directions, degrees (a uniform set puts ``sin 5° = 8.7 %`` of them in it).
SCF_BAND_DEG = 5.0

#: A Fourier direction counts as undersampled when fewer viewing directions lie within
#: :data:`SCF_BAND_DEG` of its great circle than this fraction of the average over directions.
UNDERSAMPLED_LEVEL = 0.1

#: The run warns when more than this fraction of the Fourier directions are undersampled (a
#: missing cone or wedge). Measured: the collapsed poses of the realistic 4AKE runs 0.20–0.41;
#: that set's true poses (40 % within 10° of one view) 0; uniform poses folded into the
#: asymmetric unit of D2 0.04, of O 0.52; the demo's D2 particles posed in C1 0.06. The
#: sampling compensation factor alone does not separate a collapse from a symmetric particle's
#: folded poses (4AKE 0.002–0.005, folded D2 0.14, the demo 0.18, the true poses 0.71).
UNDERSAMPLED_WARN = 0.1


@dataclasses.dataclass(frozen=True)
class ViewCoverage:
    """How the viewing directions of a pose set fill the sphere.

    Attributes:
        covered_fraction: Fraction of the :data:`N_VIEW_BINS` equal-area bins holding at least
            one viewing direction (with the symmetry mates of every pose; 1 for uniform views
            with enough particles).
        expected_fraction: The same for uniformly distributed views with as many directions
            (``1 − exp(−N·|G| / bins)``), to compare with.
        top_bin_fraction: Fraction of the directions in the most populated 1 % of the bins
            (about 0.01 for uniform views; 0.4 when 40 % of the particles share one view).
        n_directions: ``N · |G|``.
        scf: :func:`sampling_compensation_factor` of the same directions (1 for uniform views,
            0 when some Fourier directions are not sampled at all).
        undersampled_fraction: Fraction of the Fourier directions sampled by fewer than
            :data:`UNDERSAMPLED_LEVEL` × the average (0 for uniform views; a missing cone).
    """

    covered_fraction: float
    expected_fraction: float
    top_bin_fraction: float
    n_directions: int
    scf: float
    undersampled_fraction: float


def view_coverage(rotmats, symmetry: str = "C1") -> ViewCoverage:
    """Coverage of the viewing directions ``d = Rᵀ e_z`` (RELION matrices) of ``(N, 3, 3)`` poses.

    Raises:
        ValueError: If ``rotmats`` is not ``(N, 3, 3)`` with ``N >= 1``.
    """
    dirs = _viewing_directions(rotmats, symmetry)
    d = dirs.numpy()
    rot = np.arctan2(d[:, 1], d[:, 0])
    cos_t = np.clip(d[:, 2], -1.0, 1.0)
    i = np.clip(((rot + math.pi) / (2 * math.pi) * 36).astype(int), 0, 35)
    j = np.clip(((1.0 - cos_t) / 2.0 * 18).astype(int), 0, 17)
    counts = np.bincount(i * 18 + j, minlength=N_VIEW_BINS)
    n = int(d.shape[0])
    top = np.sort(counts)[::-1][:max(1, N_VIEW_BINS // 100)].sum() / n
    return ViewCoverage(covered_fraction=float((counts > 0).mean()),
                        expected_fraction=float(1.0 - math.exp(-n / N_VIEW_BINS)),
                        top_bin_fraction=float(top), n_directions=n,
                        **_fourier_sampling(dirs))


def sampling_compensation_factor(rotmats, symmetry: str = "C1") -> float:
    """Sampling compensation factor (SCF) of a pose set (Baldwin & Lyumkis 2020, *Prog. Biophys.
    Mol. Biol.* 150, 160–183; cryoSPARC's orientation diagnostics report it).

    A projection with viewing direction ``d`` fills the central section ``k · d = 0`` of Fourier
    space, so the Fourier direction ``u`` is sampled by the projections whose ``d`` lies on the
    great circle ``u · d = 0``; the noise of the reconstruction along ``u`` scales as ``1 / S(u)``.
    ``SCF = 1 / (⟨S⟩ · ⟨1 / S⟩)`` over ``u`` on the sphere (harmonic over arithmetic mean): 1 for
    uniform views, roughly the fraction of the signal-to-noise ratio an uneven set keeps,
    and about 0 when some directions are not sampled at all (then the map is stretched along
    them). Here ``S(u)`` counts the directions (symmetry mates included) within
    :data:`SCF_BAND_DEG` of each great circle, ``u`` on the 768-direction HEALPix grid
    (:func:`cryopose.rotations_grids.sphere_grid`), an empty band counted as one direction.

    Args:
        rotmats: ``(N, 3, 3)`` poses (RELION matrices, ``d = Rᵀ e_z``).
        symmetry: Point group whose mates sample Fourier space too.

    Returns:
        The SCF in ``(0, 1]`` (a few hundred uniform directions give 0.95–0.98: counting noise).

    Raises:
        ValueError: If ``rotmats`` is not ``(N, 3, 3)`` with ``N >= 1``.
    """
    return _fourier_sampling(_viewing_directions(rotmats, symmetry))["scf"]


def _viewing_directions(rotmats, symmetry: str) -> torch.Tensor:
    """``(N · |G|, 3)`` float64 viewing directions ``d = Rᵀ e_z`` of the poses and their
    symmetry mates; ``ValueError`` unless ``rotmats`` is ``(N, 3, 3)`` with ``N >= 1``."""
    r = torch.as_tensor(rotmats).double()
    if r.ndim != 3 or r.shape[1:] != (3, 3) or r.shape[0] < 1:
        raise ValueError(f"rotmats must be (N, 3, 3) with N >= 1, got {tuple(r.shape)}")
    mates = expand_by_symmetry(r, symmetry).reshape(-1, 3, 3) if symmetry_order(symmetry) > 1 else r
    return mates[:, 2, :]


def _fourier_sampling(d: torch.Tensor) -> dict:
    """``{"scf", "undersampled_fraction"}`` of ``(M, 3)`` unit viewing directions: ``S(u)`` as in
    :func:`sampling_compensation_factor`."""
    u = sphere_grid(7.5, dtype=torch.float32).directions
    band = math.sin(math.radians(SCF_BAND_DEG))
    counts = torch.zeros(u.shape[0], dtype=torch.float64)
    for chunk in torch.split(d.float(), 20_000):  # bounded (768, 20000) temporaries
        counts += ((u @ chunk.T).abs() < band).sum(dim=1).double()
    mean = counts.mean()
    return {"scf": float(1.0 / (mean * (1.0 / counts.clamp(min=1.0)).mean())),
            "undersampled_fraction": float((counts < UNDERSAMPLED_LEVEL * mean).double().mean())}


def run_warnings(*, coverage: ViewCoverage | None = None, resolution_angstrom: float | None = None,
                 pixel_size_angstrom: float | None = None, shift_corrections_px: torch.Tensor | None = None,
                 max_shift_px: float | None = None, contrast_fraction_bright: float | None = None) -> list[str]:
    """Sentences naming what looks wrong in a run and what to change (empty when all is well).

    Args:
        coverage: :func:`view_coverage` of the final poses.
        resolution_angstrom: Half-map FSC = 0.143 resolution of the final map, Å.
        pixel_size_angstrom: The particles' pixel size (Nyquist is twice it).
        shift_corrections_px: ``(N, 2)`` shift-head corrections, working pixels.
        max_shift_px: The shift head's bound, working pixels.
        contrast_fraction_bright: From contrast detection (``None`` when it was given).

    Returns:
        A list of one-sentence warnings.
    """
    out: list[str] = []
    if coverage is not None and coverage.undersampled_fraction > UNDERSAMPLED_WARN:
        out.append(f"{100 * coverage.undersampled_fraction:.0f}% of the Fourier directions are sampled by fewer than "
                   f"a tenth of the average number of views (sampling compensation factor {coverage.scf:.2f}; 1 for "
                   "uniform views): the map misses a cone of directions and is stretched along it. If the "
                   "particles do lie in so few views, collect tilted data; a symmetric particle posed in too low "
                   "a point group does this too (give --symmetry); otherwise the poses collapsed (a run that did "
                   "not converge): try another --seed or more --epochs, and check the contrast and the pixel size")
    # a C1 run on a particle of point group G can legitimately put every pose in 1/|G| of the
    # sphere (β-gal, D2, in C1: about half of the bins), so only a fifth of the expected coverage
    # is taken as a collapse
    if coverage is not None and coverage.expected_fraction > 0.9 and \
            coverage.covered_fraction < 0.2 * coverage.expected_fraction:
        out.append(f"the poses cover {100 * coverage.covered_fraction:.0f}% of the viewing directions where "
                   f"uniform views would cover {100 * coverage.expected_fraction:.0f}%: the poses may have "
                   "collapsed onto a few views (a run that did not converge), or the particles have strongly "
                   "preferred views or a high symmetry not imposed; try more --epochs, another --seed, or check "
                   "the contrast and pixel size")
    if resolution_angstrom is not None and pixel_size_angstrom is not None and math.isfinite(resolution_angstrom):
        nyquist = 2.0 * pixel_size_angstrom
        if resolution_angstrom > 4.0 * nyquist:
            out.append(f"the half-map FSC reaches {resolution_angstrom:.1f} Å, far from Nyquist ({nyquist:.1f} Å): "
                       "if the data are better than that, the poses have not converged; try more --epochs, "
                       "another --seed, or --symmetry C1 if a point group was imposed")
    elif resolution_angstrom is not None and not math.isfinite(resolution_angstrom):
        out.append("the half maps do not correlate (no FSC = 0.143 crossing): the poses are not consistent; "
                   "check the contrast, pixel size and CTF, then try more --epochs")
    if shift_corrections_px is not None and max_shift_px is not None and len(shift_corrections_px) > 0:
        at_bound = (shift_corrections_px.abs() > 0.95 * max_shift_px).any(dim=1).float().mean()
        if float(at_bound) > 0.05:
            out.append(f"{100 * float(at_bound):.0f}% of the shift corrections sit at their bound "
                       f"({max_shift_px:.1f} working px): the particles are further off-centre than the shift "
                       "head allows; re-extract them re-centred")
    if contrast_fraction_bright is not None and 0.3 < contrast_fraction_bright < 0.7:
        out.append(f"the contrast detection is undecided ({100 * contrast_fraction_bright:.0f}% of the particles "
                   "look bright): say it with --invert-contrast (dark particles) or --no-invert-contrast")
    return out
