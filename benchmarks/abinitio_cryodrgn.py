"""Benchmark: ``cryopose abinitio`` side by side with ``cryodrgn abinit`` on the same particles.

Issue 3, must-show 3. One set of particles, simulated exactly as the β-gal −10 dB row of
``benchmarks/abinitio.py`` (the bundled real β-gal map, 64 px, EMPIAR-10028 CTFs, SNR 0.1,
``--n-particles``, seed ``--seed``), is given to both programs, started at the same moment,
one thread each (the machine's two cores, one per program):

* ``cryopose abinitio`` (its defaults: ``--epochs``, working box ``--box-size``, C1), run in this
  process; its wall time ``T`` is the time to its final poses (polishing included);
* ``cryodrgn abinit --zdim 0`` (cryoDRGN ≥ 4, cryoDRGN-AI's homogeneous ab initio; its defaults,
  ``--max-threads 1``; CTFs from ``cryodrgn parse_ctf_star``; the data's contrast is RELION's —
  white particles, CTF positive at low frequency — which cryoDRGN's default inversion expects),
  a subprocess stopped at ``--budget`` × ``T`` (default 3, the issue's target) after its start
  if it has not finished.

cryoDRGN writes its poses after every epoch (``pose.E.pkl``: RELION-convention rotation
matrices and translations as a fraction of the box, sign of ``rlnOriginX``). Each such file is
scored exactly as cryopose's poses are (``benchmarks/abinitio.py:score_poses``): median / mean
geodesic error after global alignment modulo D2, and the FSC = 0.5 / 0.143 resolution against
the true map of the map that cryopose's known-pose reconstruction makes from the aligned
rotations and the program's own shifts, with the tomo baseline. The time of a file is its
modification time since cryoDRGN's start. Printed: cryopose's row, cryoDRGN's row at each epoch,
cryoDRGN's state when cryopose finished, and the time cryoDRGN took to reach cryopose's FSC =
0.143 resolution (or "not reached within B × T").

Usage::

    python benchmarks/abinitio_cryodrgn.py [--cryodrgn PATH] [--n-particles 10000] [--epochs 3]
                                           [--box-size 32] [--budget 3] [--seed 0] [--out DIR]
                                           [--quick]

``--cryodrgn`` is the ``cryodrgn`` executable (default: ``cryodrgn`` on PATH). cryoDRGN is not a
dependency of cryopose: ``pip install cryodrgn`` into a virtual environment
(``python -m venv --system-site-packages V && V/bin/pip install cryodrgn``, since it pins
packages of its own) and pass ``--cryodrgn V/bin/cryodrgn``. Without it the script says so and
exits with status 2. ``--quick`` (500 particles, 1 epoch, budget 1) checks that the script runs.
Results are printed as a Markdown table and written to ``OUT/abinitio_cryodrgn.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import abinitio as _ab  # noqa: E402  (benchmarks/abinitio.py: simulate_case, score_poses)


def _start_cryodrgn(exe: str, star: Path, work: Path, seed: int) -> tuple[subprocess.Popen, float, Path]:
    """Parse the CTFs, then start ``cryodrgn abinit`` in the background; returns (process, start, log)."""
    ctf = work / "ctf.pkl"
    subprocess.run([exe, "parse_ctf_star", str(star), "-o", str(ctf)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = work / "cryodrgn_abinit.log"
    cmd = [exe, "abinit", str(star), "--datadir", str(star.parent), "--ctf", str(ctf), "--zdim", "0",
           "--max-threads", "1", "--relion31", "-o", str(work / "out"), "--seed", str(seed)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    return proc, start, log


def _stop(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait for ``proc`` until the wall-clock ``deadline``; stop it there. True if it finished."""
    while proc.poll() is None and time.time() < deadline:
        time.sleep(5)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return False
    return proc.returncode == 0


def _cryodrgn_poses(path: Path, box: int, apix: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(rotmats (N, 3, 3), shifts_angstrom (N, 2) or None)`` from a cryoDRGN ``pose.E.pkl``."""
    with path.open("rb") as f:
        p = pickle.load(f)
    rots, trans = (p[0], p[1]) if isinstance(p, (tuple, list)) else (p, None)
    from cryopose.conventions import shifts_pixels_to_angstrom

    rots = torch.as_tensor(np.asarray(rots), dtype=torch.float64)
    if trans is None:
        return rots, None
    return rots, shifts_pixels_to_angstrom(torch.as_tensor(np.asarray(trans) * box, dtype=torch.float32), apix)


def _table(rows: list[dict]) -> str:
    head = ("| program | time (s) | median / mean error (°) | FSC0.5 / 0.143 vs truth (Å) | tomo FSC0.5 / 0.143 (Å) |\n"
            "|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        err = (f"{r['median_error_deg']:.2f} / {r['mean_error_deg']:.2f}" if "median_error_deg" in r else "—")
        fsc = f"{r['fsc0p5_A']:.1f} / {r['fsc0p143_A']:.1f}" if "fsc0p5_A" in r else "—"
        tomo = f"{r['tomo_fsc0p5_A']:.1f} / {r['tomo_fsc0p143_A']:.1f}" if "tomo_fsc0p5_A" in r else ""
        lines.append(f"| {r['program']} | {r['time_s']:.0f} | {err} | {fsc} | {tomo} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cryodrgn", default=shutil.which("cryodrgn"), help="the cryodrgn executable")
    p.add_argument("--n-particles", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3, help="cryopose abinitio epochs (default 3)")
    p.add_argument("--box-size", type=int, default=32, help="cryopose working box (default 32)")
    p.add_argument("--budget", type=float, default=3.0, help="cryoDRGN's time limit in units of cryopose's wall time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmark_abinitio_cryodrgn")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if not a.cryodrgn or not Path(a.cryodrgn).exists():
        print("cryodrgn not found: install it (pip install cryodrgn, in a virtual environment) and pass "
              "--cryodrgn PATH", file=sys.stderr)
        return 2
    if a.quick:
        a.n_particles, a.epochs, a.budget = 500, 1, 1.0
    from cryopose.io.particles import load_particles
    from cryopose.pipelines.abinitio import run_abinitio
    from cryopose.runtime import Runtime
    from cryopose.training.config import AbinitioConfig, TrainingConfig

    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "cryodrgn").mkdir(parents=True)
    star, truth, apix, sym = _ab.simulate_case("betagal", -10.0, out, n_particles=a.n_particles, seed=a.seed)
    stack, meta = load_particles(star)
    box = stack.box_size

    proc, t_drgn0, log = _start_cryodrgn(a.cryodrgn, star, out / "cryodrgn", a.seed)
    t0 = time.perf_counter()
    cfg = AbinitioConfig(box_size=a.box_size, training=TrainingConfig(epochs=a.epochs, seed=a.seed))
    res = run_abinitio(star, out / "cryopose", config=cfg, progress=False, report=False,
                       runtime=Runtime(threads=1, seed=a.seed))
    t_cp = time.perf_counter() - t0
    print(f"cryopose abinitio finished in {t_cp:.0f} s; cryoDRGN may run until {a.budget:g} × that "
          f"({a.budget * t_cp:.0f} s after its start)", flush=True)
    finished = _stop(proc, t_drgn0 + a.budget * t_cp)

    rows = [{"program": "cryopose abinitio", "time_s": t_cp,
             **_ab.score_poses(res.rotmats, stack, meta, truth, apix, sym, seed=a.seed)}]
    files = sorted((out / "cryodrgn" / "out").glob("pose.*.pkl"), key=lambda f: int(re.findall(r"\d+", f.name)[0]))
    for f in files:
        t = f.stat().st_mtime - t_drgn0
        if t > a.budget * t_cp:
            continue
        rots, shifts = _cryodrgn_poses(f, box, apix)
        sc = _ab.score_poses(rots, stack, meta, truth, apix, sym, seed=a.seed, tomo=False, shifts_angstrom=shifts)
        rows.append({"program": f"cryodrgn abinit ({f.name})", "time_s": t, **sc})
    target = rows[0]["fsc0p143_A"]
    reached = [r for r in rows[1:] if r["fsc0p143_A"] <= target * 1.0001]
    at_finish = [r for r in rows[1:] if r["time_s"] <= t_cp]
    print(_table(rows))
    print(f"cryoDRGN when cryopose finished ({t_cp:.0f} s): "
          + (f"{at_finish[-1]['program']}, FSC0.143 {at_finish[-1]['fsc0p143_A']:.1f} Å" if at_finish
             else "no poses written yet"))
    if reached:
        t_r = reached[0]["time_s"]
        verdict = f"cryoDRGN reached cryopose's FSC0.143 {target:.1f} Å after {t_r:.0f} s: cryopose {t_r / t_cp:.1f}× faster"
    else:
        verdict = (f"cryoDRGN did not reach cryopose's FSC0.143 {target:.1f} Å within {a.budget:g} × cryopose's time "
                   f"({a.budget * t_cp:.0f} s; {'finished' if finished else 'stopped'}): cryopose > {a.budget:g}× faster")
    print(verdict)
    tail = log.read_text().splitlines()[-3:] if log.exists() else []
    (out / "abinitio_cryodrgn.json").write_text(json.dumps(
        {"rows": rows, "cryopose_wall_s": t_cp, "budget": a.budget, "cryodrgn_finished": finished,
         "verdict": verdict, "cryodrgn_log_tail": tail, "n_particles": a.n_particles, "epochs": a.epochs,
         "seed": a.seed}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
