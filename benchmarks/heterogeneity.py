"""Benchmark ``cryopose heterogeneity`` (pose-aware variant) on simulated mixtures and morphs.

**Discrete mixture.** Three states from the two real EMPIAR-10076 assembly-intermediate maps in
``../shared/data/maps`` (classes D and E, 32 px at 13.1 Å): D, E, and a third state derived
from them, the voxel-wise minimum ``min(D, E)`` — the density common to both, an intermediate
lacking the parts that only one of them has (21 % of D's norm away from D, 34 % from E).
Fractions 50/30/20, uniform random poses, real EMPIAR-10028 CTFs (rows of the table the package
ships, ``src/cryopose/data/empiar10028_ctf_20k.npy``), white noise at ``--snr``. Each run
simulates (``cryopose simulate --map ... --class-fractions 0.5,0.3,0.2``), trains
(``cryopose heterogeneity train``, the particles' true poses) and analyses
(``cryopose heterogeneity analyze --true-map ...``), in this process through
:func:`cryopose.cli.main.main`, and prints: classes found, NMI/ARI/AMI against the true
classes (all particles, HDBSCAN's noise counted as one more label), per class the FSC = 0.5
resolution against the true map of its majority state beside that of the particles truly in
that state (same poses, ideal classification), and the wall time of each stage. Two references
on the same particles: k-means told the true K on the same latents, and the **oracle**: each
particle assigned to the true map whose projection at its true pose (with its CTF) is nearest
in squared error — the classification the images allow at best with everything but the class
known.

**Continuous morph.** ``cryopose simulate --morph D E`` (``t ~ U(0, 1)``), same CTFs and SNR;
prints ``|Spearman ρ|`` of the latents' first principal component with ``t``.

Before the runs, one UMAP call on random data compiles umap-learn's numba code (its time is
printed apart: it is paid once per process).

Usage::

    python benchmarks/heterogeneity.py [--n 2000] [--box 32] [--snr 0.1 1.0] [--seeds 0 1]
                                       [--epochs 15] [--zdim 4] [--sections discrete morph]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAPS = ROOT.parent / "shared" / "data" / "maps"
CTF_TABLE = ROOT / "src" / "cryopose" / "data" / "empiar10028_ctf_20k.npy"
PIXEL = 13.1


def _cli(argv: list[str]) -> float:
    """Run ``cryopose ARGV`` here (its output hidden); return the wall time in seconds."""
    from cryopose.cli.main import main

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        rc = main(argv)
    if rc != 0:
        sys.exit(f"cryopose {' '.join(argv)} failed: {err.getvalue()[-2000:]}")
    return time.perf_counter() - t0


def _third_state(work: Path) -> Path:
    """Write ``min(D, E)`` (13.1 Å) and return its path."""
    from cryopose.io.mrc import read_map, write_map

    d, e = (read_map(MAPS / f"10076_class{c}_32.mrc", pixel_size_angstrom=PIXEL).volume for c in "DE")
    path = work / "state_min_DE.mrc"
    write_map(path, np.minimum(d, e), PIXEL)
    return path


def _train(work: Path, star: Path, name: str, args) -> tuple[Path, float]:
    out = work / name
    secs = _cli(["heterogeneity", "train", str(star), "-o", str(out), "--epochs", str(args.epochs), "--zdim",
                 str(args.zdim), "--seed", str(args.seed_train), "--no-progress", "--threads", str(args.threads)])
    return out, secs


def _simulate(work: Path, name: str, maps: list[str], seed: int, snr: float, args) -> tuple[Path, float]:
    out = work / name.replace(".", "p")  # no dot in the stem (OUT.star is the stem plus .star)
    secs = _cli(["simulate", *maps, "--map-pixel-size", str(PIXEL), "--box-size", str(args.box), "-n", str(args.n),
                 "--snr", str(snr), "--ctf-table", str(CTF_TABLE), "--seed", str(seed), "-o", str(out),
                 "--no-progress", "--threads", str(args.threads)])
    return out.with_suffix(".star"), secs


def nearest_map_labels(stack, meta, volumes_ft) -> np.ndarray:
    """``(N,)`` 0-based index of the map (prepared by ``prepare_volume_ft``) whose projection at
    each particle's pose, with its CTF and origin, is nearest to the image in squared error."""
    import torch

    from cryopose.ctf import compute_ctf
    from cryopose.projection import project

    n, apix = stack.box_size, float(meta.pixel_size_angstrom)
    pred = np.empty(len(meta), dtype=np.int64)
    for idx, images in stack.iter_chunks(500):
        t = torch.as_tensor(idx)
        ctf = compute_ctf(meta.ctf[t], n, apix)
        shifts = None if meta.shifts_angstrom is None else meta.shifts_angstrom[t].float() / apix
        res = torch.stack([((images - project(v, meta.rotmats[t].float(), shifts_px=shifts, ctf=ctf)) ** 2)
                           .sum(dim=(1, 2)) for v in volumes_ft], dim=1)
        pred[idx] = res.argmin(dim=1).numpy()
    return pred


def oracle_nmi(star: Path, maps: list[Path]) -> float:
    """NMI of the nearest-true-map classification (true poses and CTFs) against the truth."""
    import torch
    from sklearn.metrics import normalized_mutual_info_score

    from cryopose.io.mrc import read_map
    from cryopose.io.particles import load_particles
    from cryopose.projection import prepare_volume_ft

    stack, meta = load_particles(star)
    vols = [prepare_volume_ft(torch.from_numpy(np.array(read_map(m).volume))) for m in maps]
    pred = nearest_map_labels(stack, meta, vols) + 1
    return float(normalized_mutual_info_score(meta.table["rlnCryoposeTrueClass"].to_numpy(), pred))


def kmeans_nmi(run: Path, star: Path, k: int) -> float:
    """NMI of k-means with the true K on the run's latents."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    from cryopose.io.star import read_star

    labels = KMeans(k, n_init=10, random_state=0).fit_predict(np.load(run / "latents.npy"))
    return float(normalized_mutual_info_score(read_star(star).table["rlnCryoposeTrueClass"].to_numpy(), labels))


def discrete(work: Path, snr: float, seed: int, args, true_maps: list[Path]) -> dict:
    """One simulate + train + analyze run of the 3-state mixture; returns its numbers."""
    maps = [a for p in true_maps for a in ("--map", str(p))]
    star, t_sim = _simulate(work, f"mix_snr{snr:g}_s{seed}", maps + ["--class-fractions", "0.5,0.3,0.2"], seed,
                            snr, args)
    run, t_train = _train(work, star, f"run_mix_snr{snr:g}_s{seed}", args)
    # the true maps on the particles' grid (resampled as the simulator does when --box differs)
    grid = [work / f"true_{i}_{args.box}.mrc" for i in range(len(true_maps))]
    if not grid[0].exists():
        from cryopose.io.mrc import write_map
        from cryopose.simulate import load_volume

        for src, dst in zip(true_maps, grid):
            m = load_volume(src, box_size=args.box, input_pixel_size_angstrom=PIXEL)
            write_map(dst, m.volume, m.pixel_size_angstrom)
    t_an = _cli(["heterogeneity", "analyze", str(run), "--min-class-fraction", str(args.min_class_fraction),
                 "--threads", str(args.threads), "--no-report", *[a for p in grid for a in ("--true-map", str(p))]])
    s = json.loads((run / "analysis" / "summary.json").read_text())
    return {"snr": snr, "seed": seed, "classes": s["n_classes"], "sizes": s["class_sizes"], "noise": s["n_noise"],
            "scores": s["scores"], "kmeans": kmeans_nmi(run, star, 3), "oracle": oracle_nmi(star, grid),
            "fsc": s.get("fsc_vs_true_maps", []), "t_sim": t_sim, "t_train": t_train,
            "t_analyze": t_an}


def morph(work: Path, snr: float, seed: int, args) -> dict:
    """One morph run; returns ``|Spearman|`` of PC1 with the morph parameter and the times."""
    star, t_sim = _simulate(work, f"morph_snr{snr:g}_s{seed}",
                            ["--morph", str(MAPS / "10076_classD_32.mrc"), str(MAPS / "10076_classE_32.mrc")],
                            seed, snr, args)
    run, t_train = _train(work, star, f"run_morph_snr{snr:g}_s{seed}", args)
    t_an = _cli(["heterogeneity", "analyze", str(run), "--no-reconstruct", "--no-report",
                 "--threads", str(args.threads)])
    s = json.loads((run / "analysis" / "summary.json").read_text())
    return {"snr": snr, "seed": seed, "spearman": s["morph_pc1_abs_spearman"], "classes": s["n_classes"],
            "t_train": t_train, "t_analyze": t_an}


def _fsc_text(rows: list[dict]) -> str:
    return "; ".join(f"{r['class']}→{r['true_class']}: {r['fsc0p5_vs_true_angstrom']:.1f} "
                     f"({r['ideal_fsc0p5_vs_true_angstrom']:.1f})" for r in rows) or "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="particles per data set (default 2000)")
    p.add_argument("--box", type=int, default=32, help="box in pixels (default 32, the maps' own)")
    p.add_argument("--snr", type=float, nargs="+", default=[0.1], help="SNR values (default 0.1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="simulation seeds (default 0)")
    p.add_argument("--epochs", type=int, default=15, help="training iterations (default 15)")
    p.add_argument("--zdim", type=int, default=4, help="latent dimension (default 4)")
    p.add_argument("--min-class-fraction", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sections", nargs="+", default=["discrete", "morph"], choices=("discrete", "morph"))
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    args = p.parse_args(argv)
    args.seed_train = 0
    import torch

    torch.set_num_threads(args.threads)
    from cryopose.analysis.clustering import embed_latents

    t0 = time.perf_counter()
    embed_latents(np.random.default_rng(0).normal(size=(200, 4)))
    print(f"umap-learn warm-up (numba compilation, once per process): {time.perf_counter() - t0:.1f} s")
    ctx = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()
    with ctx as folder:
        work = Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        true_maps = [MAPS / "10076_classD_32.mrc", MAPS / "10076_classE_32.mrc", _third_state(work)]
        if "discrete" in args.sections:
            print(f"\n## Discrete mixture D/E/min(D,E) 50/30/20, {args.n} particles, {args.box} px, "
                  f"EMPIAR-10028 CTFs, zdim {args.zdim}, {args.epochs} iterations\n")
            print("| SNR | seed | classes found (sizes; noise) | NMI | ARI | AMI | NMI without noise set | "
                  "k-means K=3 NMI | oracle NMI | FSC=0.5 vs true map, Å: class→state: found (ideal) | "
                  "simulate / train / analyze s |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for snr in args.snr:
                for seed in args.seeds:
                    r = discrete(work, snr, seed, args, true_maps)
                    a, b = r["scores"]["all"], r["scores"]["assigned"]
                    print(f"| {snr:g} | {seed} | {r['classes']} ({', '.join(map(str, r['sizes']))}; {r['noise']}) | "
                          f"{a['nmi']:.3f} | {a['ari']:.3f} | {a['ami']:.3f} | "
                          f"{(b['nmi'] if b['nmi'] is not None else float('nan')):.3f} | {r['kmeans']:.3f} | "
                          f"{r['oracle']:.3f} | {_fsc_text(r['fsc'])} | "
                          f"{r['t_sim']:.0f} / {r['t_train']:.0f} / {r['t_analyze']:.0f} |", flush=True)
        if "morph" in args.sections:
            print(f"\n## Continuous morph D→E, {args.n} particles, {args.box} px\n")
            print("| SNR | seed | abs Spearman(PC1, t) | classes found | train / analyze s |")
            print("|---|---|---|---|---|")
            for snr in args.snr:
                for seed in args.seeds:
                    r = morph(work, snr, seed, args)
                    print(f"| {snr:g} | {seed} | {r['spearman']:.3f} | {r['classes']} | "
                          f"{r['t_train']:.0f} / {r['t_analyze']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
