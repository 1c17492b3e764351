"""Cost of reading a padded transform at many points: one ``grid_sample`` call against
:func:`cryopose.projection.fourier_slice.sample_padded` (the points split over the threads).

PyTorch's CPU kernel of 3D ``grid_sample`` parallelises over the batch only; every slice in
cryopose (the search's and polishing's band slices, the training's decoder, the heterogeneity
operator) reads one volume, a batch of one. This script times, in one process and alternating
so that load changes hit both alike, ``--repeats`` calls of each on the same random volume and
rotations — the band slices of a local search (27 rotations per particle, band radius 0.3 × the
box), forward only, and the decoder's full slices of a training step, forward and backward —
and prints seconds per call and the ratio ``grid_sample / sample_padded`` at each ``--boxes``.

Command behind the numbers in docs/results/scale.md::

    python benchmarks/slice_threads.py --threads 2
    python benchmarks/slice_threads.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cryopose.projection import fourier_slice
from cryopose.projection.fourier_slice import prepare_volume_ft, slice_volume_ft
from cryopose.search import band as band_module
from cryopose.search.band import make_band, slice_band


def _one_call(data, index):
    """The baseline: one ``grid_sample`` call (what :func:`sample_padded` did before the split)."""
    grid = index * (2.0 / (data.shape[-1] - 1)) - 1.0
    return F.grid_sample(data, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _rotations(m: int, seed: int) -> torch.Tensor:
    q = torch.randn(m, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).T
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3).float()


def _search_call(vft, rot, band):
    with torch.no_grad():
        return slice_band(vft, rot, band)


def _train_call(vol, rot):
    v = vol.detach().requires_grad_()
    out = slice_volume_ft(prepare_volume_ft(v), rot)
    (out.real.square().sum() + out.imag.square().sum()).backward()
    return v.grad


def _time(fn, sampler, repeats: int) -> float:
    saved = fourier_slice.sample_padded, band_module.sample_padded
    fourier_slice.sample_padded = band_module.sample_padded = sampler
    try:
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats
    finally:
        fourier_slice.sample_padded, band_module.sample_padded = saved


def main() -> None:
    """Parse the options and print one line per box and workload."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boxes", type=int, nargs="+", default=[46, 66, 90, 128])
    ap.add_argument("--particles", type=int, default=512, help="particles of a local-search chunk")
    ap.add_argument("--batch", type=int, default=256, help="images of a training step (4 hypotheses × 64)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    new = fourier_slice.sample_padded
    print(f"threads {args.threads}")
    print(f"{'box':>4} {'workload':<26} {'grid_sample s':>13} {'sample_padded s':>15} {'ratio':>6}")
    for n in args.boxes:
        vol = torch.randn(n, n, n, generator=torch.Generator().manual_seed(n))
        vft = prepare_volume_ft(vol)
        band = make_band(n, 0.3 * n)
        rot = _rotations(27 * args.particles, 1)
        cases = [(f"search slices ({27 * args.particles})", lambda: _search_call(vft, rot, band))]
        if n <= 64:
            rot_t = _rotations(args.batch, 2)
            cases.append((f"training slices ({args.batch}) f+b", lambda: _train_call(vol, rot_t)))
        for name, fn in cases:
            fn()  # warm
            old_s = new_s = 0.0
            for _ in range(2):  # alternate
                old_s += _time(fn, _one_call, args.repeats)
                new_s += _time(fn, new, args.repeats)
            print(f"{n:>4} {name:<26} {old_s / 2:>13.3f} {new_s / 2:>15.3f} {old_s / new_s:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
