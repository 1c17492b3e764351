"""Reference-based pose estimation for a whole data set: search a labelled subset, train the
supervised regressor on it, infer the rest, reconstruct (``cryopose refine``), and the data-set
level training that ``cryopose train-supervised`` runs.

Pipeline (the use case of Lian et al., Acta Cryst. D 78, 2022: label a fraction of the
particles by a classical search, let the network do the rest in one forward pass each):

1. Put particles and reference on one working grid (:func:`refine_working_grid`: pixels of
   about 10 Å, as ``abinitio``'s training box; lazy Fourier-cropping of the particles).
2. Draw ``labeled_fraction`` of the particles (seeded) and find their poses by
   :func:`cryopose.search.projection_matching.search_poses` (CTF- and symmetry-aware).
3. Train :class:`cryopose.models.supervised.OrientationRegressor` on them with the search poses
   as labels (:func:`cryopose.training.supervised.train_supervised`; optionally choosing ``w``
   by five-fold cross-validation first), 4:1 train/test split inside the labelled subset.
4. Predict the orientation of every other particle; optionally polish the predictions by a
   local search (:func:`cryopose.search.projection_matching.local_search`, ``local_refine``).
   The network predicts no shifts: unlabelled particles keep shift 0 unless polished.
5. Polish every pose and origin against the data's own map (``polish_rounds``, 2 by default:
   :func:`cryopose.pipelines.polish.polish_rounds`, the growing-box local rounds that also end
   ``abinitio``; RELION's auto-refine likewise refines against its own reconstruction, not
   the low-pass reference), and reconstruct the final map at the particles' box
   (:func:`cryopose.reconstruction.reconstruct`, half maps, FSC). Without polishing rounds the
   map is made on the working grid, with labelled particles at their search poses and the rest
   at predicted poses (and, with local refinement, also at the unpolished predictions). If the input metadata carries poses (e.g. simulation ground
   truth), reconstruct with them too (the known-pose map of the same particles on the same
   grid, same half-set split) and report pose errors against them. Besides the half-map FSC,
   each map's FSC = 0.5 resolution against the reference is reported: half maps built from
   consistently wrong poses can agree with each other, but not with the reference.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from ..conventions import shifts_pixels_to_angstrom
from ..errors import UserError
from ..io.mrc import MapData
from ..io.particles import ParticleMetadata
from ..models.supervised import INT8_CALIBRATION_PARTICLES, OrientationRegressor, SupervisedModelConfig
from ..search.projection_matching import SearchConfig, local_search, search_poses
from ..search.run import ResampledImages, working_grid
from ..training.config import auto_working_box
from ..training.supervised import (CVResult, SupervisedTrainConfig, TrainResult, cross_validate_w,
                                   predict_rotmats, train_supervised)
from .refine_maps import (coverage_report, grid_report, known_pose_map, map_report, polish_all, pose_errors,
                          reconstructions, reference_on_grid, timing_report)

__all__ = ["WorkingData", "prepare_working_data", "refine_working_grid", "train_on_dataset", "RefineConfig", "RefineResult", "refine",
           "DEFAULT_LOCAL_REFINE_STEP_DEG"]

#: First step (°) of the local search that polishes the network's predictions (``RefineConfig``,
#: ``cryopose refine --local-step``): it then reaches about ±28°, the tail of a network's errors;
#: from 7.5° it reaches ±13° and misses more of that tail at about the same cost (README, issue 4).
DEFAULT_LOCAL_REFINE_STEP_DEG = 15.0


@dataclasses.dataclass
class WorkingData:
    """Particles and reference on one grid.

    Attributes:
        images: Lazy particle images on the working grid (:class:`ResampledImages`).
        metadata: The particles' metadata with ``pixel_size_angstrom`` and ``box_size`` of the
            working grid (poses, shifts in Å and CTF unchanged).
        reference: ``(m, m, m)`` float32 reference on the working grid.
        box_size: ``m``.
        pixel_size_angstrom: Working pixel size, Å.
    """

    images: ResampledImages
    metadata: ParticleMetadata
    reference: torch.Tensor
    box_size: int
    pixel_size_angstrom: float


def refine_working_grid(particle_box: int, particle_pixel: float, reference_pixel: float,
                        box_size: int | None = None) -> tuple[int, float]:
    """``(box, pixel_angstrom)`` of ``refine``'s search, network and local refinement.

    With ``box_size``, or a reference coarser than the particles (a binned map), that of
    :func:`cryopose.search.run.working_grid`. Otherwise the field of view decides, as for
    ``abinitio``'s training box (:func:`cryopose.training.config.auto_working_box`: pixels of
    about 10 Å, 32–48 px, never more than the particles' box): the labels, the network and the
    local refinement of its predictions need poses to a few degrees only, which a 15–30 Å
    reference cannot sharpen anyway, and the polishing rounds then go to the particles' box.
    At the full box (128 px, 20,000 particles) the network had run 150 of its 2,000 steps in
    18 minutes (``docs/results/real-conditions.md``).

    Raises:
        UserError: ``box_size`` larger than the particle box or < 8.
    """
    if box_size is not None or reference_pixel > particle_pixel * (1 + 1e-3):
        return working_grid(particle_box, particle_pixel, reference_pixel, box_size)
    m = auto_working_box(int(particle_box), float(particle_pixel))
    return m, float(particle_box) * float(particle_pixel) / m


def prepare_working_data(stack, metadata: ParticleMetadata, reference: MapData, *, box_size: int | None = None,
                         invert_contrast: bool = False) -> WorkingData:
    """Put particles (lazily) and reference on the working grid of :func:`refine_working_grid`."""
    n_p = int(metadata.box_size or stack.box_size)
    vol = np.asarray(reference.volume, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise UserError(f"the reference must be a cubic map, got shape {vol.shape}")
    m, a = refine_working_grid(n_p, float(metadata.pixel_size_angstrom), float(reference.pixel_size_angstrom),
                               box_size)
    ref = reference_on_grid(reference, a, m)
    images = ResampledImages(stack, m, invert_contrast=invert_contrast)
    return WorkingData(images, metadata.replace(pixel_size_angstrom=a, box_size=m), ref, m, a)


def train_on_dataset(images, label_rotmats: torch.Tensor, reference: torch.Tensor, *,
                     model_config: SupervisedModelConfig, train_config: SupervisedTrainConfig,
                     cv_w: bool = False, cv_w_values=None, cv_iterations: int | None = None,
                     cv_max_particles: int | None = None, cv_folds: int = 5,
                     progress=None, device=None) -> tuple[TrainResult, CVResult | None]:
    """Train the supervised regressor, optionally choosing ``w`` by cross-validation first.

    The 4:1 train/test split is drawn once (``train_config.seed``); cross-validation runs on
    (at most ``cv_max_particles`` of) the training split only, with ``cv_iterations`` steps per
    fold (default ``train_config.iterations``), and the final model is trained on the whole
    training split with the chosen ``w`` and evaluated on the untouched test split.

    ``device`` (default the CPU) is where the network trains (:func:`train_supervised`).

    Returns:
        ``(train_result, cv_result or None)``.
    """
    from ..training.supervised import DEFAULT_W_GRID, split_train_test

    n = len(images)
    train_idx, test_idx = split_train_test(n, train_config.test_fraction, seed=train_config.seed)
    cv = None
    cfg = train_config
    if cv_w:
        sub = train_idx
        if cv_max_particles is not None and sub.size > cv_max_particles:
            sub = np.sort(np.random.default_rng(train_config.seed + 2).choice(sub, cv_max_particles, replace=False))
        cv_cfg = dataclasses.replace(train_config, iterations=int(cv_iterations or train_config.iterations))
        cv = cross_validate_w(images, label_rotmats, reference, model_config=model_config, config=cv_cfg,
                              indices=sub, w_values=cv_w_values or DEFAULT_W_GRID, n_folds=cv_folds,
                              progress=progress, device=device)
        cfg = dataclasses.replace(train_config, w=cv.best_w)
    res = train_supervised(images, label_rotmats, reference, model_config=model_config, config=cfg,
                           train_indices=train_idx, test_indices=test_idx, device=device,
                           progress=None if progress is None else (lambda s, r: progress(
                               f"step {s}: loss {r['loss']:.4f} (QD {r['loss_qd']:.4f}, reproj {r['loss_reproj']:.4f})")))
    return res, cv


@dataclasses.dataclass(frozen=True, kw_only=True)
class RefineConfig:
    """Options of :func:`refine`.

    Attributes:
        labeled_fraction: Fraction of particles labelled by search (paper's use case; 0.2).
        search: Options of the labelling search (its ``symmetry`` is the map's).
        model: Network architecture (``box_size`` is set to the working box).
        train: Training options (``symmetry`` is set from ``search``).
        cv_w: Choose ``w`` by five-fold cross-validation.
        cv_iterations: Steps per cross-validation fold (default ``train.iterations``).
        cv_max_particles: Cap on the particles cross-validated.
        test_time_turns: Infer each unlabelled particle as the mean of the predictions for its
            four quarter turns, modulo the point group
            (:meth:`cryopose.models.supervised.OrientationRegressor.predict_rotmat`; 4 × the time).
        int8_inference: Infer with the network's int8 copy, calibrated on (up to)
            ``INT8_CALIBRATION_PARTICLES`` labelled particles
            (:meth:`cryopose.models.supervised.OrientationRegressor.quantized_for_inference`).
        local_refine: Polish network predictions by a local search from ``local_refine_step_deg``
            (on by default: the network alone is a few degrees off).
        local_refine_step_deg: First step of that local search, degrees (default
            :data:`DEFAULT_LOCAL_REFINE_STEP_DEG`, 15).
        polish_rounds: Rounds of local refinement of every pose (and estimated origin) against
            the data's own map after the network (:func:`cryopose.pipelines.polish.polish_rounds`:
            growing box, final map at the particles' box); 0 = the map on the working grid.
        polish_rescue: After each polishing round, search globally the particles in the low
            mode of the round's scores (:func:`cryopose.pipelines.polish.low_score_particles`:
            poses tens of degrees off, which a local round cannot reach).
        polish_start_step_deg: First step of the first polishing round's local lattice, degrees
            (later rounds start at half of it: :class:`cryopose.pipelines.polish.PolishSchedule`).
        polish_final_step_deg: Last step of the last round, degrees (earlier rounds and the
            rescues stop at twice it).
        box_size: Working box of search, network and local refinement (default from
            :func:`refine_working_grid`).
        network_box_size: Box of the network's input (Fourier-cropped from the working grid,
            same field of view; default the working box), e.g. 32 for a 64 px data set.
        invert_contrast: The particles are dark; ``None`` = detect it
            (:func:`cryopose.data.preprocess.centre_particles`).
        estimate_shifts: Estimate origins: centre the particles on their rotational average,
            then search ``±2`` working pixels around that with the poses (unless
            ``search.shift_range_angstrom`` says otherwise) and refine them locally. ``None`` =
            when the input has no origins (as a picker's particles).
        reconstruct_known_poses: Also reconstruct with the input metadata's poses when present.
        seed: Seeds the labelled subset.
    """

    labeled_fraction: float = 0.2
    search: SearchConfig = SearchConfig()
    model: SupervisedModelConfig | None = None
    train: SupervisedTrainConfig = SupervisedTrainConfig()
    cv_w: bool = False
    cv_iterations: int | None = None
    cv_max_particles: int | None = None
    test_time_turns: bool = False
    int8_inference: bool = False
    local_refine: bool = True
    local_refine_step_deg: float = DEFAULT_LOCAL_REFINE_STEP_DEG
    polish_rounds: int = 2
    polish_rescue: bool = True
    polish_start_step_deg: float = 3.75
    polish_final_step_deg: float = 0.9375
    box_size: int | None = None
    network_box_size: int | None = None
    invert_contrast: bool | None = None
    estimate_shifts: bool | None = None
    reconstruct_known_poses: bool = True
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.labeled_fraction <= 1.0:
            raise UserError(f"--labeled-fraction must be in (0, 1], got {self.labeled_fraction}")
        if int(self.polish_rounds) != self.polish_rounds or self.polish_rounds < 0:
            raise UserError(f"--polish-rounds must be a whole number >= 0, got {self.polish_rounds}")


@dataclasses.dataclass
class RefineResult:
    """Output of :func:`refine`.

    Attributes:
        metadata: The input particles (their own pixel size, box and stacks) with the final
            poses and shifts (Å).
        pose_source: ``(N,)`` str: ``"search"`` or ``"network"`` (``"network+local"`` when polished).
        labeled_indices: Positions of the searched particles.
        reconstruction: :class:`cryopose.reconstruction.backprojection.ReconstructionResult`.
        known_pose_reconstruction: The same with the input poses, or ``None``.
        network_only_reconstruction: With ``local_refine``, the map from the unpolished
            network predictions (unlabelled particles at shift 0), else ``None``.
        model: The trained regressor.
        train: :class:`TrainResult`; ``cv``: :class:`CVResult` or ``None``.
        report: JSON-ready summary (timings, resolutions, errors; ``working_box`` and
            ``working_pixel_angstrom`` of the search/reconstruction grid, ``network_box`` and
            ``network_pixel_angstrom`` of the network's input, the same field of view;
            ``view_coverage`` and ``warnings`` of the final poses,
            :mod:`cryopose.metrics.diagnostics`).
    """

    metadata: ParticleMetadata
    pose_source: np.ndarray
    labeled_indices: np.ndarray
    reconstruction: object
    known_pose_reconstruction: object
    network_only_reconstruction: object
    model: OrientationRegressor
    train: TrainResult
    cv: CVResult | None
    report: dict


def _prepare_particles(wd: WorkingData, metadata: ParticleMetadata, config: "RefineConfig", say):
    """Settle contrast and origins for :func:`refine` (see :class:`RefineConfig`).

    Returns:
        ``(config, wd, centring_px, record)``: the config with ``invert_contrast``,
        ``estimate_shifts`` and the search's shift range settled, the working data (images
        inverted and centred as decided), the centring origins in working pixels (or ``None``),
        and a JSON-friendly record for the report.
    """
    from ..data.dataset import centre_images

    est = (not metadata.has_origins) if config.estimate_shifts is None else bool(config.estimate_shifts)
    invert = config.invert_contrast
    record: dict = {}
    centring = None
    if invert is None or est:
        say("centring the particles" if est else "detecting the contrast")
        res = centre_images(wd.images, wd.metadata, iterations=3 if est else 1)
        if invert is None:
            invert = bool(wd.images.invert_contrast) != (res.contrast_sign < 0)
            record["contrast_fraction_bright"] = res.contrast_fraction
        if est:
            centring = res.shifts_px
            record["centring_median_shift_px"] = float(centring.norm(dim=1).median())
    search = config.search
    if est and search.shift_range_angstrom == 0:
        search = dataclasses.replace(search, shift_range_angstrom=2.0 * wd.pixel_size_angstrom,
                                     shift_step_angstrom=wd.pixel_size_angstrom)
    images = ResampledImages(wd.images.source, wd.box_size, invert_contrast=bool(invert), centring_px=centring)
    wd = dataclasses.replace(wd, images=images)
    config = dataclasses.replace(config, invert_contrast=bool(invert), estimate_shifts=est, search=search)
    return config, wd, centring, record


def refine(stack, metadata: ParticleMetadata, reference: MapData, *, config: RefineConfig = RefineConfig(),
           progress=None) -> RefineResult:
    """Search a labelled subset, train, infer the rest, reconstruct (see the module docstring).

    Args:
        stack: Particle images (:class:`~cryopose.io.particles.ParticleStack` or tensor).
        metadata: Their metadata (pixel size, CTF; poses if known, used only for the report).
        reference: Reference map with its voxel size.
        config: :class:`RefineConfig`.
        progress: Called with one-line messages.

    Returns:
        :class:`RefineResult`.

    Raises:
        UserError: Too few particles to label, train and test (at least 10 labelled).
    """
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    wd = prepare_working_data(stack, metadata, reference, box_size=config.box_size,
                              invert_contrast=bool(config.invert_contrast))
    config, wd, centring, prep = _prepare_particles(wd, metadata, config, say)
    n = len(wd.metadata)
    labeled, unlabeled = _split_labelled(n, config)
    n_lab = labeled.size
    sym = config.search.symmetry
    ctf = wd.metadata.ctf
    seconds = {}
    # 1. search the labelled subset
    # the input's origins, unless cryopose estimates them (then the images are centred instead)
    start_sh = None if config.estimate_shifts or metadata.shifts_angstrom is None else \
        metadata.shifts_angstrom.float()
    say(f"searching {n_lab} of {n} particles on a {wd.box_size} px grid")
    t1 = time.perf_counter()
    sres = search_poses(wd.images.subset(labeled), wd.reference, wd.pixel_size_angstrom,
                        ctf=None if ctf is None else ctf[labeled], config=config.search,
                        shifts_angstrom=None if start_sh is None else start_sh[torch.as_tensor(labeled)])
    seconds["search"] = time.perf_counter() - t1
    # 2. train on the search labels
    t2 = time.perf_counter()
    train, cv, net_images, net_box, tcfg = _train_network(wd, centring, labeled, sres.rotmats, config, say)
    seconds["train"] = time.perf_counter() - t2
    # 3. infer the rest
    start_rest = torch.zeros(unlabeled.size, 2) if start_sh is None else start_sh[torch.as_tensor(unlabeled)]
    pred_raw, pred, pred_shifts, source = _infer_rest(wd, train, net_images, labeled, unlabeled, start_rest,
                                                      config, seconds)
    rot, sh = _combined(n, labeled, unlabeled, sres, pred, pred_shifts)
    centring_a = None if centring is None else shifts_pixels_to_angstrom(centring, wd.pixel_size_angstrom)
    total_sh = sh if centring_a is None else sh + centring_a  # origins of the images as given
    # 4. reconstruct on the working grid (same half-set split for every map)
    say("reconstructing")
    rec, net_only, known = reconstructions(wd, metadata, rot, sh, pred_raw, start_rest, unlabeled, config, seconds,
                                            known_pose_map=config.polish_rounds == 0)
    network_rot = rot
    polish = None
    if config.polish_rounds > 0:  # 5. every pose against the data's own map, up to the particles' box
        t6 = time.perf_counter()
        polish = polish_all(stack, metadata, wd, rot, total_sh, config, say)
        rot, total_sh, rec = polish.rotmats, polish.shifts_angstrom, polish.reconstruction
        seconds["polish"] = time.perf_counter() - t6
        known = known_pose_map(stack, metadata, rec, config)
    meta_out = metadata.replace(rotmats=rot, shifts_angstrom=total_sh)  # poses and Å shifts do not depend on the grid
    seconds["total"] = time.perf_counter() - t0
    report = {
        "n_particles": n, "n_labeled": int(n_lab), "n_unlabeled": int(unlabeled.size),
        **grid_report(wd, net_box, rec, polish, int(config.polish_rounds)),
        "symmetry": sym, "test_time_turns": config.test_time_turns, "int8_inference": config.int8_inference,
        "contrast_inverted": bool(config.invert_contrast), "shifts_estimated": bool(config.estimate_shifts),
        **prep,
        "search_grid": sres.info, "best_w": tcfg.w if cv is None else cv.best_w,
        "cv": None if cv is None else cv.as_dict(),
        "test_metrics_vs_search_labels": train.test_metrics,
        **timing_report(sres, unlabeled, seconds),
        **map_report(reference, rec, net_only, known, wd.reference), **coverage_report(rot, sym),
    }
    if known is not None:
        report["pose_errors_vs_input"] = pose_errors(metadata.rotmats, labeled, unlabeled, sres.rotmats, pred_raw, pred,
                                                     network_rot if polish is not None else None, rot, sym,
                                                     local=config.local_refine)
    return RefineResult(meta_out, source, labeled, rec, known, net_only, train.model, train, cv, report)


def _combined(n: int, labeled: np.ndarray, unlabeled: np.ndarray, sres, pred: torch.Tensor,
              pred_shifts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every particle's pose ``(N, 3, 3)`` and origin ``(N, 2)`` (Å, working grid's images): the
    search's for the labelled particles, the (locally refined) network's for the others."""
    rot = torch.empty(n, 3, 3)
    sh = torch.zeros(n, 2)
    rot[torch.as_tensor(labeled)] = sres.rotmats
    sh[torch.as_tensor(labeled)] = sres.shifts_angstrom
    if unlabeled.size:
        rot[torch.as_tensor(unlabeled)] = pred.float()
        sh[torch.as_tensor(unlabeled)] = pred_shifts.float()
    return rot, sh


def _split_labelled(n: int, config: RefineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices of the ``ceil(labeled_fraction · n)`` particles to search (seeded by
    ``config.seed``) and of the rest; ``UserError`` when fewer than 10 would be labelled."""
    n_lab = int(math.ceil(config.labeled_fraction * n))
    if n_lab < 10:
        raise UserError(f"{n} particles × labeled fraction {config.labeled_fraction} gives {n_lab} labelled "
                        "particles; at least 10 are needed to train and test")
    rng = np.random.default_rng(config.seed)
    labeled = np.sort(rng.choice(n, n_lab, replace=False))
    unlabeled = np.setdiff1d(np.arange(n), labeled)
    return labeled, unlabeled


def _train_network(wd: WorkingData, centring, labeled: np.ndarray, label_rotmats: torch.Tensor,
                   config: RefineConfig, say):
    """Train the orientation network on the labelled particles' search poses, at the network box.

    Returns:
        ``(TrainResult, CVResult or None, network-box images of all particles, network box
        in px, the training config used)``.

    Raises:
        UserError: A network box larger than the working box.
    """
    net_box = int(config.network_box_size or wd.box_size)
    if net_box > wd.box_size:
        raise UserError(f"network box {net_box} is larger than the working box {wd.box_size}")
    net_images = ResampledImages(wd.images.source, net_box, invert_contrast=config.invert_contrast,
                                 centring_px=None if centring is None else centring * net_box / wd.box_size)
    mcfg = config.model or SupervisedModelConfig(box_size=net_box)
    mcfg = dataclasses.replace(mcfg, box_size=net_box)
    tcfg = dataclasses.replace(config.train, symmetry=config.search.symmetry)
    train, cv = train_on_dataset(net_images.subset(labeled), label_rotmats, wd.reference, model_config=mcfg,
                                 train_config=tcfg, cv_w=config.cv_w, cv_iterations=config.cv_iterations,
                                 cv_max_particles=config.cv_max_particles, progress=say)
    return train, cv, net_images, net_box, tcfg


def _infer_rest(wd: WorkingData, train: TrainResult, net_images, labeled: np.ndarray, unlabeled: np.ndarray,
                start_shifts: torch.Tensor, config: RefineConfig, seconds: dict):
    """Predict the unlabelled particles' poses with the network, then (``config.local_refine``)
    refine them by local search from their ``(U, 2)`` starting origins ``start_shifts`` (Å, the
    input's, or zero for centred images); the times go into ``seconds`` (``inference``,
    ``local_refine``).

    Returns:
        ``(network poses (U, 3, 3), final poses (U, 3, 3), shifts (U, 2) in Å, (N,) source
        label of every particle's pose: "search", "network" or "network+local")``.
    """
    t3 = time.perf_counter()
    sym = config.search.symmetry
    net = train.model
    if config.int8_inference:
        net = net.quantized_for_inference(net_images[labeled[:INT8_CALIBRATION_PARTICLES]])
    pred = (predict_rotmats(net, net_images.subset(unlabeled), test_time_turns=config.test_time_turns,
                            symmetry=sym) if unlabeled.size else torch.zeros(0, 3, 3))
    seconds["inference"] = time.perf_counter() - t3
    pred_raw = pred
    pred_shifts = start_shifts.float()
    n = labeled.size + unlabeled.size
    source = np.array(["search"] * n, dtype=object)
    source[unlabeled] = "network"
    seconds["local_refine"] = 0.0
    if config.local_refine and unlabeled.size:
        t4 = time.perf_counter()
        ctf = wd.metadata.ctf
        lres = local_search(wd.images.subset(unlabeled), wd.reference, wd.pixel_size_angstrom, pred, pred_shifts,
                            ctf=None if ctf is None else ctf[unlabeled], config=config.search,
                            start_step_deg=config.local_refine_step_deg)
        pred, pred_shifts = lres.rotmats, lres.shifts_angstrom
        source[unlabeled] = "network+local"
        seconds["local_refine"] = time.perf_counter() - t4
    return pred_raw, pred, pred_shifts, source


