"""Why a pose-aware heterogeneity run misses a class: the true principal maps under its operator.

The pose-aware variant (``cryopose heterogeneity train``) finds the principal maps of the data
set by subspace iteration of an operator ``M`` (:meth:`cryopose.training.heterogeneity.HeteroTrainer.apply_operator`):
a direction is found when its Rayleigh quotient ``uᵀ M u`` (signal variance along ``u`` plus
the noise's share) stands above those of the noise directions. This script takes a finished run
of a simulated mixture and the true maps of its states, computes the principal maps of the
true mixture (weighted by the class fractions; each band-limited and masked as the run's basis
is), and prints, for each, its cosine with the run's subspace and its Rayleigh quotient beside
those of the run's own basis maps and of two random maps (the noise's typical share). A true direction whose quotient is below the run's noise
directions (the basis maps beyond the real variation) cannot be found by more iterations: it is
under the noise of the sample operator at this number of particles and resolution.

Usage (one pass over the particles; ``benchmarks/heterogeneity.py --keep DIR`` leaves a run
and the true maps on its grid)::

    python benchmarks/hetero_operator.py --run DIR/run_mix_snr0.1_s0 --particles DIR/mix_snr0p1_s0.star \\
        --true-map DIR/true_0_64.mrc DIR/true_1_64.mrc DIR/true_2_64.mrc --fractions 0.5 0.3 0.2
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a pose-aware `heterogeneity train` output folder")
    p.add_argument("--particles", required=True, help="the particles it was trained on (STAR)")
    p.add_argument("--true-map", nargs="+", required=True, help="the states' true maps, on the run's grid")
    p.add_argument("--fractions", nargs="+", type=float, required=True, help="the states' fractions")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if len(args.fractions) != len(args.true_map):
        p.error("one fraction per true map")

    import torch

    from cryopose.data.dataset import ParticleDataset
    from cryopose.io.mrc import read_map
    from cryopose.io.particles import load_particles
    from cryopose.training.checkpoint import HETEROGENEITY_FORMAT, load_checkpoint
    from cryopose.training.heterogeneity import HeteroTrainer, PoseAwareConfig, build_pose_aware_model

    torch.set_num_threads(args.threads)
    saved = load_checkpoint(f"{args.run}/model.pt", formats=(HETEROGENEITY_FORMAT,))
    config = PoseAwareConfig(**saved["config"])
    box = int(saved["working_box_size"])
    stack, meta = load_particles(args.particles)
    dataset = ParticleDataset(stack, meta, box_size=box, whiten=config.whiten)
    model = build_pose_aware_model(config, box_size=box, pixel_size_angstrom=dataset.pixel_size_angstrom)
    model.load_state_dict(saved["model"])
    trainer = HeteroTrainer(model, dataset, config)

    maps = torch.stack([torch.from_numpy(np.array(read_map(m).volume)).double() for m in args.true_map])
    if maps.shape[-1] != box:
        p.error(f"the true maps are {maps.shape[-1]} px, the run's grid {box} px")
    w = torch.tensor(args.fractions, dtype=torch.float64)
    w = w / w.sum()
    flat = maps.reshape(len(maps), -1)
    centred = flat - (w[:, None] * flat).sum(0)
    _, values, vt = torch.linalg.svd(w.sqrt()[:, None] * centred, full_matrices=False)
    k = len(maps) - 1  # K states span K - 1 directions
    true = trainer.band_limit(vt[:k].float().reshape(k, box, box, box))
    true = true / true.reshape(k, -1).norm(dim=1)[:, None, None, None]
    # two random maps for the noise's typical share: white within the run's band, and smooth
    # (the start basis' kind)
    g = torch.Generator().manual_seed(0)
    rand = torch.cat([trainer.band_limit(torch.randn(1, box, box, box, generator=g)), trainer.smooth_noise(1, g)])
    rand = rand / rand.reshape(2, -1).norm(dim=1)[:, None, None, None]
    basis = model.basis.reshape(model.zdim, -1).double()
    probes = torch.cat([true, model.basis, rand])
    t0 = time.perf_counter()
    out = trainer.apply_operator(probes)
    quotients = (probes.reshape(len(probes), -1).double() * out.reshape(len(probes), -1).double()).sum(1)

    print(f"run {args.run}: zdim {model.zdim}, {len(dataset)} particles, {box} px; one operator pass "
          f"{time.perf_counter() - t0:.0f} s")
    print("\n| map | variance (rel. to the first) | cosine with the run's subspace | Rayleigh quotient |")
    print("|---|---|---|---|")
    for i in range(k):
        cos = float((basis @ true[i].reshape(-1).double()).norm())
        rel = float(values[i] ** 2 / values[0] ** 2)
        print(f"| true principal map {i + 1} | {rel:.3f} | {cos:.3f} | {float(quotients[i]):.2f} |")
    for j in range(model.zdim):
        print(f"| run's basis map {j + 1} | — | 1 | {float(quotients[k + j]):.2f} |")
    for j, name in enumerate(("random map, white in the band", "random map, smooth")):
        cos = float((basis @ rand[j].reshape(-1).double()).norm())
        print(f"| {name} | — | {cos:.3f} | {float(quotients[k + model.zdim + j]):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
