"""Cost of one CryoPoseNet training step, by working box and by how the candidates are rendered.

A step (:meth:`cryopose.training.trainer.Trainer.train_step`) renders every candidate pose of
every image (``H`` hypotheses, twice with the symmetrised loss, plus the search warm-up's pose)
and keeps each image's best. Only the best candidate receives a gradient, so the trainer scores
the candidates without autograd and renders the winner again with it
(``Trainer._best_candidate_loss``). This script times, on the same particles, in the same
process and alternating so that load changes hit both alike:

* ``winner``: the trainer's step as it is (search warm-up on, then off);
* ``all``: the baseline that renders every candidate with autograd (the step before the change);

at each ``--boxes`` working box, and prints seconds per step and the ratio ``all / winner``.
The abinitio defaults otherwise (batch 64, 4 hypotheses, symmetrised loss, shift head on as
for particles without origins).

Command behind the numbers in docs/results/real-conditions.md::

    python benchmarks/realistic.py --quick --n 2000 --box 64 --structures betagal --rows all --snrs 0.1 --seeds 0 --skip-run
    python benchmarks/training_step.py \\
        --particles benchmarks/_work/realistic/betagal_b64_n2000_s0/all_snr0.1/particles.star --boxes 32 40 64 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from cryopose.data.dataset import ParticleDataset
from cryopose.io.particles import load_particles
from cryopose.pipelines.abinitio import build_model, resolve_config
from cryopose.training import trainer as trainer_module
from cryopose.training.config import AbinitioConfig, TrainingConfig
from cryopose.training.losses import best_candidate_loss, fourier_residuals
from cryopose.training.trainer import Trainer, estimate_volume_scale


def _all_candidates_loss(tr: Trainer):
    """The baseline: every candidate rendered with autograd (the loss of the step before)."""
    def loss(vft, batch, cands, cand_shifts, target, mask):
        pred = trainer_module._predict(tr.model, vft, batch, cands, cand_shifts)
        return best_candidate_loss(fourier_residuals(pred, target, mask))
    return loss


def _time_steps(tr: Trainer, variant: str, searching: bool, steps: int, batch: int) -> float:
    winner = tr._best_candidate_loss
    if variant == "all":
        tr._best_candidate_loss = _all_candidates_loss(tr)
    tr.step = 0 if searching else tr.total_steps  # inside or after the search warm-up
    t0 = time.perf_counter()
    for i in range(steps):
        tr.train_step(torch.arange(i * batch, (i + 1) * batch) % len(tr.dataset))
    dt = (time.perf_counter() - t0) / steps
    tr._best_candidate_loss = winner
    return dt


def main() -> None:
    """Parse the options, time the steps, print one table row per box and phase."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--particles", required=True, help="particle STAR (e.g. benchmarks/realistic.py data)")
    ap.add_argument("--boxes", type=int, nargs="+", default=[32, 64], help="working boxes, px")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant and phase (default 3)")
    ap.add_argument("--repeats", type=int, default=2, help="alternations of the two variants (default 2)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stack, meta = load_particles(args.particles)
    print(f"{args.particles}: {len(meta)} particles, {stack.box_size} px, {meta.pixel_size_angstrom:.2f} Å/px, "
          f"{args.threads} thread(s)")
    print("| working box | phase | winner s/step | all s/step | all / winner |")
    print("|---|---|---|---|---|")
    for box in args.boxes:
        cfg = resolve_config(AbinitioConfig(box_size=box, training=TrainingConfig()), meta, stack.box_size)
        ds = ParticleDataset(stack, meta, box_size=box, whiten=True)
        model = build_model(cfg, box_size=ds.box_size, pixel_size_angstrom=ds.pixel_size_angstrom)
        model.volume.scale.fill_(estimate_volume_scale(ds))
        tr = Trainer(model, ds, cfg.training, progress=False, symmetry="C1")
        bs = cfg.training.batch_size
        tr.train_step(torch.arange(bs))  # warm the allocator and the caches
        for searching in (True, False):
            times = {"winner": 0.0, "all": 0.0}
            for _ in range(args.repeats):
                for variant in ("winner", "all"):
                    times[variant] += _time_steps(tr, variant, searching, args.steps, bs) / args.repeats
            print(f"| {box} | {'search warm-up' if searching else 'after warm-up'} | {times['winner']:.2f} | "
                  f"{times['all']:.2f} | {times['all'] / times['winner']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
