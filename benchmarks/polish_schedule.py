"""The polishing rounds of ``abinitio``, timed stage by stage, from a finished run's encoder poses.

Takes a ``cryopose abinitio --symmetry SYM`` run of a ``benchmarks/realistic.py`` data set (its
``poses_encoder.star``: the encoder's poses, already turned into the group's frame) and runs
the polishing of :func:`cryopose.pipelines.polish.polish_rounds` again on ``--n`` of its
particles (a seeded random subset; all by default), as ``abinitio`` does after training: the
map of the encoder's poses at the box for twice the working pixel, then ``--rounds`` rounds
(the first ``--global-rounds`` global), the rescue on, origins refined. It prints the seconds
spent in each stage (global rounds, local rounds, rescues, reconstructions), what the rescues
did, the last map's half-map FSC = 0.143 resolution, and the median pose error (modulo the
group, after the global alignment) in all and by the angle between each particle's true
viewing direction and the preferred view's axis (``data.json``'s spec; the realistic sets put
40 % of the particles within 10° of it).

``--schedule three-levels`` runs every local round from ``--start-step`` to ``--final-step``
and the rescues to ``--final-step`` (the schedule before the two-level rounds), as a baseline
in the same process; ``current`` is :class:`~cryopose.pipelines.polish.PolishSchedule` as it is.
``--global-candidates 4 2`` refines four grid poses per particle in the global rounds and keeps
two (the setting before ``GLOBAL_CANDIDATES``); ``--local-from-step`` starts the local round
after a global round at ``--start-step`` (before session 20; it starts at half of it now);
``--subset-iterations 0`` leaves out the subset iterations
(:mod:`cryopose.pipelines.polish_subset`). The defaults are ``abinitio``'s.

Commands behind the numbers in docs/results/real-conditions.md (two threads, machine otherwise
idle). Sessions 17–19 ran with the code and defaults of their time (three rounds, two global,
no subset iterations, the local round from ``--start-step``; ``RUN`` = the seed-0 run of
session 17, ``runs/abinitio-D2-s17``)::

    D=benchmarks/_work/realistic/betagal_b128_n20000_s0/all_snr0.1
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2-s17 --n 5000 --global-rounds 1 \
        --schedule three-levels
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2-s17 --n 5000 --global-rounds 1
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2-s17 --global-rounds 1
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2-s17 --global-rounds 2

(those four with ``--global-candidates 4 2``). The global-candidate rows of session 18's seed-0
run (``runs/abinitio-D2-s18``), written for today's code (``OLD`` = the schedule of the time)::

    OLD="--rounds 3 --global-rounds 2 --subset-iterations 0"
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2-s18 --n 3000 $OLD \
        --global-candidates 4 2 --local-from-step
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2-s18 --n 3000 $OLD --global-candidates 4 2
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2-s18 --n 3000 $OLD --local-from-step
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2-s18 --n 3000 $OLD

The schedule rows of session 20 (seed 1, ``RUN`` = its session-19 run ``runs/abinitio-D2``; all
with the subset iterations; the last is today's default)::

    D=benchmarks/_work/realistic/betagal_b128_n20000_s1/all_snr0.1
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2 --n 3000 --rounds 3 \
        --global-rounds 2 --local-from-step
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2 --n 5000 --rounds 3 \
        --global-rounds 2 --local-from-step
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2 --n 5000 --rounds 3 --global-rounds 2
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2 --n 5000 --local-from-step
    python benchmarks/polish_schedule.py --data $D --run $D/runs/abinitio-D2 --n 5000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from realistic_data import load_subset

import cryopose.pipelines.polish as polish
from cryopose.pipelines.polish_subset import polish_from_subset
from cryopose.io.star import read_star
from cryopose.metrics.pose_error import align_rotations
from cryopose.reconstruction import reconstruct
from cryopose.rotations import relion_euler_to_rotmat
from cryopose.simulate.poses import view_directions

ANGLE_BANDS = [(0, 10), (10, 30), (30, 50), (50, 70), (70, 90)]


def _three_levels(schedule: polish.PolishSchedule, r: int, last: bool):
    return schedule.start_step_deg, schedule.final_step_deg


def _angle_from_preferred_deg(truth_rotmats: torch.Tensor, data_json: dict) -> np.ndarray:
    """Angle between each true viewing direction and the line of the preferred cap's centre
    (``preferred_rot_tilt_deg`` of the data set's spec; the opposite view counts as the same),
    degrees."""
    rot, tilt = data_json["spec"]["preferred_rot_tilt_deg"]
    centre = view_directions(relion_euler_to_rotmat(torch.tensor([[rot, tilt, 0.0]], dtype=torch.float64)))[0]
    cos = (view_directions(truth_rotmats.double()) @ centre).abs().clamp(max=1.0)
    return np.degrees(torch.arccos(cos).numpy())


def main() -> None:
    """Parse the options, polish, print the stage times and the errors."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="a realistic.py data folder (particles.star, truth.star)")
    ap.add_argument("--run", required=True, type=Path, help="an abinitio --symmetry run folder (poses_encoder.star)")
    ap.add_argument("--n", type=int, default=0, help="particles (seeded random subset; 0 = all)")
    ap.add_argument("--rounds", type=int, default=2, help="polishing rounds (default 2, abinitio's)")
    ap.add_argument("--global-rounds", type=int, default=1, help="global rounds among them (default 1, abinitio's)")
    ap.add_argument("--symmetry", default="D2")
    ap.add_argument("--start-step", type=float, default=3.75)
    ap.add_argument("--final-step", type=float, default=0.9375)
    ap.add_argument("--schedule", choices=["current", "three-levels"], default="current")
    ap.add_argument("--global-candidates", type=int, nargs=2, default=list(polish.GLOBAL_CANDIDATES),
                    metavar=("REFINED", "KEPT"), help="grid poses refined and kept after the first level in the "
                    "global rounds (default polish.GLOBAL_CANDIDATES; `cryopose search` uses 4 2)")
    ap.add_argument("--local-from-step", action="store_true",
                    help="the local round after a global round starts at --start-step (before session 20; now "
                    "it starts at half of it)")
    ap.add_argument("--subset-iterations", type=int, default=20, metavar="N",
                    help="at most N global iterations on a subset at the working box before the rounds "
                    "(cryopose.pipelines.polish_subset; default 20, abinitio's; 0 = none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    idx, src, sub, truth = load_subset(args.data, args.n, args.seed)
    enc = read_star(args.run / "poses_encoder.star", datadir=args.data)
    summary = json.loads((args.run / "summary.json").read_text())
    working_pixel = float(summary["working_pixel_size_angstrom"])
    t_idx = torch.as_tensor(idx)
    rot0, sh0 = enc.rotmats[t_idx].float(), enc.shifts_angstrom[t_idx].float()

    polish.GLOBAL_CANDIDATES = tuple(args.global_candidates)
    if args.local_from_step:
        def step_start(schedule, r, last):
            final = schedule.final_step_deg if last else 2.0 * schedule.final_step_deg
            start = schedule.start_step_deg if r == schedule.global_rounds else 0.5 * schedule.start_step_deg
            return max(start, final), final
        polish._local_steps = step_start
    if args.schedule == "three-levels":
        polish._local_steps = _three_levels
        rescue = polish.rescue_low_scores

        def rescue_to_final(*a, **kw):
            return rescue(*a, **{**kw, "refine_to_deg": args.final_step})
        polish.rescue_low_scores = rescue_to_final

    def rec(images, m, rot, sh, last=False):
        return reconstruct(images, m.replace(rotmats=rot.float(), shifts_angstrom=sh), symmetry=args.symmetry,
                           progress=False, generator=torch.Generator().manual_seed(args.seed), threads=args.threads)

    s0, m0 = polish.cropped(src, sub, polish.polishing_box(src.box_size, sub.pixel_size_angstrom, 2 * working_pixel))
    t0 = time.perf_counter()
    start = rec(s0, m0, rot0, sh0)
    start_seconds = time.perf_counter() - t0
    schedule = polish.PolishSchedule(rounds=args.rounds, global_rounds=args.global_rounds,
                                     start_step_deg=args.start_step, final_step_deg=args.final_step,
                                     estimate_shifts=True, working_pixel_angstrom=working_pixel,
                                     symmetry=args.symmetry, rescue=True)
    t0 = time.perf_counter()
    out = polish_from_subset(src, sub, rot0, sh0, start, schedule=schedule, reconstruct=rec,
                             max_iterations=args.subset_iterations)
    total = time.perf_counter() - t0
    print(f"{len(idx)} particles, {args.rounds} rounds ({args.global_rounds} global), schedule {args.schedule}, "
          f"global candidates {tuple(args.global_candidates)}, local round after a global one from the start "
          f"step: {args.local_from_step}, subset iterations {args.subset_iterations}, {args.threads} threads")
    print(f"encoder's map {start_seconds:.1f} s; polishing {total:.1f} s; by stage (s; rescues include their "
          f"global search): {out.seconds}; rescues (searched, replaced): {list(out.rescued)}")
    if out.subset_moved:
        print("subset iterations, fraction of poses moved: " + ", ".join(f"{v:.3f}" for v in out.subset_moved))
    print(f"half-map FSC=0.143: encoder's map {start.resolution_fsc0p143_angstrom:.2f} Å, "
          f"last map {out.reconstruction.resolution_fsc0p143_angstrom:.2f} Å")
    true_rot = truth.rotmats.double()
    angle = _angle_from_preferred_deg(true_rot, json.loads((args.data / "data.json").read_text()))
    for name, r in (("encoder", rot0), ("polished", out.rotmats)):
        err = align_rotations(r.double(), true_rot, symmetry=args.symmetry, seed=args.seed).errors_deg.numpy()
        bands = "; ".join(f"{lo}-{hi}°: {np.median(err[(angle >= lo) & (angle < hi)]):.2f}"
                          for lo, hi in ANGLE_BANDS if ((angle >= lo) & (angle < hi)).any())
        print(f"{name}: median {np.median(err):.2f}°, > 40°: {100 * (err > 40).mean():.1f} %; "
              f"by angle from the preferred axis: {bands}")


if __name__ == "__main__":
    main()
