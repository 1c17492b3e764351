"""Amortized pose inference: poses of (unseen) particles from a trained network.

MODEL.pt is either a CryoPoseNet encoder.pt (`cryopose abinitio`) or a supervised orientation
regressor model.pt (Lian et al. 2022; `cryopose train-supervised`, `cryopose refine`,
model_kind "supervised"); the kind is read from the file.

CryoPoseNet: each image is Fourier-cropped to the encoder's working pixel size and normalised as
in training, encoded into its candidate poses in one forward pass, and the candidate whose
projection of the trained map (with the particle's CTF and origin, when the file has them) fits
the image best is kept; the output has rlnCryoposeConfidence.

Supervised: each image is Fourier-cropped to the network's input box and its orientation
regressed in one forward pass (no shifts, no CTF, no confidence; the input's origins are kept).
The particles are negated as in training: `train-supervised` and `refine` record their
--invert-contrast in the checkpoint and predict applies it by itself. --invert-contrast is only
for older checkpoints without that record (trained with --invert-contrast); passing it for a
checkpoint that records training without it is an error.

--int8 (both kinds) runs the network in 8-bit integers on the CPU, calibrated on the first 256
particles: several times faster; poses move a little (see the README). For CryoPoseNet only
the encoder is quantized; its candidates are still scored in float against the map.

Writes POSES.star (RELION 3.1, the input's particle order and pixel size). The particles must
have the same box in Å as the training particles.
"""

from __future__ import annotations

import argparse

COMMAND = "predict"
HELP = "poses of new particles from a trained CryoPoseNet encoder or supervised regressor (amortized inference)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``predict`` options to ``parser``."""
    from .common import add_datadir_argument, add_force_argument, add_runtime_arguments

    parser.add_argument("model", metavar="MODEL.pt",
                        help="encoder.pt of `cryopose abinitio`, or model.pt of `cryopose train-supervised`/`refine`")
    parser.add_argument("particles", metavar="PARTICLES", help="particles: .star, .cs, or .mrcs with --ctf")
    parser.add_argument("-o", "--output", required=True, metavar="POSES.star", help="output STAR file")
    parser.add_argument("--ctf", metavar="STAR", help="for a bare .mrcs: STAR file with one CTF row per image")
    parser.add_argument("--pixel-size", type=float, metavar="A", help="pixel size in Å (must agree with the file)")
    add_datadir_argument(parser)
    parser.add_argument("--invert-contrast", action="store_true",
                        help="supervised models from older versions only: negate the particles first, as "
                             "the training run did (newer supervised models and CryoPoseNet encoders record "
                             "their own setting, which is applied without this option)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    parser.add_argument("--test-time-turns", action="store_true",
                        help="supervised models: average the predictions for the four quarter turns of each "
                             "image, modulo the model's point group (4× the time)")
    from ..models.quantize import INT8_CALIBRATION_PARTICLES

    parser.add_argument("--int8", action="store_true",
                        help="run the network (CryoPoseNet: its encoder) in 8-bit integers on the CPU, calibrated "
                             f"on the first {INT8_CALIBRATION_PARTICLES} particles (several times faster; see the "
                             "README for the change in poses)")
    add_force_argument(parser)
    add_runtime_arguments(parser, seed=None, precision=True, streaming=True)


def run(args: argparse.Namespace) -> int:
    """Run ``cryopose predict``; returns the exit status (0).

    For a supervised model, ``--invert-contrast`` is passed on as ``invert_contrast=True`` and
    its absence as ``None`` (use the checkpoint's recorded setting, else none).

    Raises:
        UserError: ``--batch-size`` or ``--threads`` < 1, ``--invert-contrast`` with a CryoPoseNet
            encoder or with a supervised checkpoint recorded as trained without it, an
            unreadable model, or particles the model cannot take (box in Å).
    """
    from ..errors import UserError
    from ..pipelines.predict import predict_poses, predict_poses_supervised, read_model_file
    from .common import runtime_from_args

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.int8 and str(args.device).lower() == "auto":
        args.device = "cpu"  # the int8 engine is the CPU's, whatever GPU the machine has
    runtime = runtime_from_args(args, command=COMMAND, distributed=True)
    if args.int8 and (runtime.device.type != "cpu" or runtime.precision != "32"):
        raise UserError("--int8 runs the network in 8-bit integers on the CPU: use it with --device cpu and "
                        "--precision 32")
    runtime.apply()
    from .common import refuse_overwrite

    refuse_overwrite([args.output], force=args.force)
    kind, state = read_model_file(args.model)
    if kind == "supervised" and runtime.world_size > 1:
        raise UserError(f"{args.model}: supervised models are predicted in one process; run without torchrun")
    if kind == "supervised":
        rot = predict_poses_supervised(args.model, args.particles, args.output, pixel_size_angstrom=args.pixel_size,
                                       ctf_star=args.ctf, batch_size=args.batch_size,
                                       invert_contrast=True if args.invert_contrast else None,
                                       test_time_turns=args.test_time_turns, int8=args.int8, state=state,
                                       datadir=args.datadir, runtime=runtime, optics_group=args.optics_group)
        print(f"predicted orientations of {rot.shape[0]} particles (supervised regressor); wrote {args.output}")
        return 0
    if args.test_time_turns:
        raise UserError(f"--test-time-turns is for supervised models, not the CryoPoseNet encoder {args.model}")
    if args.invert_contrast:
        raise UserError(f"--invert-contrast is for supervised models; the CryoPoseNet encoder {args.model} "
                        "records its own contrast setting")
    inf = predict_poses(args.model, args.particles, args.output, pixel_size_angstrom=args.pixel_size,
                        ctf_star=args.ctf, batch_size=args.batch_size, int8=args.int8,
                        progress=not args.no_progress, state=state, datadir=args.datadir, runtime=runtime,
                        optics_group=args.optics_group)
    if runtime.rank == 0:
        shards = "" if runtime.world_size == 1 else f" in {runtime.world_size} processes"
        print(f"predicted poses of {len(inf.confidence)} particles{shards} (median confidence "
              f"{float(inf.confidence.median()):.2f}); wrote {args.output}")
    return 0
