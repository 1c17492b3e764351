"""The maps and the report of :func:`cryopose.pipelines.refine.refine`: the reconstructions on
the working grid, the polishing rounds up to the particles' box
(:func:`cryopose.pipelines.polish.polish_rounds`), the known-pose map, the resolutions
against the reference, the pose errors against the input's poses, and the timings.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from ..io.mrc import MapData
from ..io.particles import ParticleMetadata
from ..metrics.diagnostics import run_warnings, view_coverage
from ..metrics.pose_error import symmetry_aware_errors
from ..search.run import ResampledImages
from ..simulate.volumes import resample_volume

__all__ = ["reconstructions", "polish_all", "known_pose_map", "timing_report", "map_report", "pose_errors",
           "grid_report", "reference_on_grid"]


def _errors(est: torch.Tensor, ref: torch.Tensor | None, symmetry: str) -> dict | None:
    if ref is None or est.shape[0] == 0:
        return None
    e = symmetry_aware_errors(est.double(), ref.double(), symmetry=symmetry)
    return {"n": int(e.shape[0]), "median_error_deg": float(e.median()), "mean_error_deg": float(e.mean()),
            "fraction_below_5deg": float((e < 5).double().mean())}


def _vs_reference(rec, reference: torch.Tensor) -> float:
    """FSC = 0.5 resolution (Å) of a reconstruction against the reference map (a benchmark aid:
    unlike the half-map FSC it sees poses that are consistently wrong)."""
    from ..metrics.fsc import fsc_report

    return float(fsc_report(rec.volume, reference, rec.pixel_size_angstrom)["resolution_fsc0p5_angstrom"])


def reconstructions(wd, metadata: ParticleMetadata, rot: torch.Tensor, sh: torch.Tensor,
                     pred_raw: torch.Tensor, start_rest: torch.Tensor, unlabeled: np.ndarray, config,
                     seconds: dict, *, known_pose_map: bool = True):
    """Maps on the working grid, all with the same half-set split: from the poses so far (its
    time into ``seconds["reconstruct"]``), from the network's unrefined poses (with local
    refinement only; the unlabelled particles at their starting origins ``start_rest``) and,
    when ``known_pose_map``, from the input's poses (``config.reconstruct_known_poses``).

    Returns:
        ``(final map, network-only map or None, known-pose map or None)``.
    """
    from ..reconstruction.backprojection import reconstruct

    sym = config.search.symmetry
    meta_w = wd.metadata

    def rec_with(r, t):
        return reconstruct(wd.images, meta_w.replace(rotmats=r, shifts_angstrom=t), symmetry=sym,
                           generator=torch.Generator().manual_seed(config.seed), progress=False)

    t5 = time.perf_counter()
    rec = rec_with(rot, sh)
    seconds["reconstruct"] = time.perf_counter() - t5
    net_only = None
    if config.local_refine and unlabeled.size:
        rot_n, sh_n = rot.clone(), sh.clone()
        rot_n[torch.as_tensor(unlabeled)] = pred_raw.float()
        sh_n[torch.as_tensor(unlabeled)] = start_rest.float()
        net_only = rec_with(rot_n, sh_n)
    known = None
    truth = metadata.rotmats
    if known_pose_map and config.reconstruct_known_poses and truth is not None:
        # the input's origins refer to the images as given, not as centred here
        uncentred = ResampledImages(wd.images.source, wd.box_size, invert_contrast=config.invert_contrast)
        known = reconstruct(uncentred, meta_w.replace(rotmats=truth, shifts_angstrom=metadata.shifts_angstrom),
                            symmetry=sym, generator=torch.Generator().manual_seed(config.seed), progress=False)
    return rec, net_only, known


def timing_report(sres, unlabeled: np.ndarray, seconds: dict) -> dict:
    """The report's ``seconds`` by stage and per-particle times (search vs network inference)."""
    per_search = sres.seconds["per_particle"]
    per_infer = seconds["inference"] / max(unlabeled.size, 1)
    return {
        "seconds": {k: seconds[k] for k in ("search", "train", "inference", "local_refine", "reconstruct", "polish",
                                            "total") if k in seconds},
        "per_particle_seconds": {"search": per_search, "inference": per_infer,
                                 "speedup_inference_vs_search": per_search / per_infer if per_infer > 0 else None},
    }


def reference_on_grid(reference: MapData, pixel_size_angstrom: float, box_size: int) -> torch.Tensor:
    """The reference resampled onto a grid of ``box_size`` voxels of ``pixel_size_angstrom``
    (:func:`cryopose.simulate.volumes.resample_volume`): ``(m, m, m)`` float32."""
    vol = np.asarray(reference.volume, dtype=np.float32)
    return torch.from_numpy(np.array(resample_volume(vol, float(reference.pixel_size_angstrom),
                                                     float(pixel_size_angstrom), int(box_size)), dtype=np.float32))


def map_report(reference: MapData, rec, net_only, known, working_reference: torch.Tensor) -> dict:
    """The report's resolutions: half-map FSC of the final map, its FSC against the reference
    (on the final map's grid), and the same for the network-only map (working grid,
    ``working_reference``) and the known-pose map (the final map's grid) when made."""
    on_final = working_reference if int(rec.volume.shape[-1]) == int(working_reference.shape[-1]) else \
        reference_on_grid(reference, rec.pixel_size_angstrom, rec.volume.shape[-1])
    report = {
        "resolution_fsc0p143_angstrom": rec.resolution_fsc0p143_angstrom,
        "resolution_fsc0p5_angstrom": rec.resolution_fsc0p5_angstrom,
        "vs_reference_fsc0p5_angstrom": _vs_reference(rec, on_final),
    }
    if net_only is not None:
        report["network_only_resolution_fsc0p143_angstrom"] = net_only.resolution_fsc0p143_angstrom
        report["network_only_vs_reference_fsc0p5_angstrom"] = _vs_reference(net_only, working_reference)
    if known is not None:
        report["known_pose_resolution_fsc0p143_angstrom"] = known.resolution_fsc0p143_angstrom
        report["known_pose_resolution_fsc0p5_angstrom"] = known.resolution_fsc0p5_angstrom
        report["resolution_ratio_fsc0p143"] = rec.resolution_fsc0p143_angstrom / known.resolution_fsc0p143_angstrom
        report["known_pose_vs_reference_fsc0p5_angstrom"] = _vs_reference(known, on_final)
    return report


def _full_box_images(stack, metadata: ParticleMetadata, config) -> ResampledImages:
    """The particles at their own box, with the contrast the run settled on (not centred)."""
    return ResampledImages(stack, int(metadata.box_size or stack.box_size), invert_contrast=bool(config.invert_contrast))


def polish_all(stack, metadata: ParticleMetadata, wd, rot: torch.Tensor, shifts_a: torch.Tensor,
            config, say):
    """Polishing rounds from the poses and origins (Å, of the images as given) found so far:
    the first map at the box for twice the working pixel, then ``config.polish_rounds`` local
    rounds of :func:`cryopose.pipelines.polish.polish_rounds`, the last map at the particles' box.

    Returns:
        :class:`cryopose.pipelines.polish.PolishOutcome`.
    """
    from ..reconstruction.backprojection import reconstruct
    from .polish import PolishSchedule, cropped, polish_rounds, polishing_box

    full = _full_box_images(stack, metadata, config)

    def rec_with(images, meta, r, t, last=False):
        return reconstruct(images, meta.replace(rotmats=r.float(), shifts_angstrom=t), symmetry=config.search.symmetry,
                           generator=torch.Generator().manual_seed(config.seed), progress=False)

    box = polishing_box(full.box_size, float(metadata.pixel_size_angstrom), 2.0 * wd.pixel_size_angstrom)
    src, m_meta = cropped(full, metadata, box)
    say(f"polishing every pose: {config.polish_rounds} local rounds from a {box} px map up to {full.box_size} px")
    rec = rec_with(src, m_meta, rot, shifts_a)
    schedule = PolishSchedule(rounds=int(config.polish_rounds), global_rounds=0,
                              start_step_deg=config.polish_start_step_deg, final_step_deg=config.polish_final_step_deg,
                              estimate_shifts=bool(config.estimate_shifts), working_pixel_angstrom=wd.pixel_size_angstrom,
                              symmetry=config.search.symmetry, rescue=bool(config.polish_rescue))
    return polish_rounds(full, metadata, rot, shifts_a, rec, schedule=schedule, reconstruct=rec_with)


def known_pose_map(stack, metadata: ParticleMetadata, rec, config):
    """The input poses' map on the final map's grid (same half-set split), or ``None`` when the
    input has no poses or ``config.reconstruct_known_poses`` is off."""
    from ..reconstruction.backprojection import reconstruct

    if not config.reconstruct_known_poses or metadata.rotmats is None:
        return None
    return reconstruct(_full_box_images(stack, metadata, config), metadata, symmetry=config.search.symmetry,
                       generator=torch.Generator().manual_seed(config.seed), progress=False)


def coverage_report(rotmats: torch.Tensor, symmetry: str) -> dict:
    """``view_coverage`` (:func:`cryopose.metrics.diagnostics.view_coverage` as a dict) and the
    ``warnings`` it raises (:func:`cryopose.metrics.diagnostics.run_warnings`) of the final
    ``(N, 3, 3)`` poses in the point group ``symmetry``."""
    coverage = view_coverage(rotmats, symmetry)
    return {"view_coverage": dataclasses.asdict(coverage), "warnings": run_warnings(coverage=coverage)}


def grid_report(wd, net_box: int, rec, polish, polish_rounds: int) -> dict:
    """The report's grids: the working grid (search, local refinement), the network's input
    (the working grid Fourier-cropped to ``net_box`` px, same field of view), the final map's,
    and what the polishing rounds did (map centring; per round, the particles searched
    globally for their low score and the poses that search replaced; seconds by stage)."""
    return {
        "working_box": wd.box_size, "working_pixel_angstrom": wd.pixel_size_angstrom,
        "network_box": net_box, "network_pixel_angstrom": wd.pixel_size_angstrom * wd.box_size / net_box,
        "map_box": int(rec.volume.shape[-1]), "map_pixel_angstrom": float(rec.pixel_size_angstrom),
        "polish_rounds": polish_rounds,
        "map_centring_angstrom": None if polish is None else [float(v) for v in polish.centring_angstrom],
        "polish_rescued": None if polish is None else [list(c) for c in polish.rescued],
        "polish_stage_seconds": None if polish is None else polish.seconds,
    }


def pose_errors(truth: torch.Tensor, labeled: np.ndarray, unlabeled: np.ndarray, searched: torch.Tensor,
                network: torch.Tensor, network_local: torch.Tensor, before_polishing: torch.Tensor | None,
                final: torch.Tensor, symmetry: str, *, local: bool) -> dict:
    """Pose errors against the input's poses ``truth`` (``(N, 3, 3)``), modulo ``symmetry``: of
    the searched (labelled) particles, of the network's and the locally refined predictions for
    the others (``local``), of all poses before polishing (when polished) and of the final poses."""
    tl = truth[torch.as_tensor(labeled)]
    truth_rest = truth[torch.as_tensor(unlabeled)] if unlabeled.size else None
    return {
        "search": _errors(searched, tl, symmetry),
        "network": _errors(network, truth_rest, symmetry),
        "network+local": _errors(network_local, truth_rest, symmetry) if local and unlabeled.size else None,
        "before_polishing": _errors(before_polishing, truth, symmetry) if before_polishing is not None else None,
        "all": _errors(final, truth, symmetry),
    }
