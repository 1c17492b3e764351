"""Benchmark ``cryopose simulate`` against RELION 3.1's ``relion_project``.

Both programs make the same data set on the same machine in the same run: the β-galactosidase
map (shared/data, 100 px at 3.54 Å) Fourier-cropped to 64 px (5.53 Å), 10,000 particles with
uniform random poses, shifts, astigmatic CTF and white noise at SNR 0.1. ``cryopose simulate``
draws the ground truth and writes ``cp.star``; ``relion_project --ang cp.star --ctf --add_noise
--white_noise σ`` projects the same angles, origins and CTF with the σ cryopose reports. Each
command runs ``--repeats`` times (alternating); the best wall time of each is compared (target:
cryopose ≤ 2× relion_project), with the CPU time (user + sys) alongside because the machine
may be shared.

Then, on a 50-particle set: noise-free agreement (per-image NCC and least-squares scale of
cryopose's images against ``relion_project``'s for the same STAR) and the noise level of both
(σ measured from noisy − noise-free images, and the SNR of the definition in
:mod:`cryopose.simulate.noise`).

Usage::

    python benchmarks/simulate.py [--n 10000] [--box 64] [--threads 1] [--repeats 2]

Needs ``relion_project`` on PATH (RELION 3.1, ``apt-get install relion``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
BETAGAL = ROOT.parent / "shared" / "data" / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, CPU seconds user + sys of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _cryopose(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "cryopose.cli.main", "simulate", "--force"] + args


def _ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=(1, 2), keepdims=True)
    b = b - b.mean(axis=(1, 2), keepdims=True)
    return (a * b).sum(axis=(1, 2)) / np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))


def _snr(clean: np.ndarray, noisy: np.ndarray) -> tuple[float, float]:
    noise = (noisy.astype(np.float64) - clean).reshape(-1)
    sigma = float(noise.std())
    return sigma, float(clean.reshape(len(clean), -1).var(axis=1).mean() / sigma**2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000, help="particles in the timed run (default 10000)")
    p.add_argument("--box", type=int, default=64, help="box in pixels (default 64)")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1, help="torch threads for cryopose (relion_project uses 1)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args(argv)
    if shutil.which("relion_project") is None:
        sys.exit("relion_project not found on PATH (apt-get install relion)")

    from cryopose.io.mrc import write_map
    from cryopose.simulate import load_volume

    work = Path(tempfile.mkdtemp(prefix="cryopose_bench_simulate_"))
    try:
        vol = load_volume(BETAGAL, box_size=args.box)
        write_map(work / "map.mrc", vol.volume, vol.pixel_size_angstrom)
        common = ["-i", "map.mrc", "--shift-max-angstrom", "10", "--astigmatism-angstrom", "500", "--no-progress",
                  "--threads", str(args.threads)]

        # ---- timing: same STAR (angles, origins, CTF) and the same noise σ for both programs
        cp_times, rel_times = [], []
        sigma = None
        for r in range(args.repeats):
            cp_times.append(_timed(_cryopose(common + ["-n", str(args.n), "-o", "cp", "--seed", "0",
                                                       "--snr", str(args.snr)]), work))
            if sigma is None:
                sigma = float(yaml.safe_load((work / "cp_config.yaml").read_text())["result"]["noise_sigma"])
            rel_times.append(_timed(["relion_project", "--i", "map.mrc", "--o", "rel", "--ang", "cp.star", "--ctf",
                                     "--add_noise", "--white_noise", repr(sigma)], work))
        with mrcfile.open(work / "rel.mrcs") as m:
            assert m.data.shape == (args.n, args.box, args.box)
        cp_wall, rel_wall = min(t[0] for t in cp_times), min(t[0] for t in rel_times)
        cp_cpu, rel_cpu = min(t[1] for t in cp_times), min(t[1] for t in rel_times)

        # ---- agreement and noise level on 50 particles
        k = 50
        small = common + ["-n", str(k), "--seed", "1"]
        subprocess.run(_cryopose(small + ["-o", "clean"]), cwd=work, check=True, capture_output=True)
        subprocess.run(_cryopose(small + ["-o", "noisy", "--snr", str(args.snr)]), cwd=work, check=True,
                       capture_output=True)
        sigma_small = float(yaml.safe_load((work / "noisy_config.yaml").read_text())["result"]["noise_sigma"])
        subprocess.run(["relion_project", "--i", "map.mrc", "--o", "rel_clean", "--ang", "clean.star", "--ctf"],
                       cwd=work, check=True, capture_output=True)
        subprocess.run(["relion_project", "--i", "map.mrc", "--o", "rel_noisy", "--ang", "clean.star", "--ctf",
                        "--add_noise", "--white_noise", repr(sigma_small)], cwd=work, check=True, capture_output=True)
        read = lambda name: mrcfile.read(work / name).astype(np.float64)  # noqa: E731
        cp_clean, cp_noisy = read("clean.mrcs"), read("noisy.mrcs")
        rel_clean, rel_noisy = read("rel_clean.mrcs"), read("rel_noisy.mrcs")
        scores = _ncc(cp_clean, rel_clean)
        scale = float((cp_clean * rel_clean).sum() / (cp_clean * cp_clean).sum())
        cp_sigma, cp_snr = _snr(cp_clean, cp_noisy)
        rel_sigma, rel_snr = _snr(rel_clean, rel_noisy)

        load = os.getloadavg()
        print(f"cryopose simulate vs relion_project: {args.n} particles, {args.box} px "
              f"({vol.pixel_size_angstrom:.4g} Å), CTF + astigmatism + shifts + white noise (SNR {args.snr}, "
              f"sigma {sigma:.5g}); best of {args.repeats}; cryopose torch threads {args.threads}; "
              f"{os.cpu_count()} CPUs, load average {load[0]:.1f}")
        print(f"  cryopose simulate  wall {cp_wall:7.2f} s   cpu {cp_cpu:7.2f} s   "
              f"({1e3 * cp_wall / args.n:.3f} ms/image)")
        print(f"  relion_project     wall {rel_wall:7.2f} s   cpu {rel_cpu:7.2f} s   "
              f"({1e3 * rel_wall / args.n:.3f} ms/image)")
        ratio = cp_wall / rel_wall
        print(f"  ratio cryopose / relion_project: wall {ratio:.2f} (target <= 2: {'PASS' if ratio <= 2 else 'FAIL'}), "
              f"cpu {cp_cpu / rel_cpu:.2f}")
        print(f"noise-free agreement, {k} particles, same STAR: NCC min {scores.min():.6f} mean {scores.mean():.6f}, "
              f"scale relion/cryopose {scale:.5f}")
        print(f"noise: sigma requested {sigma_small:.5g}; measured cryopose {cp_sigma:.5g}, relion_project "
              f"{rel_sigma:.5g}; SNR measured cryopose {cp_snr:.4f}, relion_project {rel_snr:.4f} (requested {args.snr})")
        return 0 if ratio <= 2 and scores.min() > 0.999 else 1
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
