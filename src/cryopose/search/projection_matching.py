"""Exhaustive, CTF- and symmetry-aware projection matching with coarse-to-fine refinement.

The classical baseline that amortised pose networks are judged by (as RELION's and cryoSPARC's
global searches, Scheres 2012; cryoDRGN's ``pose_search``, Zhong et al. 2021).

**Score.** For a particle ``X`` (centred transform), its CTF ``C`` (real), a reference
projection ``P_R`` (:func:`cryopose.search.band.slice_band`) and a RELION origin ``s``
(pixels; the model particle is ``C · P_R · O_s`` with ``O_s = exp(+2πi k·s / n)``,
:func:`cryopose.projection.origin_phases`), the score is the normalised cross-correlation on
the Fourier band ``B`` (half-plane, DC excluded, ``|k| <= r``)::

    ncc(R, s) = Re Σ_B X conj(C P_R O_s) / sqrt(Σ_B |X|² · Σ_B C² |P_R|²)

which is the real-space NCC of the mean-free, band-passed particle against the CTF-modulated,
shifted projection. It is ≤ 1, equals 1 for a noise-free particle at its true pose and shift
(within the band), is blind to the image's scale and offset, and needs no noise model. Because
``C`` is real it moves onto the particle side, ``Y_s = X C conj(O_s)``, so for a whole grid of
rotations both the numerator and the CTF-weighted norm are **two matrix products**:
``Re⟨Y_s, P_R⟩ = [Re Y_s, Im Y_s] · [Re P_R, Im P_R]`` and ``Σ C² |P_R|² = (C²) · (|P_R|²)``,
batched over particles × shifts against a chunk of precomputed (CTF-free) grid projections.

**Grid.** The global stage scores every rotation of the Hopf/HEALPix grid
(:func:`cryopose.rotations.so3_grid`, Yershova et al. 2010, RELION's ``--healpix_order``) at
nominal step ``step_deg`` (15° → 4 608 rotations, 7.5° → 36 864; achieved nearest-neighbour
spacing and covering radius are tabulated in :func:`~cryopose.rotations.so3_grid`), with the
viewing directions restricted to one asymmetric unit of ``symmetry``
(:func:`cryopose.symmetry.asymmetric_unit_mask`; ``1/G`` of the sphere, all in-plane angles),
times every integer-lattice shift of step ``shift_step`` in the disc ``|s| <= shift_range``.
The ``n_candidates`` best (rotation, shift) pairs per particle go to local refinement: at
each level the step halves, rotations ``Δ R`` on a ``3 × 3 × 3`` lattice of axis-angle
offsets of that step (:func:`cryopose.rotations.local_grid`) and shifts on a ``3 × 3``
lattice of half the previous shift step are scored around each candidate, until the step is
``<= final_step_deg``. The band radius grows with the level (``r = band_factor / step`` in
radians, capped by ``max_resolution_angstrom`` and Nyquist), as RELION's coarse passes use
only low frequencies.

**Memory.** Particles go through in chunks of ``particle_chunk``; the global grid in chunks so
that a score block holds at most ``max_block_elements`` floats; grid projections are kept at
the coarse band only (``J × K`` complex). Memory is bounded independently of the number of
particles; an image source only needs ``len()`` and ``source[index_array]``, so a lazily read
:class:`cryopose.io.particles.ParticleStack` works.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..ctf import CTFParams, compute_ctf
from ..errors import UserError
from ..fourier import centered_fft2
from ..projection import prepare_volume_ft
from ..symmetry import asymmetric_unit_mates, canonical_symbol
from .band import make_band, origin_phases_band, slice_band, soft_circular_mask
from .grids import asymmetric_so3_grid, shift_lattice
from .stages import _POOL, _distinct_top, _global_stage, _init_local_reference, _local_stage, _prepare_chunk, _Reference

__all__ = [
    "SearchConfig",
    "SearchResult",
    "asymmetric_so3_grid",
    "shift_lattice",
    "search_poses",
    "local_search",
    "score_poses",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """Options of :func:`search_poses`.

    Attributes:
        step_deg: Nominal step of the global SO(3) grid in degrees (HEALPix order
            ``healpix_order_for_step(step_deg)``: 30°, 15°, 7.5°, …).
        final_step_deg: Refine locally, halving the step, until it is ``<=`` this (degrees);
            ``>= step_deg`` means no local refinement.
        n_candidates: Best global (rotation, shift) pairs per particle refined locally.
        n_local_candidates: Candidates kept from one refinement level to the next.
        symmetry: Point group of the reference (``C1``, ``D2``, …); the global grid covers one
            asymmetric unit.
        shift_range_angstrom: Largest ``|shift|`` searched globally, Å (0: no shift search).
        shift_step_angstrom: Global shift lattice step, Å (default: one pixel).
        final_shift_step_px: Smallest shift step of the local refinement, pixels.
        max_resolution_angstrom: Ignore frequencies finer than this (Å); default Nyquist.
        band_factor: Band radius at a level is ``band_factor / step`` (cycles per box, step in
            radians), i.e. the radius where a grid step moves a Fourier sample by
            ``band_factor`` pixels.
        mask_diameter_angstrom: Soft circular mask applied to the particles (RELION's
            ``--particle_diameter``); default none.
        particle_chunk: Particles scored at once.
        max_block_elements: Largest score block (floats) held at once.
        pad: Padding factor of the reference transform (2 as RELION).
    """

    step_deg: float = 15.0
    final_step_deg: float = 1.875
    n_candidates: int = 4
    n_local_candidates: int = 2
    symmetry: str = "C1"
    shift_range_angstrom: float = 0.0
    shift_step_angstrom: float | None = None
    final_shift_step_px: float = 0.25
    max_resolution_angstrom: float | None = None
    band_factor: float = 2.5
    mask_diameter_angstrom: float | None = None
    particle_chunk: int = 128
    max_block_elements: int = 1 << 23
    pad: int = 2

    def __post_init__(self):
        canonical_symbol(self.symmetry)
        if not (self.step_deg > 0 and self.final_step_deg > 0):
            raise UserError(f"angular steps must be positive, got {self.step_deg} and {self.final_step_deg}")
        if self.n_candidates < 1 or self.n_local_candidates < 1:
            raise UserError("n_candidates and n_local_candidates must be >= 1")
        if self.shift_range_angstrom < 0:
            raise UserError(f"shift range must be >= 0 Å, got {self.shift_range_angstrom}")
        if self.shift_step_angstrom is not None and self.shift_step_angstrom <= 0:
            raise UserError(f"shift step must be positive, got {self.shift_step_angstrom}")
        if self.particle_chunk < 1 or self.max_block_elements < 1:
            raise UserError("particle_chunk and max_block_elements must be >= 1")

    def level_steps(self) -> list[float]:
        """Angular step of every level, degrees: the global step, then halvings."""
        steps = [float(self.step_deg)]
        while steps[-1] > self.final_step_deg * (1 + 1e-9):
            steps.append(steps[-1] / 2.0)
        return steps


class SearchResult(NamedTuple):
    """Output of :func:`search_poses`.

    Attributes:
        rotmats: ``(N, 3, 3)`` float32 RELION matrices (in the asymmetric unit's
            representative when ``symmetry`` is not C1).
        shifts_angstrom: ``(N, 2)`` float32 RELION origins ``(x, y)`` in Å.
        scores: ``(N,)`` float32 NCC at the final pose on the final band (≤ 1).
        global_scores: ``(N,)`` float32 best NCC of the global stage (coarse band).
        seconds: Wall time per stage (``prepare``, ``global``, ``local``, ``total``).
        info: Grid sizes, steps and band radii used.
    """

    rotmats: torch.Tensor
    shifts_angstrom: torch.Tensor
    scores: torch.Tensor
    global_scores: torch.Tensor
    seconds: dict
    info: dict


def _check_inputs(source, reference: torch.Tensor, pixel_size: float, ctf: CTFParams | None) -> int:
    if reference.ndim != 3 or len(set(reference.shape)) != 1:
        raise UserError(f"reference must be a cubic volume (n, n, n), got {tuple(reference.shape)}")
    n_particles = len(source)
    if ctf is not None and len(ctf) != n_particles:
        raise UserError(f"{len(ctf)} CTF rows for {n_particles} particles")
    if not (pixel_size > 0):
        raise UserError(f"pixel size must be positive, got {pixel_size}")
    return n_particles


def search_poses(images, reference, pixel_size_angstrom: float, *, ctf: CTFParams | None = None,
                 config: SearchConfig = SearchConfig(),
                 progress: Callable[[int, int], None] | None = None,
                 shifts_angstrom: torch.Tensor | None = None) -> SearchResult:
    """Find every particle's pose and shift by exhaustive, coarse-to-fine projection matching.

    Args:
        images: ``N`` particle images ``(n, n)``: a tensor ``(N, n, n)`` or any object with
            ``len()`` and ``source[index_array] -> (B, n, n)`` (e.g. a
            :class:`~cryopose.io.particles.ParticleStack`), read ``config.particle_chunk`` at a
            time. Density bright (invert dark-particle data first).
        reference: ``(n, n, n)`` reference map ``(z, y, x)`` on the particles' grid (same box
            and pixel size), origin ``n // 2``.
        pixel_size_angstrom: Pixel size of images and reference, Å.
        ctf: ``N`` particles' CTF parameters, or ``None`` for CTF-free images.
        config: Grid, shift, band and chunking options.
        progress: Called as ``progress(done, total)`` after every particle chunk.
        shifts_angstrom: ``(N, 2)`` starting RELION origins in Å (e.g. from an earlier
            estimate): the shift lattice of ``config`` is centred on each particle's origin
            instead of on zero (default zero for all).

    Returns:
        :class:`SearchResult`. Poses are RELION matrices (projector equation of
        :mod:`cryopose.conventions`), shifts RELION origins in Å (the starting origins included).

    Raises:
        UserError: Reference not cubic, box mismatch, CTF count mismatch, bad options, starting
            origins not ``(N, 2)``.
    """
    t_start = time.perf_counter()
    ref_vol = torch.as_tensor(np.asarray(reference) if not isinstance(reference, torch.Tensor) else reference)
    n_particles = _check_inputs(images, ref_vol, pixel_size_angstrom, ctf)
    n = ref_vol.shape[-1]
    ref = _Reference(ref_vol, config, pixel_size_angstrom)
    mask = None
    if config.mask_diameter_angstrom is not None:
        mask = soft_circular_mask(n, 0.5 * config.mask_diameter_angstrom / pixel_size_angstrom)
    shift_step_px = (config.shift_step_angstrom or pixel_size_angstrom) / pixel_size_angstrom
    shift_range_px = config.shift_range_angstrom / pixel_size_angstrom
    shifts0 = shift_lattice(shift_range_px, shift_step_px)
    search_shifts = shift_range_px > 0
    start_px = None
    if shifts_angstrom is not None:
        start_px = torch.as_tensor(shifts_angstrom).to(torch.float32) / float(pixel_size_angstrom)
        if start_px.shape != (n_particles, 2) or not bool(torch.isfinite(start_px).all()):
            raise UserError(f"starting origins must be {n_particles} finite (x, y) pairs in Å, "
                            f"got shape {tuple(start_px.shape)}")
    t_prep = time.perf_counter()
    rot_out = torch.empty(n_particles, 3, 3)
    sh_out = torch.zeros(n_particles, 2)
    sc_out = torch.empty(n_particles)
    gsc_out = torch.empty(n_particles)
    t_global = t_local = 0.0
    chunk = int(config.particle_chunk)
    for start in range(0, n_particles, chunk):
        idx = np.arange(start, min(start + chunk, n_particles))
        imgs = images[idx] if not isinstance(images, torch.Tensor) else images[start:start + len(idx)]
        imgs = torch.as_tensor(imgs)
        if imgs.ndim != 3 or imgs.shape[-1] != n or imgs.shape[-2] != n:
            raise UserError(f"particle images are {tuple(imgs.shape[-2:])} px but the reference is {n}³; "
                            "resample one of them to the other's grid")
        rot, sh, v, gv, dt_global, dt_local = _search_chunk(
            imgs, None if ctf is None else ctf[idx], ref, pixel_size_angstrom, mask, shifts0,
            shift_step_px if search_shifts else None, config,
            None if start_px is None else start_px[torch.as_tensor(idx)])
        t_global += dt_global
        t_local += dt_local
        rot_out[idx] = rot[:, 0].to(torch.float32)
        sh_out[idx] = sh[:, 0].to(torch.float32)
        sc_out[idx] = v[:, 0].to(torch.float32)
        gsc_out[idx] = gv[:, 0].to(torch.float32)
        if progress is not None:
            progress(int(idx[-1]) + 1, n_particles)
    rot_out = asymmetric_unit_mates(rot_out, config.symmetry)
    total = time.perf_counter() - t_start
    info = _search_info(ref, shifts0, config, n, pixel_size_angstrom)
    seconds = {"prepare": t_prep - t_start, "global": t_global, "local": t_local, "total": total,
               "per_particle": total / max(n_particles, 1)}
    return SearchResult(rot_out, sh_out * pixel_size_angstrom, sc_out, gsc_out, seconds, info)


def _search_chunk(imgs: torch.Tensor, ctf: CTFParams | None, ref: _Reference, pixel_size_angstrom: float,
                  mask: torch.Tensor | None, shifts0: torch.Tensor, shift_step_px: float | None,
                  config: SearchConfig, start_px: torch.Tensor | None = None):
    """Global stage then the local levels for one chunk of particles ``(B, n, n)``.

    ``shift_step_px`` is the global shift step in pixels, ``None`` when shifts are not searched;
    ``start_px`` ``(B, 2)`` the starting origins in pixels the lattice is centred on (the images
    are moved by them in Fourier space, which leaves every NCC unchanged, and they are added back).

    Returns:
        ``(rot (B, C, 3, 3), sh (B, C, 2) px, score (B, C), global score (B, C), seconds of the
        global stage, seconds of the local stages)``, best candidate first.
    """
    with torch.no_grad():
        t0 = time.perf_counter()
        x, c = _prepare_chunk(imgs, ctf, ref, pixel_size_angstrom, mask)
        if start_px is not None:
            x = x * origin_phases_band(start_px, ref.full).conj()
        xg, cg = x[:, ref.sub[0]], c[:, ref.sub[0]]
        gj, gs, gv = _global_stage(xg, cg, ref, shifts0, _POOL * config.n_candidates,
                                   config.max_block_elements)
        pick = _distinct_top(ref.grid[gj], gv, config.n_candidates, 1.5 * ref.steps[0])
        gj, gs, gv = (torch.gather(t, 1, pick) for t in (gj, gs, gv))
        rot = ref.grid[gj]  # (B, C, 3, 3)
        sh = shifts0[gs]  # (B, C, 2)
        v = gv
        t1 = time.perf_counter()
        step_sh = shift_step_px if shift_step_px is not None else 0.0
        for level in range(1, len(ref.steps)):
            step_sh = max(step_sh / 2.0, config.final_shift_step_px) if shift_step_px is not None else 0.0
            keep = config.n_local_candidates if level < len(ref.steps) - 1 else 1
            rot, sh, v = _local_stage(x, c, ref, level, rot, sh, step_sh, keep, config.max_block_elements)
        if start_px is not None:
            sh = sh + start_px[:, None, :]
        t2 = time.perf_counter()
    return rot, sh, v, gv, t1 - t0, t2 - t1


def _search_info(ref: _Reference, shifts0: torch.Tensor, config: SearchConfig, n: int,
                 pixel_size_angstrom: float) -> dict:
    """The grid and band sizes :func:`search_poses` reports in :attr:`SearchResult.info`."""
    return {
        "steps_deg": ref.steps,
        "band_radii_px": [b.radius for b in ref.bands],
        "band_sizes": [len(b) for b in ref.bands],
        "global_rotations": int(ref.grid.shape[0]),
        "global_shifts": int(shifts0.shape[0]),
        "local_rotations_per_candidate": 27,
        "symmetry": canonical_symbol(config.symmetry),
        "box_size": n,
        "pixel_size_angstrom": float(pixel_size_angstrom),
    }


def score_poses(images: torch.Tensor, reference, pixel_size_angstrom: float, rotmats: torch.Tensor,
                shifts_angstrom: torch.Tensor | None = None, *, ctf: CTFParams | None = None,
                max_resolution_angstrom: float | None = None,
                mask_diameter_angstrom: float | None = None) -> torch.Tensor:
    """NCC of particles against the reference at given poses (the score of :func:`search_poses`).

    Args:
        images: ``(N, n, n)`` particles.
        reference: ``(n, n, n)`` map.
        pixel_size_angstrom: Å/px of both.
        rotmats: ``(N, 3, 3)`` RELION matrices.
        shifts_angstrom: ``(N, 2)`` RELION origins in Å (default zero).
        ctf: CTF parameters of the ``N`` particles, or ``None``.
        max_resolution_angstrom: Band limit (default Nyquist).
        mask_diameter_angstrom: Soft circular particle mask (default none).

    Returns:
        ``(N,)`` float32 NCC.
    """
    ref_vol = torch.as_tensor(reference).to(torch.float32)
    n = ref_vol.shape[-1]
    r = n / 2.0 if max_resolution_angstrom is None else n * pixel_size_angstrom / max_resolution_angstrom
    band = make_band(n, r)
    vft = prepare_volume_ft(ref_vol)
    x = torch.as_tensor(images).to(torch.float32)
    if mask_diameter_angstrom is not None:
        m = soft_circular_mask(n, 0.5 * mask_diameter_angstrom / pixel_size_angstrom)
        x = (x - (x * m).sum((-2, -1), keepdim=True) / m.sum()) * m
    with torch.no_grad():
        xb = centered_fft2(x).reshape(x.shape[0], -1)[:, band.flat_index]
        c = torch.ones(xb.shape) if ctf is None else compute_ctf(ctf, n, pixel_size_angstrom).float().reshape(
            x.shape[0], -1)[:, band.flat_index]
        p = slice_band(vft, torch.as_tensor(rotmats).float(), band)
        if shifts_angstrom is not None:
            p = p * origin_phases_band(torch.as_tensor(shifts_angstrom).float() / pixel_size_angstrom, band)
        cross = (xb * (c * p).conj()).real.sum(-1)
        norm = ((c * c) * (p.real**2 + p.imag**2)).sum(-1) * (xb.real**2 + xb.imag**2).sum(-1)
    return (cross / norm.clamp_min(1e-30).sqrt()).float()


def local_search(images, reference, pixel_size_angstrom: float, rotmats: torch.Tensor,
                 shifts_angstrom: torch.Tensor | None = None, *, ctf: CTFParams | None = None,
                 config: SearchConfig = SearchConfig(), start_step_deg: float = 3.75,
                 shift_step_angstrom: float | None = None) -> SearchResult:
    """Refine given poses locally (the local stage of :func:`search_poses` only).

    Starting from ``rotmats`` (e.g. a network's predictions), the step halves from
    ``start_step_deg`` down to ``config.final_step_deg``; at each level the ``3³`` rotation
    lattice and, when ``shift_step_angstrom`` (default: ``config``'s shift search, if any) is
    positive, the ``3 × 3`` shift lattice are scored around the current pose. ``config.step_deg``
    and ``n_candidates`` are ignored.

    Args:
        images: ``N`` images (tensor or lazy source), box ``n``.
        reference: ``(n, n, n)`` map on the same grid.
        pixel_size_angstrom: Å/px.
        rotmats: ``(N, 3, 3)`` initial poses.
        shifts_angstrom: ``(N, 2)`` initial RELION origins in Å (default zero).
        ctf: CTF of the ``N`` particles, or ``None``.
        config: Band, chunk and symmetry options.
        start_step_deg: Step of the first local level, degrees.
        shift_step_angstrom: First shift step, Å (0 disables shift refinement).

    Returns:
        :class:`SearchResult` (``global_scores`` holds the NCC of the initial poses' level-0
        refinement, i.e. the first level's score).
    """
    t_start = time.perf_counter()
    ref_vol = torch.as_tensor(reference).float()
    n_particles = _check_inputs(images, ref_vol, pixel_size_angstrom, ctf)
    cfg = dataclasses.replace(config, step_deg=float(start_step_deg) * 2.0,
                              final_step_deg=min(float(config.final_step_deg), float(start_step_deg)))
    ref = _Reference.__new__(_Reference)
    _init_local_reference(ref, ref_vol, cfg, pixel_size_angstrom)
    mask = None
    if config.mask_diameter_angstrom is not None:
        mask = soft_circular_mask(ref.n, 0.5 * config.mask_diameter_angstrom / pixel_size_angstrom)
    if shift_step_angstrom is None:
        shift_step_angstrom = (config.shift_step_angstrom or pixel_size_angstrom) if config.shift_range_angstrom > 0 else 0.0
    step_px0 = float(shift_step_angstrom) / pixel_size_angstrom
    init_sh = torch.zeros(n_particles, 2) if shifts_angstrom is None else torch.as_tensor(shifts_angstrom).float()
    rot0 = torch.as_tensor(rotmats).float()
    rot_out, sh_out = torch.empty(n_particles, 3, 3), torch.zeros(n_particles, 2)
    sc_out, first_out = torch.empty(n_particles), torch.empty(n_particles)
    for start in range(0, n_particles, int(config.particle_chunk)):
        idx = np.arange(start, min(start + int(config.particle_chunk), n_particles))
        imgs = torch.as_tensor(images[idx] if not isinstance(images, torch.Tensor) else images[start:start + len(idx)])
        with torch.no_grad():
            x, c = _prepare_chunk(imgs, None if ctf is None else ctf[idx], ref, pixel_size_angstrom, mask)
            rot = rot0[idx][:, None]
            sh = (init_sh[idx] / pixel_size_angstrom)[:, None]
            step_sh = step_px0 * 2.0
            first = None
            for level in range(1, len(ref.steps)):
                step_sh = max(step_sh / 2.0, config.final_shift_step_px) if step_px0 > 0 else 0.0
                rot, sh, v = _local_stage(x, c, ref, level, rot, sh, step_sh, 1, config.max_block_elements)
                first = v if first is None else first
        rot_out[idx], sh_out[idx] = rot[:, 0], sh[:, 0]
        sc_out[idx], first_out[idx] = v[:, 0], first[:, 0]
    rot_out = asymmetric_unit_mates(rot_out, config.symmetry)
    total = time.perf_counter() - t_start
    info = {"steps_deg": ref.steps[1:], "band_radii_px": [b.radius for b in ref.bands[1:]],
            "symmetry": canonical_symbol(config.symmetry), "box_size": ref.n}
    return SearchResult(rot_out, sh_out * pixel_size_angstrom, sc_out, first_out,
                        {"total": total, "per_particle": total / max(n_particles, 1)}, info)


