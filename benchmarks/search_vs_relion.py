"""``cryopose search`` vs ``relion_refine`` on the same particles and reference.

Simulates particles (β-gal, D2, or 4AKE, C1; CTF, white noise at a chosen SNR, small shifts),
then finds their poses twice, single-threaded, against the *true* map:

* ``cryopose search``: global Hopf/HEALPix grid at 15° (HEALPix order 2) × shift lattice,
  CTF-aware NCC, local refinement halving the step down to ``--final-step``.
* ``relion_refine`` (RELION 3.1), one E-step (``--iter 1 --skip_maximize``) with
  cross-correlation scoring (``--firstiter_cc``), ``--healpix_order H`` with adaptive
  oversampling 1 (finest sampling ``60°/2^(H+1)``; H = 3 → 3.75°), the same offset range,
  ``--ctf``, the same symmetry, ``--j 1``.

Printed: wall time and time per particle of each, the median/mean geodesic error of each
against the ground truth (modulo the point group, no global alignment: both searched against
the true map) and their mutual angular agreement.

Usage::

    python benchmarks/search_vs_relion.py --structure betagal --n 200 --box 32 --snr 0.1
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryopose.io.mrc import write_map
from cryopose.io.particles import load_particles
from cryopose.io.star import read_star
from cryopose.metrics.pose_error import symmetry_aware_errors
from cryopose.search.projection_matching import SearchConfig, search_poses
from cryopose.simulate import SimulationConfig, load_volume, simulate_particles

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STRUCTURES = {
    "betagal": (DATA / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc", "D2"),
    "4ake": (DATA / "pdb" / "4ake_mdanalysis.pdb", "C1"),
}


def _summary(err: torch.Tensor) -> str:
    return f"{float(err.median()):6.2f}° / {float(err.mean()):6.2f}°"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--structure", choices=sorted(STRUCTURES), default="betagal")
    p.add_argument("--n", type=int, default=200, help="particles (default 200)")
    p.add_argument("--box", type=int, default=32, help="box in pixels (default 32)")
    p.add_argument("--snr", type=float, default=0.1, help="SNR (default 0.1; 0 = noise-free)")
    p.add_argument("--shift-px", type=float, default=2.0, help="true shifts uniform in a disc of this radius (px)")
    p.add_argument("--healpix-order", type=int, default=3, help="RELION --healpix_order (default 3 = 7.5°)")
    p.add_argument("--final-step", type=float, default=3.75, help="cryopose finest step, degrees (default 3.75)")
    p.add_argument("--out", default="bench_out/search_vs_relion", help="work folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if shutil.which("relion_refine") is None:
        print("relion_refine not found: apt-get install -y relion", file=sys.stderr)
        return 2
    out = Path(args.out) / f"{args.structure}_{args.box}px_snr{args.snr:g}"
    out.mkdir(parents=True, exist_ok=True)
    path, sym = STRUCTURES[args.structure]
    vol = load_volume(path, box_size=args.box)
    px = vol.pixel_size_angstrom
    write_map(out / "reference.mrc", vol.volume, px)
    cfg = SimulationConfig(snr=args.snr or None, shift_max_angstrom=args.shift_px * px,
                           defocus_range_angstrom=(10000.0, 25000.0))
    simulate_particles(vol.volume, pixel_size_angstrom=px, n_particles=args.n, config=cfg, generator=args.seed,
                       output=out / "particles")
    stack, meta = load_particles(out / "particles.star")
    images = stack[np.arange(len(stack))]
    offset_px = int(np.ceil(args.shift_px + 1))

    # cryopose search
    scfg = SearchConfig(step_deg=15.0, final_step_deg=args.final_step, symmetry=sym,
                        shift_range_angstrom=offset_px * px)
    t0 = time.perf_counter()
    res = search_poses(images, torch.from_numpy(vol.volume), px, ctf=meta.ctf, config=scfg)
    t_cp = time.perf_counter() - t0

    # relion_refine, one E-step with CC scoring
    rdir = out / "relion"
    rdir.mkdir(exist_ok=True)
    cmd = ["relion_refine", "--i", str((out / "particles.star").resolve()), "--o", str((rdir / "run").resolve()),
           "--ref", str((out / "reference.mrc").resolve()), "--iter", "1", "--K", "1", "--skip_maximize",
           "--firstiter_cc", "--ctf", "--healpix_order", str(args.healpix_order), "--oversampling", "1",
           "--offset_range", str(offset_px), "--offset_step", "1", "--sym", sym, "--particle_diameter",
           f"{0.9 * args.box * px:.1f}", "--ini_high", f"{2.0 * px:.2f}", "--pad", "2", "--j", "1",
           "--dont_check_norm", "--zero_mask", "--verb", "0"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)  # image names resolve from here, where cryopose ran
    t_rel = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        return 1
    rel = read_star(rdir / "run_it001_data.star", require_image_names=False)
    # match RELION's rows to ours by image number
    names = [str(v) for v in rel.table["rlnImageName"]]
    order = np.argsort([int(n.split("@")[0]) for n in names])
    rel_rot = rel.rotmats[torch.as_tensor(order)]

    truth = meta.rotmats
    e_cp = symmetry_aware_errors(res.rotmats, truth, symmetry=sym)
    e_rel = symmetry_aware_errors(rel_rot, truth, symmetry=sym)
    agree = symmetry_aware_errors(res.rotmats, rel_rot, symmetry=sym)
    rows = {
        "structure": args.structure, "symmetry": sym, "n": args.n, "box": args.box, "pixel_angstrom": px,
        "snr": args.snr, "cryopose": {"seconds": t_cp, "ms_per_particle": 1000 * t_cp / args.n,
                                      "median_error_deg": float(e_cp.median()), "mean_error_deg": float(e_cp.mean()),
                                      "grid": res.info},
        "relion": {"seconds": t_rel, "ms_per_particle": 1000 * t_rel / args.n,
                   "median_error_deg": float(e_rel.median()), "mean_error_deg": float(e_rel.mean()),
                   "command": " ".join(cmd)},
        "agreement_median_deg": float(agree.median()), "agreement_within_5deg": float((agree < 5).double().mean()),
    }
    (out / "result.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{args.structure} ({sym}), {args.n} particles, {args.box} px at {px:.3f} Å, SNR {args.snr:g}, CTF, "
          f"shifts ≤ {args.shift_px:g} px; single thread")
    print(f"{'program':<28} {'wall s':>8} {'ms/ptcl':>9}   {'error vs truth median / mean':>30}")
    print(f"{'cryopose search 15°→' + f'{args.final_step:g}°':<28} {t_cp:8.1f} {1000 * t_cp / args.n:9.1f}   "
          f"{_summary(e_cp):>30}")
    fine = 60.0 / 2 ** (args.healpix_order + 1)
    print(f"{'relion_refine hp' + str(args.healpix_order) + f' (→{fine:g}°)':<28} {t_rel:8.1f} "
          f"{1000 * t_rel / args.n:9.1f}   {_summary(e_rel):>30}")
    print(f"agreement cryopose vs RELION (modulo {sym}): median {float(agree.median()):.2f}°, "
          f"{100 * float((agree < 5).double().mean()):.0f}% within 5°; speed ratio RELION/cryopose "
          f"{t_rel / t_cp:.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
