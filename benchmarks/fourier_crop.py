"""Benchmark the Fourier crop of real images: half-spectrum path against the centred full transforms.

``cryopose.fourier.fourier_downsample_images`` crops real images with ``rfft2``/``irfft2``
(what ``cryopose predict``, ``search``, ``refine`` and the training data sets run on every
batch). The baseline, timed in the same run on the same images, is the definition it replaced:
centred complex ``fft2`` of the whole box, crop, ``ifft2``, real part. Prints the best of
``--repeats`` wall times of each, per image, their ratio and the largest difference of the
outputs.

Usage::

    python benchmarks/fourier_crop.py [--n 4096] [--box 64] [--to 32] [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from cryopose.fourier import _centred_downsample_images as _centred_full_crop  # the baseline: the definition
from cryopose.fourier import fourier_downsample_images


def _best_ms_per_image(fn, x: torch.Tensor, m: int, repeats: int, chunk: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, x.shape[0], chunk):
            fn(x[s:s + chunk], m)
        best = min(best, time.perf_counter() - t0)
    return 1000.0 * best / x.shape[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096, help="images")
    p.add_argument("--box", type=int, default=64, help="input box (px)")
    p.add_argument("--to", type=int, default=32, help="output box (px)")
    p.add_argument("--chunk", type=int, default=256, help="images per call (as cryopose's batches)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if not 1 <= args.to <= args.box:
        p.error(f"--to must be in 1..--box ({args.box}), got {args.to}")
    torch.set_num_threads(args.threads)
    x = torch.randn(args.n, args.box, args.box, generator=torch.Generator().manual_seed(0))
    diff = (fourier_downsample_images(x[:256], args.to) - _centred_full_crop(x[:256], args.to)).abs().max().item()
    _best_ms_per_image(fourier_downsample_images, x[:args.chunk], args.to, 1, args.chunk)  # warm-up
    _best_ms_per_image(_centred_full_crop, x[:args.chunk], args.to, 1, args.chunk)
    t_new = _best_ms_per_image(fourier_downsample_images, x, args.to, args.repeats, args.chunk)
    t_old = _best_ms_per_image(_centred_full_crop, x, args.to, args.repeats, args.chunk)
    print(f"{args.n} float32 images {args.box} → {args.to} px, {args.threads} thread(s), best of {args.repeats}:")
    print(f"  centred full transforms (baseline) {1000 * t_old:8.1f} µs/image")
    print(f"  half-spectrum (cryopose)           {1000 * t_new:8.1f} µs/image   {t_old / t_new:.1f}× faster")
    print(f"  largest difference of the outputs  {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
