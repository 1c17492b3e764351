"""Supervised orientation regression (Lian et al., Acta Cryst. D 78, 2022): the paper's tables, speed, refine.

Sections (``--sections``, each cached as JSON under ``--out`` so they can run one at a time
and ``--print`` collects them):

* ``cv``      five-fold cross-validation of ``w`` in 0.0…1.0 (step 0.1) per structure, at
              ``--cv-snr``, on ``--cv-particles`` training particles (``--cv-folds`` and
              ``--cv-w-values`` shrink it); the chosen ``w`` is used by every cell of that
              structure's table.
* ``tables``  Tables 1–2: β-gal (D2, real map Fourier-cropped 100 → 64 px) and 4AKE (C1, atomic
              model → density), noise-free and SNR 1.0, 0.4, 0.1, all with CTF (defocus
              1.0–2.5 µm); ``--n`` particles split 4:1; reprojection RMSE (normalised,
              :mod:`cryopose.metrics.reprojection`) and median / mean geodesic error modulo the
              point group on the test split, labels = ground truth. Each cell also prints the
              test error with test-time quarter turns (the mean of the predictions for the four
              quarter turns of each image, :meth:`OrientationRegressor.predict_rotmat`) and the
              error on (up to 2,000) training particles, whose gap to the test error measures
              overfitting, and the test error of the int8 copy of the network
              (:meth:`OrientationRegressor.quantized_for_inference`, calibrated on 256 training
              particles) with its median distance from the float network's poses, and the test
              error after a local search from the network's poses (from each of
              ``--tables-local-steps`` to 1.875°, the true map, CTF-aware: ``cryopose refine
              --local-refine``'s polishing).
* ``searchref`` the reference point of those tables: ``cryopose search`` (15° → 1.875°, the true
              map, CTF, symmetry) on ``--searchref-n`` of the same test particles at the data box
              (or, with ``--searchref-box``, Fourier-cropped with the map to that box).
* ``table3``  Table 3 analogue on 4AKE at ``--table3-snr``: quaternion vs axis-angle output at
              three learning rates.
* ``speed``   per-particle time of supervised inference vs ``cryopose search`` (15° → 1.875°),
              same particles, one thread, best of ``--speed-repeats`` timings of each; the network at
              the data's box and, with ``--speed-network-box``, on Fourier-cropped input (inference
              time includes the crop); each network also as its int8 copy (``--no-speed-int8``
              skips it).
* ``refine``  ``cryopose refine`` at ``--refine-box`` (search 20 %, train the network on
              ``--box`` px Fourier-cropped inputs, infer 80 %, polish locally, reconstruct) vs
              the known-pose reconstruction of the same particles: half-map FSC = 0.143
              resolutions and ratio, and FSC = 0.5 against the reference map, for the
              network-only and the polished poses.

The paper's scale is ``--n 10000 --box 64`` with thousands of iterations; ``--quick`` is the
scale that fits a shared CPU (see the README for which was run). ``--data-box 64`` simulates
at 64 px (SNR defined there, as in the issue) and Fourier-crops to the network's ``--box``.
Structures: ``betagal``, ``4ake`` (the A/B dimer; errors also reported modulo its 178.8° NCS
2-fold) and ``4ake-A`` (chain A, truly asymmetric). Training defaults are the library's
(quarter-turn augmentation, ℓ_QD modulo the point group); ``--augment none --no-qd-symmetric``
is the paper's training. ``--input-ctf phase_flip`` phase-flips the images (at the data box)
before the network sees them.

Usage::

    python benchmarks/supervised.py --quick --sections cv tables searchref table3 speed refine
    python benchmarks/supervised.py --quick --print
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from abinitio import _errors_modulo, ncs_rotation_4ake
from cryopose.cli.common import configure_torch
from cryopose.ctf import phase_flip_images
from cryopose.fourier import fourier_downsample_images, fourier_downsample_volume
from cryopose.metrics.pose_error import symmetry_aware_errors
from cryopose.models.supervised import INT8_CALIBRATION_PARTICLES, REPRESENTATIONS, SupervisedModelConfig
from cryopose.pipelines.refine import DEFAULT_LOCAL_REFINE_STEP_DEG
from cryopose.search.projection_matching import SearchConfig, local_search, search_poses
from cryopose.simulate import SimulationConfig, load_volume, simulate_in_memory
from cryopose.training.supervised import (DEFAULT_W_GRID, LR_SCHEDULES, SupervisedTrainConfig, cross_validate_w,
                                          evaluate_model, predict_rotmats, split_train_test, train_supervised)
from cryopose.training.supervised_losses import AUGMENTATIONS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STRUCTURES = {
    "betagal": (DATA / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc", "D2", None),
    "4ake": (DATA / "pdb" / "4ake_mdanalysis.pdb", "C1", None),
    # chain A alone: the A/B dimer of the 4AKE model is related by a 178.8° NCS rotation, so its
    # projections along R and along R·NCS nearly coincide and C1 labels are ambiguous by that
    # rotation; the monomer is truly asymmetric
    "4ake-A": (DATA / "pdb" / "4ake_mdanalysis.pdb", "C1", "A"),
}
SNRS = (None, 1.0, 0.4, 0.1)


def _snr_name(snr) -> str:
    return "noise-free" if snr is None else f"SNR {snr:g}"


def _network_input(args, images: torch.Tensor) -> torch.Tensor:
    """Data-box particles Fourier-cropped to the network's ``--box`` (unchanged when equal)."""
    return fourier_downsample_images(images, args.box) if images.shape[-1] != args.box else images


def _dataset(args, structure: str, snr, *, n=None, seed=0, crop=True):
    """Simulated particles: ``(images, rotmats, volume, pixel, symmetry, metadata)``.

    The particles are simulated at ``--data-box`` (default ``--box``), where ``snr`` holds, and
    Fourier-cropped to the network's ``--box`` (unless ``crop`` is false); the volume stays at the data box (ℓ_reproj and
    the RMSE crop it to the same field of view); ``pixel`` is the data's pixel size.
    """
    path, sym, chains = STRUCTURES[structure]
    data_box = getattr(args, "data_box", None) or args.box
    vol = load_volume(path, box_size=data_box, chains=chains)
    cfg = SimulationConfig(snr=snr, apply_ctf=True, defocus_range_angstrom=(10000.0, 25000.0))
    images, meta = simulate_in_memory(vol.volume, pixel_size_angstrom=vol.pixel_size_angstrom,
                                      n_particles=n or args.n, config=cfg, generator=seed + (0 if snr is None else
                                                                                             int(1000 * snr)))
    if args.input_ctf == "phase_flip":  # at the data box, before cropping
        images = phase_flip_images(images, meta.ctf, vol.pixel_size_angstrom)
    if crop:
        images = _network_input(args, images)
    return images, meta.rotmats, torch.from_numpy(vol.volume), vol.pixel_size_angstrom, sym, meta


def _configs(args, sym, *, w=0.5, lr=None, representation="quaternion", iterations=None):
    mc = SupervisedModelConfig(box_size=args.box, representation=representation, width=args.width,
                               head_channels=8 * args.width, hidden=args.hidden)
    tc = SupervisedTrainConfig(iterations=iterations or args.iterations, batch_size=args.batch_size,
                               learning_rate=lr or args.lr, lr_schedule=args.lr_schedule, w=w, symmetry=sym,
                               seed=args.seed, reproj_box_size=args.reproj_box, augment_inplane=args.augment,
                               qd_symmetry_aware=args.qd_symmetric)
    return mc, tc


def _save(out: Path, name: str, doc: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2))


def _load(out: Path, name: str):
    p = out / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def run_cv(args, out: Path) -> None:
    for structure in args.structures:
        images, rot, vol, _, sym, _ = _dataset(args, structure, args.cv_snr)
        train_idx, _ = split_train_test(len(images), 0.2, seed=args.seed)
        sub = np.sort(np.random.default_rng(args.seed).choice(train_idx, min(args.cv_particles, train_idx.size),
                                                               replace=False))
        mc, tc = _configs(args, sym, iterations=args.cv_iterations)
        t0 = time.perf_counter()
        cv = cross_validate_w(images, rot, vol, model_config=mc, config=tc, indices=sub, w_values=args.cv_w_values,
                              n_folds=args.cv_folds, progress=lambda m: print(f"  [{structure} cv] {m}", file=sys.stderr))
        doc = cv.as_dict()
        doc.update({"structure": structure, "snr": args.cv_snr, "n_particles": int(sub.size), "n_folds": args.cv_folds,
                    "iterations_per_fold": args.cv_iterations, "wall_seconds": time.perf_counter() - t0})
        _save(out, f"cv_{structure}", doc)
        print(f"{structure}: best w = {cv.best_w:g} (mean median error per w: "
              + ", ".join(f"{w:g}:{s:.1f}°" for w, s in zip(cv.w_values, cv.mean_scores)) + ")")


def _best_w(args, out: Path, structure: str) -> tuple[float, str]:
    cv = _load(out, f"cv_{structure}")
    if cv is None:
        return args.w, "default (no CV run)"
    return float(cv["best_w"]), f"CV at {_snr_name(cv['snr'])}"


def _local_polish(args, full_images, meta, vol, px, sym, rotmats, test, ncs=None) -> list[dict]:
    """Errors of the network's test poses after ``cryopose refine --local-refine``'s local search.

    One entry per ``--tables-local-steps`` value: the search runs on the data-box particles (not
    the network's cropped input) against the true map, CTF-aware, from that step down to 1.875°,
    without shifts (the tables' particles are centred). ``ncs``: an extra operator (the 4AKE
    dimer's 2-fold) modulo which the errors are also given.
    """
    idx = torch.as_tensor(test)
    gt = torch.as_tensor(meta.rotmats)[idx].double()
    out = []
    for step in args.tables_local_steps:
        t0 = time.perf_counter()
        res = local_search(full_images[idx], vol, px, rotmats.float(), ctf=meta.ctf[np.asarray(test)],
                           config=SearchConfig(symmetry=sym), start_step_deg=step, shift_step_angstrom=0.0)
        seconds = time.perf_counter() - t0
        e = symmetry_aware_errors(res.rotmats.double(), gt, symmetry=sym)
        out.append({"median_error_deg": float(e.median()), "mean_error_deg": float(e.mean()),
                    "start_step_deg": step, "final_step_deg": res.info["steps_deg"][-1],
                    "ms_per_particle": 1000.0 * seconds / max(len(test), 1)})
        if ncs is not None:
            e = _errors_modulo(res.rotmats.double(), gt, ncs)
            out[-1].update(ncs_median_error_deg=float(e.median()), ncs_mean_error_deg=float(e.mean()))
    return out


def _ncs_text(r: dict) -> str:
    """``"; modulo the A/B 2-fold m° / a°"`` when ``r`` holds 4AKE-dimer errors modulo its 2-fold, else ``""``."""
    if "ncs_median_error_deg" not in r:
        return ""
    return f"; modulo the A/B 2-fold {r['ncs_median_error_deg']:.2f}° / {r['ncs_mean_error_deg']:.2f}°"


def _cell(args, structure, snr, *, w, lr=None, representation="quaternion"):
    full, rot, vol, px, sym, meta = _dataset(args, structure, snr, crop=False)
    images = _network_input(args, full)
    mc, tc = _configs(args, sym, w=w, lr=lr, representation=representation)
    res = train_supervised(images, rot, vol, model_config=mc, config=tc, device=args.device,
                           progress=lambda s, r: print(f"  [{structure} {_snr_name(snr)} {representation} "
                                                       f"lr {tc.learning_rate:g}] step {s}: loss {r['loss']:.4f}",
                                                       file=sys.stderr) if s % 500 == 0 else None)
    m = res.test_metrics
    test = res.test_indices[:tc.eval_max_particles]
    # diagnostics: test error with test-time quarter turns, and the error on training particles
    # (a gap to the test error is overfitting)
    tta = evaluate_model(res.model, images, rot, test, symmetry=sym, test_time_turns=True)
    on_train = evaluate_model(res.model, images, rot, res.train_indices[:tc.eval_max_particles], symmetry=sym)
    # the int8 copy (cryopose predict --int8), calibrated on training particles
    int8 = res.model.quantized_for_inference(images[torch.as_tensor(res.train_indices[:INT8_CALIBRATION_PARTICLES])])
    gt = torch.as_tensor(rot)[torch.as_tensor(test)].double()
    r_float = predict_rotmats(res.model, images, test).double()
    r_int8 = predict_rotmats(int8, images, test).double()
    e_int8 = symmetry_aware_errors(r_int8, gt, symmetry=sym)
    int8_shift = symmetry_aware_errors(r_int8, r_float, symmetry=sym)
    ncs, op = {}, None
    if structure == "4ake":  # also modulo the A/B pseudo-2-fold, as benchmarks/abinitio.py reports it
        op = ncs_rotation_4ake()
        e = _errors_modulo(r_float, gt, op)
        ncs = {"ncs_median_error_deg": float(e.median()), "ncs_mean_error_deg": float(e.mean())}
    polish = _local_polish(args, full, meta, vol, px, sym, r_float, test, ncs=op)
    return {**ncs, "local_searches": polish, "structure": structure, "symmetry": sym, "snr": snr, "w": w,
            "representation": representation, "lr": tc.learning_rate, "lr_schedule": tc.lr_schedule,
            "n_train": int(res.train_indices.size), "n_test": int(res.test_indices.size),
            "box": args.box, "data_box": getattr(args, "data_box", None) or args.box, "pixel_angstrom": px,
            "iterations": tc.iterations, "batch_size": tc.batch_size,
            "train_seconds": res.seconds, "reprojection_rmse": m["reprojection_rmse"],
            "median_error_deg": m["median_error_deg"], "mean_error_deg": m["mean_error_deg"],
            "turns_median_error_deg": tta["median_error_deg"], "turns_mean_error_deg": tta["mean_error_deg"],
            "train_median_error_deg": on_train["median_error_deg"], "input_ctf": args.input_ctf,
            "int8_median_error_deg": float(e_int8.median()), "int8_mean_error_deg": float(e_int8.mean()),
            "int8_vs_float_median_deg": float(int8_shift.median()),
            "final_loss": float(np.mean(res.history["loss"][-50:])), "augment_inplane": tc.augment_inplane,
            "qd_symmetry_aware": tc.qd_symmetry_aware, "width": mc.width, "hidden": mc.hidden}


def run_tables(args, out: Path) -> None:
    for structure in args.structures:
        w, _ = _best_w(args, out, structure)
        if args.force_w is not None:
            w = args.force_w
        rows = _load(out, f"table_{structure}") or {}
        for snr in args.snrs:
            key = (_snr_name(snr) + (f", w={w:g} forced" if args.force_w is not None else "")
                   + (f", {args.representation}" if args.representation != "quaternion" else ""))
            rows[key] = _cell(args, structure, snr, w=w, representation=args.representation)
            _save(out, f"table_{structure}", rows)
            r = rows[key]
            print(f"{structure} {key}: RMSE {r['reprojection_rmse']:.3f}, median {r['median_error_deg']:.2f}°, "
                  f"mean {r['mean_error_deg']:.2f}°{_ncs_text(r)}; with test-time quarter turns "
                  f"{r['turns_median_error_deg']:.2f}° / {r['turns_mean_error_deg']:.2f}°; training particles "
                  f"{r['train_median_error_deg']:.2f}°; int8 network {r['int8_median_error_deg']:.2f}° / "
                  f"{r['int8_mean_error_deg']:.2f}° (median {r['int8_vs_float_median_deg']:.2f}° from the float "
                  f"poses) ({r['train_seconds']:.0f} s)")
            for p in r.get("local_searches", []):
                print(f"{structure} {key}: network + local search ({p['start_step_deg']:g}° → "
                      f"{p['final_step_deg']:g}°) {p['median_error_deg']:.2f}° / {p['mean_error_deg']:.2f}°"
                      f"{_ncs_text(p)} ({p['ms_per_particle']:.1f} ms/particle)")


def run_searchref(args, out: Path) -> None:
    """What the true map and an exhaustive search reach on the tables' own test particles."""

    for structure in args.structures:
        rows = _load(out, f"searchref_{structure}") or {}
        for snr in args.snrs:
            images, rot, vol, px, sym, meta = _dataset(args, structure, snr, crop=False)
            _, test = split_train_test(len(images), 0.2, seed=args.seed)
            test = test[:args.searchref_n]
            key = _snr_name(snr)
            test_images = images[torch.as_tensor(test)]
            box = args.searchref_box or images.shape[-1]
            if box < images.shape[-1]:  # what the network sees: Fourier-cropped images, map cropped alike
                px = px * images.shape[-1] / box
                test_images = fourier_downsample_images(test_images, box)
                vol = fourier_downsample_volume(vol, box)
                key = f"{key} at {box} px"
            t0 = time.perf_counter()
            res = search_poses(test_images, vol, px, ctf=meta.ctf[torch.as_tensor(test)],
                               config=SearchConfig(symmetry=sym))
            err = symmetry_aware_errors(res.rotmats.double(), torch.as_tensor(rot)[torch.as_tensor(test)].double(),
                                        symmetry=sym)
            rows[key] = {"n": int(test.size), "box": int(test_images.shape[-1]), "pixel_angstrom": px,
                         "median_error_deg": float(err.median()), "mean_error_deg": float(err.mean()),
                         "search_grid": res.info, "seconds": time.perf_counter() - t0}
            _save(out, f"searchref_{structure}", rows)
            print(f"{structure} {_snr_name(snr)}: exhaustive search on {test.size} test particles at "
                  f"{test_images.shape[-1]} px: median {float(err.median()):.2f}°, mean {float(err.mean()):.2f}°")


def run_table3(args, out: Path) -> None:
    rows = _load(out, "table3") or {}
    w, _ = _best_w(args, out, args.table3_structure)
    for rep in args.table3_representations:
        for lr in args.table3_lrs:
            key = f"{rep} lr={lr:g}"
            rows[key] = _cell(args, args.table3_structure, args.table3_snr, w=w, lr=lr, representation=rep)
            _save(out, "table3", rows)
            r = rows[key]
            print(f"table3 {key}: median {r['median_error_deg']:.2f}°, RMSE {r['reprojection_rmse']:.3f}")


def _time_inference(model, x, crop, repeats: int) -> float:
    """Best of ``repeats`` timings of crop + inference, seconds per particle (batches of 256)."""
    best = math.inf
    with torch.no_grad():
        model(crop(x[:8]))
        for _ in range(repeats):
            t0 = time.perf_counter()
            for s in range(0, x.shape[0], 256):
                predict_rotmats(model, crop(x[s:s + 256]), batch_size=256)
            best = min(best, (time.perf_counter() - t0) / x.shape[0])
    return best


def run_speed(args, out: Path) -> None:
    from cryopose.models.supervised import OrientationRegressor, SupervisedModelConfig

    doc = {}
    for structure in args.structures:
        images, rot, vol, px, sym, meta = _dataset(argparse.Namespace(**{**vars(args), "data_box": None}), structure,
                                                   0.1, n=max(args.speed_particles, 256))
        x = images[: args.speed_particles]
        ns = min(args.speed_search_particles, x.shape[0])
        t_search = math.inf  # best of --speed-repeats, for the search as for the network
        for _ in range(args.speed_repeats):
            t0 = time.perf_counter()
            res = search_poses(x[:ns], vol, px, ctf=meta.ctf[np.arange(ns)], config=SearchConfig(symmetry=sym))
            t_search = min(t_search, (time.perf_counter() - t0) / ns)
        doc[structure] = {"box": args.box, "symmetry": sym, "search_ms_per_particle": 1000 * t_search,
                          "repeats": args.speed_repeats,
                          "search_grid": res.info, "threads": torch.get_num_threads(), "n_search": int(ns),
                          "n_inference": int(x.shape[0]), "networks": {}}
        # the network at the data's box, and (as cryopose refine runs it) on Fourier-cropped input
        for nbox, width, hidden in [(args.box, args.width, args.hidden)] + (
                [(args.speed_network_box, args.speed_network_width, args.speed_network_hidden)]
                if args.speed_network_box else []):
            mc = SupervisedModelConfig(box_size=nbox, width=width, head_channels=8 * width, hidden=hidden)
            # inference cost does not depend on the weights; batch norm folded as cryopose predict runs it
            model = OrientationRegressor(mc).eval().fused_for_inference()
            crop = (lambda im, nb=nbox: fourier_downsample_images(im, nb)) if nbox != args.box else (lambda im: im)
            t_inf = _time_inference(model, x, crop, args.speed_repeats)
            key = f"{nbox} px, width {width}"
            doc[structure]["networks"][key] = {"network_box": nbox, "width": width, "hidden": hidden,
                                               "inference_ms_per_particle": 1000 * t_inf,
                                               "speedup": t_search / t_inf}
            print(f"{structure}: network {key}: inference {1000 * t_inf:.2f} ms/particle; search at {args.box} px "
                  f"{1000 * t_search:.1f} ms/particle; ratio {t_search / t_inf:.0f}×")
            if args.speed_int8:  # the int8 copy of cryopose predict --int8 (calibrated on 256 particles)
                t0 = time.perf_counter()
                qmodel = model.quantized_for_inference(crop(x[:INT8_CALIBRATION_PARTICLES]))
                t_cal = time.perf_counter() - t0
                t_q = _time_inference(qmodel, x, crop, args.speed_repeats)
                doc[structure]["networks"][key + ", int8"] = {
                    "network_box": nbox, "width": width, "hidden": hidden, "int8": True,
                    "calibration_seconds": t_cal, "inference_ms_per_particle": 1000 * t_q, "speedup": t_search / t_q,
                    "float_over_int8": t_inf / t_q}
                print(f"{structure}: network {key}, int8: inference {1000 * t_q:.2f} ms/particle ({t_inf / t_q:.1f}× "
                      f"the float network; calibration {t_cal:.1f} s); ratio to search {t_search / t_q:.0f}×")
    _save(out, "speed", doc)


def run_refine(args, out: Path) -> None:
    from cryopose.io.mrc import MapData
    from cryopose.pipelines.refine import RefineConfig, refine

    structure = args.refine_structure
    bargs = argparse.Namespace(**{**vars(args), "box": args.refine_box, "data_box": None})
    images, rot, vol, px, sym, meta = _dataset(bargs, structure, args.refine_snr, n=args.refine_n, seed=7)
    w, _ = _best_w(args, out, structure)
    mc, tc = _configs(args, sym, w=w)  # network at args.box (Fourier-cropped input)
    cfg = RefineConfig(labeled_fraction=0.2, search=SearchConfig(symmetry=sym), model=mc, train=tc,
                       network_box_size=args.box, local_refine=True, local_refine_step_deg=args.refine_local_step,
                       seed=args.seed)
    t0 = time.perf_counter()
    res = refine(images, meta, MapData(vol.numpy(), px), config=cfg,
                 progress=lambda m: print(f"  [refine] {m}", file=sys.stderr))
    r = res.report
    doc = {"structure": structure, "snr": args.refine_snr, "n": args.refine_n, "w": w, "box": args.refine_box,
           "network_box": args.box, "pixel_angstrom": px, "iterations": tc.iterations,
           "labeled": r["n_labeled"], "report": r, "wall_seconds": time.perf_counter() - t0}
    _save(out, "refine", doc)
    print(f"refine: half-map FSC0.143 {r['resolution_fsc0p143_angstrom']:.2f} Å (network only "
          f"{r['network_only_resolution_fsc0p143_angstrom']:.2f} Å) vs known poses "
          f"{r['known_pose_resolution_fsc0p143_angstrom']:.2f} Å; vs reference FSC0.5 "
          f"{r['vs_reference_fsc0p5_angstrom']:.2f} / {r['network_only_vs_reference_fsc0p5_angstrom']:.2f} / "
          f"{r['known_pose_vs_reference_fsc0p5_angstrom']:.2f} Å")


def _print_searchref(out: Path, structure: str, title: str | None = None) -> None:
    rows = _load(out, f"searchref_{structure}") or {}
    if rows and title:
        print(f"\n{title}: exhaustive search only")
    for key, r in rows.items():
        print(f"{'search, ' + key:<26} {'':>13} {r['median_error_deg']:10.2f}° {r['mean_error_deg']:9.2f}° "
              f"{r['seconds']:8.0f}  [exhaustive search, true map, {r['n']} test particles at {r['box']} px]")


def print_tables(args, out: Path) -> None:
    titles = {"betagal": "Table 1 — β-galactosidase (D2)", "4ake": "Table 2 — adenylate kinase 4AKE (C1)",
              "4ake-A": "Table 2 — adenylate kinase 4AKE chain A (C1, the monomer)"}
    for structure in titles:
        rows = _load(out, f"table_{structure}")
        if not rows:
            _print_searchref(out, structure, titles[structure])
            continue
        w, how = _best_w(args, out, structure)
        any_row = next(iter(rows.values()))
        data_box = any_row.get("data_box", any_row["box"])
        grid = (f"{data_box} px at {any_row['pixel_angstrom']:.3f} Å" + (
            f", network on {any_row['box']} px Fourier-cropped input" if data_box != any_row["box"] else ""))
        print(f"\n{titles[structure]}: {grid}, CTF, "
              f"{any_row['n_train']} train / {any_row['n_test']} test, {any_row['iterations']} iterations × "
              f"{any_row['batch_size']} ({any_row.get('lr_schedule', 'step')} learning-rate decay), w = {w:g} ({how})")
        print(f"{'condition':<26} {'reproj. RMSE':>13} {'median err':>11} {'mean err':>10} {'train s':>8}")
        for key, r in rows.items():
            print(f"{key:<26} {r['reprojection_rmse']:13.4f} {r['median_error_deg']:10.2f}° "
                  f"{r['mean_error_deg']:9.2f}° {r['train_seconds']:8.0f}  "
                  f"[augment {r.get('augment_inplane', 'none')}, ℓ_QD modulo the group: {r.get('qd_symmetry_aware', False)}]")
            if "ncs_median_error_deg" in r:
                print(f"{'  ↳ modulo the A/B 2-fold':<26} {'':>13} {r['ncs_median_error_deg']:10.2f}° "
                      f"{r['ncs_mean_error_deg']:9.2f}°")
            for p in r.get("local_searches", []):
                print(f"{'  ↳ + local search':<26} {'':>13} {p['median_error_deg']:10.2f}° "
                      f"{p['mean_error_deg']:9.2f}°   ({p['start_step_deg']:g}° → "
                      f"{p['final_step_deg']:g}°, {p['ms_per_particle']:.1f} ms/particle{_ncs_text(p)})")
            if "turns_median_error_deg" in r:
                print(f"{'  ↳ test-time quarter turns':<26} {'':>13} {r['turns_median_error_deg']:10.2f}° "
                      f"{r['turns_mean_error_deg']:9.2f}°   (training particles: median "
                      f"{r['train_median_error_deg']:.2f}°)")
        _print_searchref(out, structure)
        cv = _load(out, f"cv_{structure}")
        if cv:
            print(f"  CV (mean over {cv.get('n_folds', 5)} folds of the median error, °, {cv['n_particles']} particles, "
                  f"{_snr_name(cv['snr'])}, {cv['iterations_per_fold']} steps per fold): "
                  + "  ".join(f"w={w:g}: {s:.1f}" for w, s in zip(cv["w_values"], cv["mean_scores"])))
    t3 = _load(out, "table3")
    if t3:
        r0 = next(iter(t3.values()))
        print(f"\nTable 3 analogue — {r0['structure']}, {_snr_name(r0['snr'])}, output representation × learning rate "
              f"({r0['iterations']} iterations, w = {r0['w']:g})")
        print(f"{'representation':<15} {'lr':>8} {'median err':>11} {'mean err':>10} {'reproj. RMSE':>13}")
        for key, r in t3.items():
            print(f"{r['representation']:<15} {r['lr']:8.0e} {r['median_error_deg']:10.2f}° "
                  f"{r['mean_error_deg']:9.2f}° {r['reprojection_rmse']:13.4f}")
    sp = _load(out, "speed")
    if sp:
        print("\nSpeed, one CPU thread, per particle (same particles; search at the data's box, 15° → 1.875°)")
        print(f"{'structure':<10} {'network':<22} {'inference ms':>13} {'search ms':>10} {'search / inference':>19}")
        for structure, r in sp.items():
            nets = r.get("networks") or {f"{r['box']} px": {"inference_ms_per_particle": r["inference_ms_per_particle"],
                                                            "speedup": r["speedup"]}}
            for key, n in nets.items():
                print(f"{structure:<10} {key:<22} {n['inference_ms_per_particle']:13.3f} "
                      f"{r['search_ms_per_particle']:10.1f} {n['speedup']:18.0f}×")
    rf = _load(out, "refine")
    if rf:
        r = rf["report"]
        pe = r["pose_errors_vs_input"]
        print(f"\ncryopose refine vs known poses — {rf['structure']}, {_snr_name(rf['snr'])}, {rf['n']} particles at "
              f"{rf['box']} px ({rf['pixel_angstrom']:.3f} Å), {rf['labeled']} searched, network at {rf['network_box']} px, "
              f"{rf['iterations']} iterations, w = {rf['w']:g}")
        print(f"{'poses':<34} {'median err':>11} {'half-map FSC0.143':>18} {'vs reference FSC0.5':>20}")
        known_h = r["known_pose_resolution_fsc0p143_angstrom"]
        rows = [("search (labelled 20 %)", pe["search"], None, None),
                ("network only (80 %)", pe["network"], r["network_only_resolution_fsc0p143_angstrom"],
                 r["network_only_vs_reference_fsc0p5_angstrom"]),
                ("network + local search (80 %)", pe["network+local"], r["resolution_fsc0p143_angstrom"],
                 r["vs_reference_fsc0p5_angstrom"]),
                ("known poses (100 %)", None, known_h, r["known_pose_vs_reference_fsc0p5_angstrom"])]
        for name, e, h, v in rows:
            err = f"{e['median_error_deg']:10.2f}°" if e else f"{'':>11}"
            hs = f"{h:9.2f} Å ({h / known_h:4.2f}×)" if h else f"{'':>18}"
            vs = f"{v:19.2f} Å" if v else ""
            print(f"{name:<34} {err} {hs:>18} {vs:>20}")
        h5, k5 = r.get("resolution_fsc0p5_angstrom"), r.get("known_pose_resolution_fsc0p5_angstrom")
        if h5 and k5:
            nyq = 2 * rf["pixel_angstrom"]
            print(f"half-map FSC0.5 (not capped by Nyquist, {nyq:.2f} Å): refine (network + local search) {h5:.2f} Å, "
                  f"known poses {k5:.2f} Å: ratio {h5 / k5:.2f}×")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="*", default=[],
                   choices=["cv", "tables", "searchref", "table3", "speed", "refine"])
    p.add_argument("--print", action="store_true", help="print the tables from the cached JSON files")
    p.add_argument("--quick", action="store_true",
                   help="shared-CPU scale: 32 px, 2000 particles, small network, few iterations")
    p.add_argument("--out", default=None, help="cache folder (default bench_out/supervised[_quick])")
    p.add_argument("--structures", nargs="*", default=["betagal", "4ake"], choices=sorted(STRUCTURES))
    p.add_argument("--snrs", nargs="*", default=["none", "1.0", "0.4", "0.1"])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--data-box", type=int, default=None,
                   help="cv/tables/table3: simulate at this box (SNR defined there), Fourier-crop to --box for the "
                        "network (default --box)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--iterations", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="step", choices=LR_SCHEDULES,
                   help="step: ÷5 after 80%% of the steps (the paper's); cosine: half a cosine to 0")
    p.add_argument("--w", type=float, default=0.5, help="w when no CV result is cached")
    p.add_argument("--force-w", type=float, help="tables: use this w instead of the CV choice (rows tagged)")
    p.add_argument("--augment", default="quarter", choices=AUGMENTATIONS,
                   help="in-plane augmentation of the training images and labels (default quarter; none = the paper)")
    p.add_argument("--qd-symmetric", action=argparse.BooleanOptionalAction, default=True,
                   help="ℓ_QD modulo the point group (default; --no-qd-symmetric = the paper)")
    p.add_argument("--input-ctf", default="none", choices=["none", "phase_flip"],
                   help="CTF correction of the network's input images (default none = the paper)")
    p.add_argument("--reproj-box", type=int, default=None, help="box of the ℓ_reproj projections")
    p.add_argument("--tables-local-steps", type=float, nargs="*", default=[7.5, 15.0],
                   help="tables: first steps (°) of the local searches that polish the network's test poses, "
                        "as cryopose refine --local-refine does (none: skip)")
    p.add_argument("--cv-snr", type=float, default=0.1)
    p.add_argument("--cv-particles", type=int, default=2000)
    p.add_argument("--cv-iterations", type=int, default=1000)
    p.add_argument("--cv-folds", type=int, default=5, help="cv: folds (default 5, the paper's)")
    p.add_argument("--cv-w-values", type=float, nargs="*", default=list(DEFAULT_W_GRID),
                   help="cv: grid of w (default the paper's 0.0, 0.1, …, 1.0)")
    p.add_argument("--searchref-n", type=int, default=200,
                   help="searchref: test particles searched (15° → 1.875°, true map, CTF) at the data box")
    p.add_argument("--searchref-box", type=int, default=None,
                   help="searchref: Fourier-crop the particles and the map to this box first (default the data box)")
    p.add_argument("--representation", default="quaternion", choices=REPRESENTATIONS,
                   help="tables: regressor output (default quaternion, the paper's; rows of others are tagged)")
    p.add_argument("--table3-representations", nargs="*", default=["quaternion", "axis_angle"],
                   choices=REPRESENTATIONS, help="table3: outputs compared (default the paper's two)")
    p.add_argument("--table3-structure", default="4ake", choices=sorted(STRUCTURES))
    p.add_argument("--table3-snr", type=float, default=1.0)
    p.add_argument("--table3-lrs", type=float, nargs=3, default=[1e-4, 1e-3, 1e-2])
    p.add_argument("--speed-particles", type=int, default=1000)
    p.add_argument("--speed-network-box", type=int, default=None,
                   help="also time the network on input Fourier-cropped to this box (as cryopose refine runs it)")
    p.add_argument("--speed-network-width", type=int, default=16)
    p.add_argument("--speed-network-hidden", type=int, default=256)
    p.add_argument("--speed-search-particles", type=int, default=100)
    p.add_argument("--speed-int8", action=argparse.BooleanOptionalAction, default=True,
                   help="speed: also time the int8 copy of each network (cryopose predict --int8)")
    p.add_argument("--speed-repeats", type=int, default=3,
                   help="speed: time the search and the inference this many times each and keep the best")
    p.add_argument("--refine-structure", default="betagal", choices=sorted(STRUCTURES))
    p.add_argument("--refine-snr", type=float, default=0.1)
    p.add_argument("--refine-n", type=int, default=10000)
    p.add_argument("--refine-box", type=int, default=64, help="box of the refine data set (search, maps)")
    p.add_argument("--refine-local-step", type=float, default=DEFAULT_LOCAL_REFINE_STEP_DEG,
                   help="first step (°) of refine's local search (default as `cryopose refine --local-step`)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:  # new defaults, re-parsed so that options given explicitly still win
        p.set_defaults(n=2000, box=32, width=16, hidden=256, iterations=1500, batch_size=32, cv_particles=600,
                       cv_iterations=150, refine_n=2000, speed_particles=512, speed_search_particles=64)
        args = p.parse_args(argv)
    args.snrs = [None if s.lower() in ("none", "0", "inf") else float(s) for s in args.snrs]
    configure_torch(args.threads)  # as the commands: threads, subnormal floats flushed (slow on x86 CPUs)
    out = Path(args.out or ("bench_out/supervised_quick" if args.quick else "bench_out/supervised"))
    runners = {"cv": run_cv, "tables": run_tables, "searchref": run_searchref, "table3": run_table3, "speed": run_speed, "refine": run_refine}
    for section in args.sections:
        t0 = time.perf_counter()
        runners[section](args, out)
        print(f"[{section} done in {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    if args.print or not args.sections:
        print_tables(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
