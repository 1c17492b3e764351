"""The polishing rescue on a finished run: which particles it flags, and what a global search
of them against the run's own map recovers.

Takes a run's poses and map (``cryopose refine``'s ``particles.star`` and ``map.mrc``, or
``abinitio``'s ``poses.star`` and ``map.mrc``) and the true poses of the same particles,
scores every pose against the map (:func:`cryopose.search.projection_matching.local_search`
at the run's own pose, one step), flags the low mode of those scores
(:func:`cryopose.pipelines.polish.low_score_particles`, the rule of ``refine``'s rescue),
searches the flagged particles globally and keeps each global pose that scores higher
(:func:`cryopose.pipelines.polish.rescue_low_scores`, what ``refine`` does after each
polishing round; origins ±2 px). It prints the fraction flagged, the fraction of the flagged and unflagged
particles more than 40° off, and the median error, the fraction within 5° and the fraction
more than 40° off before and after (modulo ``--symmetry``, after the global alignment of
:func:`cryopose.metrics.pose_error.align_rotations`: an ``abinitio`` map has its own frame
and hand). ``--search-symmetry`` is the point group the run used (``abinitio``: C1) when it
differs from the particles' (``--symmetry``, for the errors).

Command behind the numbers in docs/results/real-conditions.md::

    D=benchmarks/_work/realistic/betagal_b128_n20000_s0/all_snr0.1
    python benchmarks/polish_rescue.py --poses $D/runs/refine/particles.star --map $D/runs/refine/map.mrc \\
        --truth $D/truth.star --symmetry D2 --box 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cryopose.fourier import fourier_downsample_volume
from cryopose.io.mrc import read_map
from cryopose.io.particles import load_particles
from cryopose.io.star import read_star
from cryopose.metrics.pose_error import align_rotations
from cryopose.pipelines.polish import cropped, low_score_particles, rescue_low_scores
from cryopose.search.projection_matching import SearchConfig, local_search
from cryopose.search.run import ResampledImages


def _summary(err: np.ndarray) -> str:
    return (f"median {np.median(err):.2f}°, {100 * (err <= 5).mean():.0f} % ≤ 5°, "
            f"{100 * (err > 40).mean():.0f} % > 40°")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--poses", required=True, help="the run's poses (STAR, origins in Å)")
    p.add_argument("--map", required=True, help="the run's map (at the particles' box)")
    p.add_argument("--truth", required=True, help="the same particles with their true poses")
    p.add_argument("--symmetry", default="C1", help="point group of the particles (errors; and search by default)")
    p.add_argument("--search-symmetry", help="point group of the run's map and of the search (default --symmetry)")
    p.add_argument("--box", type=int, default=64, help="box the particles are Fourier-cropped to (px)")
    p.add_argument("--max-resolution", type=float, default=15.0, help="band limit of the scores, Å")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    stack, est = load_particles(args.poses)
    truth = read_star(args.truth, datadir="/")
    sym = args.search_symmetry or args.symmetry

    def errors(rot):
        return align_rotations(rot.double(), truth.rotmats.double(), symmetry=args.symmetry, seed=0).errors_deg.numpy()

    err = errors(est.rotmats)
    # the contrast the run settled on: refine's report.json, abinitio's summary.json
    found = [f for f in (Path(args.poses).with_name(n) for n in ("report.json", "summary.json")) if f.is_file()]
    invert = bool(json.loads(found[0].read_text()).get("contrast_inverted")) if found else False
    src, meta = cropped(ResampledImages(stack, stack.box_size, invert_contrast=invert), est, args.box)
    vol = fourier_downsample_volume(torch.as_tensor(np.array(read_map(args.map).volume)).float(), args.box)
    t0 = time.perf_counter()
    cfg = SearchConfig(symmetry=sym, final_step_deg=1.875, max_resolution_angstrom=args.max_resolution)
    scored = local_search(src, vol, meta.pixel_size_angstrom, est.rotmats.float(), est.shifts_angstrom.float(),
                          ctf=est.ctf, config=cfg, start_step_deg=1.875, shift_step_angstrom=0.0)
    t1 = time.perf_counter()
    new, _, (searched, replaced) = rescue_low_scores(
        src, meta, vol, est.rotmats.float(),
        est.shifts_angstrom.float(), scored.scores, symmetry=sym, refine_to_deg=0.9375,
        max_resolution_angstrom=args.max_resolution, search_shifts=True)
    low = low_score_particles(scored.scores)  # the particles it searched (for the report)
    print(f"scored {len(est)} particles in {t1 - t0:.0f} s, rescue {time.perf_counter() - t1:.0f} s")
    if searched == 0:
        print(f"no separate low mode, nothing flagged; {_summary(err)}")
        return
    print(f"flagged {100 * low.mean():.1f} %: {100 * (err[low] > 40).mean():.0f} % of them > 40° off, "
          f"{100 * (err[~low] > 40).mean():.1f} % of the rest; {searched} searched globally, {replaced} poses replaced")
    after = errors(new)
    print(f"before: {_summary(err)}")
    print(f"after:  {_summary(after)}")


if __name__ == "__main__":
    main()
