"""Amortized pose inference: poses of (unseen) particles from an encoder trained by `cryopose abinitio`.

Each image is Fourier-cropped to the encoder's working pixel size and normalised as in training,
encoded into its candidate poses in one forward pass, and the candidate whose projection of the
trained map (with the particle's CTF and origin, when the file has them) fits the image best is
kept. Writes POSES.star (RELION 3.1, the input's particle order and pixel size, with
rlnCryoposeConfidence). The particles must have the same box in Å as the training particles.
"""

from __future__ import annotations

import argparse

COMMAND = "predict"
HELP = "poses of new particles from a trained CryoPoseNet encoder (amortized inference)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``predict`` options to ``parser``."""
    parser.add_argument("encoder", metavar="ENCODER.pt", help="encoder.pt written by `cryopose abinitio`")
    parser.add_argument("particles", metavar="PARTICLES", help="particles: .star, .cs, or .mrcs with --ctf")
    parser.add_argument("-o", "--output", required=True, metavar="POSES.star", help="output STAR file")
    parser.add_argument("--ctf", metavar="STAR", help="for a bare .mrcs: STAR file with one CTF row per image")
    parser.add_argument("--pixel-size", type=float, metavar="A", help="pixel size in Å (must agree with the file)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``cryopose predict``; returns the exit status."""
    import torch

    from ..errors import UserError
    from ..pipelines.abinitio import predict_poses

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    inf = predict_poses(args.encoder, args.particles, args.output, pixel_size_angstrom=args.pixel_size,
                        ctf_star=args.ctf, batch_size=args.batch_size, progress=not args.no_progress)
    print(f"predicted poses of {len(inf.confidence)} particles (median confidence "
          f"{float(inf.confidence.median()):.2f}); wrote {args.output}")
    return 0
