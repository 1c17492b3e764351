"""Benchmark: ``cryopose abinitio`` beyond Table 1: RELION-made particles and relion_reconstruct,
junk particles, and the speed of amortized inference against a grid search.

All data: the bundled real β-galactosidase map (``src/cryopose/data/betagal_64px_5.53A.mrc``,
64 px at 5.53 Å, D2) and real per-particle CTFs from the bundled EMPIAR-10028 table; white
noise at SNR 0.1 (variance of the noise-free CTF-modulated images over the whole box, averaged
over the set, divided by σ²); abinitio in C1 (scored modulo D2) at the working box ``--box-size``.

Sections (``--sections``):

``relion``      particles made by RELION 3.1's ``relion_project --ctf --add_noise --white_noise σ``
                (random poses, origins up to ±3 px; as ``benchmarks/reconstruct.py``), then
                ``cryopose abinitio``. Reported: the pose error of RUN/poses.star against the
                truth (``cryopose evaluate-poses --symmetry D2 --json``: global alignment, hand,
                point group); ``relion_reconstruct --ctf --sym D2`` run on RUN/poses.star
                unchanged, and the FSC between its map and cryopose's RUN/map.mrc (same poses,
                so they should agree); and the FSC = 0.5 / 0.143 resolution against the true map
                of the maps that ``cryopose reconstruct`` and ``relion_reconstruct`` make from
                the inferred poses brought into the truth's frame and hand (a copy of poses.star
                whose rotations are :func:`cryopose.metrics.pose_error.align_rotations`'s
                ``aligned_est``), with both programs' maps from the true poses as the baseline.
``junk``        ``cryopose simulate --junk-fraction 0.2`` with ``--junk-types noise`` (pure noise
                images), and with ``--junk-types other --junk-structure 4AKE`` (projections of
                another molecule, adenylate kinase from ``shared/data/pdb``); abinitio on all
                particles. Reported: whether training finished with finite losses
                (summary.json and the checkpoint's loss history), the ROC AUC
                (``sklearn.metrics.roc_auc_score``) of ``rlnCryoposeConfidence`` of RUN/poses.star
                for telling true particles (positives) from junk (an AUC of 0.5 is chance),
                the AUC of a per-particle residual where poses.star has one, and the pose error
                of the true particles only.
``throughput``  an encoder trained with abinitio on β-gal 64-px particles (or ``--encoder PATH``,
                an ``encoder.pt`` trained on 64-px β-gal particles of the same box in Å), then
                ``cryopose predict ENCODER.pt TEST.star`` on ``--n-predict`` unseen particles and
                ``cryopose search TEST_SUBSET.star --reference BETAGAL --symmetry D2 --step 7.5
                --final-step 7.5`` (global 7.5° Hopf grid only, no local refinement, no shift
                search) on the first ``--n-search`` of them, both at 64 px with ``--threads``.
                Each is timed in-process with ``time.perf_counter`` around the CLI call
                (``cryopose.cli.main.main``): reading the model/map and the particles, the
                inference, writing the STAR; after one untimed warm-up call of each on 8
                particles (module imports). Second baseline: RELION 3.1's expectation step on the
                first ``--n-relion`` of the same particles against the same map: one
                ``relion_refine --iter 1 --K 1 --skip_maximize --firstiter_cc --ctf
                --healpix_order 3 --oversampling 1 --offset_range R --offset_step 1 --sym D2
                --pad 2 --j THREADS`` (as ``benchmarks/search_vs_relion.py``; R =
                ``--relion-offset-range``, default 0 px since the test particles have no shifts
                and search does not search them either), timed as the wall of the subprocess
                (start-up included, no warm-up). The three calls are repeated in ``--repeats``
                interleaved rounds (default 3) and the median wall of each is used. Reported:
                ms/particle of each, the ratios
                search ÷ predict and relion ÷ predict (target: predict ≥ 100× faster than either
                baseline; the issue allows either, so both verdicts are printed), with the median
                pose error of each for context (search and relion: against the truth modulo D2,
                no alignment, both use the true map; predict: after global alignment), and
                search's own stage timings (fixed reference preparation vs the per-particle
                global stage, from its ``POSES_search.json``). ``cryopose predict --int8`` (the
                encoder in 8-bit integers, calibrated on the first 256 particles) is timed in the
                same rounds and reported beside the float predict with the same ratios. Without
                ``relion_refine`` on PATH the relion row is skipped with a message.

Usage::

    python benchmarks/abinitio_extras.py [--sections relion,junk,throughput] [--n-particles 10000]
                                         [--epochs 12] [--box-size 32] [--threads 1] [--out DIR]
                                         [--encoder ENCODER.pt] [--n-predict 2000] [--n-search 200]
                                         [--n-relion 50] [--relion-offset-range 0] [--quick]

``--quick`` (300 particles, 1 epoch; throughput: 300 predicted, 20 searched, 10 by relion_refine)
only checks that the script runs: its numbers are not the benchmark's. Results are printed as
Markdown tables and written to ``OUT/abinitio_extras.json``. RELION 3.1 (``relion_project``,
``relion_reconstruct`` on PATH) is needed by the ``relion`` section; without it that section is
skipped with a message and the others run (exit status 0). ``relion_refine`` is needed by the
throughput section's relion row only; without it that row is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import abinitio as _ab  # noqa: E402  (benchmarks/abinitio.py: _truth, DATA, PDB_4AKE)
import reconstruct as _rb  # noqa: E402  (benchmarks/reconstruct.py: _write_angles, _run, _cryopose_cmd)

SNR = 0.1
SYMMETRY = "D2"
JUNK_CASES = (("noise", "noise"), ("other molecule", "other"))


# --------------------------------------------------------------------------- helpers
def _bundled() -> tuple[Path, Path]:
    """Paths of the bundled β-gal map and EMPIAR-10028 CTF table."""
    from cryopose.pipelines.demo import BETAGAL_MAP, CTF_TABLE, bundled_path

    return bundled_path(BETAGAL_MAP), bundled_path(CTF_TABLE)


def _cli(args: list, *, capture: bool = False) -> tuple[float, str]:
    """Run ``cryopose ARGS`` in this process; returns (wall seconds, captured stdout)."""
    from cryopose.cli.main import main as cryopose_main

    argv = [str(a) for a in args]
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf) if capture else contextlib.nullcontext():
        rc = cryopose_main(argv)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"cryopose {' '.join(argv)} exited with status {rc}")
    return wall, buf.getvalue()


def _fresh(path: Path) -> Path:
    """An empty folder at ``path`` (a previous run of this script there is removed)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _abinitio(particles: Path, run: Path, *, epochs: int, box_size: int, threads: int, seed: int) -> float:
    """``cryopose abinitio`` (C1, as ab initio is run: imposing D2 from a random start stalled in
    ``benchmarks/abinitio.py``; scored modulo D2; no report) into a fresh ``run``; returns the wall seconds."""
    if run.exists():
        shutil.rmtree(run)
    wall, _ = _cli(["abinitio", particles, "-o", run, "--symmetry", "C1", "--box-size", box_size,
                    "--epochs", epochs, "--threads", threads, "--seed", seed, "--no-progress", "--no-report"])
    return wall


def _simulate(out_star: Path, n: int, *, seed: int, threads: int, extra: list | None = None) -> Path:
    """``cryopose simulate`` of the bundled β-gal map with EMPIAR-10028 CTFs at SNR 0.1."""
    betagal, ctf_table = _bundled()
    _cli(["simulate", betagal, "-o", out_star, "-n", n, "--ctf-table", ctf_table, "--snr", SNR, "--seed", seed,
          "--threads", threads, "--no-progress", "--force"] + (extra or []))
    return out_star


def _fmt(x, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec)


def _res(rep: dict, tag: str) -> str:
    """A resolution from an FSC report; '*' = threshold never crossed (at Nyquist)."""
    return f"{rep[f'resolution_fsc{tag}_angstrom']:.2f}" + ("" if rep[f"fsc{tag}_crossed"] else "*")


def _fsc(map1: Path | np.ndarray, map2: Path | np.ndarray, apix: float) -> dict:
    from cryopose.metrics.fsc import fsc_report

    load = lambda m: mrcfile.read(m).astype(np.float64) if isinstance(m, Path) else m  # noqa: E731
    rep = fsc_report(load(map1), load(map2), apix)
    rep.pop("fsc_curve")
    return rep


def _missing_relion() -> str | None:
    for exe in ("relion_project", "relion_reconstruct"):
        if shutil.which(exe) is None:
            return f"{exe} not installed"
    return None


# --------------------------------------------------------------------------- relion
def section_relion(out: Path, *, n_particles: int, epochs: int, box_size: int, threads: int, seed: int) -> dict:
    from cryopose.io.mrc import write_map
    from cryopose.io.particles import load_particles
    from cryopose.io.star import write_star
    from cryopose.metrics.pose_error import align_rotations
    from cryopose.pipelines.demo import CTF_TABLE, bundled_path

    work = _fresh(out / "relion")
    truth_t, apix, sym = _ab._truth("betagal")
    truth = truth_t.numpy().astype(np.float64)
    write_map(work / "truth.mrc", truth.astype(np.float32), apix)
    # reconstruct.py's _write_angles draws CTFs from its module-level CTF_TABLE (the shared
    # 105k-row file); point it at the bundled 20k-row subsample of the same table.
    shared_table = _rb.CTF_TABLE
    _rb.CTF_TABLE = bundled_path(CTF_TABLE)
    try:
        _rb._write_angles(work / "angles.star", n_particles, seed, apix)
    finally:
        _rb.CTF_TABLE = shared_table
    _rb._run(["relion_project", "--i", "truth.mrc", "--o", "clean", "--ang", "angles.star", "--ctf"], work)
    clean = mrcfile.read(work / "clean.mrcs").astype(np.float64)
    sigma = float(np.sqrt(clean.reshape(clean.shape[0], -1).var(axis=1).mean() / SNR))
    del clean
    _rb._run(["relion_project", "--i", "truth.mrc", "--o", "proj", "--ang", "angles.star", "--ctf",
              "--add_noise", "--white_noise", f"{sigma:.8g}"], work)
    print(f"relion: {n_particles} particles by relion_project, {_rb.BOX} px at {apix:g} Å, SNR {SNR:g} "
          f"(σ = {sigma:.4g}), origins ±3 px, EMPIAR-10028 CTFs; abinitio {epochs} epochs at {box_size} px",
          flush=True)

    run = work / "run"
    t_abinitio = _abinitio(work / "proj.star", run, epochs=epochs, box_size=box_size, threads=threads, seed=seed)
    # (a) pose error of the poses as written
    _, js = _cli(["evaluate-poses", run / "poses.star", work / "proj.star", "--symmetry", sym, "--json",
                  "--seed", seed], capture=True)
    pose = json.loads(js)
    pose.pop("global_rotation_relion_euler_deg", None)

    # (b) relion_reconstruct on RUN/poses.star unchanged, run where cryopose ran (RELION resolves image
    # names from its working folder, and cryopose writes them so), vs RUN/map.mrc; in C1 as abinitio ran
    # (its map is in its own frame, not on the D2 axes)
    rel_cmd = ["relion_reconstruct", "--ctf", "--sym", sym]
    here = Path.cwd()
    t_rel_raw = _rb._run(["relion_reconstruct", "--ctf", "--sym", "C1", "--i", str(run / "poses.star"), "--o",
                          str(run / "relion_map.mrc")], here)
    same_poses = _fsc(run / "relion_map.mrc", run / "map.mrc", apix)
    # map.mrc is Wiener-filtered where its half-map FSC is low (per voxel, not a per-shell scale, so
    # the FSC against RELION's unfiltered map drops there); the unfiltered half-map average is the
    # like-for-like comparison
    import mrcfile

    h1, h2 = (mrcfile.read(run / f"map_half{i}.mrc").astype(np.float32) for i in (1, 2))
    from cryopose.io.mrc import write_map

    write_map(run / "map_halves_average.mrc", (h1 + h2) / 2.0, apix)
    same_poses_unfiltered = _fsc(run / "relion_map.mrc", run / "map_halves_average.mrc", apix)

    # into the truth's frame and hand: aligned copy of poses.star, reconstructed by both programs
    _, est = load_particles(run / "poses.star", datadir=work)  # the stacks are in WORK, above RUN
    _, ref = load_particles(work / "proj.star")
    align = align_rotations(est.rotmats.double(), ref.rotmats.double(), symmetry=sym, seed=seed)
    write_star(run / "poses_aligned.star", est.replace(rotmats=align.aligned_est.float()))
    cp_cmd = _rb._cryopose_cmd() + ["reconstruct", "--symmetry", sym, "--threads", str(threads), "--seed", str(seed),
                                    "--no-progress", "--force"]
    rows = [{"program": f"cryopose abinitio ({epochs} epochs, train + infer + polish + reconstruct)",
             "poses": "inferred", "wall_s": t_abinitio, "fsc_vs_truth": None}]
    # poses_aligned.star names images from the folder cryopose ran in; proj.star (relion_project's) from WORK
    for label, where, star, cwd in (("inferred, aligned to truth", run, "poses_aligned.star", here),
                                    ("true (baseline)", work, "proj.star", work)):
        tag = "aligned" if where is run else "true"
        wall, _ = _rb._run(cp_cmd + [str(where / star), "-o", str(where / f"cryopose_{tag}.mrc")], cwd)
        rows.append({"program": "cryopose reconstruct", "poses": label, "wall_s": wall,
                     "fsc_vs_truth": _fsc(where / f"cryopose_{tag}.mrc", truth, apix)})
        wall, _ = _rb._run(rel_cmd + ["--i", str(where / star), "--o", str(where / f"relion_{tag}.mrc")], cwd)
        rows.append({"program": f"relion_reconstruct --ctf --sym {sym}", "poses": label, "wall_s": wall,
                     "fsc_vs_truth": _fsc(where / f"relion_{tag}.mrc", truth, apix)})
    rows.insert(1, {"program": "relion_reconstruct --ctf --sym C1", "poses": "RUN/poses.star unchanged",
                    "wall_s": t_rel_raw[0], "fsc_vs_truth": None})
    result = {"n_particles": n_particles, "epochs": epochs, "working_box": box_size, "snr": SNR,
              "noise_sigma": sigma, "pixel_size_angstrom": apix, "symmetry": sym, "pose_error": pose,
              "alignment_check": {"median_error_deg": align.median_error_deg, "hand": align.hand},
              "relion_map_vs_cryopose_map_same_poses": same_poses,
              "relion_map_vs_cryopose_unfiltered_same_poses": same_poses_unfiltered, "rows": rows,
              "summary": json.loads((run / "summary.json").read_text())}
    print(_relion_table(result), flush=True)
    return result


def _relion_table(r: dict) -> str:
    pe = r["pose_error"]
    lines = ["\n### relion: particles by relion_project, poses by cryopose abinitio\n",
             f"Pose error of RUN/poses.star (evaluate-poses, {r['symmetry']}): median {pe['median_error_deg']:.2f}°, "
             f"mean {pe['mean_error_deg']:.2f}°, hand {pe['hand']} (other hand: median "
             f"{_fmt(pe.get('other_hand_median_error_deg'))}°).\n",
             "| program | poses | FSC0.5 vs truth (Å) | FSC0.143 vs truth (Å) | wall (s) |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        f = row["fsc_vs_truth"]
        a, b = ("—", "—") if f is None else (_res(f, "0p5"), _res(f, "0p143"))
        lines.append(f"| {row['program']} | {row['poses']} | {a} | {b} | {row['wall_s']:.1f} |")
    s = r["relion_map_vs_cryopose_map_same_poses"]
    lines.append(f"\nrelion_reconstruct's map of RUN/poses.star vs cryopose's RUN/map.mrc (same poses): FSC0.5 at "
                 f"{_res(s, '0p5')} Å, FSC0.143 at {_res(s, '0p143')} Å (Nyquist {s['nyquist_angstrom']:.2f} Å); "
                 "against the unfiltered average of cryopose's half maps (map.mrc is Wiener-filtered where its "
                 f"half-map FSC is low): FSC0.5 at {_res(r['relion_map_vs_cryopose_unfiltered_same_poses'], '0p5')} Å, "
                 f"FSC0.143 at {_res(r['relion_map_vs_cryopose_unfiltered_same_poses'], '0p143')} Å.")
    lines.append("(Unmasked FSC against the true 64-px map; * = never crossed, at Nyquist. Reconstruction wall "
                 "times are subprocesses, start-up included; abinitio's is in-process, without report.html. "
                 "\"aligned to truth\" = poses.star with the rotations of align_rotations' aligned_est "
                 "(global rotation and hand fitted to the true poses modulo D2).)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- junk
def _losses_finite(run: Path) -> tuple[bool, float | None, int]:
    """(all losses finite, final loss, number of logged losses) from summary.json and the checkpoint."""
    from cryopose.training.checkpoint import load_checkpoint

    summary = json.loads((run / "summary.json").read_text())
    final = summary.get("final_loss")  # summary.json writes NaN/inf as null
    ckpt = load_checkpoint(run / "checkpoint.pt")
    hist = [float(v) for v in ckpt.get("history", {}).get("loss", [])]
    hist += [float(v) for v in ckpt.get("epoch_losses", [])]
    ok = final is not None and math.isfinite(float(final)) and all(math.isfinite(v) for v in hist)
    return ok, final, len(hist)


def section_junk(out: Path, *, n_particles: int, epochs: int, box_size: int, threads: int, seed: int,
                 junk_fraction: float, junk_structure: Path, cases: str = "noise,other") -> dict:
    from sklearn.metrics import roc_auc_score

    from cryopose.io.particles import load_particles
    from cryopose.metrics.pose_error import align_rotations

    work = _fresh(out / "junk")
    rows = []
    for label, jtype in JUNK_CASES:
        if jtype not in [c.strip() for c in cases.split(",")]:
            continue
        extra = ["--junk-fraction", junk_fraction, "--junk-types", jtype]
        if jtype == "other":
            if not junk_structure.exists():
                print(f"junk: {junk_structure} not found; skipping the '{label}' case", flush=True)
                continue
            extra += ["--junk-structure", junk_structure]
            label = f"{label} ({junk_structure.stem})"
        case = work / jtype
        case.mkdir()
        star = _simulate(case / "particles.star", n_particles, seed=seed, threads=threads, extra=extra)
        wall = _abinitio(star, case / "run", epochs=epochs, box_size=box_size, threads=threads, seed=seed)
        finite, final_loss, n_logged = _losses_finite(case / "run")
        _, truth = load_particles(star)
        _, est = load_particles(case / "run" / "poses.star", datadir=case)
        junk = truth.table["rlnCryoposeIsOutlier"].to_numpy().astype(int)
        good = junk == 0
        conf = est.table["rlnCryoposeConfidence"].to_numpy().astype(np.float64)
        row = {"case": label, "junk_types": jtype, "n_particles": n_particles, "n_junk": int(junk.sum()),
               "epochs": epochs, "working_box": box_size, "losses_finite": finite, "final_loss": final_loss,
               "n_logged_losses": n_logged, "wall_s": wall,
               "median_confidence_true": float(np.median(conf[good])),
               "median_confidence_junk": float(np.median(conf[~good])) if (~good).any() else None}
        both = 0 < good.sum() < len(good)
        finite_conf = bool(np.isfinite(conf).all())
        row["auc_confidence"] = float(roc_auc_score(good, conf)) if both and finite_conf else None
        # a per-particle residual, if poses.star has one (larger = worse fit)
        res_cols = [c for c in est.table.columns if "residual" in str(c).lower()]
        row["residual_column"] = res_cols[0] if res_cols else None
        row["auc_residual"] = (float(roc_auc_score(good, -est.table[res_cols[0]].to_numpy(np.float64)))
                               if res_cols and both else None)
        al = align_rotations(est.rotmats[good].double(), truth.rotmats[good].double(), symmetry=SYMMETRY, seed=seed)
        row.update({"median_error_true_deg": al.median_error_deg, "mean_error_true_deg": al.mean_error_deg,
                    "hand": al.hand})
        rows.append(row)
        print(_junk_table(rows[-1:]), flush=True)
    return {"rows": rows}


def _junk_table(rows: list[dict]) -> str:
    lines = ["\n### junk: abinitio (C1, scored modulo D2) with 20 % junk\n",
             "| junk | particles (junk) | losses finite | final loss | AUC confidence | AUC residual | "
             "median conf. true / junk | median err true (°) | mean err true (°) | wall (s) |",
             "|" + "---|" * 10]
    for r in rows:
        auc_res = _fmt(r["auc_residual"], ".3f") if r["residual_column"] else "not written"
        lines.append(f"| {r['case']} | {r['n_particles']} ({r['n_junk']}) | {'yes' if r['losses_finite'] else 'NO'} | "
                     f"{_fmt(r['final_loss'], '.4g')} | {_fmt(r['auc_confidence'], '.3f')} | {auc_res} | "
                     f"{_fmt(r['median_confidence_true'], '.3f')} / {_fmt(r['median_confidence_junk'], '.3f')} | "
                     f"{r['median_error_true_deg']:.2f} | {r['mean_error_true_deg']:.2f} | {r['wall_s']:.0f} |")
    lines.append("(AUC: rlnCryoposeConfidence of RUN/poses.star, true particles as positives, 0.5 = chance; "
                 "\"not written\" = poses.star has no per-particle residual column. Pose error of the true "
                 "particles only, after global alignment modulo D2. Wall: abinitio in-process, no report.)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- throughput
RELION_HEALPIX_ORDER = 3  # 60° / 2^3 = 7.5° (adaptive oversampling 1: finest 3.75°)


def _relion_estep(work: Path, meta, reference: Path, n: int, *, threads: int, offset_range: int) -> dict:
    """One ``relion_refine`` expectation step on the first ``n`` particles of ``meta`` against
    ``reference`` (as ``benchmarks/search_vs_relion.py``); returns the timing and the poses, or
    ``{"skipped": why}`` / ``{"failed": why}``."""
    from cryopose.io.star import read_star, write_star

    if shutil.which("relion_refine") is None:
        return {"skipped": "relion_refine not installed (apt-get install -y relion)"}
    sub = meta.subset(np.arange(n))
    star = work / "relion_subset.star"
    write_star(star, sub, relative_to=work)  # RELION 3.1; N@stack names resolve from WORK, where RELION runs
    (work / "relion").mkdir(exist_ok=True)
    apix, box = float(meta.pixel_size_angstrom), int(meta.box_size)
    cmd = ["relion_refine", "--i", star.name, "--o", "relion/run", "--ref", str(Path(reference).resolve()),
           "--iter", "1", "--K", "1", "--skip_maximize", "--firstiter_cc", "--ctf",
           "--healpix_order", str(RELION_HEALPIX_ORDER), "--oversampling", "1",
           "--offset_range", str(offset_range), "--offset_step", "1", "--sym", SYMMETRY,
           "--particle_diameter", f"{0.9 * box * apix:.1f}", "--ini_high", f"{2.0 * apix:.2f}", "--pad", "2",
           "--j", str(threads), "--dont_check_norm", "--zero_mask", "--verb", "0"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)  # names are relative to work
    wall = time.perf_counter() - t0
    (work / "relion" / "relion_refine.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"failed": f"relion_refine exited with status {proc.returncode}: {proc.stderr.strip()[-500:]}",
                "command": " ".join(cmd)}
    rel = read_star(work / "relion" / "run_it001_data.star", require_image_names=False)
    # match RELION's rows to ours by image number (one stack: the test particles)
    if sub.image_paths is None or len(set(sub.image_paths)) != 1:
        raise RuntimeError("relion E-step: expected the test particles in one stack")
    number = {int(str(name).split("@")[0]): i for i, name in enumerate(rel.table["rlnImageName"])}
    wanted = [int(k) + 1 for k in sub.image_indices]
    if len(rel) != n or sorted(number) != sorted(wanted):
        raise RuntimeError(f"relion E-step: {len(rel)} rows written for {n} particles, or the image numbers differ")
    rot = rel.rotmats[torch.as_tensor([number[k] for k in wanted])]
    return {"n": n, "wall_s": wall, "ms_per_particle": 1000 * wall / n, "rotmats": rot,
            "healpix_order": RELION_HEALPIX_ORDER, "offset_range_px": offset_range, "command": " ".join(cmd)}


def section_throughput(out: Path, *, n_particles: int, epochs: int, box_size: int, threads: int, seed: int,
                       encoder: Path | None, n_predict: int, n_search: int, n_relion: int,
                       relion_offset_range: int, repeats: int = 1) -> dict:
    from cryopose.io.particles import load_particles
    from cryopose.io.star import write_star
    from cryopose.metrics.pose_error import align_rotations, symmetry_aware_errors

    if encoder is not None:
        encoder = encoder.resolve()
        if not encoder.is_file():
            raise SystemExit(f"--encoder {encoder}: not found")
        if (out / "throughput").resolve() in encoder.parents:
            raise SystemExit(f"--encoder {encoder} is inside {out / 'throughput'}, which this section empties; "
                             "copy it elsewhere first")
    work = _fresh(out / "throughput")
    betagal, _ = _bundled()
    train_wall = None
    if encoder is None:
        train = _simulate(work / "train.star", n_particles, seed=seed, threads=threads)
        train_wall = _abinitio(train, work / "run", epochs=epochs, box_size=box_size, threads=threads, seed=seed)
        encoder = work / "run" / "encoder.pt"
    test = _simulate(work / "test.star", n_predict, seed=seed + 1, threads=threads)  # unseen particles
    _, test_meta = load_particles(test)
    n_search = min(n_search, n_predict)
    for name, k in (("warmup", 8), ("search_subset", n_search)):
        write_star(work / f"{name}.star", test_meta.subset(np.arange(min(k, n_predict))))
    predict = lambda src, dst, *x: ["predict", encoder, src, "-o", dst, "--threads", threads,  # noqa: E731
                                    "--no-progress", "--force", *x]
    search = lambda src, dst: ["search", src, "--reference", betagal, "-o", dst, "--symmetry", SYMMETRY,  # noqa: E731
                               "--step", 7.5, "--final-step", 7.5, "--threads", threads, "--force"]
    _cli(predict(work / "warmup.star", work / "warmup_predict.star"), capture=True)
    _cli(predict(work / "warmup.star", work / "warmup_predict_int8.star", "--int8"), capture=True)
    _cli(search(work / "warmup.star", work / "warmup_search.star"), capture=True)
    n_relion = min(n_relion, n_predict)
    walls: dict[str, list[float]] = {"predict": [], "predict_int8": [], "search": [], "relion": []}
    for _ in range(repeats):  # interleaved rounds: a change of machine load hits all of them alike
        walls["predict"].append(_cli(predict(test, work / "predict.star"), capture=True)[0])
        walls["predict_int8"].append(_cli(predict(test, work / "predict_int8.star", "--int8"), capture=True)[0])
        walls["search"].append(_cli(search(work / "search_subset.star", work / "search.star"), capture=True)[0])
        relion = _relion_estep(work, test_meta, betagal, n_relion, threads=threads,
                               offset_range=relion_offset_range)
        if "wall_s" in relion:
            walls["relion"].append(relion["wall_s"])
    t_pred, t_search = float(np.median(walls["predict"])), float(np.median(walls["search"]))
    if walls["relion"]:
        relion.update(wall_s=float(np.median(walls["relion"])), walls_s=walls["relion"])
        relion["ms_per_particle"] = 1000 * relion["wall_s"] / n_relion

    _, pred = load_particles(work / "predict.star")
    _, pred8 = load_particles(work / "predict_int8.star")
    _, found = load_particles(work / "search.star")
    err_pred = align_rotations(pred.rotmats.double(), test_meta.rotmats.double(), symmetry=SYMMETRY, seed=seed)
    err_pred8 = align_rotations(pred8.rotmats.double(), test_meta.rotmats.double(), symmetry=SYMMETRY, seed=seed)
    t_pred8 = float(np.median(walls["predict_int8"]))
    ms_pred8 = 1000 * t_pred8 / n_predict
    err_search = symmetry_aware_errors(found.rotmats.double(), test_meta.rotmats[:n_search].double(), symmetry=SYMMETRY)
    ms_pred, ms_search = 1000 * t_pred / n_predict, 1000 * t_search / n_search
    sj = work / "search_search.json"  # POSES_search.json: the search's own stage timings
    stages = json.loads(sj.read_text()).get("seconds", {}) if sj.exists() else {}
    ms_global = 1000 * stages["global"] / n_search if "global" in stages else None
    result = {
        "encoder": str(encoder), "encoder_train_wall_s": train_wall, "n_train": n_particles if train_wall else None,
        "epochs": epochs if train_wall else None, "working_box": box_size, "threads": threads,
        "box_px": int(test_meta.box_size), "snr": SNR,
        "repeats": repeats, "walls_s": walls,
        "predict": {"n": n_predict, "wall_s": t_pred, "ms_per_particle": ms_pred,
                    "median_error_deg": err_pred.median_error_deg, "hand": err_pred.hand},
        "predict_int8": {"n": n_predict, "wall_s": t_pred8, "ms_per_particle": ms_pred8,
                         "median_error_deg": err_pred8.median_error_deg, "hand": err_pred8.hand,
                         "int8_vs_float_median_deg": float(symmetry_aware_errors(
                             pred8.rotmats.double(), pred.rotmats.double(), symmetry=SYMMETRY).median())},
        "search": {"n": n_search, "wall_s": t_search, "ms_per_particle": ms_search,
                   "median_error_deg": float(err_search.median()),
                   "stage_seconds": stages, "global_stage_ms_per_particle": ms_global},
        "speedup": ms_search / ms_pred,
        "speedup_int8": ms_search / ms_pred8,
        "speedup_global_stage_only": None if ms_global is None else ms_global / ms_pred,
    }
    if "rotmats" in relion:
        err_rel = symmetry_aware_errors(relion.pop("rotmats").double(), test_meta.rotmats[:n_relion].double(),
                                        symmetry=SYMMETRY)
        relion.update({"median_error_deg": float(err_rel.median()), "mean_error_deg": float(err_rel.mean())})
        result["speedup_vs_relion"] = relion["ms_per_particle"] / ms_pred
        result["speedup_int8_vs_relion"] = relion["ms_per_particle"] / ms_pred8
    else:
        result["speedup_vs_relion"] = result["speedup_int8_vs_relion"] = None
    result["relion"] = relion
    print(_throughput_table(result), flush=True)
    return result


def _walls(r: dict, key: str) -> str:
    return ", ".join(f"{w:.2f}" for w in r.get("walls_s", {}).get(key, [])) or "—"


def _throughput_table(r: dict) -> str:
    p, s = r["predict"], r["search"]
    trained = ("given (--encoder)" if r["encoder_train_wall_s"] is None else
               f"trained here: {r['n_train']} particles, {r['epochs']} epochs at {r['working_box']} px, "
               f"{r['encoder_train_wall_s']:.0f} s")
    rel = r.get("relion") or {}
    lines = [f"\n### throughput: amortized inference vs grid search ({r['box_px']} px, --threads {r['threads']})\n",
             f"Encoder: {trained}. Test particles: unseen β-gal, SNR {r['snr']:g}, CTF, no shifts; predict on "
             f"{p['n']}, search on the first {s['n']}, relion_refine on the first {rel.get('n', '—')} of them; "
             "search and relion against the same reference (the bundled 64-px β-gal map, the truth).\n",
             "Timed: the wall of each call on all its particles, divided by their number (fixed costs included): "
             "predict and search in-process around the CLI call, after one untimed warm-up call each on 8 "
             "particles; relion_refine as a subprocess (process start-up included, no warm-up).\n",
             "| command | particles | timed | wall (s) | ms/particle | median err (°) |", "|---|---|---|---|---|---|",
             f"| cryopose predict ENCODER.pt | {p['n']} | CLI call in-process: load encoder, read STAR + images, "
             f"infer, write STAR | {p['wall_s']:.2f} | {p['ms_per_particle']:.2f} | {p['median_error_deg']:.2f} "
             f"(aligned, {p['hand']}) |"]
    q = r.get("predict_int8")
    if q is not None:
        lines.append(f"| cryopose predict ENCODER.pt --int8 | {q['n']} | as predict, the encoder in int8 | "
                     f"{q['wall_s']:.2f} | {q['ms_per_particle']:.2f} | {q['median_error_deg']:.2f} (aligned, "
                     f"{q['hand']}; {q['int8_vs_float_median_deg']:.2f} from float) |")
    lines += [f"| cryopose search --step 7.5 --final-step 7.5 --symmetry D2 | {s['n']} | CLI call in-process: read "
             f"map, STAR + images, global grid, write STAR | {s['wall_s']:.2f} | {s['ms_per_particle']:.2f} | "
             f"{s['median_error_deg']:.2f} (vs truth) |"]
    fine = 60.0 / 2 ** (RELION_HEALPIX_ORDER + 1)
    if "wall_s" in rel:
        lines.append(f"| relion_refine E-step (--healpix_order {rel['healpix_order']}, oversampling 1 → {fine:g}°, "
                     f"offsets ±{rel['offset_range_px']} px, CC, --ctf, --sym D2, --j {r['threads']}) | {rel['n']} | "
                     "subprocess wall: start-up, read map + STAR + images, noise spectra, one E-step, write STAR | "
                     f"{rel['wall_s']:.2f} | {rel['ms_per_particle']:.2f} | {rel['median_error_deg']:.2f} (vs truth) |")
    else:
        why = f"skipped: {rel['skipped']}" if "skipped" in rel else f"FAILED: {rel.get('failed', 'not run')}"
        lines.append(f"| relion_refine E-step | — | {why} | — | — | — |")
    verdict = lambda x: "PASS" if x >= 100 else "FAIL"  # noqa: E731
    lines.append(f"\nspeed-up predict vs search (7.5° grid): {r['speedup']:.1f}× per particle "
                 f"({verdict(r['speedup'])} against ≥ 100×).")
    sr = r.get("speedup_vs_relion")
    if sr is not None:
        lines.append(f"speed-up predict vs relion_refine E-step (healpix order 3): {sr:.1f}× per particle "
                     f"({verdict(sr)} against ≥ 100×).")
    else:
        lines.append("speed-up predict vs relion_refine E-step: — (relion row skipped).")
    if q is not None:
        s8 = r.get("speedup_int8_vs_relion")
        lines.append(f"speed-up predict --int8: {r['speedup_int8']:.1f}× vs search, "
                     + (f"{s8:.1f}× vs relion_refine E-step" if s8 is not None else "— vs relion_refine")
                     + f"; {p['wall_s'] / q['wall_s']:.2f}× faster than the float predict.")
    passed = [name for name, x in (("cryopose search", r["speedup"]), ("relion_refine E-step", sr),
                                   ("cryopose search with predict --int8", r.get("speedup_int8")),
                                   ("relion_refine E-step with predict --int8", r.get("speedup_int8_vs_relion")))
              if x is not None and x >= 100]
    lines.append("Target (issue: ≥ 100× faster than cryopose's exhaustive 7.5° projection matching *or* "
                 "relion_refine's expectation step; both baselines are stated, either suffices): "
                 + (f"met against {' and '.join(passed)}." if passed else "not met against either baseline."))
    lines.append(f"Each call timed {r.get('repeats', 1)}× in interleaved rounds; the median wall is used"
                 + (f" (walls, s: predict {_walls(r, 'predict')}; predict --int8 {_walls(r, 'predict_int8')}; "
                    f"search {_walls(r, 'search')}; "
                    f"relion {_walls(r, 'relion')})." if r.get("repeats", 1) > 1 else "."))
    st = s.get("stage_seconds") or {}
    if "prepare" in st and s.get("global_stage_ms_per_particle") is not None:
        lines.append(f"search's own stages (search.json): prepare {st['prepare']:.2f} s (reference projections on "
                     f"the grid, once per call, amortised over the {s['n']} particles), global "
                     f"{s['global_stage_ms_per_particle']:.2f} ms/particle; predict vs the global stage alone: "
                     f"{r['speedup_global_stage_only']:.1f}×.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="relion,junk,throughput")
    p.add_argument("--n-particles", type=int, default=10000, help="particles simulated/trained on (default 10000)")
    p.add_argument("--epochs", type=int, default=3, help="abinitio epochs (default 3)")
    p.add_argument("--box-size", type=int, default=32, help="abinitio working box (default 32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every cryopose call (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--junk-fraction", type=float, default=0.2)
    p.add_argument("--junk-cases", default="noise,other", help="junk kinds to run: noise, other (default both)")
    p.add_argument("--junk-structure", type=Path, default=_ab.PDB_4AKE,
                   help="map or model projected as 'other' junk (default shared/data/pdb/4ake_mdanalysis.pdb)")
    p.add_argument("--encoder", type=Path, help="throughput: reuse this encoder.pt instead of training one")
    p.add_argument("--n-predict", type=int, default=2000, help="throughput: particles for predict (default 2000)")
    p.add_argument("--n-search", type=int, default=200, help="throughput: particles for search (default 200)")
    p.add_argument("--n-relion", type=int, default=50,
                   help="throughput: particles for the relion_refine E-step (default 50)")
    p.add_argument("--relion-offset-range", type=int, default=0,
                   help="throughput: relion_refine --offset_range in px (default 0: the test particles have no "
                        "shifts and search does not search them)")
    p.add_argument("--repeats", type=int, default=3,
                   help="throughput: timed rounds of predict, search and relion_refine; medians (default 3)")
    p.add_argument("--out", default="benchmark_abinitio_extras")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    a = p.parse_args(argv)
    if a.quick:
        a.n_particles, a.epochs, a.n_predict, a.n_search, a.n_relion = 300, 1, 300, 20, 10
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(n_particles=a.n_particles, epochs=a.epochs, box_size=a.box_size, threads=a.threads, seed=a.seed)
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in ("relion", "junk", "throughput")]
    if unknown:
        print(f"unknown section(s) {unknown}; choose from relion, junk, throughput", file=sys.stderr)
        return 2
    results: dict = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}}
    for sec in sections:
        t0 = time.perf_counter()
        if sec == "relion":
            missing = _missing_relion()
            if missing:
                print(f"\n### relion\n\n{missing}: skipping section 'relion' (install RELION 3.1, "
                      "e.g. apt-get install -y relion)", flush=True)
                results[sec] = {"skipped": missing}
                continue
            results[sec] = section_relion(out, **kw)
        elif sec == "junk":
            results[sec] = section_junk(out, junk_fraction=a.junk_fraction, junk_structure=a.junk_structure,
                                        cases=a.junk_cases, **kw)
            print(_junk_table(results[sec]["rows"]), flush=True)
        elif sec == "throughput":
            results[sec] = section_throughput(out, encoder=a.encoder, n_predict=a.n_predict, n_search=a.n_search,
                                              n_relion=a.n_relion, relion_offset_range=a.relion_offset_range,
                                              repeats=max(1, a.repeats), **kw)
        results[sec]["section_wall_s"] = time.perf_counter() - t0
        print(f"(section {sec}: {results[sec]['section_wall_s']:.0f} s)", flush=True)
        (out / "abinitio_extras.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "abinitio_extras.json").write_text(json.dumps(results, indent=2, default=str))
    if a.quick:
        print("\n(--quick: tiny sizes; these numbers are not the benchmark's.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
