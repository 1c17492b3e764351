"""Benchmark: the main job on particles as a user hands them over.

``cryopose abinitio`` (and ``cryopose refine``) run **with their default options** on particles
made by RELION 3.1's ``relion_project`` (not by cryopose's simulator) from two real structures,
with what a picker leaves behind: off-centre particles and no origins in the STAR, a preferred
view, coloured noise. One factor is turned on per row so that a failure can be attributed.

Data (``benchmarks/realistic_data.py`` makes it; cached per (structure, row, SNR, seed, N, box)
under ``--workdir``):

* **Structures.** ``betagal``: the real β-galactosidase map
  ``../shared/data/maps/relion_tutorial_betagal_100px_3.54A.mrc`` (100³ at 3.54 Å, D2; NGL
  repository, MIT, RELION tutorial data) zero-padded in real space to 128³ at 3.54 Å (453 Å box).
  ``4ake``: chain A of ``../shared/data/pdb/4ake_mdanalysis.pdb`` (PDB 4AKE via MDAnalysis'
  workshop repository, CC-BY-SA-4.0 / GPL-2) made into electron-scattering density by cryopose's
  own ``cryopose.simulate.volumes.model_to_density`` (gemmi, blur 16·a² Å²) at **1.2 Å/px** on
  the 128 px grid (154 Å box; the chain is 62 Å across at its longest, 52 px, 0.4 of the box;
  C1). Another ``--box`` keeps the field of view (pixel = base · 128 / box; β-gal is
  Fourier-cropped from the padded 128³ map).
* **CTF.** Each particle gets a row of ``../shared/data/ctf_distributions/empiar10028_ctf_cryodrgn.npy``
  (EMPIAR-10028, CC0; drawn without replacement): dfU, dfV, dfAng, kV (300), Cs (2.0 mm) and
  amplitude contrast (0.1); the table's pixel size (1.34 Å) is **not** used, the target's is.
* **Images.** ``relion_project --i MAP.mrc --o clean --ang geom.star --ctf`` on a RELION 3.1
  STAR (``data_optics`` with pixel size, box, kV, Cs, amplitude contrast; ``data_particles``
  with ``rlnAngleRot/Tilt/Psi``, ``rlnOriginXAngst/YAngst``, ``rlnDefocusU/V/Angle``,
  ``rlnPhaseShift``): noise-free, CTF-modulated, shifted by RELION.
* **Shifts.** ``rlnOriginX/YAngst`` Gaussian, σ = ``--shift-sigma`` px per axis (default 4 px;
  RMS |shift| 5.7 px), given to ``relion_project`` and then **removed** from the particle STAR
  the method reads (no origin columns, as from a picker); the truth is in ``truth.star``.
* **Views.** ``--preferred-fraction`` (default 0.4, exactly ``round(0.4 N)`` particles) have
  their viewing direction uniform on a cap of ``--preferred-cone`` (default 10°) around the
  map's z axis (RELION tilt 0; for β-gal a 2-fold axis, the top view); the others uniform on
  SO(3) (uniform quaternions); psi uniform.
* **Noise.** Gaussian, added here to RELION's noise-free images, one σ per data set:
  white, or coloured with power spectrum ``P(k) ∝ 1 + 3·exp(−(k/k0)²)``, ``k`` in cycles/Å,
  ``k0 = --noise-k0`` (default 0.025 Å⁻¹, i.e. 40 Å), so the power at low frequency is 4× that
  at high frequency; made as ``σ · irfft2(rfft2(z) · sqrt(P / mean P))`` with ``z`` i.i.d.
  N(0, 1) per pixel, so σ² is the noise variance per pixel in both cases.
* **SNR** (the project's definition, ``src/cryopose/simulate/noise.py``):
  ``SNR = mean_i var(S_i) / σ²``, ``S_i`` the noise-free image of particle ``i`` (variance over
  the whole box), σ² the mean noise variance per pixel; ``--snrs`` (default 0.05 and 0.1). The
  measured SNR (noise variance pooled over every pixel of every image) is printed per data set.
  The stack is then divided by σ (unit noise variance, as after RELION's normalisation) and
  written with mrcfile as float32 ``particles.mrcs`` with the pixel size.
* **Rows.** ``ideal`` (centred, zero origins given, uniform views, white noise), ``shifts``
  (off-centre, no origins), ``views`` (preferred view, centred), ``coloured`` (coloured noise,
  centred), ``all`` (all three), and ``refine``: ``cryopose refine`` with its defaults on the
  ``all`` data against a 15 Å low-pass of the true map (raised-cosine edge one shell wide,
  ``cryopose.fourier.centered_fft3``). Rows with the same views and shifts share the same
  poses, shifts and CTFs (for a seed), so they differ only in their factor.

Runs (by subprocess, timed; ``--threads`` and ``--no-progress`` are the only options added, and
the particles' point group ``--symmetry SYM``, a fact of the sample as in RELION's and
cryoSPARC's refinements, not a tuning option: ``abinitio`` trains in C1 whatever it is told and
imposes the group after finding the map's axes; its run folder is ``runs/abinitio-SYM``, the C1
runs of earlier versions are in ``runs/abinitio``)::

    python -m cryopose.cli.main abinitio WORK/<ds>/<row>_snr<s>/particles.star -o RUN --symmetry SYM --threads T --no-progress
    python -m cryopose.cli.main refine WORK/<ds>/all_snr<s>/particles.star --reference WORK/volumes/<map>_lp15A.mrc -o RUN --symmetry SYM --threads T
    python -m cryopose.cli.main reconstruct WORK/<ds>/<row>_snr<s>/truth.star -o known/known.mrc --threads T --no-progress
    python -m cryopose.cli.main reconstruct RUN/eval/aligned.star -o RUN/eval/aligned.mrc --threads T --no-progress

(``--method-args "..."`` / ``--refine-args "..."`` append options; such rows are labelled with
them in the table and get their own run folder.)

Scoring, with the project's own tools:

* **pose error**: ``cryopose.metrics.pose_error.align_rotations`` (the ``evaluate-poses``
  alignment: global rotation, both hands, modulo D2 for β-gal / C1 for 4AKE): median and % of
  particles within 5°;
* **shift error** in px: ``|origin_est − origin_true − (R_est,i t)_xy|`` per particle, ``t`` the
  one 3D translation of the method's map (in its own frame, ``R_est,i`` the method's poses)
  fitted by least squares over all particles. An ab initio map's origin is arbitrary — it is
  wherever the centring put the particles' common centre — just as its orientation and hand
  are (which the pose error removes by the global rotation): a user puts the map into a
  reference's frame by rotating *and* translating it. Three parameters for thousands of
  particles hide no per-particle error. (The fit uses the method's poses, not the true ones: a
  symmetric particle's estimated poses are any of its symmetry mates, particle by particle,
  and one translation of the map is then a different vector for each mate in the truth's
  frame.) The raw ``|origin_est − origin_true|`` is in the table too (and the JSON). When the
  method writes no origins (``abinitio --no-estimate-shifts`` keeps the file's, i.e. none), the
  raw error is against zero, i.e. ``|true shift|`` (marked ``*``);
* **FSC 0.143 vs truth**: the particles reconstructed (``cryopose reconstruct``, C1, seed 0 half
  split) from the method's poses *aligned into the truth frame* by the one global rotation and
  hand (no per-particle symmetry mates) and its origins moved by the same fitted translation,
  against the true map, ``cryopose.metrics.fsc.fsc_report``; the **known-pose** value is the
  same for the true poses and origins (``truth.star``); **ratio** = method / known (≥ 1; 1 = as good as
  known poses). The runs' own half-map FSC 0.143 (``summary.json`` / ``report.json``) and the
  known-pose half-map value are in the JSON;
* **map.mrc fitted vs truth**: the method's own ``map.mrc`` put onto the true map as a user
  fits one map into another — rotated by the poses' global rotation (and hand), translated to
  the cross-correlation peak — and its FSC 0.143 against the truth (the known-pose map gets
  the same treatment: 7.33 Å for β-gal at 128 px, as its reconstruction). It does not assume
  that one translation explains every particle's origin: for a symmetric particle whose poses
  are a mixture of symmetry mates, each mate with its own origin (as a global search returns
  them for an almost symmetric map), the reconstruction from aligned poses above is blurred by
  the mixture while the method's own map is not;
* **wall time** of the ``abinitio`` / ``refine`` process.

Targets (pass/fail): median pose error ≤ 3°, median shift error ≤ 1 px, ratio ≤ 1.2, wall time
≤ 30 min.

Usage::

    python benchmarks/realistic.py                         # the issue's full grid (2 structures × 6 rows × 2 SNRs × 3 seeds)
    python benchmarks/realistic.py --quick                 # 2,000 particles, seed 0
    python benchmarks/realistic.py --quick --n 600 --box 64 --structures betagal --rows ideal all --snrs 0.1 --seeds 1
    python benchmarks/realistic.py --skip-run --structures betagal --rows all --snrs 0.05 0.1 --seeds 0   # data only

``--seeds`` lists seed values (``--seeds 1`` is seed 1). The table is printed as Markdown and
everything is written to ``WORK/realistic_results.json``. Runs and evaluations are cached in
``WORK/<ds>/<row>_snr<s>/runs/<label>/`` (``--rerun`` redoes them); a run that finished but
whose evaluation did not (its ``bench_run.json`` has no ``eval``) is evaluated, not run again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realistic_data as rd  # noqa: E402

from cryopose.io.atomic import atomic_write_text  # noqa: E402

REPO = rd.REPO
DEFAULT_WORKDIR = REPO / "benchmarks" / "_work" / "realistic"
ALL_ROWS = ["ideal", "shifts", "views", "coloured", "all", "refine"]
TARGETS = {"pose_deg": 3.0, "shift_px": 1.0, "ratio": 1.2, "wall_s": 30 * 60}
REFINE_LOWPASS_ANGSTROM = 15.0


def _env() -> dict:
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cryopose_cmd(*args: str) -> list[str]:
    """The command line running ``cryopose <args>`` from this worktree's ``src``."""
    return [sys.executable, "-m", "cryopose.cli.main", *args]


def _run(cmd: list[str], log: Path, timeout_s: float | None = None) -> tuple[int, float, str]:
    """Run ``cmd`` (stdout+stderr to ``log``); returns ``(returncode, wall seconds, tail)``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), timeout=timeout_s)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = -9
    wall = time.perf_counter() - t
    tail = log.read_text()[-1500:]
    return rc, wall, tail


def _threads(args) -> list[str]:
    return ["--threads", str(args.threads)] if args.threads else []


# ----------------------------------------------------------------------------------- evaluation


def _fsc_vs_truth(map_path: Path, truth_path: Path) -> dict:
    from cryopose.io.mrc import read_map
    from cryopose.metrics.fsc import fsc_report

    a, b = read_map(map_path), read_map(truth_path)
    rep = fsc_report(a.volume, b.volume, b.pixel_size_angstrom)
    return {"fsc0p143_angstrom": rep["resolution_fsc0p143_angstrom"], "fsc0p143_crossed": rep["fsc0p143_crossed"],
            "fsc0p5_angstrom": rep["resolution_fsc0p5_angstrom"], "fsc0p5_crossed": rep["fsc0p5_crossed"]}


def _fitted_map_fsc(map_path: Path, truth_path: Path, global_rotation, mirrored: bool) -> dict:
    """The method's own map put onto the truth as a user fits one map into another: rotated by the
    poses' global rotation (and mirrored to the truth's hand), then translated to the peak of
    the cross-correlation (refined to 0.1 px by a parabola through the peak), and its FSC
    against the true map (``fsc_report``). Unlike the reconstruction from aligned poses, this
    does not assume the method's map is the truth moved by one translation particle by particle
    (a symmetric particle's poses may be any symmetry mate, each with its own origin)."""
    import torch

    from cryopose.fourier import centered_fft3, centered_ifft3
    from cryopose.io.mrc import read_map
    from cryopose.metrics.fsc import fsc_report
    from cryopose.metrics.pose_error import MIRROR
    from cryopose.models.volume import rotate_volume
    from cryopose.reconstruction.centring import shift_volume

    est, ref = read_map(map_path), read_map(truth_path)
    g = torch.as_tensor(global_rotation, dtype=torch.float64)
    jm = MIRROR.double() if mirrored else torch.eye(3, dtype=torch.float64)
    a = rotate_volume(torch.as_tensor(np.array(est.volume, dtype=np.float64)), (jm @ g).T)  # V_est(J^m G y)
    b = torch.as_tensor(np.array(ref.volume, dtype=np.float64))
    n = b.shape[-1]
    cc = centered_ifft3(centered_fft3(b) * centered_fft3(a).conj()).real.numpy()
    peak = np.array(np.unravel_index(np.argmax(cc), cc.shape))
    sub = []
    for ax in range(3):  # parabola through the peak and its two neighbours on each axis
        lo, hi = peak.copy(), peak.copy()
        lo[ax] = (lo[ax] - 1) % n
        hi[ax] = (hi[ax] + 1) % n
        y0, y1, y2 = cc[tuple(lo)], cc[tuple(peak)], cc[tuple(hi)]
        den = y0 - 2 * y1 + y2
        sub.append(peak[ax] - n // 2 + (0.5 * (y0 - y2) / den if den != 0 else 0.0))
    shift_zyx = np.array(sub)
    moved = shift_volume(a, torch.tensor(shift_zyx[::-1].copy()))
    rep = fsc_report(moved.float(), b.float(), ref.pixel_size_angstrom)
    return {"fsc0p143_angstrom": rep["resolution_fsc0p143_angstrom"], "fsc0p143_crossed": rep["fsc0p143_crossed"],
            "fsc0p5_angstrom": rep["resolution_fsc0p5_angstrom"], "translation_px_xyz": shift_zyx[::-1].tolist()}


def known_pose(meta: dict, args) -> dict:
    """Known-pose reconstruction of one data set (``cryopose reconstruct truth.star``, cached):
    its half-map FSC 0.143 and its FSC against the true map."""
    d = Path(meta["dir"])
    out = d / "known" / "known.mrc"
    rec_json = d / "known" / "known_eval.json"
    if rec_json.exists() and not args.rerun:
        return json.loads(rec_json.read_text())
    cmd = cryopose_cmd("reconstruct", str(d / "truth.star"), "-o", str(out), *_threads(args), "--no-progress",
                       "--force")
    rc, wall, tail = _run(cmd, d / "known" / "reconstruct.log")
    if rc != 0:
        raise RuntimeError(f"known-pose reconstruction failed: {tail}")
    half = json.loads((d / "known" / "known_fsc.json").read_text())
    res = {"command": shlex.join(cmd), "seconds": wall,
           "half_map_fsc0p143_angstrom": half.get("resolution_fsc0p143_angstrom"),
           "vs_truth": _fsc_vs_truth(out, Path(meta["truth_map"]))}
    atomic_write_text(rec_json, json.dumps(res, indent=1) + "\n")
    return res


def _fit_translation(rot_est: np.ndarray, d_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares 3D translation ``t`` of the method's map, in its own frame, with
    ``origin_est − origin_true ≈ (R_est,i t)_xy``; returns ``(t, residual errors)``.

    A map shifted by ``t`` moves particle ``i``'s projection by ``(R_est,i t)_xy`` under the
    method's own pose. (The true poses cannot stand in for ``R_est``: a symmetric particle's
    estimated poses are any of its symmetry mates, particle by particle, and ``t`` seen through
    ``R_true`` would then be a different vector for each mate.)"""
    a = rot_est[:, :2, :].reshape(-1, 3)
    t, *_ = np.linalg.lstsq(a, d_px.reshape(-1), rcond=None)
    resid = d_px - (rot_est[:, :2, :] @ t)
    return t, np.linalg.norm(resid, axis=1)


def evaluate(meta: dict, poses_star: Path, run_dir: Path, known: dict, args) -> dict:
    """Pose, shift and FSC errors of one run against the truth (see the module docstring)."""
    import torch

    from cryopose.io.star import read_star, write_star
    from cryopose.metrics.pose_error import MIRROR, align_rotations, evaluate_poses
    from cryopose.reconstruction.centring import recentred_origins_angstrom

    d = Path(meta["dir"])
    apix = float(meta["pixel_size_angstrom"])
    # the run's STAR names the stack as the input did (resolvable from the folder the command ran
    # in); the data folder is given so the evaluation works from any folder
    est = read_star(poses_star, datadir=d)
    ref = read_star(d / "truth.star")
    if est.image_paths != ref.image_paths or not np.array_equal(est.image_indices, ref.image_indices):
        raise RuntimeError(f"{poses_star}: particles not in the order of truth.star")
    ev = evaluate_poses(est, ref, symmetry=meta["symmetry"], seed=0)
    aln = align_rotations(est.rotmats.double(), ref.rotmats.double(), symmetry=meta["symmetry"], seed=0)
    err = aln.errors_deg.numpy()
    wrote_origins = est.shifts_angstrom is not None
    est_sh = est.shifts_angstrom.double().numpy() if wrote_origins else np.zeros((len(ref), 2))
    true_sh = ref.shifts_angstrom.double().numpy()
    d_px = (est_sh - true_sh) / apix
    sh_err = np.linalg.norm(d_px, axis=1)
    rot_est = est.rotmats.double()
    t, resid = _fit_translation(rot_est.numpy(), d_px)
    ev_dir = run_dir / "eval"
    ev_dir.mkdir(parents=True, exist_ok=True)
    aligned_star = ev_dir / "aligned.star"
    # the map's origin is arbitrary: move the origins by the fitted translation (centring the
    # method's map), and its orientation and hand: bring every pose into the truth's frame by the
    # one global rotation (and mirror), not by per-particle symmetry mates (the map is not
    # symmetric about the box centre until it is centred; the truth is)
    moved_sh = recentred_origins_angstrom(rot_est, torch.from_numpy(est_sh), torch.from_numpy(t * apix))
    rot_h = MIRROR.double() @ rot_est @ MIRROR.double() if aln.mirrored else rot_est
    write_star(aligned_star, est.replace(rotmats=(rot_h @ aln.global_rotation).float(),
                                         shifts_angstrom=moved_sh))
    aligned_map = ev_dir / "aligned.mrc"
    cmd = cryopose_cmd("reconstruct", str(aligned_star), "-o", str(aligned_map), *_threads(args), "--no-progress",
                       "--force")
    rc, wall, tail = _run(cmd, ev_dir / "reconstruct.log")
    if rc != 0:
        raise RuntimeError(f"reconstruction from the aligned poses failed: {tail}")
    fsc = _fsc_vs_truth(aligned_map, Path(meta["truth_map"]))
    known_res = known["vs_truth"]["fsc0p143_angstrom"]
    own_map = poses_star.parent / "map.mrc"
    fitted = _fitted_map_fsc(own_map, Path(meta["truth_map"]), aln.global_rotation, aln.mirrored) \
        if own_map.exists() else None
    known_map = _fitted_map_fsc(d / "known" / "known.mrc", Path(meta["truth_map"]), torch.eye(3), False)
    return {
        "median_pose_error_deg": float(np.median(err)), "mean_pose_error_deg": float(err.mean()),
        "pct_within_5deg": float(100 * (err <= 5).mean()), "hand": aln.hand,
        "other_hand_median_error_deg": aln.other_hand_median_error_deg,
        "evaluate_poses": ev,
        "origins_written": wrote_origins,
        "median_shift_error_px": float(np.median(resid)),
        "median_shift_error_px_raw": float(np.median(sh_err)),
        "fitted_map_translation_px": t.tolist(),
        "fsc_vs_truth": fsc, "fsc0p143_vs_truth_angstrom": fsc["fsc0p143_angstrom"],
        "known_pose_fsc0p143_vs_truth_angstrom": known_res,
        "ratio_to_known": fsc["fsc0p143_angstrom"] / known_res,
        "fitted_map_vs_truth": fitted, "known_map_fitted_vs_truth": known_map,
        "aligned_reconstruction_command": shlex.join(cmd),
    }


def _progress(run_dir: Path) -> dict:
    """Epochs, steps and training seconds recorded in an interrupted abinitio run's checkpoint
    (or, for ``refine``, the last ``step N:`` line of its log)."""
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        import re

        steps = re.findall(r"step (\d+):", (run_dir / "bench_stdout.log").read_text())
        return {"steps_done": int(steps[-1])} if steps else {}
    import torch

    c = torch.load(ckpt, map_location="cpu", weights_only=False)
    epochs, elapsed = int(c.get("epoch", 0)), float(c.get("elapsed", 0.0))
    return {"epochs_done": epochs, "steps_done": int(c.get("step", 0)), "train_seconds": elapsed,
            "seconds_per_epoch": elapsed / epochs if epochs else None,
            "seconds_per_step": elapsed / int(c["step"]) if c.get("step") else None}


def run_method(meta: dict, method: str, extra: list[str], args, workdir: Path) -> dict:
    """Run ``cryopose abinitio`` or ``cryopose refine`` on one data set (cached) and evaluate it."""
    d = Path(meta["dir"])
    sym = str(meta["symmetry"])
    # abinitio is told the particles' point group (run folder abinitio-D2; the C1 runs of
    # earlier sessions stay in runs/abinitio)
    base = method if method == "refine" or sym == "C1" else f"{method}-{sym}"
    label = base if not extra else f"{base}-{hashlib.sha1(shlex.join(extra).encode()).hexdigest()[:8]}"
    run_dir = d / "runs" / label
    record = run_dir / "bench_run.json"
    poses = run_dir / ("poses.star" if method == "abinitio" else "particles.star")
    if record.exists() and not args.rerun:
        rec = json.loads(record.read_text())
        if rec.get("returncode") != 0 or "eval" in rec:
            rec["cached"] = True
            if rec.get("returncode") != 0:
                print(f"  cached failure ({rec.get('error')}); --rerun to retry", flush=True)
            return rec
        # the run finished but its evaluation did not: evaluate it, do not run it again
        print(f"  cached run {run_dir}, evaluating", flush=True)
        return _evaluate_run(meta, rec, run_dir, poses, args)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    if method == "abinitio":
        cmd = cryopose_cmd("abinitio", str(d / "particles.star"), "-o", str(run_dir), "--symmetry", sym,
                           *_threads(args), "--no-progress", *extra)
    else:
        truth_map = Path(meta["truth_map"])
        ref = rd.lowpass_map(truth_map, REFINE_LOWPASS_ANGSTROM,
                             truth_map.with_name(truth_map.stem + f"_lp{REFINE_LOWPASS_ANGSTROM:g}A.mrc"))
        # the reference's point group is part of the reference, as for RELION's and cryoSPARC's
        # refinements: in C1 the search labels each particle with an arbitrary symmetry mate,
        # which no network can learn (on 2,000 64-px β-gal particles its test error against
        # those labels was 162°)
        cmd = cryopose_cmd("refine", str(d / "particles.star"), "--reference", str(ref), "-o", str(run_dir),
                           "--symmetry", str(meta["symmetry"]), *_threads(args), *extra)
    print(f"  running: {shlex.join(cmd)}", flush=True)
    timeout = args.timeout * 60 if args.timeout else None
    rc, wall, tail = _run(cmd, run_dir / "bench_stdout.log", timeout)
    rec = {"method": method, "extra_args": extra, "label": label, "command": shlex.join(cmd), "returncode": rc,
           "wall_s": wall, "run_dir": str(run_dir), "cached": False}
    if rc != 0:
        rec["error"] = tail.strip().splitlines()[-1] if tail.strip() else f"rc {rc}"
        if rc == -9:
            rec.update(_progress(run_dir))
            rec["error"] = (f"timeout after {args.timeout:g} min" + (
                f": {rec['epochs_done']} epochs in {rec['train_seconds']:.0f} s of training, "
                f"{rec['seconds_per_epoch']:.0f} s/epoch" if rec.get("epochs_done") else
                f": {rec['steps_done']} training steps logged" if rec.get("steps_done") else ""))
            rec["log_tail"] = tail
        atomic_write_text(record, json.dumps(rec, indent=1) + "\n")
        print(f"  FAILED ({rec['error']}) after {wall:.0f} s", flush=True)
        return rec
    own = run_dir / ("summary.json" if method == "abinitio" else "report.json")
    if own.exists():
        s = json.loads(own.read_text())
        rec["own_half_map_fsc0p143_angstrom"] = s.get("resolution_fsc0p143_angstrom")
        rec["own_seconds"] = s.get("seconds")
    atomic_write_text(record, json.dumps(rec, indent=1) + "\n")  # the run is kept if its evaluation fails
    return _evaluate_run(meta, rec, run_dir, poses, args)


def _evaluate_run(meta: dict, rec: dict, run_dir: Path, poses: Path, args) -> dict:
    """Score a finished run (:func:`evaluate`), store the scores in its ``bench_run.json``."""
    known = known_pose(meta, args)
    rec["eval"] = evaluate(meta, poses, run_dir, known, args)
    atomic_write_text(run_dir / "bench_run.json", json.dumps(rec, indent=1) + "\n")
    print(f"  done in {rec['wall_s']:.0f} s: median pose error {rec['eval']['median_pose_error_deg']:.2f}°",
          flush=True)
    return rec


# ----------------------------------------------------------------------------------- table


def _f(x, fmt):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def verdict(row: dict) -> str:
    """``PASS`` or ``FAIL (…)`` naming the missed targets (or the run's error)."""
    if row.get("error"):
        return f"ERROR ({row['error'][:60]})"
    missed = []
    if not row["median_pose_error_deg"] <= TARGETS["pose_deg"]:
        missed.append("pose")
    if not row["median_shift_error_px"] <= TARGETS["shift_px"]:
        missed.append("shift")
    if not row["ratio"] <= TARGETS["ratio"]:
        missed.append("ratio")
    if not row["wall_s"] <= TARGETS["wall_s"]:
        missed.append("time")
    return "PASS" if not missed else "FAIL (" + ", ".join(missed) + ")"


def markdown_table(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    head = ["structure", "row", "method", "SNR", "seed", "N", "box", "median pose err °", "% ≤ 5°",
            "median shift err px", "raw shift err px", "FSC0.143 vs truth Å", "map.mrc fitted vs truth Å",
            "known-pose Å", "ratio", "wall s", "pass/fail"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        star = "*" if r.get("origins_written") is False else ""
        lines.append("| " + " | ".join([
            r["structure"], r["row"], r["method"], f"{r['snr']:g}", str(r["seed"]), str(r["n"]), str(r["box"]),
            _f(r.get("median_pose_error_deg"), ".2f"), _f(r.get("pct_within_5deg"), ".0f"),
            _f(r.get("median_shift_error_px"), ".2f"), _f(r.get("median_shift_error_px_raw"), ".2f") + star,
            _f(r.get("fsc_vs_truth_angstrom"), ".2f") + ("" if r.get("fsc_crossed", True) else "†"),
            _f(r.get("fitted_map_angstrom"), ".2f"),
            _f(r.get("known_pose_angstrom"), ".2f") + ("" if r.get("known_crossed", True) else "†"),
            _f(r.get("ratio"), ".2f"), _f(r.get("wall_s"), ".0f"),
            verdict(r)]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--structures", nargs="+", default=list(rd.STRUCTURES), choices=list(rd.STRUCTURES))
    p.add_argument("--rows", nargs="+", default=ALL_ROWS, choices=ALL_ROWS)
    p.add_argument("--snrs", nargs="+", type=float, default=[0.05, 0.1])
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seed values (default 0 1 2; --quick: 0)")
    p.add_argument("--n", type=int, default=None, help="particles per data set (default 20000; --quick: 2000)")
    p.add_argument("--box", type=int, default=128, help="box in px (default 128; the field of view is kept)")
    p.add_argument("--quick", action="store_true", help="2,000 particles and seed 0 unless --n / --seeds say otherwise")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"cache folder (default {DEFAULT_WORKDIR})")
    p.add_argument("--skip-run", action="store_true", help="only generate (and cache) the data sets")
    p.add_argument("--method-args", default="", help="extra options for cryopose abinitio (labelled in the table)")
    p.add_argument("--refine-args", default="", help="extra options for cryopose refine (labelled in the table)")
    p.add_argument("--threads", type=int, default=1, help="--threads given to every cryopose command (default 1)")
    p.add_argument("--timeout", type=float, default=0.0, help="stop a run after this many minutes (default: none)")
    p.add_argument("--rerun", action="store_true", help="redo runs and evaluations even if cached")
    g = p.add_argument_group("data spec")
    g.add_argument("--shift-sigma", type=float, default=4.0, help="σ of the Gaussian shifts per axis, px (default 4)")
    g.add_argument("--preferred-fraction", type=float, default=0.4, help="fraction in the preferred cap (default 0.4)")
    g.add_argument("--preferred-cone", type=float, default=10.0, help="half-angle of the preferred cap, ° (default 10)")
    g.add_argument("--noise-k0", type=float, default=0.025, help="k0 of the coloured spectrum, 1/Å (default 0.025)")
    return p


def main(argv=None) -> int:
    """Run the benchmark; returns the exit status."""
    args = build_parser().parse_args(argv)
    if shutil.which("relion_project") is None:
        sys.exit("relion_project not found on PATH (RELION 3.1: apt-get install relion)")
    sys.path.insert(0, str(REPO / "src"))
    import torch

    torch.set_num_threads(max(1, args.threads or 1))
    n = args.n if args.n is not None else (2000 if args.quick else 20000)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    spec = rd.DataSpec(shift_sigma_px=args.shift_sigma, preferred_fraction=args.preferred_fraction,
                       preferred_cone_deg=args.preferred_cone, noise_k0_per_angstrom=args.noise_k0)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    method_extra = shlex.split(args.method_args)
    refine_extra = shlex.split(args.refine_args)
    print(f"realistic benchmark: structures {args.structures}, rows {args.rows}, SNRs {args.snrs}, seeds {seeds}, "
          f"N {n}, box {args.box}, threads {args.threads}; work folder {workdir}", flush=True)

    # 1. data
    datasets = {}
    for s_name in args.structures:
        st = rd.STRUCTURES[s_name]
        for seed in seeds:
            for snr in args.snrs:
                for row in args.rows:
                    data_row = "all" if row == "refine" else row
                    key = (s_name, data_row, snr, seed)
                    if key in datasets:
                        continue
                    t = time.perf_counter()
                    meta = rd.make_dataset(st, data_row, snr, n, args.box, seed, workdir, spec=spec)
                    meta["seconds_now"] = time.perf_counter() - t
                    datasets[key] = meta
                    print(f"data {s_name} {data_row} SNR {snr:g} seed {seed}: "
                          f"{'made' if meta['generated_now'] else 'cached'} in {meta['seconds_now']:.1f} s "
                          f"(relion_project {meta['seconds']['relion_project']:.1f} s) → {meta['dir']}", flush=True)

    # 2. runs
    results = []
    if not args.skip_run:
        for s_name in args.structures:
            for seed in seeds:
                for snr in args.snrs:
                    for row in args.rows:
                        meta = datasets[(s_name, "all" if row == "refine" else row, snr, seed)]
                        method, extra = ("refine", refine_extra) if row == "refine" else ("abinitio", method_extra)
                        print(f"{s_name} {row} SNR {snr:g} seed {seed}:", flush=True)
                        rec = run_method(meta, method, extra, args, workdir)
                        known = known_pose(meta, args) if rec.get("returncode") == 0 else None
                        meta["known_pose"] = known
                        ev = rec.get("eval", {})
                        results.append({
                            "structure": s_name, "row": row, "snr": snr, "seed": seed, "n": n, "box": args.box,
                            "method": method + (" " + shlex.join(extra) if extra else ""),
                            "median_pose_error_deg": ev.get("median_pose_error_deg"),
                            "pct_within_5deg": ev.get("pct_within_5deg"),
                            "median_shift_error_px": ev.get("median_shift_error_px"),
                            "median_shift_error_px_raw": ev.get("median_shift_error_px_raw"),
                            "origins_written": ev.get("origins_written"),
                            "fsc_vs_truth_angstrom": ev.get("fsc0p143_vs_truth_angstrom"),
                            "fitted_map_angstrom": (ev.get("fitted_map_vs_truth") or {}).get("fsc0p143_angstrom"),
                            "known_pose_angstrom": ev.get("known_pose_fsc0p143_vs_truth_angstrom"),
                            "fsc_crossed": (ev.get("fsc_vs_truth") or {}).get("fsc0p143_crossed", True),
                            "known_crossed": ((known or {}).get("vs_truth") or {}).get("fsc0p143_crossed", True),
                            "ratio": ev.get("ratio_to_known"), "wall_s": rec.get("wall_s"),
                            "error": rec.get("error"), "run": rec})
        for meta in datasets.values():  # known poses also for data sets that only fed failed runs
            if meta.get("known_pose") is None:
                meta["known_pose"] = known_pose(meta, args)

    # 3. report
    print("\n## Data sets (relion_project images; SNR measured = mean var(signal) / pooled noise variance)\n")
    print("| structure | row | SNR req. | SNR measured | seed | N | box | Å/px | known-pose half-map FSC0.143 Å "
          "| known-pose vs truth FSC0.143 Å | made in s | folder |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (s_name, row, snr, seed), m in datasets.items():
        cached = Path(m["dir"]) / "known" / "known_eval.json"
        if m.get("known_pose") is None and cached.exists():  # --skip-run: show what an earlier run computed
            m["known_pose"] = json.loads(cached.read_text())
        k = m.get("known_pose") or {}
        print(f"| {s_name} | {row} | {snr:g} | {m['snr_measured']:.4f} | {seed} | {m['n']} | {m['box']} | "
              f"{m['pixel_size_angstrom']:.4g} | {_f(k.get('half_map_fsc0p143_angstrom'), '.2f')} | "
              f"{_f((k.get('vs_truth') or {}).get('fsc0p143_angstrom'), '.2f')}"
              f"{'' if (k.get('vs_truth') or {}).get('fsc0p143_crossed', True) else '†'} | {m['seconds']['total']:.0f} | "
              f"{m['dir']} |")
    if results:
        print("\n## Results (targets: pose ≤ 3°, shift ≤ 1 px, ratio ≤ 1.2, wall ≤ 30 min)\n")
        print(markdown_table(results))
        if any(r.get("origins_written") is False for r in results):
            print("\n\\* the method wrote no origins: the raw shift error is against zero, i.e. |true shift|.")
        if any(not (r.get("fsc_crossed", True) and r.get("known_crossed", True)) for r in results):
            print("\n† the FSC never fell below 0.143: the value is Nyquist (the map is at least that good), "
                  "and a ratio involving it is a bound.")
        if args.threads:
            print(f"\nEvery cryopose command ran with --threads {args.threads}.")
    out = workdir / "realistic_results.json"
    doc = {"command_line": shlex.join([sys.executable, *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "spec": spec.key(), "targets": TARGETS, "n": n, "box": args.box, "threads": args.threads,
           "datasets": [{k: v for k, v in m.items() if k != "noise_spectrum"} | {"noise_spectrum": m["noise_spectrum"]}
                        for m in datasets.values()],
           "results": results}
    atomic_write_text(out, json.dumps(doc, indent=1, default=str) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
