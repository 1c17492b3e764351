"""Benchmark: training steps with subnormal weights, with and without flushing them to zero.

Long CPU trainings slow down when weights, Adam moments or gradients become subnormal floats
(float32 ``|x| < 1.2e-38``), which x86 CPUs process in slow microcode. The cryopose commands
therefore call ``torch.set_flush_denormal(True)`` (:func:`cryopose.cli.common.configure_torch`).
This script times training steps of the supervised regressor (32 px, width 16, batch 32, one
thread) with ordinary weights and with every weight set to a subnormal value, each with
flushing off and on, and prints the best of ``--repeats`` step times and the ratios against the
ordinary-weight, flushing-off baseline of the same run.

Usage::

    python benchmarks/denormals.py [--repeats 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from cryopose.models.supervised import OrientationRegressor, SupervisedModelConfig


def _best_step_ms(weight_value: float, flush: bool, repeats: int) -> float:
    torch.set_flush_denormal(flush)
    torch.manual_seed(0)
    model = OrientationRegressor(SupervisedModelConfig(box_size=32, width=16, head_channels=128, hidden=256))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:  # convolution and linear weights
                p.fill_(weight_value)
    x = torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(1))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return 1000.0 * best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [(w, f, _best_step_ms(w, f, args.repeats)) for w in (1e-3, 1e-39) for f in (False, True)]
    torch.set_flush_denormal(False)
    base = rows[0][2]
    print(f"training step, 32 px, width 16, batch 32, {args.threads} thread(s), best of {args.repeats}:")
    for w, f, ms in rows:
        kind = "ordinary weights (1e-3)" if w > 1e-30 else "subnormal weights (1e-39)"
        print(f"  {kind:<26} flush {'on ' if f else 'off'}  {ms:7.1f} ms/step  {ms / base:5.2f}× the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
