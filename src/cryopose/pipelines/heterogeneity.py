"""Heterogeneity workflows: train an embedding (either variant), then find classes and their maps.

**Train** (:func:`train_heterogeneity`, ``cryopose heterogeneity train``). Two variants write
the same files, so one ``analyze`` serves both:

* ``pose-aware`` (:func:`train_pose_aware`): particles with poses; the principal maps of the
  data set by subspace iteration (:mod:`cryopose.training.heterogeneity`), latents the
  posterior means;
* ``invariant``: the thesis's VAE-GAN with a shift- and rotation-invariant encoder, for
  particles without poses (``cryopose.training.hetero_vaegan.train_invariant_vaegan``, imported
  when asked for; a build without it says so).

``auto`` picks ``pose-aware`` when the STAR has poses, else ``invariant``. Files in ``OUTDIR``
(the contract between the variants): ``latents.npy`` (float32 ``(N, zdim)``, the input's
particle order), ``heterogeneity.json`` (at least ``variant``, ``zdim``, ``particles`` — the
input path as given — and ``n_particles``), ``config.yaml`` (written by the command),
``model.pt`` and ``checkpoint.pt``.

**Analyze** (:func:`cryopose.pipelines.heterogeneity_analysis.analyze_heterogeneity`) reads
only those files and the particles.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError

__all__ = ["VARIANTS", "HeterogeneityRunResult", "resolve_variant", "train_heterogeneity", "train_pose_aware",
           "write_latents", "read_run"]

#: The ``--variant`` choices.
VARIANTS = ("auto", "pose-aware", "invariant")


@dataclasses.dataclass(frozen=True)
class HeterogeneityRunResult:
    """What a pose-aware training run wrote.

    Attributes:
        outdir: The output folder.
        latents: ``(N, zdim)`` float32 latents.
        seconds: Wall time by stage (``initialise``, ``train``, ``latents``).
        epochs: Iterations done.
    """

    outdir: Path
    latents: np.ndarray
    seconds: dict
    epochs: int


def resolve_variant(variant: str, metadata) -> str:
    """``auto`` → ``pose-aware`` when ``metadata`` has poses, else ``invariant``; others unchanged.

    Raises:
        UserError: An unknown variant, or ``pose-aware`` for particles without poses.
    """
    if variant not in VARIANTS:
        raise UserError(f"--variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    has_poses = metadata.rotmats is not None
    if variant == "auto":
        return "pose-aware" if has_poses else "invariant"
    if variant == "pose-aware" and not has_poses:
        raise UserError(f"{metadata.source}: the particles have no poses (rlnAngleRot/Tilt/Psi): the pose-aware "
                        "variant needs them (run `cryopose abinitio` or `cryopose search` first), or use "
                        "--variant invariant")
    return variant


def write_latents(outdir: Path, latents: np.ndarray, info: dict) -> None:
    """Write ``latents.npy`` (float32) and ``heterogeneity.json`` atomically (the variants' contract)."""
    from ..io.atomic import atomic_path, atomic_write_json

    with atomic_path(outdir / "latents.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(latents, dtype=np.float32))
    atomic_write_json(outdir / "heterogeneity.json", info)


def read_run(outdir: str | Path) -> tuple[dict, np.ndarray]:
    """Read a training run's ``heterogeneity.json`` and ``latents.npy`` (either variant).

    Raises:
        UserError: A missing file, a malformed record, or latents whose shape disagrees with it.
    """
    outdir = Path(outdir)
    info_path, lat_path = outdir / "heterogeneity.json", outdir / "latents.npy"
    for p in (info_path, lat_path):
        if not p.is_file():
            raise UserError(f"{p}: missing; run `cryopose heterogeneity train ... -o {outdir}` first")
    try:
        info = json.loads(info_path.read_text())
        latents = np.load(lat_path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UserError(f"{outdir}: unreadable heterogeneity.json or latents.npy ({err})") from None
    missing = [k for k in ("variant", "zdim", "particles", "n_particles") if k not in info]
    if missing:
        raise UserError(f"{info_path}: lacks {', '.join(missing)}")
    if latents.shape != (int(info["n_particles"]), int(info["zdim"])):
        raise UserError(f"{lat_path}: shape {latents.shape}, but heterogeneity.json says "
                        f"({info['n_particles']}, {info['zdim']})")
    return info, latents


def _check_outdir(outdir: Path, *, force: bool, resume: bool) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"-o {outdir}: exists and is not a folder")
    outdir.mkdir(parents=True, exist_ok=True)
    ckpt = outdir / "checkpoint.pt"
    if resume and not ckpt.exists():
        raise UserError(f"--resume: no checkpoint.pt in {outdir}")
    if not resume and not force and any((outdir / f).exists() for f in ("checkpoint.pt", "latents.npy")):
        raise UserError(f"{outdir} already holds a heterogeneity run; use --resume to continue it, --force to "
                        "start again, or another -o")


def _resume_state(outdir: Path, config, fingerprint: dict):
    from ..training.checkpoint import HETEROGENEITY_FORMAT, load_checkpoint
    from ..training.heterogeneity import PoseAwareConfig

    saved = load_checkpoint(outdir / "checkpoint.pt", formats=(HETEROGENEITY_FORMAT,))
    old = PoseAwareConfig(**saved["config"])
    if dataclasses.replace(old, epochs=config.epochs) != config:
        diff = [k for k, v in dataclasses.asdict(config).items() if saved["config"].get(k) != v and k != "epochs"]
        raise UserError("--resume: the options differ from the interrupted run's (" + ", ".join(diff) +
                        "); only --epochs may change")
    if saved.get("dataset") != fingerprint:
        raise UserError("--resume: these particles are not the interrupted run's; use another -o for a new run")
    if int(saved["epoch"]) > config.epochs:
        raise UserError(f"--resume: the run has done {saved['epoch']} epochs; --epochs {config.epochs} is fewer")
    return saved


def train_pose_aware(particles: str | Path, outdir: str | Path, config, *, force: bool = False,
                     resume: bool = False, progress: bool = True, datadir: str | Path | None = None,
                     on_start: Callable | None = None) -> HeterogeneityRunResult:
    """Pose-aware heterogeneity embedding (principal maps, :mod:`cryopose.training.heterogeneity`).

    Args:
        particles: STAR (or ``.cs``) with poses, origins and CTFs.
        outdir: Output folder (created).
        config: :class:`~cryopose.training.heterogeneity.PoseAwareConfig`.
        force: Start again in an ``outdir`` that holds a run.
        resume: Continue the run in ``outdir`` (same options; only ``epochs`` may change).
        progress: Progress bar.
        datadir: Another folder the stacks may be read from (``--datadir``).
        on_start: Called with the config once the inputs are read and a resume is accepted (the
            command writes ``config.yaml`` there).

    Returns:
        :class:`HeterogeneityRunResult`.

    Raises:
        UserError: Particles without poses, bad options, a refused resume or overwrite.
        KeyboardInterrupt: After writing the checkpoint.
    """
    from ..data.dataset import ParticleDataset
    from ..io.particles import load_particles
    from ..training.checkpoint import HETEROGENEITY_FORMAT, save_checkpoint
    from ..training.heterogeneity import HeteroTrainer, build_pose_aware_model
    from ..training.checkpoint import dataset_fingerprint

    outdir = Path(outdir)
    _check_outdir(outdir, force=force, resume=resume)
    stack, meta = load_particles(particles, datadir=datadir)
    resolve_variant("pose-aware", meta)
    box = int(config.box_size or min(64, stack.box_size))
    if box > stack.box_size:
        raise UserError(f"--box-size {box}: larger than the images ({stack.box_size} px in {particles})")
    fingerprint = dataset_fingerprint(stack, meta)
    saved = _resume_state(outdir, config, fingerprint) if resume else None
    if on_start is not None:
        on_start(config)
    t0 = time.perf_counter()
    dataset = ParticleDataset(stack, meta, box_size=box, whiten=config.whiten)
    model = build_pose_aware_model(config, box_size=box, pixel_size_angstrom=dataset.pixel_size_angstrom)
    extra = {"config": dataclasses.asdict(config), "dataset": fingerprint, "variant": "pose-aware"}
    trainer = HeteroTrainer(model, dataset, config, checkpoint_path=outdir / "checkpoint.pt",
                            checkpoint_extra=extra, progress=progress)
    if saved is not None:
        trainer.load_state_dict(saved)
    else:
        trainer.initialise()
    seconds = {"initialise": time.perf_counter() - t0}
    trainer.train()
    seconds["train"] = trainer.elapsed
    t1 = time.perf_counter()
    latents = trainer.latents().numpy().astype(np.float32)
    seconds["latents"] = time.perf_counter() - t1
    save_checkpoint(outdir / "model.pt", {"config": dataclasses.asdict(config), "model": model.state_dict(),
                                          "working_box_size": box,
                                          "working_pixel_size_angstrom": dataset.pixel_size_angstrom,
                                          "normalization": dataclasses.asdict(dataset.normalization)},
                    format=HETEROGENEITY_FORMAT)
    trainer.save()  # the final noise and prior variances
    info = {"variant": "pose-aware", "zdim": int(config.zdim), "particles": str(particles),
            "n_particles": int(len(meta)), "model": "principal maps (subspace iteration; models/hetero_linear.py)",
            "working_box_size": box, "working_pixel_size_angstrom": dataset.pixel_size_angstrom,
            "epochs": trainer.epoch, "seconds": seconds,
            "prior_variance": model.prior_variance.tolist(), "noise_variance": float(model.noise_variance),
            "history": trainer.history}
    write_latents(outdir, latents, info)
    return HeterogeneityRunResult(outdir=outdir, latents=latents, seconds=seconds, epochs=trainer.epoch)


def train_heterogeneity(particles: str | Path, outdir: str | Path, *, variant: str = "auto", config=None,
                        invariant_options: dict | None = None, force: bool = False, resume: bool = False,
                        progress: bool = True, datadir: str | Path | None = None,
                        on_start: Callable | None = None) -> str:
    """Train the chosen variant; returns the variant that ran.

    Args:
        particles, outdir, force, resume, progress, datadir, on_start: As :func:`train_pose_aware`
            (``on_start`` for the pose-aware variant; the invariant trainer writes its own
            ``config.yaml``).
        variant: One of :data:`VARIANTS`.
        config: :class:`~cryopose.training.heterogeneity.PoseAwareConfig` for ``pose-aware``.
        invariant_options: The options given for the invariant VAE-GAN (``zdim``, ``epochs``,
            ``box_size``, ``batch_size``, ``seed``, ``num_threads``; only those set), passed as
            its ``config``.

    Raises:
        UserError: As :func:`resolve_variant`; ``invariant`` in a build without
            ``cryopose.training.hetero_vaegan``.
    """
    from ..io.particles import load_particles

    if variant not in VARIANTS:
        raise UserError(f"--variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if variant != "invariant":
        _, meta = load_particles(particles, datadir=datadir)
        variant = resolve_variant(variant, meta)
    if variant == "pose-aware":
        train_pose_aware(particles, outdir, config, force=force, resume=resume, progress=progress, datadir=datadir,
                         on_start=on_start)
        return variant
    try:
        from ..training.hetero_vaegan import HeteroVAEGANTrainConfig, train_invariant_vaegan
    except ModuleNotFoundError as err:
        if "hetero_vaegan" not in str(err):
            raise
        raise UserError("the invariant VAE-GAN variant is not in this build of cryopose "
                        "(cryopose.training.hetero_vaegan is missing); give particles with poses and "
                        "--variant pose-aware") from None
    # the VAE-GAN trainer checks its folder and writes its own config.yaml (with every option)
    try:
        invariant_config = HeteroVAEGANTrainConfig(**dict(invariant_options or {}))
    except (TypeError, ValueError) as err:
        raise UserError(f"heterogeneity train --variant invariant: {err}") from None
    train_invariant_vaegan(particles, outdir, invariant_config, force=force, resume=resume, progress=progress,
                           datadir=datadir)
    return variant

