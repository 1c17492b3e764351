"""Ab initio pose estimation and reconstruction with CryoPoseNet (Nashed et al., ICCV-W 2021).

A CNN encoder maps each particle image to its pose; a learnable voxel map is sliced at that pose
(Fourier-slice projector), multiplied by the particle's CTF and shifted to its origin, and
compared with the image; encoder and map are trained together from a random start. Then every
particle's pose is inferred with the encoder and the map is reconstructed from those poses at
the original box (half maps and FSC). With --symmetry SYM the training stays in C1; the
encoder's map is then centred, its symmetry axes found (as relion_align_symmetry), every pose
turned into RELION's frame of SYM, and the polishing and the final map impose SYM.

Writes in OUTDIR: poses.star (RELION 3.1, same particle order and pixel size, rlnAngleRot/Tilt/Psi,
rlnOriginX/YAngst and rlnCryoposeConfidence), map.mrc, map_half1.mrc, map_half2.mrc, fsc.json,
encoder.pt (for `cryopose predict`), checkpoint.pt (every epoch and on Ctrl-C; continue with
--resume), config.yaml (version and command line), summary.json, report.html and its PNGs.
As in RELION, the image names in poses.star resolve from the folder cryopose ran in (the input's
own names where they did), so `relion_reconstruct --i OUTDIR/poses.star` run there reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

COMMAND = "abinitio"
HELP = "ab initio poses and map with CryoPoseNet (amortized pose encoder + voxel map)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``abinitio`` options to ``parser``."""
    from .common import (add_contrast_arguments, add_datadir_argument, add_runtime_arguments,
                         add_shift_estimation_arguments)

    parser.add_argument("particles", metavar="PARTICLES", help="particles: .star, .cs, or .mrcs with --ctf")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    parser.add_argument("--ctf", metavar="STAR", help="for a bare .mrcs: STAR file with one CTF row per image")
    parser.add_argument("--pixel-size", type=float, metavar="A", help="pixel size in Å (must agree with the file)")
    add_datadir_argument(parser)
    parser.add_argument("--box-size", type=int, default=None,
                        help="working box of the training in pixels; images are Fourier-cropped to it (default: "
                             "pixels of about 10 Å, 32-48 px, at most the images' box; a box larger than the images "
                             "is refused). Poses are polished at the images' full box afterwards")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: about 50,000 images shown, 1-20 epochs: 20 for 2,000 "
                             "particles, 3 for 20,000)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate of the encoder "
                                                                "(default: TrainingConfig.lr)")
    parser.add_argument("--volume-lr", type=float, default=None, help="Adam learning rate of the map "
                                                                       "(default: TrainingConfig.volume_lr)")
    parser.add_argument("--pose-param", default="s2s2", choices=("s2s2", "quaternion", "euler"),
                        help="rotation parameterisation of the pose head (default s2s2)")
    parser.add_argument("--hypotheses", type=int, default=None,
                        help="pose hypotheses per image, loss on the best (default: ModelConfig.n_hypotheses)")
    parser.add_argument("--no-symmetric-loss", action="store_true",
                        help="turn off cryoAI's symmetrised loss (image and its 180° turn)")
    parser.add_argument("--no-frequency-marching", action="store_true",
                        help="use every frequency from the start")
    parser.add_argument("--search-fraction", type=float, default=None, metavar="F",
                        help="search warm-up: fraction of the steps in which a global grid search against the "
                             "current map adds a candidate pose and teaches the encoder (default 0.5; 0 = the "
                             "paper's pure gradient descent)")
    _add_polish_arguments(parser)
    parser.add_argument("--shift-head", action="store_true",
                        help="learn a per-image shift correction (added to the file's origins)")
    parser.add_argument("--symmetry", default="C1", metavar="SYM",
                        help="point group of the particles (RELION symbols; default C1). The training stays in C1, "
                             "as cryoSPARC's and RELION's ab initio; then the map's symmetry axes are found, the "
                             "poses turned into the group's frame (RELION's axis conventions), and the polishing "
                             "and the final map impose the group")
    parser.add_argument("--train-symmetry", default="C1", metavar="SYM",
                        help="point group imposed on the map during training (default C1; not recommended: "
                             "imposing D2 on β-galactosidase from a random start stalled at ~45° median error where "
                             "C1 converged, an exploratory run)")
    add_contrast_arguments(parser)
    add_shift_estimation_arguments(parser, "centring, shift head, refined in polishing")
    parser.add_argument("--per-image-norm", action="store_true",
                        help="RELION's per-image normalisation (background s.d. 1 in every image) instead of one "
                             "global scale; for data whose noise level varies between micrographs")
    parser.add_argument("--no-whiten", action="store_true",
                        help="do not whiten images and projections with the noise spectrum measured on the "
                             "particles' background")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUTDIR (same options; --epochs, the runtime options and those of "
                             "what follows the training - polishing, --symmetry, --no-reconstruct - may change: "
                             "a finished run is then polished again without training)")
    parser.add_argument("--no-reconstruct", action="store_true", help="skip the final reconstruction")
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    add_runtime_arguments(parser, seed="random seed (default 0); part of the run's config",
                          precision=True, streaming=True,
                          threads_help="torch CPU threads (default: the idle cores, re-read every epoch)")


def _add_polish_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of what follows the training: the subset iterations and the polishing rounds."""
    parser.add_argument("--polish-rounds", type=int, default=2, metavar="N",
                        help="rounds of local refinement of the encoder's poses at the full box after training, each "
                             "against the map of the round before, read up to that map's FSC=0.143 resolution "
                             "(default 2; 0 = keep the encoder's poses; poses_encoder.star keeps them anyway)")
    parser.add_argument("--global-rounds", type=int, default=1, metavar="N",
                        help="the first N polishing rounds search every pose globally against the latest map "
                             "(15° grid refined to 3.75°, origins within ±2 pixels of the current ones), which "
                             "corrects the encoder's large errors; the later rounds are local (default 1; 0 = all "
                             "local)")
    parser.add_argument("--subset-iterations", type=int, default=20, metavar="N",
                        help="before the polishing rounds, iterate global search and reconstruction on 3,000 "
                             "particles at the working box until fewer than 2%% of their poses move by more than "
                             "7.5° or that fraction stops falling, at most N times; it undoes the distortion "
                             "preferred views leave in the encoder's map (default 20; 0 = none)")
    parser.add_argument("--no-marginal-start", action="store_true",
                        help="when the encoder's poses have collapsed onto few views (more than 10%% of the "
                             "Fourier directions undersampled after the subset iterations), the subset iterations "
                             "also start from a map found without the encoder (expectation-maximisation over a 15° "
                             "pose grid from random poses, on the same 3,000 particles) and keep the start the "
                             "particles fit better; this option turns that off")
    parser.add_argument("--no-rescue", action="store_true",
                        help="do not search globally, after each local polishing round, the particles whose score "
                             "falls in the low mode of the round's scores")


def config_from_args(args: argparse.Namespace):
    """The :class:`~cryopose.training.config.AbinitioConfig` the options describe."""
    from ..training.config import AbinitioConfig, ModelConfig, TrainingConfig

    model_kw = {"pose_param": args.pose_param, "shift_head": bool(args.shift_head), "symmetry": args.train_symmetry}
    if args.hypotheses is not None:
        model_kw["n_hypotheses"] = args.hypotheses
    train_kw = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
                "symmetric_loss": not args.no_symmetric_loss}
    if args.lr is not None:
        train_kw["lr"] = args.lr
    if args.volume_lr is not None:
        train_kw["volume_lr"] = args.volume_lr
    if args.no_frequency_marching:
        train_kw["march_fraction"] = 0.0
    if args.search_fraction is not None:
        train_kw["search_fraction"] = args.search_fraction
    from .common import tri_state

    return AbinitioConfig(box_size=args.box_size,
                          invert_contrast=tri_state(args, "invert_contrast"),
                          estimate_shifts=tri_state(args, "estimate_shifts"),
                          whiten=not args.no_whiten, per_image_normalization=bool(args.per_image_norm),
                          model=ModelConfig(**model_kw), training=TrainingConfig(**train_kw),
                          reconstruct=not args.no_reconstruct, polish_rounds=args.polish_rounds,
                          polish_global_rounds=args.global_rounds, polish_rescue=not args.no_rescue,
                          polish_subset_iterations=args.subset_iterations,
                          polish_marginal_start=not args.no_marginal_start,
                          symmetry=args.symmetry)


def run(args: argparse.Namespace) -> int:
    """Run ``cryopose abinitio``; returns the exit status."""
    from ..pipelines.abinitio import run_abinitio
    from .common import runtime_from_args, write_run_config

    runtime = runtime_from_args(args, command=COMMAND, training=True, distributed=True)
    # threads: the trainer's (the runtime's, else the idle cores); here only the subnormal floats
    dataclasses.replace(runtime, threads=None).apply()
    config = config_from_args(args)
    from .common import prepare_output_dir

    out = prepare_output_dir(args.output)  # a writable folder (created), before any work
    if not args.resume and (out / "checkpoint.pt").exists():
        from ..errors import UserError

        raise UserError(f"{out} already holds a run (checkpoint.pt); use --resume to continue it or another -o")
    def write_config(cfg) -> None:  # once the inputs are read and a resume is accepted
        if runtime.rank != 0:
            return
        write_run_config(out / "config.yaml", command_line=getattr(args, "command_line", ""), config=cfg,
                         extra={"particles": str(args.particles), "resume": bool(args.resume),
                                "runtime": runtime.describe()})

    result = run_abinitio(args.particles, out, config=config, pixel_size_angstrom=args.pixel_size,
                          ctf_star=args.ctf, datadir=args.datadir, optics_group=args.optics_group,
                          resume=args.resume, progress=not args.no_progress,
                          report=not args.no_report, on_start=write_config,
                          strict_box=args.box_size is not None, runtime=runtime)
    if runtime.rank != 0:
        return 0
    res = result.resolution_fsc0p143_angstrom
    for warning in result.warnings:
        print(f"cryopose abinitio: warning: {warning}", file=sys.stderr)
    print(f"inferred poses of {len(result.confidence)} particles (median confidence "
          f"{float(result.confidence.median()):.2f})" + ("" if res is None else f"; half-map FSC 0.143 at {res:.2f} Å"))
    print(f"wrote {result.poses_star}" + ("" if result.map_path is None else f", {result.map_path}") +
          f", {result.encoder_path}" + ("" if result.report_path is None else f", {result.report_path}"))
    return 0
