"""The tail of :func:`cryopose.pipelines.abinitio.run_abinitio`, after the encoder has inferred
the poses: writing the poses, reconstruction at the original box, local polishing rounds
(:func:`cryopose.pipelines.polish.polish_rounds`), ``summary.json`` with the run's warnings, and
the HTML report. :class:`AbinitioResult` and :func:`write_poses` are re-exported by
:mod:`cryopose.pipelines.abinitio`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ..conventions import shifts_angstrom_to_pixels, shifts_pixels_to_angstrom
from ..training.trainer import PoseInference

__all__ = ["AbinitioResult", "write_poses", "finish_abinitio"]

@dataclasses.dataclass(frozen=True)
class AbinitioResult:
    """What :func:`run_abinitio` produced.

    Attributes:
        outdir: The output folder.
        poses_star, map_path, encoder_path, report_path: Files written (``map_path`` and
            ``report_path`` are ``None`` when skipped).
        rotmats: ``(N, 3, 3)`` final poses (polished when ``config.polish_rounds > 0``).
        encoder_rotmats: ``(N, 3, 3)`` the encoder's poses (amortized inference, before polishing;
            turned into the point group's frame when ``config.symmetry`` was imposed after training).
        shifts_angstrom: ``(N, 2)`` origins in Å (RELION sign), or ``None``.
        confidence: ``(N,)`` per-particle confidence in [0, 1].
        resolution_fsc0p143_angstrom: Half-map FSC = 0.143 resolution of ``map.mrc``, or ``None``.
        seconds: Wall time by stage (``train``, ``infer``, ``reconstruct``, ``report``).
        warnings: What looks wrong in the run and what to change
            (:func:`cryopose.metrics.diagnostics.run_warnings`; also in ``summary.json``).
    """

    outdir: Path
    poses_star: Path
    map_path: Path | None
    encoder_path: Path
    report_path: Path | None
    rotmats: torch.Tensor
    shifts_angstrom: torch.Tensor | None
    confidence: torch.Tensor
    resolution_fsc0p143_angstrom: float | None
    seconds: dict
    encoder_rotmats: torch.Tensor | None = None
    warnings: tuple[str, ...] = ()


def write_poses(path: Path, metadata, inference: PoseInference, working_pixel_size_angstrom: float) -> Path:
    """Write inferred poses as RELION 3.1 STAR (same order and pixel size as ``metadata``).

    Shifts go from working pixels to Å; the confidence is written as ``rlnCryoposeConfidence``
    and the mean squared Fourier residual of the chosen pose (working box, normalised images) as
    ``rlnCryoposeResidual``. Both rank outliers (junk has low confidence and high residual);
    both describe the encoder's pose (amortized inference), also in the polished ``poses.star``.
    """
    from ..io.star import write_star

    shifts = None
    if inference.shifts_px is not None:
        shifts = inference.shifts_px.double() * working_pixel_size_angstrom
    elif metadata.shifts_angstrom is not None:
        shifts = metadata.shifts_angstrom
    meta = metadata.replace(rotmats=inference.rotmats.double().float(), shifts_angstrom=shifts)
    write_star(path, meta, extra_columns={"rlnCryoposeConfidence": inference.confidence.double().numpy(),
                                          "rlnCryoposeResidual": inference.residual.double().numpy()})
    return path


def finish_abinitio(*, outdir: Path, source, meta, dataset, model, trainer, inference: PoseInference, config,
                    prep: dict, encoder_path: Path, seconds: dict, t_infer: float, progress: bool,
                    report: bool, reconstruct_threads: int, device=None) -> AbinitioResult:
    """Everything :func:`~cryopose.pipelines.abinitio.run_abinitio` does after inference (rank 0).

    Writes ``poses.star``, then (``config.reconstruct``) the maps, FSC and polished poses,
    then the report (``report``) and ``summary.json``; fills ``seconds`` (``infer`` counted
    from ``t_infer``, a :func:`time.perf_counter` value).

    Args:
        outdir: The run's folder.
        source: Images at the original box (contrast already handled) for reconstruction and polishing.
        meta: The particles' metadata (original pixel size).
        dataset: The working-box :class:`~cryopose.data.dataset.ParticleDataset`.
        model: The trained CryoPoseNet (on the CPU).
        trainer: The finished :class:`~cryopose.training.trainer.Trainer`.
        inference: The encoder's poses.
        config: The run's :class:`~cryopose.training.config.AbinitioConfig`.
        prep: What :func:`~cryopose.pipelines.abinitio.prepare_particles` recorded.
        encoder_path: The written ``encoder.pt``.
        seconds: Wall time by stage, filled in place.
        t_infer: When inference began.
        progress: Progress bars.
        report: Write ``report.html``.
        reconstruct_threads: Threads of the reconstruction.
        device: Device of the reconstruction grids (default the CPU).

    Returns:
        :class:`AbinitioResult`.
    """
    poses_star = write_poses(outdir / "poses.star", meta, inference, dataset.pixel_size_angstrom)
    seconds["infer"] = time.perf_counter() - t_infer
    shifts_a = None if inference.shifts_px is None else shifts_pixels_to_angstrom(inference.shifts_px,
                                                                                 dataset.pixel_size_angstrom)
    shift_corrections = None
    if model.shift_head is not None and inference.shifts_px is not None:
        base = torch.zeros_like(inference.shifts_px) if dataset.shifts_angstrom is None else \
            shifts_angstrom_to_pixels(dataset.shifts_angstrom.float(), dataset.pixel_size_angstrom)
        shift_corrections = inference.shifts_px - base
    rec = map_path = polish_change = None
    encoder_rotmats = inference.rotmats
    if config.reconstruct:
        t2 = time.perf_counter()
        rec, inference, shifts_a, prep = _encoder_map(source, meta, dataset, inference, shifts_a, config, prep,
                                                      outdir, progress, reconstruct_threads, device, encoder_path)
        if config.symmetry != config.model.symmetry:  # the poses were turned into the group's frame
            encoder_rotmats = inference.rotmats
            poses_star = write_poses(outdir / "poses.star", meta, inference, dataset.pixel_size_angstrom)
        seconds["reconstruct"] = time.perf_counter() - t2
        if config.polish_rounds > 0:
            t3 = time.perf_counter()
            rec, inference, shifts_a, polish_change, outcome = _polish(
                source, meta, dataset, inference, rec, shifts_a, config, outdir, progress, reconstruct_threads, device)
            before = prep.get("map_centring_angstrom") or [0.0, 0.0, 0.0]
            prep = {**prep, "polish_rescued": [list(c) for c in outcome.rescued],
                    "polish_subset_moved": [round(v, 4) for v in outcome.subset_moved],
                    "polish_subset_start": outcome.subset_start,
                    "polish_stage_seconds": outcome.seconds, "map_centring_angstrom": [
                float(a) + float(v) for a, v in zip(before, outcome.centring_angstrom)]}
            poses_star = write_poses(outdir / "poses.star", meta, inference, dataset.pixel_size_angstrom)
            seconds["polish"] = time.perf_counter() - t3
        map_path = outdir / "map.mrc"
    summary = _summary(meta, dataset, model, trainer, inference, config, prep, rec, polish_change, seconds,
                       shift_corrections)
    report_path = _report_and_summary(outdir, report, trainer, dataset, inference, rec, config, summary, seconds)
    return AbinitioResult(outdir=outdir, poses_star=poses_star, map_path=map_path, encoder_path=encoder_path,
                          report_path=report_path, rotmats=inference.rotmats, shifts_angstrom=shifts_a,
                          confidence=inference.confidence,
                          resolution_fsc0p143_angstrom=None if rec is None else rec.resolution_fsc0p143_angstrom,
                          seconds=seconds, encoder_rotmats=encoder_rotmats,
                          warnings=tuple(summary["warnings"]))


def _encoder_map(source, meta, dataset, inference: PoseInference, shifts_a, config, prep: dict, outdir: Path,
                 progress: bool, threads: int, device, encoder_path: Path):
    """The map of the encoder's poses: at the particles' box, or (polishing) at a box for twice
    the working pixel; with ``config.symmetry`` beyond the training's, the C1 map's symmetry axes
    are found and the poses turned into the group's frame first
    (:func:`~cryopose.pipelines.abinitio_symmetry.align_to_symmetry`), then the map is made in
    the group. Returns ``(reconstruction, inference, origins in Å or None, prep)``."""
    src, m_meta = source, meta
    if config.polish_rounds > 0:
        from .polish import cropped, polishing_box

        src, m_meta = cropped(source, meta, polishing_box(source.box_size, meta.pixel_size_angstrom,
                                                          2.0 * dataset.pixel_size_angstrom))
    full = src.box_size >= source.box_size
    aligning = config.symmetry != config.model.symmetry
    rec = _reconstruct(src, m_meta, inference.rotmats, shifts_a, config, outdir, progress, threads, device,
                       write=full and not aligning, symmetry=config.model.symmetry)
    if aligning:
        from .abinitio_symmetry import align_to_symmetry

        inference, shifts_a, prep = align_to_symmetry(inference, shifts_a, rec, m_meta, dataset, config, prep,
                                                      encoder_path=encoder_path)
        rec = _reconstruct(src, m_meta, inference.rotmats, shifts_a, config, outdir, progress, threads, device,
                           write=full)
    return rec, inference, shifts_a, prep


def _polish(source, meta, dataset, inference: PoseInference, rec, shifts_a, config, outdir: Path,
            progress: bool, threads: int, device=None):
    """``config.polish_rounds`` rounds of :func:`~cryopose.pipelines.polish.polish_rounds` (the
    first ``config.polish_global_rounds`` global) from the encoder's poses; the last round's map
    is written as ``map.mrc``; writes ``poses_encoder.star`` (the encoder's poses).

    Returns:
        ``(reconstruction, inference with the polished poses and shifts, shifts in Å or None,
        (N,) angle in degrees between each polished pose and the nearest symmetry mate of the
        encoder's, the :class:`~cryopose.pipelines.polish.PolishOutcome` (centring, rescues))``.
    """
    from ..rotations import geodesic_distance_deg
    from ..symmetry import expand_by_symmetry
    from .polish import PolishSchedule
    from .polish_subset import polish_from_subset

    schedule = PolishSchedule(rounds=config.polish_rounds, global_rounds=config.polish_global_rounds,
                              start_step_deg=config.polish_start_step_deg,
                              final_step_deg=config.polish_final_step_deg,
                              estimate_shifts=bool(config.estimate_shifts),
                              working_pixel_angstrom=float(dataset.pixel_size_angstrom),
                              symmetry=config.symmetry, rescue=bool(config.polish_rescue))
    out = polish_from_subset(source, meta, inference.rotmats, shifts_a, rec, schedule=schedule, progress=progress,
                             max_iterations=int(config.polish_subset_iterations),
                             marginal_start=bool(config.polish_marginal_start), threads=threads,
                             reconstruct=lambda src, m_meta, rot, sh, last: _reconstruct(
                                 src, m_meta, rot, sh, config, outdir, progress, threads, device, write=last))
    rot, shifts_a = out.rotmats, out.shifts_angstrom
    write_poses(outdir / "poses_encoder.star", meta, inference, dataset.pixel_size_angstrom)
    mates = expand_by_symmetry(inference.rotmats.double(), config.symmetry)
    polish_change = geodesic_distance_deg(rot.double()[:, None], mates).min(dim=1).values
    inference = dataclasses.replace(
        inference, rotmats=rot.float(),
        shifts_px=None if shifts_a is None else shifts_angstrom_to_pixels(shifts_a.float(),
                                                                          dataset.pixel_size_angstrom))
    return out.reconstruction, inference, shifts_a, polish_change, out


def _summary(meta, dataset, model, trainer, inference: PoseInference, config, prep: dict, rec, polish_change,
             seconds: dict, shift_corrections) -> dict:
    """The run's ``summary.json`` record: sizes, training, preprocessing, resolution, view
    coverage and warnings (:func:`cryopose.metrics.diagnostics.run_warnings`)."""
    summary = {
        "n_particles": len(meta), "working_box_size": dataset.box_size,
        "working_pixel_size_angstrom": dataset.pixel_size_angstrom,
        "pixel_size_angstrom": float(meta.pixel_size_angstrom), "epochs": trainer.epoch,
        "steps": trainer.step, "final_loss": trainer.epoch_losses[-1] if trainer.epoch_losses else None,
        "median_confidence": float(inference.confidence.median()),
        "polish_rounds": config.polish_rounds if config.reconstruct else 0,
        "polish_median_change_deg": None if polish_change is None else float(polish_change.median()),
        "contrast_inverted": bool(config.invert_contrast),
        "contrast_detected": "fraction_bright" in prep.get("contrast", {}),
        "contrast_fraction_bright": prep.get("contrast", {}).get("fraction_bright"),
        "shifts_estimated": bool(config.estimate_shifts),
        "centring": prep.get("centring"),
        "map_centring_angstrom": prep.get("map_centring_angstrom"),
        "polish_rescued": prep.get("polish_rescued"),
        "polish_subset_moved": prep.get("polish_subset_moved"),
        "polish_subset_start": prep.get("polish_subset_start"),
        "polish_stage_seconds": prep.get("polish_stage_seconds"),
        "symmetry": config.symmetry,
        "symmetry_axes": prep.get("symmetry_axes"),
        "noise_spectrum": None if dataset.noise_spectrum is None else {
            "frequency_per_angstrom": [float(v) for v in dataset.noise_spectrum.frequencies_per_angstrom()],
            "power": list(dataset.noise_spectrum.power),
            "low_to_high_ratio": dataset.noise_spectrum.colour_ratio(),
            "by_optics_group": {str(g): {"power": list(sp.power), "low_to_high_ratio": sp.colour_ratio()}
                                for g, sp in dataset.noise_spectra_by_group.items()}},
        "resolution_fsc0p5_angstrom": None if rec is None else rec.resolution_fsc0p5_angstrom,
        "resolution_fsc0p143_angstrom": None if rec is None else rec.resolution_fsc0p143_angstrom,
        "seconds": seconds,
    }
    from ..metrics.diagnostics import run_warnings, view_coverage

    coverage = view_coverage(inference.rotmats, config.symmetry)
    summary["view_coverage"] = dataclasses.asdict(coverage)
    summary["warnings"] = run_warnings(
        coverage=coverage, resolution_angstrom=summary["resolution_fsc0p143_angstrom"],
        pixel_size_angstrom=float(meta.pixel_size_angstrom), shift_corrections_px=shift_corrections,
        max_shift_px=None if model.shift_head is None else model.shift_head.max_shift,
        contrast_fraction_bright=summary["contrast_fraction_bright"])
    from .polish_subset import start_note, subset_warning

    for note in (start_note(summary["polish_subset_start"]),
                 subset_warning(summary["polish_subset_moved"], config.symmetry)):
        if note is not None:
            summary["warnings"].append(note)
    axes = summary["symmetry_axes"]
    if axes is not None:
        from .abinitio_symmetry import SYMMETRY_SCORE_WARNING

        if axes["score"] < SYMMETRY_SCORE_WARNING:
            summary["warnings"].append(
                f"the C1 map scored {axes['score']:.2f} for {axes['symmetry']} symmetry (1 = symmetric): it does not "
                f"look {axes['symmetry']}-symmetric; check --symmetry, or run again in C1 and inspect the map")
    return summary


def _report_and_summary(outdir: Path, report: bool, trainer, dataset, inference: PoseInference, rec, config,
                        summary: dict, seconds: dict) -> Path | None:
    """Write ``report.html`` (when ``report``; its time goes into ``seconds``) and then
    ``summary.json``; return the report's path or ``None``."""
    report_path = None
    if report:
        t3 = time.perf_counter()
        from ..report.html import write_abinitio_report

        report_path = write_abinitio_report(outdir, trainer=trainer, dataset=dataset, inference=inference,
                                            reconstruction=rec, config=config, summary=summary)
        seconds["report"] = time.perf_counter() - t3
    from ..io.atomic import atomic_write_json

    atomic_write_json(outdir / "summary.json", summary)
    return report_path


def _reconstruct(stack, meta, rotmats, shifts_a, config, outdir: Path, progress: bool, threads: int,
                 device=None, write: bool = True, symmetry: str | None = None):
    """Known-pose reconstruction at ``stack``'s box from ``rotmats`` (grids on ``device``,
    default the CPU) in ``symmetry`` (default ``config.symmetry``); writes the maps (``map.mrc``,
    half maps, ``fsc.json``) when ``write``."""
    from ..io.atomic import atomic_write_json
    from ..io.mrc import write_map
    from ..metrics.fsc import report_from_curve
    from ..reconstruction import reconstruct

    posed = meta.replace(rotmats=rotmats.float(),
                         shifts_angstrom=shifts_a if shifts_a is not None else meta.shifts_angstrom)
    g = torch.Generator().manual_seed(config.training.seed)
    rec = reconstruct(stack, posed, symmetry=symmetry or config.symmetry, generator=g, progress=progress,
                      threads=threads, device=device)
    if not write:
        return rec
    apix = float(meta.pixel_size_angstrom)
    write_map(outdir / "map.mrc", rec.volume, apix)
    if rec.half_maps is not None:
        write_map(outdir / "map_half1.mrc", rec.half_maps[0], apix)
        write_map(outdir / "map_half2.mrc", rec.half_maps[1], apix)
        fsc = report_from_curve(rec.fsc_frequency_per_angstrom.numpy(), rec.fsc.numpy(), apix,
                                box_size=int(rec.volume.shape[-1]))
        atomic_write_json(outdir / "fsc.json", fsc)
    return rec
