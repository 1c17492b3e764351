"""`cryopose latent train` + `latent analyze` with their defaults on relion_project single views.

For each structure, one viewing direction off every symmetry axis, ``--n`` images made by RELION
3.1's ``relion_project --ctf`` (not by cryopose's simulator) with ψ uniform in [0°, 360°),
rot/tilt fixed and six defoci 0.5–3.0 µm in equal shares (300 kV, Cs 2.7 mm, amplitude
contrast 0.1), noise-free and, with ``--snrs``, white noise (``--add_noise --white_noise σ``,
σ² = the mean variance of the noise-free images / SNR). Each set goes through the CLI exactly
as a user runs it — ``latent train STAR -o RUN --threads 1`` and ``latent analyze RUN`` — with
the defaults (row "defaults") and, at the SNRs of ``--previous-snrs``, with the flags that restore the
defaults before the second equivariant plane (``--latent-dim 3 --equivariance-normalization
total`` and ``--angle-from pca``). The table gives ``analysis.json``'s eq. 6 errors (the global
offset and direction removed; weighted by exp(Δf/µm) − 1 and plain), the median |error|, the
defocus rMSE and how the angle was read.

* β-gal: the 100³ map at 3.54 Å cropped to ``--box`` px (real space), view (rot, tilt) = (30°, 55°);
  D2, so views down a 2-fold axis would have a 2-fold symmetric projection — this one has none.
* 4AKE: both chains, density on a ``--box`` grid at 2.0 Å, view (45°, 30°), as benchmarks/inplane.py.

Usage::

    python benchmarks/latent_views.py --n 2000 --snrs 0 1 --previous-snrs 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYOPOSE_SHARED_DATA", REPO.parent / "shared" / "data"))
VIEWS = {"betagal": (30.0, 55.0), "4ake": (45.0, 30.0)}
DEFOCI_UM = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
PREVIOUS = {"train": ["--latent-dim", "3", "--equivariance-normalization", "total"], "analyze": ["--angle-from", "pca"]}


def write_volume(structure: str, box: int, out: Path) -> float:
    """Write the map of ``structure`` on a ``box``-px grid to ``out``; return its pixel size (Å)."""
    from cryopose.io.mrc import read_map, write_map
    from cryopose.simulate.volumes import crop_or_pad_volume, load_volume

    if structure == "betagal":
        apix = 3.54
        vol = read_map(SHARED / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc", pixel_size_angstrom=apix).volume
        vol = crop_or_pad_volume(np.asarray(vol, dtype=np.float32), box)
    else:
        apix = 2.0
        vol = np.asarray(load_volume(SHARED / "pdb" / "4ake_mdanalysis.pdb", box_size=box,
                                     pixel_size_angstrom=apix).volume, dtype=np.float32)
    write_map(out, vol, apix)
    return apix


def write_geometry(path: Path, n: int, view: tuple[float, float], apix: float, box: int, seed: int) -> None:
    """relion_project's input STAR: fixed (rot, tilt), uniform ψ, the six defoci in equal shares."""
    rng = np.random.default_rng(seed)
    psi = rng.uniform(0.0, 360.0, n)
    df = np.resize(np.asarray(DEFOCI_UM) * 1e4, n)[rng.permutation(n)]
    head = ["", "# version 30001", "", "data_optics", "", "loop_"]
    head += [f"_{c} #{i}" for i, c in enumerate(("rlnOpticsGroup", "rlnOpticsGroupName", "rlnAmplitudeContrast",
                                                 "rlnSphericalAberration", "rlnVoltage", "rlnImagePixelSize",
                                                 "rlnImageSize", "rlnImageDimensionality"), 1)]
    head += [f"1 opticsGroup1 0.1 2.7 300 {apix} {box} 2", "", "", "# version 30001", "", "data_particles", "",
             "loop_"]
    cols = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU",
            "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup")
    head += [f"_{c} #{i}" for i, c in enumerate(cols, 1)]
    body = [f"{view[0]:.6f} {view[1]:.6f} {p:.6f} 0 0 {d:.2f} {d:.2f} 0 1" for p, d in zip(psi, df)]
    path.write_text("\n".join(head + body) + "\n")


def make_set(structure: str, snr: float, args) -> Path:
    """The relion_project particle STAR of one structure and SNR (made once)."""
    import mrcfile

    d = Path(args.workdir) / f"{structure}_b{args.box}_n{args.n}_s{args.seed}"
    star = d / (f"snr{snr:g}.star" if snr > 0 else "clean.star")
    if star.exists():
        return star
    d.mkdir(parents=True, exist_ok=True)
    apix = write_volume(structure, args.box, d / "vol.mrc")
    write_geometry(d / "geom.star", args.n, VIEWS[structure], apix, args.box, args.seed)
    cmd = ["relion_project", "--i", "vol.mrc", "--o", "clean", "--ang", "geom.star", "--ctf"]
    if not (d / "clean.star").exists():
        subprocess.run(cmd, cwd=d, check=True, capture_output=True)
    if snr > 0:
        clean = mrcfile.read(d / "clean.mrcs").astype(np.float64)
        sigma = float(np.sqrt(clean.reshape(len(clean), -1).var(axis=1).mean() / snr))
        subprocess.run(cmd[:4] + [f"snr{snr:g}"] + cmd[5:] + ["--add_noise", "--white_noise", f"{sigma:.8g}"],
                       cwd=d, check=True, capture_output=True)
    return star


def run_cli(star: Path, run: Path, previous: bool) -> tuple[dict, float]:
    """``latent train`` + ``latent analyze`` through the CLI; returns (analysis.json metrics, train seconds)."""
    if run.exists():
        shutil.rmtree(run)
    base = [sys.executable, "-m", "cryopose.cli.main", "latent"]
    t0 = time.perf_counter()
    subprocess.run(base + ["train", str(star), "-o", str(run), "--threads", "1", "--no-progress"]
                   + (PREVIOUS["train"] if previous else []), check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    subprocess.run(base + ["analyze", str(run), "--no-figures"] + (PREVIOUS["analyze"] if previous else []),
                   check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads((run / "analysis.json").read_text())["metrics"], seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--structures", nargs="+", choices=tuple(VIEWS), default=list(VIEWS))
    p.add_argument("--n", type=int, default=2000, help="images per set (default 2000)")
    p.add_argument("--box", type=int, default=64, help="box of the relion_project images (default 64)")
    p.add_argument("--snrs", nargs="+", type=float, default=[0.0], help="0 = noise-free (default 0)")
    p.add_argument("--previous-snrs", nargs="*", type=float, default=[],
                   help="SNRs at which the previous defaults run too (default none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=str(REPO / "benchmarks" / "_work" / "latent_views"))
    args = p.parse_args(argv)
    if shutil.which("relion_project") is None:
        sys.exit("relion_project not found on PATH (RELION 3.1: apt-get install relion)")
    print(f"{args.n} relion_project images per set, {args.box} px, six defoci 0.5–3.0 µm\n")
    print("| structure (view) | SNR | options | weighted angle rMSE (°) | angle rMSE (°) | median abs error (°) "
          "| defocus rMSE (µm) | angle read from | train (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for structure in args.structures:
        for snr in args.snrs:
            star = make_set(structure, snr, args)
            for previous in ((False, True) if snr in args.previous_snrs else (False,)):
                tag = "previous" if previous else "defaults"
                m, sec = run_cli(star, star.parent / f"run_{star.stem}_{tag}", previous)
                source = m.get("angle_source", "pca")
                if "angle_branch_from" in m:
                    source += f", branch from {m['angle_branch_from']}"
                print(f"| {structure} {VIEWS[structure]} | {'∞' if snr == 0 else f'{snr:g}'} | {tag} | "
                      f"{m.get('angle_rmse_weighted_deg', float('nan')):.2f} | {m['angle_rmse_deg']:.2f} | "
                      f"{m['angle_median_abs_error_deg']:.2f} | {m.get('defocus_rmse_um', float('nan')):.3f} | "
                      f"{source} | {sec:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
