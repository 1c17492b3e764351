"""Reconstruction with a point group: grids symmetrised once against every image inserted ``G`` times.

:class:`cryopose.reconstruction.Backprojector` inserts each image once and symmetrises the
Fourier grids when they are read, for groups whose operators are signed permutations (C2, C4,
D2, D4, O in RELION's frames), as RELION's ``BackProjector::symmetrise`` does; the baseline
(``symmetrise_grids=False``, measured in the same process) scatters every image at all ``G``
poses ``R S_g``. Both reconstruct the same particles with their true poses and origins; the
script prints the wall time of each (fastest of ``--repeats``), their ratio, the largest
difference between the two maps relative to the map's largest value, and both half-map
FSC = 0.143 resolutions.

Usage (a ``benchmarks/realistic.py`` data folder; its ``truth.star`` has the true poses)::

    D=benchmarks/_work/realistic/betagal_b128_n20000_s0/all_snr0.1
    python benchmarks/symmetry_grids.py --data $D --n 3000 --symmetry D2 --threads 2
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import torch
from realistic_data import load_subset

import cryopose.reconstruction.backprojection as backprojection
from cryopose.reconstruction.backprojector import Backprojector


def main() -> None:
    """Parse the options, reconstruct both ways, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="a realistic.py data folder (particles.star, truth.star)")
    ap.add_argument("--n", type=int, default=3000, help="particles (seeded random subset; 0 = all)")
    ap.add_argument("--symmetry", default="D2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    idx, src, sub, truth = load_subset(args.data, args.n, args.seed)
    posed = sub.replace(rotmats=truth.rotmats.float(), shifts_angstrom=truth.shifts_angstrom.float())
    results, times = {}, {}
    for name, symmetrise in [("G insertions per image (baseline)", False), ("symmetrised grids", None)]:
        backprojection.Backprojector = functools.partial(Backprojector, symmetrise_grids=symmetrise)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            rec = backprojection.reconstruct(src, posed, symmetry=args.symmetry, progress=False, threads=args.threads,
                                             generator=torch.Generator().manual_seed(args.seed))
            best = min(best, time.perf_counter() - t0)
        results[name], times[name] = rec, best
    backprojection.Backprojector = Backprojector
    (base_name, base), (new_name, new) = results.items()
    diff = float((new.volume - base.volume).abs().max() / base.volume.abs().max())
    print(f"{len(idx)} particles, box {src.box_size}, {args.symmetry}, {args.threads} threads, "
          f"fastest of {args.repeats}")
    for name, rec in results.items():
        print(f"  {name:36s} {times[name]:7.2f} s   FSC=0.143 {rec.resolution_fsc0p143_angstrom:.2f} Å")
    print(f"  speed-up {times[base_name] / times[new_name]:.2f}x; max |map difference| / max |map| = {diff:.1e}")


if __name__ == "__main__":
    main()
