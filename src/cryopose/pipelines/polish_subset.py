"""Global iterations on a subset at low resolution: the first stage of ``abinitio``'s polishing.

With preferred views, the encoder gets the preferred view right and the others wrong in a
systematic way: on 20,000 realistic β-gal particles (40 % within 10° of one view, three seeds)
the side views came out 45° off (median), their viewing directions pulled 13–20° towards the
preferred axis. The map of such poses is distorted along that axis in a way the same poses
fit, so a global search against it puts the side views back near where they were: each global
round of :func:`cryopose.pipelines.polish.polish_rounds` moved them by a few degrees, and on
seed 1 the polished side views stayed 20° off (median error 5.07°). Iterating global search and
reconstruction at low resolution converges instead, a few degrees per iteration, as the
iterations of cryoSPARC's ab initio (Punjani et al. 2017) and RELION's initial model do on a
subset at low resolution before the whole data set is refined. In ``abinitio``'s default
pipeline on seed 1, nine iterations (51 s on 2 cores; 63.5 % of the subset's poses moved in
the first, 0.9 % in the last) took the polished side views to 1.21° and the median to 1.07°
(``docs/results/real-conditions.md``).

:func:`subset_iterations` runs them: a seeded subset of :data:`SUBSET_PARTICLES` particles,
Fourier-cropped to the working box (the encoder's; scores up to 0.7 × its Nyquist), each
iteration a reconstruction in the point group, the map centred on its density (when origins
are estimated), and :func:`cryopose.pipelines.polish.global_round`; it stops when fewer than
:data:`CONVERGED_MOVED_FRACTION` of the subset's poses moved by more than
:data:`MOVED_DEG`, when that fraction has stopped falling (:data:`PATIENCE`), or after
``max_iterations``. :func:`polish_from_subset` runs them and then
the rounds over all particles from their last map.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from .polish import (POLISH_NYQUIST_FRACTION, PolishOutcome, PolishSchedule, centred, cropped, global_round,
                     polish_rounds)

__all__ = ["polish_from_subset", "subset_iterations", "subset_images", "subset_fit", "subset_warning", "start_note",
           "SubsetOutcome", "SUBSET_PARTICLES", "MOVED_DEG", "CONVERGED_MOVED_FRACTION", "PATIENCE",
           "MARGINAL_SHIFT_RANGE_PX", "MARGINAL_ITERATIONS", "MARGINAL_SEEDS"]

#: Particles of the subset (all when there are fewer).
SUBSET_PARTICLES = 3000

#: A pose that changes by more than this (degrees, modulo the point group) between two
#: iterations has moved: twice the 3.75° step the global rounds refine to.
MOVED_DEG = 7.5

#: The iterations have converged when fewer than this fraction of the subset's poses moved.
CONVERGED_MOVED_FRACTION = 0.02

#: The iterations also stop when the fraction moved has not fallen below its lowest for this
#: many iterations in a row: the poses have settled as far as they will. A particle with more
#: symmetry than the group imposed never settles below a floor — on the demo's D2 particles in
#: C1, 6–9 % of the poses jumped between symmetry mates in every iteration, up to the cap of 20
#: (72 s); on the realistic β-gal sets in D2 the fraction fell at every iteration until it
#: converged.
PATIENCE = 2


@dataclasses.dataclass(frozen=True)
class SubsetOutcome:
    """What :func:`subset_iterations` returns.

    Attributes:
        reconstruction: The map of the last iteration's poses (subset, working box), with its
            half-map FSC (a :class:`~cryopose.reconstruction.ReconstructionResult`).
        indices: ``(M,)`` int64 positions of the subset's particles.
        rotmats: ``(M, 3, 3)`` float32 the subset's last poses.
        shifts_angstrom: ``(M, 2)`` float32 their origins in Å (RELION sign; in the frame of the
            centred map), or ``None`` when origins were neither given nor estimated.
        centring_angstrom: ``(3,)`` float64 total map translation removed by the centring, Å
            (apply it to the other particles' origins with
            :func:`cryopose.reconstruction.centring.recentred_origins_angstrom`).
        moved_fractions: Per iteration, the fraction of the subset whose pose moved by more
            than :data:`MOVED_DEG` (the first against the starting poses).
        converged: Whether the last fraction fell below :data:`CONVERGED_MOVED_FRACTION`.
    """

    reconstruction: object
    indices: np.ndarray
    rotmats: torch.Tensor
    shifts_angstrom: torch.Tensor | None
    centring_angstrom: torch.Tensor
    moved_fractions: tuple[float, ...]
    converged: bool


def subset_iterations(source, meta, rotmats: torch.Tensor, shifts_angstrom: torch.Tensor | None, *,
                      working_pixel_angstrom: float, symmetry: str, refine_to_deg: float, estimate_shifts: bool,
                      max_iterations: int, reconstruct, seed: int = 0) -> SubsetOutcome:
    """Global search and reconstruction, iterated on a subset at the working box until the
    poses stop moving, or stop settling (see the module docstring).

    Args:
        source: Particle images at their own box (``len``, ``box_size``, ``source[indices]``).
        meta: Their :class:`~cryopose.io.particles.ParticleMetadata` (pixel size, CTF).
        rotmats: ``(N, 3, 3)`` starting poses (RELION matrices, the point group's frame).
        shifts_angstrom: ``(N, 2)`` starting origins in Å, or ``None`` (the metadata's).
        working_pixel_angstrom: Pixel of the encoder's working box, Å: the iterations run on
            the particles Fourier-cropped to that pixel (at least 32 px).
        symmetry: Point group imposed on the maps.
        refine_to_deg: Last step of each global round's local refinement, degrees.
        estimate_shifts: Search the origins (±2 px of the working box around the current ones)
            and centre each map on its density.
        max_iterations: At most this many iterations (≥ 1).
        reconstruct: ``reconstruct(images, metadata, rotmats, shifts_angstrom, last)`` → a
            reconstruction (called with ``last=False``), as for
            :func:`cryopose.pipelines.polish.polish_rounds`.
        seed: Seed of the subset's draw.

    Returns:
        :class:`SubsetOutcome`.

    Raises:
        ValueError: If ``max_iterations < 1``.
    """
    from ..rotations import geodesic_distance_deg
    from ..symmetry import expand_by_symmetry

    if int(max_iterations) < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
    idx, images, sub = subset_images(source, meta, working_pixel_angstrom, seed)
    t = torch.as_tensor(idx)
    apix = float(sub.pixel_size_angstrom)
    band = 2.0 * apix / POLISH_NYQUIST_FRACTION
    rot = rotmats[t].float()
    start = shifts_angstrom if shifts_angstrom is not None else meta.shifts_angstrom
    sh = None if start is None else start[t].float()
    centring = torch.zeros(3, dtype=torch.float64)
    moved: list[float] = []
    for _ in range(int(max_iterations)):
        rec = reconstruct(images, sub, rot, sh, False)
        reference = rec.volume
        if estimate_shifts and sh is not None:
            reference, sh, step = centred(reference, rot, sh, apix)
            centring = centring + step
        posed = sub.replace(shifts_angstrom=sh)
        new_rot, new_sh = global_round(images, posed, reference, symmetry=symmetry, refine_to_deg=refine_to_deg,
                                       max_resolution_angstrom=band, search_shifts=estimate_shifts and sh is not None)
        change = geodesic_distance_deg(new_rot.double()[:, None], expand_by_symmetry(rot.double(), symmetry))
        moved.append(float((change.min(dim=1).values > MOVED_DEG).double().mean()))
        rot = new_rot
        if estimate_shifts and sh is not None:
            sh = new_sh
        if moved[-1] < CONVERGED_MOVED_FRACTION or _stalled(moved):
            break
    rec = reconstruct(images, sub, rot, sh, False)
    return SubsetOutcome(rec, idx, rot.float(), sh, centring, tuple(moved), moved[-1] < CONVERGED_MOVED_FRACTION)


def subset_images(source, meta, working_pixel_angstrom: float, seed: int = 0):
    """The subset of :func:`subset_iterations`: ``(indices, images, metadata)``.

    A seeded draw of :data:`SUBSET_PARTICLES` particles (all when there are fewer), sorted,
    Fourier-cropped to the working pixel (the same field of view, at least 32 px), held in memory.
    """
    from ..data.dataset import TensorStack

    n = len(meta)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(n, SUBSET_PARTICLES), replace=False))
    fov = float(source.box_size) * float(meta.pixel_size_angstrom)
    box = min(int(source.box_size), max(32, 2 * int(round(fov / float(working_pixel_angstrom) / 2.0))))
    src, m_meta = cropped(source, meta, box)
    return idx, TensorStack(torch.as_tensor(src[idx]).float()), m_meta.subset(idx)


def subset_warning(moved, symmetry: str) -> str | None:
    """The run's warning when the subset iterations stopped without converging, or ``None``.

    Args:
        moved: The moved fractions of :class:`SubsetOutcome` (``summary.json``'s
            ``polish_subset_moved``; empty or ``None`` when none ran).
        symmetry: The point group imposed.

    Returns:
        A sentence that says how many poses kept moving and what to check, or ``None`` when the
        last fraction fell below :data:`CONVERGED_MOVED_FRACTION` (or no iteration ran).
    """
    if not moved or moved[-1] < CONVERGED_MOVED_FRACTION:
        return None
    return (f"the subset iterations stopped with {100 * moved[-1]:.1f} % of their poses still moving by more than "
            f"{MOVED_DEG:g}° (after {len(moved)}): the particle may have more symmetry than {symmetry} (give "
            "--symmetry), or the particles differ (heterogeneity, junk); the poses of the moving particles are "
            "the least reliable")


def start_note(choice: dict | None) -> str | None:
    """The run's note when the marginal start replaced the encoder's poses, or ``None``.

    Args:
        choice: :class:`~cryopose.pipelines.polish.PolishOutcome`'s ``subset_start`` (``None``
            when the marginal start did not run).
    """
    if not choice or choice.get("kept") != "marginal":
        return None
    fit = choice["fit"]
    return (f"the encoder's poses fitted the particles worse than a map found from random poses (mean NCC "
            f"{fit['given']:.3f} against {fit['marginal']:.3f} on the subset): the polishing started from that map, "
            "so the encoder's poses (poses_encoder.star) are not the run's; they may have collapsed onto few views")


def _stalled(moved: list[float]) -> bool:
    """Whether the last :data:`PATIENCE` fractions all stayed at or above the lowest before them."""
    return len(moved) > PATIENCE and min(moved[-PATIENCE:]) >= min(moved[:-PATIENCE])


def polish_from_subset(source, meta, rotmats: torch.Tensor, shifts_angstrom: torch.Tensor | None, reconstruction, *,
                       schedule: PolishSchedule, max_iterations: int, reconstruct, marginal_start: bool = True,
                       threads: int = 1, progress: bool = False) -> PolishOutcome:
    """:func:`subset_iterations` (at most ``max_iterations`` of them; none when 0) from the given
    poses and, when those collapsed onto few views, from a map found without them; the start
    whose map the subset's particles fit better is kept; then
    :func:`cryopose.pipelines.polish.polish_rounds` over all particles from its last map.

    **Marginal start.** When more than
    :data:`~cryopose.metrics.diagnostics.UNDERSAMPLED_WARN` of the Fourier directions are
    undersampled by the subset's poses after their iterations
    (:func:`cryopose.metrics.diagnostics.view_coverage`: the encoder collapsed), the subset
    iterations run a second time from the best-fitting of :data:`MARGINAL_SEEDS` runs of
    :func:`cryopose.search.marginal.marginal_ab_initio` on the same subset (from random poses,
    origins searched within ±:data:`MARGINAL_SHIFT_RANGE_PX` of the metadata's when they are
    estimated). The fit of a start is the mean normalised cross-correlation of the subset's
    particles with its map at its poses, over the iterations' band (:func:`subset_fit`): the
    same particles, band and number of parameters for both. Only collapsed starts trigger it, so
    runs whose encoder did not collapse (β-gal, the demo) pay nothing. The kept start's subset
    poses and origins replace the starting ones.

    Every other particle's origin is moved with the subset map's centring through its starting
    pose when the given poses' start is kept; with the marginal start their poses are in another
    frame, so their origins stay (both maps are centred on their density) and the first round,
    which is then global, searches their poses. The marginal start runs only when the first round
    is global (``schedule.global_rounds``).

    Args:
        source, meta, rotmats, shifts_angstrom, reconstruction, schedule, reconstruct, progress:
            As for :func:`~cryopose.pipelines.polish.polish_rounds` (``reconstruction``, the map
            of the starting poses, is used only without subset iterations).
        max_iterations: Most iterations on the subset (0 = straight to the rounds).
        marginal_start: Try the marginal start when the given one collapsed.
        threads: Threads of the marginal start's reconstructions.

    Returns:
        The rounds' :class:`~cryopose.pipelines.polish.PolishOutcome`, with the iterations'
        time (``seconds["subset"]``, the marginal start's included), their moved fractions
        (``subset_moved``, of the start kept), the choice (``subset_start``, ``None`` when the
        marginal start did not run: ``kept``, the ``fit`` of each start, each marginal seed's
        fit, ``marginal_seconds``, the given start's ``given_undersampled_fraction``) and their
        centring added to ``centring_angstrom``.
    """
    from ..reconstruction.centring import recentred_origins_angstrom

    if int(max_iterations) <= 0:
        return polish_rounds(source, meta, rotmats, shifts_angstrom, reconstruction, schedule=schedule,
                             reconstruct=reconstruct, progress=progress)
    t0 = time.perf_counter()
    iterate = dict(working_pixel_angstrom=schedule.working_pixel_angstrom, symmetry=schedule.symmetry,
                   refine_to_deg=schedule.start_step_deg, estimate_shifts=schedule.estimate_shifts,
                   max_iterations=int(max_iterations), reconstruct=reconstruct)
    first = subset_iterations(source, meta, rotmats, shifts_angstrom, **iterate)
    choice = None
    if marginal_start and schedule.global_rounds > 0:
        from ..metrics.diagnostics import UNDERSAMPLED_WARN, view_coverage

        undersampled = view_coverage(first.rotmats, schedule.symmetry).undersampled_fraction
        if undersampled > UNDERSAMPLED_WARN:
            first, choice = _better_start(source, meta, rotmats, shifts_angstrom, first, iterate, threads)
            choice["given_undersampled_fraction"] = round(undersampled, 4)
    seconds = round(time.perf_counter() - t0, 1)
    t = torch.as_tensor(first.indices)
    rot = rotmats.clone().float()
    rot[t] = first.rotmats
    shifts = shifts_angstrom
    if schedule.estimate_shifts and shifts is not None:
        if choice is None or choice["kept"] == "given":
            shifts = recentred_origins_angstrom(rot, shifts, first.centring_angstrom).float()
        shifts = shifts.clone().float()
        shifts[t] = first.shifts_angstrom
    out = polish_rounds(source, meta, rot, shifts, first.reconstruction, schedule=schedule, reconstruct=reconstruct,
                        progress=progress)
    return dataclasses.replace(out, centring_angstrom=out.centring_angstrom + first.centring_angstrom,
                               seconds={"subset": [seconds], **out.seconds}, subset_moved=first.moved_fractions,
                               subset_start=choice)


#: Radius of the marginal start's origin lattice, pixels of the working box.
MARGINAL_SHIFT_RANGE_PX = 3.0

#: Iterations of each marginal start. On 3,000 of the 4AKE particles (seeds 1 and 2, 3 of the
#: run below) 20 iterations left 0.7–7 % of the poses more than 40° off where 12 left 6–42 %.
MARGINAL_ITERATIONS = 20

#: Marginal starts from different random poses; the one whose map fits the subset best is
#: iterated. A single start can settle in a wrong map (on the 4AKE subset: 1 seed of 4 at 12
#: iterations), as ab initio from random poses can in RELION and cryoSPARC.
MARGINAL_SEEDS = 2


def _better_start(source, meta, rotmats, shifts_angstrom, given: SubsetOutcome, iterate: dict, threads: int):
    """The subset iterations from the best-fitting of :data:`MARGINAL_SEEDS` runs of
    :func:`~cryopose.search.marginal.marginal_ab_initio`, and whichever of them and ``given``
    fits better (:func:`polish_from_subset`); ``(outcome, record)``."""
    from ..search.marginal import marginal_ab_initio

    t0 = time.perf_counter()
    idx, images, sub = subset_images(source, meta, iterate["working_pixel_angstrom"])
    t = torch.as_tensor(idx)
    estimate = iterate["estimate_shifts"] and (shifts_angstrom is not None or meta.shifts_angstrom is not None)
    found, seed_fits = None, []
    for seed in range(MARGINAL_SEEDS):
        run = marginal_ab_initio(images.images, sub.ctf, float(sub.pixel_size_angstrom), symmetry=iterate["symmetry"],
                                 shifts_angstrom=sub.shifts_angstrom, iterations=MARGINAL_ITERATIONS, seed=seed,
                                 shift_range_px=MARGINAL_SHIFT_RANGE_PX if estimate else 0.0, threads=threads)
        seed_fits.append(subset_fit(run.reconstruction.volume, run.rotmats, run.shifts_angstrom, images, sub))
        if seed_fits[-1] >= max(seed_fits):
            found = run
    rot = rotmats.clone().float()
    rot[t] = found.rotmats
    shifts = None
    if shifts_angstrom is not None or meta.shifts_angstrom is not None:
        shifts = (shifts_angstrom if shifts_angstrom is not None else meta.shifts_angstrom).clone().float()
        shifts[t] = found.shifts_angstrom
    second = subset_iterations(source, meta, rot, shifts, **iterate)
    fits = {name: subset_fit(out.reconstruction.volume, out.rotmats, out.shifts_angstrom, images, sub)
            for name, out in (("given", given), ("marginal", second))}
    kept = "marginal" if fits["marginal"] > fits["given"] else "given"
    record = {"kept": kept, "fit": {k: round(v, 4) for k, v in fits.items()},
              "marginal_seed_fits": [round(v, 4) for v in seed_fits],
              "marginal_seconds": round(time.perf_counter() - t0, 1),
              "marginal_max_weights": [round(v, 3) for v in found.max_weights]}
    return (second if kept == "marginal" else given), record


def subset_fit(volume: torch.Tensor, rotmats: torch.Tensor, shifts_angstrom: torch.Tensor | None, images,
               sub) -> float:
    """Mean NCC of the subset's particles with a map at given poses and origins, over the
    subset iterations' band (:func:`cryopose.search.projection_matching.score_poses`).

    Args:
        volume: ``(m, m, m)`` map at the subset's working box.
        rotmats: ``(M, 3, 3)`` poses of the subset's particles.
        shifts_angstrom: ``(M, 2)`` their origins in Å, or ``None`` (zero).
        images, sub: The subset's images and metadata (:func:`subset_images`).
    """
    from ..search.projection_matching import score_poses

    apix = float(sub.pixel_size_angstrom)
    scores = score_poses(images.images, volume, apix, rotmats, shifts_angstrom, ctf=sub.ctf,
                         max_resolution_angstrom=2.0 * apix / POLISH_NYQUIST_FRACTION)
    return float(scores.mean())
