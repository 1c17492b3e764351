"""CryoPoseNet ab initio reconstruction and amortized pose prediction (library side of
``cryopose abinitio`` and ``cryopose predict``).

:func:`run_abinitio` loads particles (STAR, cryoSPARC ``.cs``, or a bare ``.mrcs`` with a CTF
STAR), Fourier-crops them to the working box, trains CryoPoseNet from a random start
(:mod:`cryopose.training.trainer`), infers every particle's pose with the trained encoder,
writes the poses (RELION 3.1 STAR, original pixel size, Å origins, a
``rlnCryoposeConfidence`` column), reconstructs the map at the original box from those poses
(:func:`cryopose.reconstruction.reconstruct`, half maps and their FSC) and writes an HTML
report. Prediction with a saved encoder is in :mod:`cryopose.pipelines.predict`.

Files in ``OUTDIR``: ``checkpoint.pt`` (every epoch, and on Ctrl-C), ``encoder.pt`` (model +
preprocessing, for ``predict``), ``poses.star``, ``map.mrc``, ``map_half1.mrc``,
``map_half2.mrc``, ``fsc.json``, ``summary.json``, ``report.html`` and its PNGs; with local
polishing (default) ``poses.star`` holds the polished poses and ``poses_encoder.star`` the
encoder's
(``config.yaml`` is written by the command).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch

from ..conventions import shifts_pixels_to_angstrom
from ..data.dataset import ParticleDataset
from ..data.transforms import Normalization
from ..errors import UserError
from ..models.cryoposenet import CryoPoseNet
from ..runtime import Runtime
from ..search.run import ResampledImages
from ..training.checkpoint import dataset_fingerprint, load_checkpoint, save_checkpoint
from ..training.config import AbinitioConfig, config_from_dict
from ..training.trainer import Trainer, estimate_volume_scale, infer_poses
from .abinitio_finish import AbinitioResult, finish_abinitio, write_poses

__all__ = ["AbinitioResult", "build_model", "run_abinitio", "load_encoder", "write_poses"]

ENCODER_FORMAT_KEYS = ("config", "model", "working_box_size", "working_pixel_size_angstrom", "normalization")




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
    ops = symmetry_operators(mc.symmetry, dtype=torch.float32) if mc.symmetry != "C1" else None
    # torch.nn initialises layers from the global generator: seed it inside a fork, so that the
    # weights follow the seed and the caller's global random state is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.training.seed)
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
        ``working_pixel_size_angstrom``, ``normalization`` (a :class:`Normalization`) and
        ``frame_rotation``: ``None``, or the ``(3, 3)`` rotation ``R`` that turns the encoder's
        poses ``A`` into the frame of the run's symmetric map (``A R``; ``abinitio --symmetry``,
        :mod:`cryopose.pipelines.abinitio_symmetry`).

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
    frame = state.get("frame_rotation")
    info = {"working_box_size": int(state["working_box_size"]),
            "working_pixel_size_angstrom": float(state["working_pixel_size_angstrom"]),
            "normalization": Normalization(**state["normalization"]),
            "frame_rotation": None if frame is None else torch.as_tensor(frame, dtype=torch.float64)}
    return config, model, info




def resolve_config(config: AbinitioConfig, metadata, image_box: int | None = None) -> AbinitioConfig:
    """Settle the data-dependent defaults that do not need the images.

    ``estimate_shifts=None`` becomes ``True`` when the particles have no origins; with it the
    shift head is switched on (an amortized per-image correction, so ``predict`` gives shifts
    for new particles too; a per-particle table could not). ``box_size=None`` becomes
    :func:`~cryopose.training.config.auto_working_box` of ``image_box`` (the particles' box,
    px) and their pixel size (an explicit box larger than the images becomes the images' box);
    ``epochs=None`` becomes :func:`~cryopose.training.config.auto_epochs` of the number of
    particles. ``invert_contrast=None`` stays ``None`` here: it is detected from the images by
    :func:`prepare_particles`.
    """
    from ..training.config import auto_epochs, auto_working_box

    est = (not metadata.has_origins) if config.estimate_shifts is None else bool(config.estimate_shifts)
    model = config.model if not est else dataclasses.replace(config.model, shift_head=True)
    box = config.box_size
    if image_box is not None:
        box = auto_working_box(int(image_box), float(metadata.pixel_size_angstrom)) if box is None \
            else min(int(box), int(image_box))
    training = config.training
    if training.epochs is None:
        training = dataclasses.replace(training, epochs=auto_epochs(len(metadata)))
    return dataclasses.replace(config, estimate_shifts=est, model=model, box_size=box, training=training)


def prepare_particles(dataset: ParticleDataset, config: AbinitioConfig, *, progress: bool = False,
                      saved: dict | None = None) -> tuple[AbinitioConfig, dict]:
    """Contrast detection and centring of a data set, before training or prediction.

    With ``config.invert_contrast is None`` the contrast is detected
    (:func:`cryopose.data.preprocess.centre_particles`) and the data set flipped when the
    particles are dark; with ``config.estimate_shifts`` the particles are centred on their
    rotational average and the data set's origins set to that (the shift head learns the
    rest). ``saved`` (a checkpoint's ``preprocess`` entry) replays an earlier run's decisions
    instead of measuring again, so that a resumed run sees the same data.

    Returns:
        ``(config, info)``: the config with ``invert_contrast`` settled, and a JSON-friendly
        record (``contrast``, ``centring``) for the summary and the checkpoint (the centring
        origins as a tensor under ``centring_shifts_px``).
    """
    from ..data.preprocess import centre_particles

    info: dict = {}
    need_contrast = config.invert_contrast is None
    if saved is not None:
        inverted = bool(saved["inverted"])
        shifts = saved.get("centring_shifts_px")
        info = dict(saved)
    else:
        shifts, inverted = None, bool(config.invert_contrast)
        if need_contrast or config.estimate_shifts:
            res = centre_particles(dataset, iterations=3 if config.estimate_shifts else 1, progress=progress)
            if need_contrast:
                inverted = res.contrast_sign < 0
                info["contrast"] = {"detected": True, "inverted": inverted,
                                    "fraction_bright": res.contrast_fraction}
            if config.estimate_shifts:
                shifts = res.shifts_px
                norms = shifts.norm(dim=1)
                info["centring"] = {"median_shift_px": float(norms.median()),
                                    "max_shift_px": float(norms.max())}
        if not need_contrast:
            info["contrast"] = {"detected": False, "inverted": inverted}
        info["inverted"] = inverted
        if shifts is not None:
            info["centring_shifts_px"] = shifts
    if inverted != dataset.invert:
        dataset.invert_contrast()
    if config.estimate_shifts and shifts is not None:
        dataset.shifts_angstrom = shifts_pixels_to_angstrom(torch.as_tensor(shifts).double(), dataset.pixel_size_angstrom)
    return dataclasses.replace(config, invert_contrast=inverted), info


def _differences(then: dict, now: dict, prefix: str = "") -> list[str]:
    """``name: old then, new now`` for every (nested) config field that differs, e.g.
    ``training.batch_size: 8 then, 4 now``; the epoch count is not compared."""
    out = []
    for k, v in now.items():
        old = then.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            out += _differences(old, v, f"{prefix}{k}.")
        elif old != v and k != "epochs":
            out.append(f"{prefix}{k}: {old} then, {v} now")
    return out


#: :class:`AbinitioConfig` fields of what follows the training (reconstruction, polishing, the
#: point group imposed): a resumed run may change them, e.g. to polish a finished run again.
FINISH_FIELDS = ("reconstruct", "polish_rounds", "polish_global_rounds", "polish_start_step_deg",
                 "polish_final_step_deg", "polish_rescue", "polish_subset_iterations", "polish_marginal_start",
                 "symmetry")


def _check_resume(saved: dict, config: AbinitioConfig, fingerprint: dict | None = None) -> AbinitioConfig:
    saved_cfg = config_from_dict(saved["config"])
    if config.invert_contrast is None:  # detected in the first run: keep what it found
        config = dataclasses.replace(config, invert_contrast=saved_cfg.invert_contrast)
    same_training = dataclasses.replace(saved_cfg, training=dataclasses.replace(
        saved_cfg.training, epochs=config.training.epochs), **{k: getattr(config, k) for k in FINISH_FIELDS})
    if same_training != config:
        diff = _differences(dataclasses.asdict(saved_cfg), dataclasses.asdict(config))
        raise UserError("--resume: the options differ from the interrupted run's (" + ", ".join(diff) +
                        "); only --epochs and the options of what follows the training (polishing, "
                        "--symmetry, --no-reconstruct) may change. Rerun with the original options or another -o")
    done = int(saved.get("epoch", 0))
    if config.training.epochs < done:
        raise UserError(f"--resume: the run has already done {done} epochs; --epochs {config.training.epochs} "
                        "would end before where it stands (give at least that many)")
    old = saved.get("dataset")
    if fingerprint is not None and old is not None and old != fingerprint:
        diff = [k for k in fingerprint if old.get(k) != fingerprint[k]]
        raise UserError("--resume: these particles are not the interrupted run's (" +
                        ", ".join(f"{k}: {old.get(k)} then, {fingerprint[k]} now" if k != "image_names_sha256"
                                  else "other image names" for k in diff) + "); use another -o for a new run")
    return config


def run_abinitio(particles: str | Path, outdir: str | Path, *, config: AbinitioConfig,
                 pixel_size_angstrom: float | None = None, ctf_star: str | Path | None = None,
                 datadir: str | Path | None = None, optics_group: int | str | None = None,
                 resume: bool = False, progress: bool = True, report: bool = True, reconstruct_threads: int = 1,
                 on_start: Callable[[AbinitioConfig], None] | None = None,
                 strict_box: bool = False, runtime: Runtime | None = None) -> AbinitioResult:
    """Ab initio pose estimation and reconstruction with CryoPoseNet (Nashed et al. 2021).

    Args:
        particles: ``.star``, ``.cs`` or ``.mrcs`` (the latter with ``ctf_star``).
        outdir: Output folder (created).
        config: :class:`AbinitioConfig`.
        pixel_size_angstrom: Explicit pixel size (must agree with the file's).
        ctf_star: CTF STAR for a bare ``.mrcs``.
        datadir: Another folder the particle stacks may be read from (``--datadir``; see
            :func:`cryopose.io.particles.load_particles`).
        optics_group: Use only this optics group's particles (``--optics-group``: number or name).
        resume: Continue the run whose ``checkpoint.pt`` is in ``outdir`` (same options; only
            the number of epochs may change).
        progress: Progress bars.
        report: Write ``report.html`` and its figures.
        reconstruct_threads: Threads of the final reconstruction.
        strict_box: ``config.box_size`` was asked for explicitly: refuse it when it is larger
            than the images (otherwise the images' box is used).
        on_start: Called with the run's config once the inputs are read and a resume is
            accepted, before any work (the command writes ``config.yaml`` there, so a refused
            resume leaves the earlier run's record alone).
        runtime: Device, threads, precision and streaming (:class:`cryopose.runtime.Runtime`;
            default the CPU, float32). Not part of ``config`` nor of the checkpoint's record:
            a resumed run may use other settings.

    Returns:
        :class:`AbinitioResult`.

    Raises:
        UserError: Unreadable input, bad options, ``resume`` without a checkpoint or with
            different options, fewer epochs than done or other particles (count, box, pixel
            size, image names), ``outdir`` holding a finished or unrelated run without ``resume``.
        KeyboardInterrupt: After writing the checkpoint (and ``encoder.pt``) of the current step.
    """
    outdir, ckpt_path, encoder_path, saved = _open_outdir(outdir, resume)
    stack, meta, config = _load_inputs(particles, config, saved, pixel_size_angstrom=pixel_size_angstrom,
                                       ctf_star=ctf_star, datadir=datadir, optics_group=optics_group,
                                       strict_box=strict_box)
    if on_start is not None:
        on_start(config)
    runtime = Runtime() if runtime is None else runtime
    progress = progress and runtime.rank == 0
    dataset, config, prep, meta = _working_dataset(stack, meta, config, saved, runtime, progress)
    source = ResampledImages(stack, stack.box_size, invert_contrast=True) if config.invert_contrast else stack
    model = build_model(config, box_size=dataset.box_size, pixel_size_angstrom=dataset.pixel_size_angstrom)
    if saved is None:
        model.volume.scale.fill_(estimate_volume_scale(dataset))
    trainer, write_encoder = _make_trainer(model, dataset, config, prep, stack, meta, saved, ckpt_path,
                                           encoder_path, runtime, progress)
    seconds = {}
    try:
        trainer.train()
    except KeyboardInterrupt:
        write_encoder(trainer)
        raise
    write_encoder(trainer)
    seconds["train"] = trainer.elapsed
    t1 = time.perf_counter()
    inference = infer_poses(model, dataset, symmetric=config.training.symmetric_loss, progress=progress,
                            runtime=runtime)
    model.cpu()  # the report renders CPU batches with it
    if runtime.rank != 0:  # torchrun: rank 0 alone writes the poses, reconstructs, polishes and reports
        return AbinitioResult(outdir=outdir, poses_star=outdir / "poses.star", map_path=None,
                              encoder_path=encoder_path, report_path=None, rotmats=inference.rotmats,
                              shifts_angstrom=None, confidence=inference.confidence,
                              resolution_fsc0p143_angstrom=None, seconds={"train": trainer.elapsed})
    return finish_abinitio(outdir=outdir, source=source, meta=meta, dataset=dataset, model=model, trainer=trainer,
                           inference=inference, config=config, prep=prep, encoder_path=encoder_path,
                           seconds=seconds, t_infer=t1, progress=progress, report=report,
                           reconstruct_threads=reconstruct_threads, device=runtime.device)


def _open_outdir(outdir: str | Path, resume: bool):
    """Create ``outdir`` and check it against ``resume``.

    Returns:
        ``(outdir, checkpoint path, encoder path, saved checkpoint or None)``; the checkpoint is
        read before the (slow) particles.

    Raises:
        UserError: ``outdir`` is a file, holds a run without ``resume``, or has no checkpoint with it.
    """
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"-o {outdir}: exists and is not a folder")
    outdir.mkdir(parents=True, exist_ok=True)
    ckpt_path, encoder_path = outdir / "checkpoint.pt", outdir / "encoder.pt"
    if not resume and ckpt_path.exists():
        raise UserError(f"{outdir} already holds a run (checkpoint.pt); use --resume to continue it or another -o")
    if resume and not ckpt_path.exists():
        raise UserError(f"--resume: no checkpoint.pt in {outdir}")
    saved = load_checkpoint(ckpt_path) if resume else None  # read before the (slow) particles
    return outdir, ckpt_path, encoder_path, saved


def _load_inputs(particles, config: AbinitioConfig, saved: dict | None, *, pixel_size_angstrom, ctf_star, datadir,
                 optics_group, strict_box: bool):
    """Read the particles, fill the config's automatic values and check a resume against them.

    Returns:
        ``(stack, metadata, resolved config)``.

    Raises:
        UserError: Unreadable input, a strict box larger than the images, a refused resume.
    """
    from ..io.particles import load_particles

    stack, meta = load_particles(particles, pixel_size_angstrom=pixel_size_angstrom, ctf_star=ctf_star,
                                 datadir=datadir, optics_group=optics_group)
    if meta.ctf is None:
        print(f"cryopose abinitio: warning: {particles} has no CTF parameters; training without CTF")
    if strict_box and config.box_size is not None and int(config.box_size) > int(stack.box_size):
        raise UserError(f"--box-size {config.box_size}: larger than the images ({stack.box_size} px in {particles}); "
                        "the working box Fourier-crops the images, it cannot enlarge them")
    config = resolve_config(config, meta, stack.box_size)
    if saved is not None:
        config = _check_resume(saved, config, dataset_fingerprint(stack, meta))
    return stack, meta, config


def _working_dataset(stack, meta, config: AbinitioConfig, saved: dict | None, runtime: Runtime, progress: bool):
    """The working-box :class:`ParticleDataset` (normalisation from ``saved`` on resume), after
    :func:`prepare_particles`.

    Returns:
        ``(dataset, config, preprocessing record, metadata)``; the metadata carries the
        estimated shifts when ``config.estimate_shifts``.
    """
    from ..data.streaming import dataset_source

    box = int(config.box_size)
    norm = None if saved is None else Normalization(**saved["normalization"])
    images, cache_mb = dataset_source(stack, box, runtime)
    dataset = ParticleDataset(images, meta, box_size=box, invert=False, normalization=norm,
                              per_image=config.per_image_normalization, whiten=config.whiten,
                              cache_limit_mb=cache_mb)
    config, prep = prepare_particles(dataset, config, progress=progress,
                                     saved=None if saved is None else saved.get("preprocess"))
    if config.estimate_shifts:
        meta = meta.replace(shifts_angstrom=dataset.shifts_angstrom.float())
    return dataset, config, prep, meta


def _make_trainer(model: CryoPoseNet, dataset: ParticleDataset, config: AbinitioConfig, prep: dict, stack, meta,
                  saved: dict | None, ckpt_path: Path, encoder_path: Path, runtime: Runtime, progress: bool):
    """The :class:`Trainer` (restored from ``saved`` on resume) with the checkpoint's record,
    and the callback that writes ``encoder.pt`` (rank 0 only) after every epoch.

    Returns:
        ``(trainer, write_encoder)``.
    """
    extra = {"config": dataclasses.asdict(config), "normalization": dataclasses.asdict(dataset.normalization),
             "working_box_size": dataset.box_size, "working_pixel_size_angstrom": dataset.pixel_size_angstrom,
             "preprocess": prep, "dataset": dataset_fingerprint(stack, meta)}

    def write_encoder(tr: Trainer) -> None:
        if runtime.rank == 0:  # under torchrun every rank holds the same model; one writes it
            save_checkpoint(encoder_path, _encoder_payload(config, tr.model, dataset))

    trainer = Trainer(model, dataset, config.training, checkpoint_path=ckpt_path, checkpoint_extra=extra,
                      progress=progress, on_epoch_end=write_encoder, symmetry=config.model.symmetry,
                      runtime=runtime)
    if saved is not None:
        trainer.load_state_dict(saved)
    return trainer, write_encoder
