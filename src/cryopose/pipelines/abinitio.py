"""CryoPoseNet ab initio reconstruction and amortized pose prediction (library side of
``cryopose abinitio`` and ``cryopose predict``).

:func:`run_abinitio` loads particles (STAR, cryoSPARC ``.cs``, or a bare ``.mrcs`` with a CTF
STAR), Fourier-crops them to the working box, trains CryoPoseNet from a random start
(:mod:`cryopose.training.trainer`), infers every particle's pose with the trained encoder,
writes the poses (RELION 3.1 STAR, original pixel size, Å origins, a
``rlnCryoposeConfidence`` column), reconstructs the map at the original box from those poses
(:func:`cryopose.reconstruction.reconstruct`, half maps and their FSC) and writes an HTML
report. :func:`predict_poses` applies a saved encoder to other particles;
:func:`predict_poses_supervised` does the same with a checkpoint of the supervised orientation
regressor (Lian et al. 2022, ``model_kind: "supervised"``), and :func:`read_model_file` tells
the two kinds apart for ``cryopose predict``.

Files in ``OUTDIR``: ``checkpoint.pt`` (every epoch, and on Ctrl-C), ``encoder.pt`` (model +
preprocessing, for ``predict``), ``poses.star``, ``map.mrc``, ``map_half1.mrc``,
``map_half2.mrc``, ``fsc.json``, ``summary.json``, ``report.html`` and its PNGs
(``config.yaml`` is written by the command).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..data.dataset import ParticleDataset
from ..data.transforms import Normalization
from ..errors import UserError
from ..models.cryoposenet import CryoPoseNet
from ..training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from ..training.config import AbinitioConfig, config_from_dict
from ..training.trainer import PoseInference, Trainer, estimate_volume_scale, infer_poses

__all__ = ["AbinitioResult", "build_model", "run_abinitio", "predict_poses", "load_encoder", "write_poses",
           "PREDICT_MODEL_KINDS", "read_model_file", "predict_poses_supervised"]

ENCODER_FORMAT_KEYS = ("config", "model", "working_box_size", "working_pixel_size_angstrom", "normalization")
#: Model files ``cryopose predict`` accepts: a CryoPoseNet ``encoder.pt`` (no ``model_kind`` key)
#: and a supervised regressor checkpoint (``model_kind: "supervised"``).
PREDICT_MODEL_KINDS = ("cryoposenet", "supervised")


@dataclasses.dataclass(frozen=True)
class AbinitioResult:
    """What :func:`run_abinitio` produced.

    Attributes:
        outdir: The output folder.
        poses_star, map_path, encoder_path, report_path: Files written (``map_path`` and
            ``report_path`` are ``None`` when skipped).
        rotmats: ``(N, 3, 3)`` final poses (polished when ``config.polish_rounds > 0``).
        encoder_rotmats: ``(N, 3, 3)`` the encoder's poses (amortized inference, before polishing).
        shifts_angstrom: ``(N, 2)`` origins in Å (RELION sign), or ``None``.
        confidence: ``(N,)`` per-particle confidence in [0, 1].
        resolution_fsc0p143_angstrom: Half-map FSC = 0.143 resolution of ``map.mrc``, or ``None``.
        seconds: Wall time by stage (``train``, ``infer``, ``reconstruct``, ``report``).
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


def build_model(config: AbinitioConfig, *, box_size: int, pixel_size_angstrom: float) -> CryoPoseNet:
    """A freshly initialised :class:`CryoPoseNet` for a working box (seeded by ``config``).

    The volume's ``scale`` is left at 1; :func:`run_abinitio` sets it from the data
    (:func:`cryopose.training.trainer.estimate_volume_scale`) before training.

    Args:
        config: The run configuration.
        box_size: Working box ``m`` in pixels.
        pixel_size_angstrom: Working pixel size in Å (converts the shift bound to pixels).
    """
    from ..symmetry import symmetry_operators

    mc = config.model
    g = torch.Generator().manual_seed(config.training.seed)
    torch.manual_seed(config.training.seed)  # network weight initialisation
    ops = symmetry_operators(mc.symmetry, dtype=torch.float32) if mc.symmetry != "C1" else None
    model = CryoPoseNet(
        box_size=box_size, pose_param=mc.pose_param, n_hypotheses=mc.n_hypotheses, shift_head=mc.shift_head,
        max_shift_px=mc.max_shift_angstrom / pixel_size_angstrom, channels=mc.channels, hidden=mc.hidden,
        batch_norm=mc.batch_norm, volume_init=mc.volume_init, volume_init_std=mc.volume_init_std,
        mask_radius=None if mc.mask_radius is None else mc.mask_radius * box_size / 2.0,
        symmetry_operators=ops, generator=g)
    return model


def _encoder_payload(config: AbinitioConfig, model: CryoPoseNet, dataset: ParticleDataset) -> dict:
    return {
        "config": dataclasses.asdict(config),
        "model": model.state_dict(),
        "working_box_size": dataset.box_size,
        "working_pixel_size_angstrom": dataset.pixel_size_angstrom,
        "normalization": dataclasses.asdict(dataset.normalization),
    }


def load_encoder(path: str | Path, *, state: dict | None = None) -> tuple[AbinitioConfig, CryoPoseNet, dict]:
    """Read ``encoder.pt``: the run config, the trained model, and its preprocessing.

    Args:
        path: The encoder file (named in errors).
        state: Its contents when already loaded (:func:`read_model_file`), else it is read.

    Returns:
        ``(config, model, info)`` with ``info`` holding ``working_box_size``,
        ``working_pixel_size_angstrom`` and ``normalization`` (a :class:`Normalization`).

    Raises:
        InputFileError: If the file is not a cryopose encoder.
    """
    from ..errors import InputFileError

    state = load_checkpoint(path) if state is None else state
    if not all(k in state for k in ENCODER_FORMAT_KEYS):
        raise InputFileError(path, "not a cryopose encoder file (write one with `cryopose abinitio`)")
    config = config_from_dict(state["config"])
    model = build_model(config, box_size=int(state["working_box_size"]),
                        pixel_size_angstrom=float(state["working_pixel_size_angstrom"]))
    model.load_state_dict(state["model"])
    model.eval()
    info = {"working_box_size": int(state["working_box_size"]),
            "working_pixel_size_angstrom": float(state["working_pixel_size_angstrom"]),
            "normalization": Normalization(**state["normalization"])}
    return config, model, info


def write_poses(path: Path, metadata, inference: PoseInference, working_pixel_size_angstrom: float) -> Path:
    """Write inferred poses as RELION 3.1 STAR (same order and pixel size as ``metadata``).

    Shifts go from working pixels to Å; the confidence is written as ``rlnCryoposeConfidence``
    and the mean squared Fourier residual of the chosen pose (working box, normalised images) as
    ``rlnCryoposeResidual``. Both rank outliers (junk has low confidence and high residual).
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


def _check_resume(saved: dict, config: AbinitioConfig) -> AbinitioConfig:
    saved_cfg = config_from_dict(saved["config"])
    if dataclasses.replace(saved_cfg, training=dataclasses.replace(saved_cfg.training, epochs=config.training.epochs)) != config:
        diff = [k for k, v in dataclasses.asdict(config).items() if dataclasses.asdict(saved_cfg).get(k) != v]
        raise UserError("--resume: the options differ from the interrupted run's (" + ", ".join(diff) +
                        "); only --epochs may change. Rerun with the original options or another -o")
    return config


def run_abinitio(particles: str | Path, outdir: str | Path, *, config: AbinitioConfig,
                 pixel_size_angstrom: float | None = None, ctf_star: str | Path | None = None,
                 resume: bool = False, progress: bool = True, report: bool = True,
                 reconstruct_threads: int = 1) -> AbinitioResult:
    """Ab initio pose estimation and reconstruction with CryoPoseNet (Nashed et al. 2021).

    Args:
        particles: ``.star``, ``.cs`` or ``.mrcs`` (the latter with ``ctf_star``).
        outdir: Output folder (created).
        config: :class:`AbinitioConfig`.
        pixel_size_angstrom: Explicit pixel size (must agree with the file's).
        ctf_star: CTF STAR for a bare ``.mrcs``.
        resume: Continue the run whose ``checkpoint.pt`` is in ``outdir`` (same options; only
            the number of epochs may change).
        progress: Progress bars.
        report: Write ``report.html`` and its figures.
        reconstruct_threads: Threads of the final reconstruction.

    Returns:
        :class:`AbinitioResult`.

    Raises:
        UserError: Unreadable input, bad options, ``resume`` without a checkpoint or with
            different options, ``outdir`` holding a finished or unrelated run without ``resume``.
        KeyboardInterrupt: After writing the checkpoint (and ``encoder.pt``) of the current step.
    """
    from ..io.particles import load_particles

    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"-o {outdir}: exists and is not a folder")
    outdir.mkdir(parents=True, exist_ok=True)
    ckpt_path, encoder_path = outdir / "checkpoint.pt", outdir / "encoder.pt"
    if not resume and ckpt_path.exists():
        raise UserError(f"{outdir} already holds a run (checkpoint.pt); use --resume to continue it or another -o")
    if resume and not ckpt_path.exists():
        raise UserError(f"--resume: no checkpoint.pt in {outdir}")
    stack, meta = load_particles(particles, pixel_size_angstrom=pixel_size_angstrom, ctf_star=ctf_star)
    if meta.ctf is None:
        print(f"cryopose abinitio: warning: {particles} has no CTF parameters; training without CTF")
    box = config.box_size if config.box_size is not None else stack.box_size
    box = min(int(box), int(stack.box_size))
    saved = load_checkpoint(ckpt_path) if resume else None
    if saved is not None:
        config = _check_resume(saved, config)
    norm = None if saved is None else Normalization(**saved["normalization"])
    dataset = ParticleDataset(stack, meta, box_size=box, invert=config.invert_contrast, normalization=norm)
    model = build_model(config, box_size=dataset.box_size, pixel_size_angstrom=dataset.pixel_size_angstrom)
    if saved is None:
        model.volume.scale.fill_(estimate_volume_scale(dataset))
    extra = {"config": dataclasses.asdict(config), "normalization": dataclasses.asdict(dataset.normalization),
             "working_box_size": dataset.box_size, "working_pixel_size_angstrom": dataset.pixel_size_angstrom}

    def write_encoder(tr: Trainer) -> None:
        save_checkpoint(encoder_path, _encoder_payload(config, tr.model, dataset))

    trainer = Trainer(model, dataset, config.training, checkpoint_path=ckpt_path, checkpoint_extra=extra,
                      progress=progress, on_epoch_end=write_encoder, symmetry=config.model.symmetry)
    if saved is not None:
        trainer.load_state_dict(saved)
    seconds = {}
    t0 = time.perf_counter()
    try:
        trainer.train()
    except KeyboardInterrupt:
        write_encoder(trainer)
        raise
    write_encoder(trainer)
    seconds["train"] = trainer.elapsed
    t1 = time.perf_counter()
    inference = infer_poses(model, dataset, symmetric=config.training.symmetric_loss, progress=progress)
    poses_star = write_poses(outdir / "poses.star", meta, inference, dataset.pixel_size_angstrom)
    seconds["infer"] = time.perf_counter() - t1
    shifts_a = None if inference.shifts_px is None else inference.shifts_px * dataset.pixel_size_angstrom
    rec = None
    map_path = None
    polish_change = None
    encoder_rotmats = inference.rotmats
    if config.reconstruct:
        t2 = time.perf_counter()
        rec = _reconstruct(stack, meta, inference.rotmats, shifts_a, config, outdir, progress, reconstruct_threads)
        seconds["reconstruct"] = time.perf_counter() - t2
        if config.polish_rounds > 0:
            from ..rotations import geodesic_distance_deg
            from ..symmetry import expand_by_symmetry
            from .polish import polish_poses

            t3 = time.perf_counter()
            posed = meta.replace(shifts_angstrom=shifts_a.double() if shifts_a is not None else meta.shifts_angstrom)
            rot = inference.rotmats
            for _ in range(config.polish_rounds):
                rot = polish_poses(stack, posed, rot, rec.volume, symmetry=config.model.symmetry,
                                   start_step_deg=config.polish_start_step_deg,
                                   final_step_deg=config.polish_final_step_deg)
                rec = _reconstruct(stack, meta, rot, shifts_a, config, outdir, progress, reconstruct_threads)
            write_poses(outdir / "poses_encoder.star", meta, inference, dataset.pixel_size_angstrom)
            mates = expand_by_symmetry(inference.rotmats.double(), config.model.symmetry)
            polish_change = geodesic_distance_deg(rot.double()[:, None], mates).min(dim=1).values
            inference = dataclasses.replace(inference, rotmats=rot.float())
            poses_star = write_poses(outdir / "poses.star", meta, inference, dataset.pixel_size_angstrom)
            seconds["polish"] = time.perf_counter() - t3
        map_path = outdir / "map.mrc"
    report_path = None
    summary = {
        "n_particles": len(meta), "working_box_size": dataset.box_size,
        "working_pixel_size_angstrom": dataset.pixel_size_angstrom,
        "pixel_size_angstrom": float(meta.pixel_size_angstrom), "epochs": trainer.epoch,
        "steps": trainer.step, "final_loss": trainer.epoch_losses[-1] if trainer.epoch_losses else None,
        "median_confidence": float(inference.confidence.median()),
        "polish_rounds": config.polish_rounds if config.reconstruct else 0,
        "polish_median_change_deg": None if polish_change is None else float(polish_change.median()),
        "resolution_fsc0p5_angstrom": None if rec is None else rec.resolution_fsc0p5_angstrom,
        "resolution_fsc0p143_angstrom": None if rec is None else rec.resolution_fsc0p143_angstrom,
        "seconds": seconds,
    }
    if report:
        t3 = time.perf_counter()
        from ..report.html import write_abinitio_report

        report_path = write_abinitio_report(outdir, trainer=trainer, dataset=dataset, inference=inference,
                                            reconstruction=rec, config=config, summary=summary)
        seconds["report"] = time.perf_counter() - t3
    from ..io.atomic import atomic_write_text

    atomic_write_text(outdir / "summary.json", json.dumps(_finite(summary), indent=2))
    return AbinitioResult(outdir=outdir, poses_star=poses_star, map_path=map_path, encoder_path=encoder_path,
                          report_path=report_path, rotmats=inference.rotmats, shifts_angstrom=shifts_a,
                          confidence=inference.confidence,
                          resolution_fsc0p143_angstrom=None if rec is None else rec.resolution_fsc0p143_angstrom,
                          seconds=seconds, encoder_rotmats=encoder_rotmats)


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _reconstruct(stack, meta, rotmats, shifts_a, config, outdir: Path, progress: bool, threads: int):
    """Known-pose reconstruction at the original box from ``rotmats``; writes the maps."""
    from ..io.atomic import atomic_write_text
    from ..io.mrc import write_map
    from ..metrics.fsc import report_from_curve
    from ..reconstruction import reconstruct

    posed = meta.replace(rotmats=rotmats.float(),
                         shifts_angstrom=shifts_a if shifts_a is not None else meta.shifts_angstrom)
    g = torch.Generator().manual_seed(config.training.seed)
    rec = reconstruct(stack, posed, symmetry=config.model.symmetry, generator=g, progress=progress,
                      threads=threads)
    apix = float(meta.pixel_size_angstrom)
    write_map(outdir / "map.mrc", rec.volume, apix)
    if rec.half_maps is not None:
        write_map(outdir / "map_half1.mrc", rec.half_maps[0], apix)
        write_map(outdir / "map_half2.mrc", rec.half_maps[1], apix)
        fsc = report_from_curve(rec.fsc_frequency_per_angstrom.numpy(), rec.fsc.numpy(), apix,
                                box_size=int(rec.volume.shape[-1]))
        atomic_write_text(outdir / "fsc.json", json.dumps(_finite(fsc), indent=2))
    return rec


def predict_poses(encoder: str | Path, particles: str | Path, output: str | Path, *,
                  pixel_size_angstrom: float | None = None, ctf_star: str | Path | None = None,
                  batch_size: int = 256, progress: bool = True, state: dict | None = None) -> PoseInference:
    """Amortized inference: poses of (unseen) particles from a trained ``encoder.pt``.

    The particles are Fourier-cropped to the encoder's working pixel size (their box times
    pixel size must give an integer working box) and normalised as in training; each image's
    candidate poses are scored against the trained volume (with its CTF and shifts when the
    file has them) and the best is written with its confidence.

    Args:
        encoder: ``encoder.pt`` from ``cryopose abinitio``.
        particles: ``.star``, ``.cs`` or ``.mrcs`` (+ ``ctf_star``).
        output: Output STAR path.
        pixel_size_angstrom, ctf_star: As :func:`run_abinitio`.
        batch_size: Images per forward pass.
        progress: Progress bar.
        state: The encoder file's contents when already loaded (:func:`read_model_file`).

    Returns:
        :class:`PoseInference` (working-pixel shifts).

    Raises:
        UserError: Particles whose physical box does not match the encoder's working pixel size,
            or an output folder that does not exist.
    """
    from ..io.particles import load_particles

    config, model, info = load_encoder(encoder, state=state)
    output = _check_output(output)
    stack, meta = load_particles(particles, pixel_size_angstrom=pixel_size_angstrom, ctf_star=ctf_star)
    p_work = info["working_pixel_size_angstrom"]
    m_float = stack.box_size * float(meta.pixel_size_angstrom) / p_work
    m = int(round(m_float))
    if abs(m - m_float) > 1e-3 * m_float or m != info["working_box_size"]:
        raise UserError(f"{particles}: {stack.box_size} px at {meta.pixel_size_angstrom:g} Å is a "
                        f"{stack.box_size * meta.pixel_size_angstrom:.1f} Å box; the encoder was trained on "
                        f"{info['working_box_size']} px at {p_work:g} Å "
                        f"({info['working_box_size'] * p_work:.1f} Å); the particles must have the same box in Å")
    dataset = ParticleDataset(stack, meta, box_size=m, invert=config.invert_contrast,
                              normalization=info["normalization"])
    inference = infer_poses(model, dataset, symmetric=config.training.symmetric_loss, batch_size=batch_size,
                            progress=progress)
    write_poses(output, meta, inference, dataset.pixel_size_angstrom)
    return inference


def _check_output(output) -> Path:
    output = Path(output)
    if not output.parent.exists():
        raise UserError(f"-o {output}: folder {output.parent} does not exist")
    return output


def read_model_file(path: str | Path) -> tuple[str, dict]:
    """Read a model file for ``cryopose predict`` once and say which kind it is.

    Args:
        path: A CryoPoseNet ``encoder.pt`` (``cryopose abinitio``; format tag
            :data:`~cryopose.training.checkpoint.CHECKPOINT_FORMAT`, the encoder keys, no
            ``model_kind``) or a supervised checkpoint (``model_kind: "supervised"``, written by
            :func:`cryopose.training.supervised.save_checkpoint`).

    Returns:
        ``(kind, state)``: ``kind`` one of :data:`PREDICT_MODEL_KINDS`, ``state`` the loaded dict
        (CPU tensors).

    Raises:
        InputFileError: Missing or unreadable file, or a kind ``predict`` cannot use (the message
            names the file, its ``model_kind`` and the kinds accepted).
    """
    from ..errors import InputFileError

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such model file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a model file"
        raise InputFileError(path, f"not a readable model file ({type(err).__name__}: {err})") from None
    kind = state.get("model_kind") if isinstance(state, dict) else None
    if kind is None and isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT \
            and all(k in state for k in ENCODER_FORMAT_KEYS):
        kind = "cryoposenet"
    if kind not in PREDICT_MODEL_KINDS:
        what = f"model_kind {kind!r}" if kind is not None else "neither a model_kind nor a CryoPoseNet encoder"
        raise InputFileError(path, f"{what}: `cryopose predict` accepts a CryoPoseNet encoder.pt "
                                   "(`cryopose abinitio`) or a model_kind 'supervised' model.pt "
                                   "(`cryopose train-supervised` or `cryopose refine`)")
    return kind, state


def _supervised_invert_contrast(model: str | Path, state: dict, requested: bool | None) -> bool:
    """The contrast setting to predict with from a supervised checkpoint.

    Args:
        model: The checkpoint's path (named in errors).
        state: Its contents; ``state["extra"]["invert_contrast"]`` (bool) when recorded.
        requested: The caller's setting, or ``None`` for none.

    Returns:
        The recorded setting when there is one, else ``bool(requested)`` (``False`` for
        ``None``: an older checkpoint without the key, trained on images as they are unless
        the user says otherwise).

    Raises:
        UserError: ``requested`` is a bool that contradicts the recorded setting.
    """
    extra = state.get("extra")
    recorded = extra.get("invert_contrast") if isinstance(extra, dict) else None
    if recorded is None:
        return bool(requested)
    recorded = bool(recorded)
    if requested is not None and bool(requested) != recorded:
        how = "with" if recorded else "without"
        asked = "--invert-contrast" if requested else "no contrast inversion"
        raise UserError(f"{model}: the network was trained {how} --invert-contrast, as the checkpoint records "
                        f"and predict applies by itself; {asked} was asked for, which contradicts it: "
                        "leave --invert-contrast out (invert_contrast=None) to use the recorded setting")
    return recorded


def predict_poses_supervised(model: str | Path, particles: str | Path, output: str | Path, *,
                             pixel_size_angstrom: float | None = None, ctf_star: str | Path | None = None,
                             batch_size: int = 256, invert_contrast: bool | None = None,
                             state: dict | None = None) -> torch.Tensor:
    """Orientations of particles from a supervised regressor (Lian et al. 2022); writes a STAR.

    Each image is Fourier-cropped to the network's input box (same field of view; as
    ``cryopose refine`` infers its unlabelled particles:
    :class:`cryopose.search.run.ResampledImages` and
    :func:`cryopose.training.supervised.predict_rotmats`, one forward pass per batch, read
    lazily). The network predicts no shifts and no CTF is used: the output (RELION 3.1, the
    input's particle order and pixel size, as :func:`write_poses`) has the predicted
    ``rlnAngleRot/Tilt/Psi`` and the input's origins, and no confidence column.

    Args:
        model: ``model.pt`` with ``model_kind: "supervised"`` (named in errors).
        particles: ``.star``, ``.cs`` or ``.mrcs`` (+ ``ctf_star``).
        output: Output STAR path (its folder must exist).
        pixel_size_angstrom, ctf_star: As :func:`cryopose.io.particles.load_particles`.
        batch_size: Images per forward pass.
        invert_contrast: Negate the images first. ``None`` (default): as the checkpoint
            records (``extra["invert_contrast"]``, written by ``train-supervised`` and
            ``refine``), or not at all for an older checkpoint without that key. A bool
            overrides only such an older checkpoint; for one that records the setting it must
            agree with it.
        state: The checkpoint's contents when already loaded (:func:`read_model_file`).

    Returns:
        ``(N, 3, 3)`` float32 predicted RELION rotation matrices, in the particles' order.

    Raises:
        InputFileError: Not a supervised checkpoint, or one whose network cannot be rebuilt.
        UserError: Particles whose box in Å differs from the network's (when the checkpoint
            records its pixel size), images smaller than the network's box, an
            ``invert_contrast`` that contradicts the checkpoint's recorded setting (the message
            names ``model``), or a missing output folder.
    """
    from ..errors import InputFileError
    from ..io.particles import load_particles
    from ..io.star import write_star
    from ..models.supervised import MODEL_KIND, OrientationRegressor, SupervisedModelConfig
    from ..search.run import ResampledImages
    from ..training.supervised import predict_rotmats

    if state is None:
        kind, state = read_model_file(model)
        if kind != MODEL_KIND:
            raise InputFileError(model, f"a {kind} model, not a model_kind {MODEL_KIND!r} checkpoint")
    try:
        net = OrientationRegressor(SupervisedModelConfig(**state["model_config"]))
        net.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise InputFileError(model, f"cannot rebuild the supervised network ({type(err).__name__}: {err})") from None
    invert = _supervised_invert_contrast(model, state, invert_contrast)
    output = _check_output(output)
    stack, meta = load_particles(particles, pixel_size_angstrom=pixel_size_angstrom, ctf_star=ctf_star)
    n, m, p_net = int(stack.box_size), net.config.box_size, state.get("pixel_size_angstrom")
    apix = float(meta.pixel_size_angstrom)
    if p_net is not None and abs(n * apix - m * p_net) > 1e-3 * m * p_net:
        raise UserError(f"{particles}: {n} px at {apix:g} Å is a {n * apix:.1f} Å box; the network in {model} "
                        f"was trained on {m} px at {p_net:g} Å ({m * p_net:.1f} Å); the particles must have the "
                        "same box in Å")
    if n < m:
        raise UserError(f"{particles}: {n} px images are smaller than the {m} px input of the network in {model}")
    rot = predict_rotmats(net, ResampledImages(stack, m, invert_contrast=invert), batch_size=batch_size)
    write_star(output, meta.replace(rotmats=rot.float()))
    return rot.float()
