"""Imposing the particles' point group after a C1 ab initio run: what it changes.

Takes a finished C1 ``cryopose abinitio`` run of a ``benchmarks/realistic.py`` data set (its
``poses.star`` and ``map.mrc``), finds the map's symmetry axes
(:func:`cryopose.reconstruction.symmetry_axes.find_symmetry_axes`), turns every pose into the
group's frame, and runs ``--rounds`` local polishing rounds with the group imposed and the rescue
on (:func:`cryopose.pipelines.polish.polish_rounds`: the schedule of ``refine``, a homogeneous
refinement with symmetry) from the reconstruction at twice the working pixel, as ``abinitio
--symmetry`` does after training. Then it scores poses, origins and the map against the truth
as ``benchmarks/realistic.py`` does (pose error modulo the group after the global alignment,
origin error after the fitted map translation, the map fitted onto the true map), before and
after.

Command behind the s1 numbers in docs/results/real-conditions.md (two threads)::

    D=benchmarks/_work/realistic/betagal_b128_n20000_s1/all_snr0.1
    python benchmarks/symmetry_polish.py --data $D --run $D/runs/abinitio -o /tmp/symmetry_polish --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realistic as rb  # noqa: E402  (the realistic benchmark's scoring)

from cryopose.io.mrc import read_map, write_map  # noqa: E402
from cryopose.io.particles import load_particles  # noqa: E402
from cryopose.io.star import read_star, write_star  # noqa: E402
from cryopose.metrics.pose_error import align_rotations  # noqa: E402
from cryopose.pipelines.polish import PolishSchedule, cropped, polish_rounds, polishing_box  # noqa: E402
from cryopose.reconstruction import reconstruct  # noqa: E402
from cryopose.reconstruction.symmetry_axes import aligned_rotmats, find_symmetry_axes  # noqa: E402


def score(data: Path, poses: Path, map_path: Path, symmetry: str) -> str:
    """One line: median pose error, % ≤ 5°, preferred / other views, origin error, fitted map."""
    meta = json.loads((data / "data.json").read_text())
    est = read_star(poses, datadir="/")
    ref = read_star(data / "truth.star", datadir="/")
    aln = align_rotations(est.rotmats.double(), ref.rotmats.double(), symmetry=symmetry, seed=0)
    err = aln.errors_deg.numpy()
    tilt = np.degrees(np.arccos(np.abs(ref.rotmats.double().numpy()[:, 2, 2]).clip(0, 1)))
    pref = tilt < float(meta.get("spec", {}).get("preferred_cone_deg", 10.0)) + 2.0
    apix = float(meta["pixel_size_angstrom"])
    d_px = (est.shifts_angstrom.double().numpy() - ref.shifts_angstrom.double().numpy()) / apix
    _, resid = rb._fit_translation(est.rotmats.double().numpy(), d_px)
    fitted = rb._fitted_map_fsc(map_path, Path(meta["truth_map"]), aln.global_rotation, aln.mirrored)
    return (f"median {np.median(err):.2f}°, {100 * (err <= 5).mean():.0f} % ≤ 5°, {100 * (err > 40).mean():.0f} % > 40°"
            f" (preferred view {np.median(err[pref]):.2f}°, others {np.median(err[~pref]):.2f}°); origins "
            f"{np.median(resid):.2f} px; map fitted onto the truth FSC=0.143 {fitted['fsc0p143_angstrom']:.2f} Å")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="a realistic.py data set (data.json, truth.star)")
    p.add_argument("--run", type=Path, required=True, help="a C1 abinitio run on it (poses.star, map.mrc, summary.json)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for the new poses.star and map.mrc")
    p.add_argument("--symmetry", default=None, help="point group (default: the data set's)")
    p.add_argument("--rounds", type=int, default=2, help="local polishing rounds (default 2)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    meta = json.loads((args.data / "data.json").read_text())
    sym = args.symmetry or meta["symmetry"]
    summary = json.loads((args.run / "summary.json").read_text())
    args.output.mkdir(parents=True, exist_ok=True)
    print(f"C1 run:  {score(args.data, args.run / 'poses.star', args.run / 'map.mrc', sym)}", flush=True)
    stack, est = load_particles(args.run / "poses.star")
    apix = float(est.pixel_size_angstrom)
    t0 = time.perf_counter()
    volume = torch.as_tensor(np.array(read_map(args.run / "map.mrc").volume)).float()
    found = find_symmetry_axes(volume, apix, sym, resolution_angstrom=summary["resolution_fsc0p143_angstrom"])
    rot = aligned_rotmats(est.rotmats.float(), found.rotation)
    t1 = time.perf_counter()
    print(f"{sym} axes found in {t1 - t0:.0f} s (score {found.score:.3f})", flush=True)
    generator = torch.Generator()

    def rebuild(src, m, r, s, last):
        return reconstruct(src, m.replace(rotmats=r.float(), shifts_angstrom=s), symmetry=sym,
                           generator=generator.manual_seed(0), threads=args.threads)

    work_apix = float(summary["working_pixel_size_angstrom"])
    src, m = cropped(stack, est, polishing_box(stack.box_size, apix, 2 * work_apix))
    schedule = PolishSchedule(rounds=args.rounds, global_rounds=0, start_step_deg=3.75, final_step_deg=0.9375,
                              estimate_shifts=True, working_pixel_angstrom=work_apix, symmetry=sym, rescue=True)
    out = polish_rounds(stack, est, rot, est.shifts_angstrom.float(), rebuild(src, m, rot, est.shifts_angstrom, False),
                        schedule=schedule, reconstruct=rebuild)
    t2 = time.perf_counter()
    write_star(args.output / "poses.star", est.replace(rotmats=out.rotmats, shifts_angstrom=out.shifts_angstrom))
    write_map(args.output / "map.mrc", out.reconstruction.volume, apix)
    print(f"{args.rounds} {sym} rounds in {t2 - t1:.0f} s (rescue: searched, replaced per round {out.rescued}); "
          f"own half-map FSC=0.143 {out.reconstruction.resolution_fsc0p143_angstrom:.2f} Å", flush=True)
    print(f"{sym}:      {score(args.data, args.output / 'poses.star', args.output / 'map.mrc', sym)}", flush=True)


if __name__ == "__main__":
    main()
