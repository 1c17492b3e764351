"""Rotation-invariant autoencoder (Bibas et al. 2021) and its spatial-VAE baseline (Bepler et al. 2019).

`cryopose rotinv train PARTICLES -o OUTDIR` treats the particle images as canonical
(unrotated): every training image is turned by a random in-plane angle, the encoder must return
that angle and a content code, and the decoder must render the unrotated image from the code
(losses exp(|θ−θ̂|)−1, ‖x−x̂‖₂+‖x−x̂‖₁ and a Wasserstein critic on the codes). --model
spatial-vae trains the baseline instead (unsupervised, coordinate-based decoder). Writes
OUTDIR/checkpoint.pt (after every epoch, atomically; --resume continues), OUTDIR/history.json
and OUTDIR/config.yaml.

`cryopose rotinv predict OUTDIR` writes OUTDIR/rotinv_particles.star with rlnAnglePsi =
(--psi-reference, default 0) − θ̂, where θ̂ is the predicted counter-clockwise image rotation
from the canonical frame (a turn by θ lowers RELION's psi by θ), the input psi kept as
rlnCryoposeInputAnglePsi, and OUTDIR/canonical.mrcs with the canonical images (standardised
units).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from .common import add_datadir_argument

COMMAND = "rotinv"
HELP = "rotation-invariant autoencoder (Bibas et al. 2021) / spatial-VAE: in-plane angles and canonical images"


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("particles", metavar="PARTICLES", help="particle images: .star, .cs or .mrcs")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--model", choices=("rotinv", "spatial-vae"), default="rotinv",
                   help="rotation-invariant autoencoder (default) or the spatial-VAE baseline")
    p.add_argument("--pixel-size", type=float, metavar="A", help="particle pixel size in Å (header override)")
    add_datadir_argument(p)
    p.add_argument("--box", type=int, metavar="PX",
                   help="Fourier-crop to this box first (rotinv needs a multiple of 8)")
    p.add_argument("--content-dim", type=int, default=32, help="rotinv content code size (default 32)")
    p.add_argument("--channels", type=int, default=16, help="rotinv first-layer filters (default 16)")
    p.add_argument("--latent-dim", type=int, default=2, help="spatial-VAE content latent size (default 2)")
    p.add_argument("--hidden", type=int, default=500, help="spatial-VAE hidden width (default 500)")
    p.add_argument("--translation", action="store_true", help="spatial-VAE: also infer a translation")
    p.add_argument("--epochs", type=int, default=10, help="passes over the data (default 10)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--lambda-image", type=float, default=1.0, help="rotinv image-loss weight (default 1)")
    p.add_argument("--lambda-wasserstein", type=float, default=0.01, help="rotinv critic weight (default 0.01)")
    p.add_argument("--lambda-angle", type=float, default=0.1,
                   help="rotinv weight of Bibas et al.'s periodic angle loss exp(|Δθ|)−1 (default 0.1)")
    p.add_argument("--lambda-vector", type=float, default=1.0,
                   help="rotinv weight of the angle head's (cos θ, sin θ) vector loss (default 1)")
    p.add_argument("--angle-warmup-fraction", type=float, default=0.5,
                   help="fraction of the epochs before the periodic angle loss joins (default 0.5)")
    p.add_argument("--input-lowpass", type=float, default=0.6,
                   help="low-pass of the rotinv encoder input, fraction of Nyquist (default 0.6; 1 = off)")
    p.add_argument("--obs-std", type=float, default=1.0, help="spatial-VAE likelihood std (default 1)")
    p.add_argument("--invert-contrast", action="store_true", help="particles are dark: negate them first")
    p.add_argument("--resume", action="store_true", help="continue from OUTDIR/checkpoint.pt")
    from .common import add_runtime_arguments

    add_runtime_arguments(p, threads_help="torch CPU threads")


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", metavar="OUTDIR", help="folder of `cryopose rotinv train`")
    p.add_argument("--particles", metavar="PARTICLES", help="particles to predict (default: those trained on)")
    p.add_argument("--pixel-size", type=float, metavar="A", help="particle pixel size in Å (header override)")
    add_datadir_argument(p)
    p.add_argument("-o", "--output", metavar="STAR", help="output STAR (default OUTDIR/rotinv_particles.star)")
    p.add_argument("--psi-reference", type=float, default=0.0,
                   help="rlnAnglePsi of the canonical frame, degrees (default 0)")
    p.add_argument("--no-images", action="store_true", help="do not write canonical.mrcs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``rotinv train`` and ``rotinv predict`` sub-commands."""
    sub = parser.add_subparsers(dest="rotinv_command", metavar="<train|predict>")
    sub.required = True
    _add_train(sub.add_parser("train", help="train the rotation-invariant autoencoder or spatial-VAE",
                              description="Train the rotation-invariant autoencoder (Bibas et al. 2021) or spatial-VAE."))
    _add_predict(sub.add_parser("predict", help="in-plane angles and canonical images",
                                description="Predict in-plane angles and canonical images."))


def _source(args, stack):
    from ..training.rotinv import DownsampledSource

    box = getattr(args, "box", None)
    if box:
        if box > stack.box_size:
            raise UserError(f"--box {box} is larger than the particles' {stack.box_size} px")
        return DownsampledSource(stack, box), box
    return stack, stack.box_size


def _run_train(args) -> int:
    from ..io.atomic import atomic_write_json
    from ..io.particles import load_particles
    from ..training.rotinv import RotInvTrainConfig, train_rotinv, train_spatial_vae
    from .common import prepare_output_dir, runtime_from_args, write_run_config

    runtime_from_args(args, command="rotinv train", gpu=False, training=True).apply()
    config = RotInvTrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                               lambda_image=args.lambda_image, lambda_wasserstein=args.lambda_wasserstein,
                               lambda_angle=args.lambda_angle, lambda_vector=args.lambda_vector,
                               angle_warmup_fraction=args.angle_warmup_fraction,
                               input_lowpass=None if args.input_lowpass >= 1 else args.input_lowpass,
                               invert_contrast=args.invert_contrast, obs_std=args.obs_std, seed=args.seed)
    out = prepare_output_dir(args.output)
    from .common import particle_options

    stack, meta = load_particles(args.particles, pixel_size_angstrom=args.pixel_size, **particle_options(args))
    source, box = _source(args, stack)
    try:
        if args.model == "rotinv":
            from ..models.rotinv import RotInvConfig

            mcfg = RotInvConfig(box_size=box, content_dim=args.content_dim, channels=args.channels)
        else:
            from ..models.spatial_vae import SpatialVAEConfig

            mcfg = SpatialVAEConfig(box_size=box, latent_dim=args.latent_dim, hidden=args.hidden,
                                    translation=args.translation)
    except ValueError as err:
        raise UserError(str(err)) from None
    ckpt = out / "checkpoint.pt"
    if ckpt.exists() and not args.resume:
        raise UserError(f"{ckpt} exists: pass --resume to continue it or choose another -o")
    train = train_rotinv if args.model == "rotinv" else train_spatial_vae
    res = train(source, mcfg, config, checkpoint_path=ckpt, resume=args.resume, progress=not args.no_progress,
                log=lambda msg: print(f"  {msg}", file=sys.stderr))
    atomic_write_json(out / "history.json", res.history, indent=1)
    write_run_config(out / "config.yaml", command_line=args.command_line, config=config,
                     extra={"model": args.model, "model_config": mcfg, "box": box,
                            "particles": str(Path(args.particles).absolute()),
                            "pixel_size_angstrom": meta.pixel_size_angstrom})
    print(f"trained {args.model} on {len(stack)} images of {box} px, {len(res.history)} epochs "
          f"({res.seconds:.0f} s); wrote {ckpt}")
    return 0


def _run_predict(args) -> int:
    import torch
    import yaml

    from ..io.mrc import write_stack
    from ..io.particles import load_particles
    from ..io.star import write_star
    from ..rotations import relion_euler_to_rotmat, rotmat_to_relion_euler
    from ..training.rotinv import load_rotinv_checkpoint, predict_rotinv
    from .common import write_run_config

    outdir = Path(args.outdir)
    model, kind, config, std, ck = load_rotinv_checkpoint(outdir / "checkpoint.pt")
    cfg_path = outdir / "config.yaml"
    doc = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
    particles = args.particles or doc.get("particles")
    if not particles:
        raise UserError(f"{cfg_path} does not name the particles: pass --particles")
    from .common import particle_options

    stack, meta = load_particles(particles, pixel_size_angstrom=args.pixel_size, **particle_options(args))
    box = int(ck["box_size"])

    class _Args:
        pass

    a = _Args()
    a.box = box if box != stack.box_size else None
    source, _ = _source(a, stack)
    pred = predict_rotinv(model, kind, source, config, std)
    n = len(meta)
    if meta.rotmats is not None:
        eul = rotmat_to_relion_euler(meta.rotmats.double())
        extra = {"rlnCryoposeInputAnglePsi": eul[:, 2].numpy().copy()}
    else:
        eul = torch.zeros(n, 3, dtype=torch.float64)
        extra = {}
    psi = (args.psi_reference - np.degrees(pred.theta_rad)) % 360.0
    eul = eul.clone()
    eul[:, 2] = torch.from_numpy(psi)
    extra["rlnCryoposeRotInvTheta"] = np.degrees(pred.theta_rad)
    star = Path(args.output) if args.output else outdir / "rotinv_particles.star"
    write_star(star, meta.replace(rotmats=relion_euler_to_rotmat(eul).to(torch.float32)), extra_columns=extra)
    if not args.no_images:
        write_stack(outdir / "canonical.mrcs", pred.canonical.astype(np.float32),
                    meta.pixel_size_angstrom * stack.box_size / box)
    write_run_config(outdir / "predict_config.yaml", command_line=args.command_line,
                     extra={"particles": str(Path(particles).absolute()), "model": kind})
    print(f"predicted {n} in-plane angles with {kind}; wrote {star}")
    return 0


def run(args) -> int:
    """Run ``cryopose rotinv train`` or ``cryopose rotinv predict``."""
    if args.rotinv_command == "train":
        return _run_train(args)
    return _run_predict(args)
