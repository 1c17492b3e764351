"""Polishing rounds after CryoPoseNet inference: pose error and cost per round.

Takes a trained ``encoder.pt`` (from ``cryopose abinitio``) and the particles it was trained on
with their true poses (e.g. the demo's ``particles.star``), infers the encoder's poses, and runs
``--rounds`` rounds of local polishing (:func:`cryopose.pipelines.polish.polish_poses`, the
``abinitio`` default lattice 3.75° → 0.9375°), each against the map reconstructed from the
poses of the round before, with the band limited to 0.9 × that map's half-map FSC = 0.143
resolution (``abinitio``'s resolution schedule) or, with ``--no-band-limit``, up to Nyquist.
After each round it prints the median pose error after global alignment (rotation and hand,
modulo ``--symmetry``, as the demo scores) and the seconds the polishing took.

Command behind the numbers in docs/concepts/defaults.md (one thread)::

    cryopose demo -o DEMO
    python benchmarks/polish_rounds.py --particles DEMO/particles.star --encoder DEMO/abinitio/encoder.pt \\
        --symmetry D2 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from cryopose.data.dataset import ParticleDataset
from cryopose.io.particles import load_particles
from cryopose.metrics.pose_error import align_rotations
from cryopose.pipelines.abinitio import load_encoder
from cryopose.pipelines.polish import polish_poses
from cryopose.reconstruction import reconstruct
from cryopose.training.trainer import infer_poses


def main() -> None:
    """Parse the options, run the rounds, print one line per round."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--particles", required=True, help="STAR with the true poses (the encoder's training set)")
    ap.add_argument("--encoder", required=True, help="encoder.pt of cryopose abinitio")
    ap.add_argument("--symmetry", default="C1", help="point group for scoring (D2 for β-gal)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-band-limit", action="store_true", help="polish up to Nyquist in every round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stack, meta = load_particles(args.particles)
    config, model, info = load_encoder(args.encoder)
    ds = ParticleDataset(stack, meta, box_size=info["working_box_size"], invert=bool(config.invert_contrast),
                         normalization=info["normalization"])
    rot = infer_poses(model, ds, symmetric=config.training.symmetric_loss).rotmats

    def rec_of(r):
        return reconstruct(stack, meta.replace(rotmats=r.float()), symmetry="C1", progress=False,
                           generator=torch.Generator().manual_seed(args.seed), threads=args.threads)

    def err(r):
        return align_rotations(r.double(), meta.rotmats.double(), symmetry=args.symmetry, seed=args.seed).median_error_deg

    rec = rec_of(rot)
    print(f"encoder: median {err(rot):.2f}°, half-map FSC0.143 {rec.resolution_fsc0p143_angstrom:.1f} Å")
    for r in range(1, args.rounds + 1):
        limit = None if args.no_band_limit else 0.9 * rec.resolution_fsc0p143_angstrom
        t = time.perf_counter()
        rot = polish_poses(stack, meta, rot, rec.volume, start_step_deg=config.polish_start_step_deg,
                           final_step_deg=config.polish_final_step_deg, max_resolution_angstrom=limit)
        dt = time.perf_counter() - t
        rec = rec_of(rot)
        band = "Nyquist" if limit is None else f"{limit:.1f} Å"
        print(f"round {r}: median {err(rot):.2f}°, half-map FSC0.143 {rec.resolution_fsc0p143_angstrom:.1f} Å, "
              f"band to {band}, {dt:.0f} s")


if __name__ == "__main__":
    main()
