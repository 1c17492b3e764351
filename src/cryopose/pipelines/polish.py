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

The schedule of rounds (:func:`polish_rounds`: a growing box, global then local rounds, the
map centred on its density when origins are estimated) is shared by ``abinitio`` (after the
encoder) and ``refine`` (after the supervised network).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import numpy as np
import torch

from ..fourier import fourier_downsample_volume
from ..search.projection_matching import SearchConfig, local_search

__all__ = ["polish_poses", "polish_rounds", "polishing_box", "cropped", "centred", "global_round", "PolishSchedule",
           "PolishOutcome", "low_score_particles", "rescue_low_scores", "GLOBAL_SHIFT_RANGE_PX",
           "GLOBAL_CANDIDATES", "POLISH_NYQUIST_FRACTION",
           "RESCUE_MIN_SEPARATION"]

#: Nyquist of a polishing round's box, as a fraction of the resolution reached before it: room
#: for the map to improve by 1/0.7 per round before the box has to grow (it grows by itself:
#: a map at its box's Nyquist reports that resolution, and the next box is 1/0.7 larger).
POLISH_NYQUIST_FRACTION = 0.7

#: Global shift lattice of a global polishing round: ± this many pixels of the round's box
#: around the current origins, one-pixel steps (refined locally to a quarter pixel).
GLOBAL_SHIFT_RANGE_PX = 2.0

#: Best (rotation, origin) pairs of a global round's grid refined locally per particle, and
#: candidates kept after the first refinement level (``SearchConfig.n_candidates`` and
#: ``n_local_candidates``; ``cryopose search`` keeps 4 and 2). A polishing round's map is
#: already the data's own: on 3,000 realistic β-gal particles (``benchmarks/polish_schedule.py``,
#: seed 0 at SNR 0.1, D2) 2 and 1 took half the global rounds' time of 4 and 2 for the same last
#: map (12.07 Å) and median error 2.09° against 1.98° (> 40° off: 5.7 % against 5.2 %).
GLOBAL_CANDIDATES = (2, 1)


def polish_poses(stack, metadata, rotmats: torch.Tensor, reference: torch.Tensor, *, symmetry: str = "C1",
                 start_step_deg: float = 3.75, final_step_deg: float = 0.9375,
                 particle_chunk: int = 256, shift_step_angstrom: float = 0.0,
                 max_resolution_angstrom: float | None = None, return_shifts: bool = False,
                 return_result: bool = False):
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
        return_result: Return the whole
            :class:`~cryopose.search.projection_matching.SearchResult` (poses, origins, scores).

    Returns:
        ``(N, 3, 3)`` float32 refined poses, or ``(poses, origins)`` with ``return_shifts``
        (``(N, 2)`` float32 RELION origins in Å), or the ``SearchResult`` with ``return_result``.

    Raises:
        UserError: Inconsistent inputs (from :func:`local_search`).
    """
    cfg = SearchConfig(symmetry=symmetry, final_step_deg=float(final_step_deg), particle_chunk=int(particle_chunk),
                       max_resolution_angstrom=max_resolution_angstrom)
    res = local_search(stack, reference, float(metadata.pixel_size_angstrom), rotmats.float(),
                       metadata.shifts_angstrom, ctf=metadata.ctf, config=cfg, start_step_deg=float(start_step_deg),
                       shift_step_angstrom=float(shift_step_angstrom))
    if return_result:
        return res
    if return_shifts:
        return res.rotmats.float(), res.shifts_angstrom.float()
    return res.rotmats.float()


def polishing_box(image_box: int, pixel_size_angstrom: float, resolution_angstrom: float | None) -> int:
    """Box of a polishing round: the particles Fourier-cropped so that Nyquist is 0.7 × the
    resolution the map has reached (the growing-box stage of the resolution schedule).

    A round reads frequencies up to 0.9 × that resolution only, so finer pixels would cost
    (a map and a search at 256 px are 8× and 4× the work of 128 px) for nothing; the box grows
    as the maps improve and is the particles' box once Nyquist is reached. The final map is
    always reconstructed at the particles' box.

    Args:
        image_box: The particles' box ``n``, px.
        pixel_size_angstrom: Their pixel size, Å.
        resolution_angstrom: FSC = 0.143 resolution reached, Å (``None`` or not finite: ``n``).

    Returns:
        An even box ``m`` with ``32 <= m <= n`` (or ``n`` when ``n < 32``).
    """
    n = int(image_box)
    if resolution_angstrom is None or not math.isfinite(resolution_angstrom) or resolution_angstrom <= 0:
        return n
    m = 2 * math.ceil(n * float(pixel_size_angstrom) / (POLISH_NYQUIST_FRACTION * float(resolution_angstrom)))
    return int(min(n, max(32, m)))


def cropped(source, meta, box: int):
    """The particles (and their metadata) Fourier-cropped to ``box`` (the same field of view);
    ``(source, meta)`` unchanged when ``box`` is not smaller than their box."""
    from ..search.run import ResampledImages

    n = int(source.box_size)
    if box >= n:
        return source, meta
    return (ResampledImages(source, box),
            meta.replace(box_size=box, pixel_size_angstrom=float(meta.pixel_size_angstrom) * n / box))


@dataclasses.dataclass(frozen=True)
class PolishSchedule:
    """The rounds of :func:`polish_rounds`.

    Attributes:
        rounds: Rounds in all (each: search, then a new reconstruction).
        global_rounds: The first this many rounds search globally (:func:`global_round`).
        start_step_deg: The step a global round refines to, and the first lattice step of a
            local round that is the first round, degrees. A local round after any round starts
            at half of it: the poses moved by less than that in the round before, or were
            refined to it by a global round. After the subset iterations
            (:mod:`cryopose.pipelines.polish_subset`) and two global rounds, on 5,000 realistic
            β-gal particles (seed 1), the local round from half the step cost 72 s against 88 s
            from the step for the same last map (9.94 Å) and median (1.04° against 1.02°); without
            the iterations, when the side views were still tens of degrees off, starting it lower
            had cost side views (9.3° against 7.5° on seed 0).
        final_step_deg: Last lattice step of the last round, degrees; the rounds before it
            (whose poses only build the next round's map) and the rescues stop at twice it.
            Each round so runs two levels instead of three (3.75° → 1.875°, then 1.875° →
            0.9375° by default): on 5,000 realistic β-gal particles (``abinitio --symmetry D2``
            after training) the polishing took 1.4× less time for the same median pose error
            (6.1° against 6.2°), fraction off by > 40° (7.1 % against 7.0 %) and half-map
            resolution (12.4 Å against 12.3 Å) as three levels in every round.
        estimate_shifts: Refine the origins too (from half a working pixel; a global round
            searches ±:data:`GLOBAL_SHIFT_RANGE_PX` px around them) and centre each round's map
            on its density, moving the origins with it.
        working_pixel_angstrom: The pixel the origins were estimated on, Å (the local shift
            lattice starts at half of it).
        symmetry: Point group.
        rescue: After each local round, search globally the particles that fit the map badly
            (:func:`low_score_particles` of the round's scores) against the same map, and keep
            the global pose where it scores higher: a local round cannot reach a pose tens of
            degrees off, and a global round over every particle costs as much as a search.
    """

    rounds: int
    global_rounds: int
    start_step_deg: float
    final_step_deg: float
    estimate_shifts: bool
    working_pixel_angstrom: float
    symmetry: str = "C1"
    rescue: bool = False


@dataclasses.dataclass(frozen=True)
class PolishOutcome:
    """What :func:`polish_rounds` returns.

    Attributes:
        reconstruction: The last round's map (at the particles' box).
        rotmats: ``(N, 3, 3)`` float32 polished poses.
        shifts_angstrom: ``(N, 2)`` float32 origins in Å (RELION sign), or the input's when not
            estimated (possibly ``None``).
        centring_angstrom: ``(3,)`` float64 total map translation (x, y, z) removed by the centring, Å.
        rescued: Per rescue (one per local round with ``schedule.rescue``), ``(particles
            searched globally, particles whose pose the global search replaced)``.
        seconds: Wall time by stage, one entry per call: ``global`` (global rounds), ``local``
            (local rounds), ``rescue`` (rescues, their global search included), ``reconstruct``
            (the map after each round), ``subset`` (the subset iterations of
            :func:`cryopose.pipelines.polish_subset.polish_from_subset`).
        subset_moved: Per subset iteration, the fraction of the subset's poses that moved
            (:func:`cryopose.pipelines.polish_subset.polish_from_subset`); empty without them.
        subset_start: Which start the subset iterations kept and how well each fitted
            (:func:`cryopose.pipelines.polish_subset.polish_from_subset`), or ``None``.
    """

    reconstruction: object
    rotmats: torch.Tensor
    shifts_angstrom: torch.Tensor | None
    centring_angstrom: torch.Tensor
    rescued: tuple = ()
    seconds: dict = dataclasses.field(default_factory=dict)
    subset_moved: tuple = ()
    subset_start: dict | None = None


def polish_rounds(source, meta, rotmats: torch.Tensor, shifts_angstrom: torch.Tensor | None, reconstruction, *,
                  schedule: PolishSchedule, reconstruct, progress: bool = False) -> PolishOutcome:
    """Rounds of search against the latest map, each followed by a new reconstruction (the
    growing-box schedule of ``abinitio`` and ``refine``).

    Each round searches and reconstructs at :func:`polishing_box` of the resolution reached
    before it, reading frequencies up to 0.9 × that resolution; the last round's map is
    reconstructed at the particles' box. With ``schedule.estimate_shifts``, each round first
    centres its reference on the map's density and moves the origins with it, so the final map
    is centred (as RELION's and cryoSPARC's refinements keep the particle at the box centre).

    Args:
        source: Particle images at their own box (contrast as the map's; ``len``, ``box_size``,
            ``source[indices] → (B, n, n)``).
        meta: Their :class:`~cryopose.io.particles.ParticleMetadata` (pixel size, CTF).
        rotmats: ``(N, 3, 3)`` starting poses (RELION matrices).
        shifts_angstrom: ``(N, 2)`` starting origins in Å, or ``None`` (the metadata's).
        reconstruction: The map of the starting poses (any box up to the particles'), with its
            ``resolution_fsc0p143_angstrom`` (a :class:`~cryopose.reconstruction.ReconstructionResult`).
        schedule: :class:`PolishSchedule`.
        reconstruct: ``reconstruct(images, metadata, rotmats, shifts_angstrom, last)`` → a
            reconstruction of ``images`` (on ``metadata``'s grid); ``last`` marks the final map.
        progress: Progress bar of a global round.

    Returns:
        :class:`PolishOutcome`.
    """
    rot = rotmats
    shifts_a = shifts_angstrom
    rec = reconstruction
    shift_step = 0.5 * schedule.working_pixel_angstrom if schedule.estimate_shifts else 0.0
    centring_total = torch.zeros(3, dtype=torch.float64)
    rescued: list[tuple[int, int]] = []
    seconds: dict[str, list[float]] = {}
    for r in range(schedule.rounds):
        res = rec.resolution_fsc0p143_angstrom
        res_limit = None if res is None or not math.isfinite(res) else 0.9 * float(res)
        box = min(polishing_box(source.box_size, meta.pixel_size_angstrom, res), int(rec.volume.shape[-1]))
        src, m_meta = cropped(source, meta, box)
        reference = fourier_downsample_volume(rec.volume, box)
        if shift_step > 0 and shifts_a is not None:  # the map centred on its density, the origins with it
            reference, shifts_a, moved = centred(reference, rot, shifts_a, float(m_meta.pixel_size_angstrom))
            centring_total = centring_total + moved
        posed = m_meta.replace(shifts_angstrom=shifts_a.float() if shifts_a is not None else meta.shifts_angstrom)
        last = r == schedule.rounds - 1
        if r < schedule.global_rounds:
            with _timed(seconds, "global"):
                rot, sh = global_round(src, posed, reference, symmetry=schedule.symmetry,
                                       refine_to_deg=schedule.start_step_deg, max_resolution_angstrom=res_limit,
                                       search_shifts=shift_step > 0, progress=progress)
        else:
            start, final = _local_steps(schedule, r, last)
            with _timed(seconds, "local"):
                res_local = polish_poses(src, posed, rot, reference, symmetry=schedule.symmetry,
                                         start_step_deg=start, final_step_deg=final,
                                         shift_step_angstrom=shift_step, max_resolution_angstrom=res_limit,
                                         return_result=True)
            rot, sh = res_local.rotmats.float(), res_local.shifts_angstrom.float()
            if schedule.rescue:
                with _timed(seconds, "rescue"):
                    rot, sh, counts = rescue_low_scores(src, posed, reference, rot, sh, res_local.scores,
                                                        symmetry=schedule.symmetry,
                                                        refine_to_deg=2.0 * schedule.final_step_deg,
                                                        max_resolution_angstrom=res_limit,
                                                        search_shifts=shift_step > 0, progress=progress)
                rescued.append(counts)
        if shift_step > 0:
            shifts_a = sh
        if not last:  # room for the map to improve by 1/0.7 before the next round (the box grows)
            nxt = None if res_limit is None else POLISH_NYQUIST_FRACTION * res_limit / 0.9
            src, m_meta = cropped(source, meta, max(box, polishing_box(source.box_size, meta.pixel_size_angstrom,
                                                                       nxt)))
        with _timed(seconds, "reconstruct"):
            rec = reconstruct(source if last else src, meta if last else m_meta, rot, shifts_a, last)
    return PolishOutcome(rec, rot.float(), None if shifts_a is None else shifts_a.float(), centring_total,
                         tuple(rescued), seconds)


@contextlib.contextmanager
def _timed(seconds: dict, stage: str):
    """Append the wall time of the ``with`` block to ``seconds[stage]`` (s, one decimal)."""
    t0 = time.perf_counter()
    yield
    seconds.setdefault(stage, []).append(round(time.perf_counter() - t0, 1))


def _local_steps(schedule: PolishSchedule, r: int, last: bool) -> tuple[float, float]:
    """First and last lattice step of local round ``r`` (degrees), as :class:`PolishSchedule`
    says: ``start_step_deg`` for a first round, half of it after any round (a global round
    refined the poses to ``start_step_deg``), twice the final step before the last round."""
    start = schedule.start_step_deg if r == 0 else 0.5 * schedule.start_step_deg
    final = schedule.final_step_deg if last else 2.0 * schedule.final_step_deg
    return max(start, final), final


#: Separation (difference of the means over their pooled s.d.) that the two score modes of
#: :func:`low_score_particles` must have: below it the scores are one population.
RESCUE_MIN_SEPARATION = 2.5


def low_score_particles(scores: torch.Tensor) -> np.ndarray:
    """The particles in the low mode of their search scores: ``(N,)`` bool.

    A two-component Gaussian mixture (scikit-learn, seeded) is fitted to the scores (NCC at
    each particle's pose); when its two means are at least :data:`RESCUE_MIN_SEPARATION`
    pooled standard deviations apart, the particles more likely in the lower component are
    returned, else none (one population: the spread of scores from ice and defocus alone).
    On 2,000 realistic β-gal particles after ``refine``'s polishing (SNR 0.1) the modes were
    at NCC 0.39 and 0.20 (s.d. 0.04, 0.05), and 90 % of the low mode's particles were more
    than 40° off, against 4 % of the others.

    Args:
        scores: ``(N,)`` scores (higher is better); non-finite scores count as low.

    Returns:
        ``(N,)`` bool mask.
    """
    from sklearn.mixture import GaussianMixture

    s = torch.as_tensor(scores).double().cpu().numpy()
    bad = ~np.isfinite(s)
    if s.size - bad.sum() < 20:
        return bad
    ok = s[~bad]
    gm = GaussianMixture(2, random_state=0).fit(ok[:, None])
    mu = gm.means_[:, 0]
    sd = np.sqrt(gm.covariances_.reshape(2))
    lo = int(np.argmin(mu))
    if (mu.max() - mu.min()) / np.sqrt(0.5 * (sd[0] ** 2 + sd[1] ** 2)) < RESCUE_MIN_SEPARATION:
        return bad
    out = bad.copy()
    out[~bad] = gm.predict_proba(ok[:, None])[:, lo] > 0.5
    return out


def rescue_low_scores(src, posed, reference: torch.Tensor, rot: torch.Tensor, sh: torch.Tensor,
                      scores: torch.Tensor, *, symmetry: str, refine_to_deg: float,
                      max_resolution_angstrom: float | None, search_shifts: bool, progress: bool = False):
    """The rescue of :class:`PolishSchedule`: search the low-score particles
    (:func:`low_score_particles`) globally (:func:`global_round`) and keep each global pose
    that scores higher than the current one.

    Args:
        src, posed, reference: Images, their metadata and the map, as for :func:`global_round`.
        rot: ``(N, 3, 3)`` current poses; ``sh``: ``(N, 2)`` current origins in Å.
        scores: ``(N,)`` NCC of the current poses on the same band.
        symmetry, refine_to_deg, max_resolution_angstrom, search_shifts, progress: As for
            :func:`global_round`.

    Returns:
        ``(poses, origins, (particles searched, poses replaced))``.
    """
    low = np.flatnonzero(low_score_particles(scores))
    if low.size == 0:
        return rot, sh, (0, 0)
    t = torch.as_tensor(low)
    sub = src.subset(low) if hasattr(src, "subset") else src[t]
    meta = posed.subset(low).replace(shifts_angstrom=sh[t].float())
    g_rot, g_sh, g_scores = global_round(sub, meta, reference, symmetry=symmetry, refine_to_deg=refine_to_deg,
                                         max_resolution_angstrom=max_resolution_angstrom,
                                         search_shifts=search_shifts, progress=progress, return_scores=True)
    better = g_scores > torch.as_tensor(scores).float()[t]
    rot, sh = rot.clone(), sh.clone()
    rot[t[better]] = g_rot[better]
    sh[t[better]] = g_sh[better]
    return rot, sh, (int(low.size), int(better.sum()))


def centred(reference: torch.Tensor, rot: torch.Tensor, shifts_a: torch.Tensor, pixel_size_angstrom: float):
    """The round's reference moved so that its density centre is the box centre, and the origins
    that keep every image the same (:mod:`cryopose.reconstruction.centring`), unless the centre
    is already within half a pixel. Returns ``(reference, origins in Å, (3,) Å moved)``."""
    from ..reconstruction.centring import density_centre_px, recentred_origins_angstrom, shift_volume

    c = density_centre_px(reference)
    if float(c.norm()) < 0.5:
        return reference, shifts_a, torch.zeros(3, dtype=torch.float64)
    moved = c * pixel_size_angstrom
    return (shift_volume(reference, -c), recentred_origins_angstrom(rot, shifts_a, moved), moved)


def global_round(src, posed, reference: torch.Tensor, *, symmetry: str, refine_to_deg: float,
                 max_resolution_angstrom: float | None, search_shifts: bool, progress: bool = False,
                 return_scores: bool = False):
    """A global polishing round: every particle's pose over the 15° SO(3) grid of the map's
    asymmetric unit, the :data:`GLOBAL_CANDIDATES` best refined locally to ``refine_to_deg``,
    its origin on a ±:data:`GLOBAL_SHIFT_RANGE_PX` lattice centred on the current one (when
    ``search_shifts``; the current origins are kept otherwise).

    Args:
        src: Particle images on ``posed``'s grid.
        posed: Their metadata (pixel size, CTF, current origins in Å).
        reference: ``(m, m, m)`` map on the same grid.
        symmetry: Point group.
        refine_to_deg: Last step of the local refinement of the grid's best poses, degrees.
        max_resolution_angstrom: Band limit of the scores, Å (``None`` = Nyquist).
        search_shifts: Search the origins too.
        progress: Show a progress bar.
        return_scores: Also return the ``(N,)`` NCC of each pose.

    Returns:
        ``((N, 3, 3) poses, (N, 2) origins in Å)``, and the scores with ``return_scores``.
    """
    from ..search.projection_matching import search_poses

    apix = float(posed.pixel_size_angstrom)
    cfg = SearchConfig(symmetry=symmetry, step_deg=15.0, final_step_deg=min(15.0, float(refine_to_deg)),
                       n_candidates=GLOBAL_CANDIDATES[0], n_local_candidates=GLOBAL_CANDIDATES[1],
                       shift_range_angstrom=GLOBAL_SHIFT_RANGE_PX * apix if search_shifts else 0.0,
                       shift_step_angstrom=apix, max_resolution_angstrom=max_resolution_angstrom)
    start = posed.shifts_angstrom
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(posed), desc="global search", unit="particle")
    try:
        res = search_poses(src, reference, apix, ctf=posed.ctf, config=cfg,
                           progress=None if bar is None else (lambda done, total: bar.update(done - bar.n)),
                           shifts_angstrom=None if start is None else start.float())
    finally:
        if bar is not None:
            bar.close()
    if return_scores:
        return res.rotmats.float(), res.shifts_angstrom.float(), res.scores.float()
    return res.rotmats.float(), res.shifts_angstrom.float()
