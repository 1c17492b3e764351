"""Benchmark: known-pose reconstruction, cryopose vs RELION 3.1's relion_reconstruct (vs cryoDRGN).

Data: the real β-galactosidase map (shared/data/maps/relion_tutorial_betagal_100px_3.54A.mrc,
100 px at 3.54 Å, MIT) Fourier-cropped to 64 px (5.53125 Å/px) is the ground truth. Particles
are made by RELION itself (``relion_project --ang ANGLES.star --ctf --add_noise --white_noise σ``)
from uniformly random poses, random origins of up to ±3 px and real per-particle CTFs drawn from
EMPIAR-10028 (shared/data/ctf_distributions/empiar10028_ctf_cryodrgn.npy). The SNR is the
box-wide variance of the noise-free CTF-modulated images (a noise-free relion_project run,
averaged over the set) divided by σ².

Both programs then reconstruct the same particles with CTF correction:
``relion_reconstruct --i proj.star --o relion.mrc --ctf`` and
``cryopose reconstruct proj.star -o cryopose_tN.mrc --threads N`` (each a subprocess, so the
wall times include start-up: for cryopose the Python interpreter and the torch import; the
console script of this interpreter is run, not a pyenv shim). Each is run ``--repeats`` times,
alternating, and the fastest run is reported with its CPU time (user + sys), since the
machine may be shared. relion_reconstruct is single-threaded; cryopose is timed with
``--threads 1`` (the fair comparison) and ``--threads 2`` (half sets in parallel) by default.
The resolutions are FSC = 0.5 and 0.143 against the true 64-px map (unmasked). If
``cryodrgn`` is importable, ``cryodrgn backproject_voxel`` runs too (untested here: cryoDRGN
is not installed in this environment, and its map may need a flip to match the truth's hand);
otherwise the table says it is not installed.

Usage::

    python benchmarks/reconstruct.py [--n-particles 5000] [--seed 0] [--snr 0.1]
                                     [--workdir DIR] [--repeats 3] [--threads 1 2]

Targets (issue "Core"): cryopose's FSC = 0.143 resolution within 2 % of RELION's (or better),
wall time <= RELION's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
if not DATA.exists():  # a checkout elsewhere: fall back to the workspace copy
    DATA = Path("/work/shared/data")
BETAGAL = DATA / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"
BETAGAL_PIXEL_SIZE = 3.54  # Å (SOURCE.md; the header is not trusted)
CTF_TABLE = DATA / "ctf_distributions" / "empiar10028_ctf_cryodrgn.npy"
BOX = 64


def _write_truth(path: Path) -> tuple[np.ndarray, float]:
    from cryopose.fourier import fourier_downsample_volume
    from cryopose.io.mrc import write_map

    vol = mrcfile.read(BETAGAL).astype(np.float64)
    small = fourier_downsample_volume(torch.from_numpy(vol.copy()), BOX).numpy()
    apix = BETAGAL_PIXEL_SIZE * vol.shape[-1] / BOX
    write_map(path, small.astype(np.float32), apix)
    return small, apix


def _write_angles(path: Path, n: int, seed: int, apix: float) -> None:
    """RELION 3.1 STAR of random poses, origins (Å) and EMPIAR-10028 CTFs."""
    from cryopose.rotations import random_rotations, rotmat_to_relion_euler

    rng = np.random.default_rng(seed)
    eulers = rotmat_to_relion_euler(random_rotations(n, generator=torch.Generator().manual_seed(seed))).numpy()
    table = np.load(CTF_TABLE)
    rows = table[rng.integers(0, table.shape[0], n)]
    for col, name in ((5, "voltage"), (6, "Cs"), (7, "amplitude contrast")):
        if np.unique(rows[:, col]).size != 1:
            raise SystemExit(f"{CTF_TABLE}: {name} varies between particles; this script writes one optics group")
    kv, cs, w = rows[0, 5], rows[0, 6], rows[0, 7]
    cols = {
        "rlnAngleRot": eulers[:, 0], "rlnAngleTilt": eulers[:, 1], "rlnAnglePsi": eulers[:, 2],
        "rlnOriginXAngst": rng.uniform(-3, 3, n) * apix, "rlnOriginYAngst": rng.uniform(-3, 3, n) * apix,
        "rlnDefocusU": rows[:, 2], "rlnDefocusV": rows[:, 3], "rlnDefocusAngle": rows[:, 4],
        "rlnPhaseShift": rows[:, 8],
    }
    lines = ["# written by benchmarks/reconstruct.py", "", "data_optics", "", "loop_",
             "_rlnOpticsGroup #1", "_rlnOpticsGroupName #2", "_rlnAmplitudeContrast #3",
             "_rlnSphericalAberration #4", "_rlnVoltage #5", "_rlnImagePixelSize #6", "_rlnImageSize #7",
             "_rlnImageDimensionality #8", f"1 opticsGroup1 {w:g} {cs:g} {kv:g} {apix:.6f} {BOX} 2", "", "",
             "data_particles", "", "loop_"]
    lines += [f"_{name} #{i + 1}" for i, name in enumerate(cols)] + [f"_rlnOpticsGroup #{len(cols) + 1}"]
    block = np.stack([cols[k] for k in cols], axis=1)
    lines += [" ".join(f"{v:.6f}" for v in row) + " 1" for row in block]
    path.write_text("\n".join(lines) + "\n")


def _run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run a command; return (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _fsc_vs_truth(path: Path, truth: np.ndarray, apix: float) -> dict:
    from cryopose.metrics.fsc import fsc_report

    return fsc_report(mrcfile.read(path).astype(np.float64), truth, apix)


def _cryopose_cmd() -> list[str]:
    """The installed ``cryopose`` console script of this interpreter (not a pyenv shim)."""
    beside = Path(sys.executable).parent / "cryopose"
    if beside.exists():
        return [str(beside)]
    exe = shutil.which("cryopose")
    return [exe] if exe else [sys.executable, "-m", "cryopose.cli.main"]


def _cryodrgn(work: Path, apix: float) -> tuple[Path, float, float] | str:
    if importlib.util.find_spec("cryodrgn") is None:
        return "cryodrgn is not installed (pip install cryodrgn to compare)"
    exe = shutil.which("cryodrgn") or "cryodrgn"
    for cmd in ([exe, "parse_pose_star", "proj.star", "-o", "poses.pkl", "-D", str(BOX), "--Apix", f"{apix}"],
                [exe, "parse_ctf_star", "proj.star", "-o", "ctf.pkl", "-D", str(BOX), "--Apix", f"{apix}"]):
        _run(cmd, work)
    wall, cpu = _run([exe, "backproject_voxel", "proj.mrcs", "--poses", "poses.pkl", "--ctf", "ctf.pkl",
                      "-o", "cryodrgn.mrc"], work)
    return work / "cryodrgn.mrc", wall, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-particles", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--workdir", type=Path, help="keep intermediate files here (default: a temp folder)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each program (fastest reported)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="cryopose --threads values to time, one row each (default 1 2; "
                             "relion_reconstruct is single-threaded)")
    args = parser.parse_args(argv)
    for exe in ("relion_project", "relion_reconstruct"):
        if shutil.which(exe) is None:
            raise SystemExit(f"{exe} not on PATH: install RELION 3.1 (apt-get install -y relion)")

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cryopose_bench_reconstruct_")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    try:
        truth, apix = _write_truth(work / "truth.mrc")
        _write_angles(work / "angles.star", args.n_particles, args.seed, apix)
        _run(["relion_project", "--i", "truth.mrc", "--o", "clean", "--ang", "angles.star", "--ctf"], work)
        clean = mrcfile.read(work / "clean.mrcs").astype(np.float64)
        signal_var = float(clean.reshape(clean.shape[0], -1).var(axis=1).mean())
        sigma = float(np.sqrt(signal_var / args.snr))
        _run(["relion_project", "--i", "truth.mrc", "--o", "proj", "--ang", "angles.star", "--ctf",
              "--add_noise", "--white_noise", f"{sigma:.8g}"], work)
        print(f"data: {args.n_particles} particles, {BOX} px, {apix:g} Å/px (Nyquist {2 * apix:.2f} Å), "
              f"SNR {args.snr:g} (signal variance {signal_var:.4g}, σ = {sigma:.4g}), seed {args.seed}")
        print(f"work folder: {work}" + (" (temporary)" if tmp else ""))

        relion_cmd = ["relion_reconstruct", "--i", "proj.star", "--o", "relion.mrc", "--ctf"]
        cryo_cmds = {t: _cryopose_cmd() + ["reconstruct", "proj.star", "-o", f"cryopose_t{t}.mrc", "--seed",
                                           str(args.seed), "--no-progress", "--threads", str(t), "--force"]
                     for t in args.threads}
        times = {"relion": [], **{t: [] for t in cryo_cmds}}
        for _ in range(max(1, args.repeats)):
            times["relion"].append(_run(relion_cmd, work))
            for t, cmd in cryo_cmds.items():
                times[t].append(_run(cmd, work))
        results = {"relion_reconstruct --ctf": (_fsc_vs_truth(work / "relion.mrc", truth, apix), min(times["relion"]))}
        for t in cryo_cmds:
            results[f"cryopose reconstruct -j{t}"] = (_fsc_vs_truth(work / f"cryopose_t{t}.mrc", truth, apix),
                                                     min(times[t]))
        drgn = _cryodrgn(work, apix)
        half = json.loads((work / f"cryopose_t{args.threads[0]}_fsc.json").read_text())

        def res(rep, tag):
            value = rep[f"resolution_fsc{tag}_angstrom"]
            return f"{value:6.2f}{'' if rep[f'fsc{tag}_crossed'] else '*'}"

        print()
        print(f"{'program':<28} {'FSC0.5 (Å)':>11} {'FSC0.143 (Å)':>13} {'wall (s)':>9} {'CPU (s)':>8}")
        for name, (rep, (wall, cpu)) in results.items():
            print(f"{name:<28} {res(rep, '0p5'):>11} {res(rep, '0p143'):>13} {wall:9.2f} {cpu:8.2f}")
        if isinstance(drgn, str):
            print(f"{'cryodrgn backproject_voxel':<28} {drgn}")
        else:
            rep = _fsc_vs_truth(drgn[0], truth, apix)
            print(f"{'cryodrgn backproject_voxel':<28} {res(rep, '0p5'):>11} {res(rep, '0p143'):>13} "
                  f"{drgn[1]:9.2f} {drgn[2]:8.2f}")
        names = list(results)
        r_rep, (r_wall, r_cpu) = results[names[0]]
        for name in names[1:]:
            c_rep, (c_wall, c_cpu) = results[name]
            ratio_05 = c_rep["resolution_fsc0p5_angstrom"] / r_rep["resolution_fsc0p5_angstrom"]
            ratio_0143 = c_rep["resolution_fsc0p143_angstrom"] / r_rep["resolution_fsc0p143_angstrom"]
            label = "ratio " + name.replace("cryopose reconstruct ", "") + " / relion"
            print(f"{label:<28} {ratio_05:11.3f} {ratio_0143:13.3f} {c_wall / r_wall:9.3f} {c_cpu / r_cpu:8.3f}")
        print("(resolution vs the true 64-px map, unmasked; * = never crossed, Nyquist; lower is better. "
              f"-jN = cryopose --threads N. Wall = fastest of {max(1, args.repeats)} alternating runs, start-up "
              "included; CPU = user + sys of that run.)")
        print(f"cryopose half-map (gold-standard) FSC: 0.143 at {half['resolution_fsc0p143_angstrom']:.2f} Å, "
              f"0.5 at {half['resolution_fsc0p5_angstrom']:.2f} Å")
        print("all wall times (s): " + "; ".join(
            f"{'relion' if k == 'relion' else f'cryopose -j{k}'} {[round(t[0], 2) for t in v]}"
            for k, v in times.items()))
        for name in names[1:]:
            c_rep, (c_wall, _) = results[name]
            ratio_0143 = c_rep["resolution_fsc0p143_angstrom"] / r_rep["resolution_fsc0p143_angstrom"]
            ok_res = ratio_0143 <= 1.02
            nyquist = not (c_rep["fsc0p143_crossed"] or r_rep["fsc0p143_crossed"])
            note = " — both at Nyquist, not discriminating (try --snr 0.01)" if nyquist else ""
            print(f"{name}: target FSC0.143 within 2% of RELION (or better): {'PASS' if ok_res else 'FAIL'} "
                  f"({100 * (ratio_0143 - 1):+.1f}%{note}); target wall time <= RELION's: "
                  f"{'PASS' if c_wall <= r_wall else 'FAIL'} ({c_wall:.2f} s vs {r_wall:.2f} s)")
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
