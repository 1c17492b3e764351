"""In-plane angle, defocus and outliers from latent spaces: Miolane et al. (CVPR-W 2020) and Bibas et al. (2021).

Sections (``--sections``; each writes ``OUT/<section>.json`` so they can run one at a time and
``--print`` collects the tables):

* ``table1``   Miolane et al. Table 1 analogue. 4AKE (atomic model → density, 64 px at 2.0 Å),
               one view (rot, tilt) = (45°, 30°), in-plane angle uniform, defocus 0.5–3.0 µm in
               steps of 0.5 (equal shares), ``--n`` images, noise-free and SNR 0.1. VAE-GAN as in
               the paper (cone prior, no equivariance) and with the rotation-equivariance prior;
               weighted angle rMSE (eq. 6, weights exp(Δf/µm) − 1 of the true defocus), plain
               rMSE, defocus rMSE (eq. 5 quantile mapping), training time.
* ``outliers`` The same noise-free set with 20 % junk (pure noise, ice-like blobs, another
               structure — the centre of the β-gal map on 4AKE's grid — and off-centre 4AKE),
               labelled rlnCryoposeIsOutlier: ROC AUC of IsolationForest, LocalOutlierFactor and
               robust covariance on three feature sets, plus angle/defocus on the true particles.
* ``symmetric`` β-gal (D2) seen down a two-fold axis, view (0°, 0°): a 2-fold symmetric
               projection. Angle errors modulo 180° (quotient orbit, ``--symmetry-order 2``)
               versus modulo 360°.
* ``bibas``    Bibas et al. Table 1 analogue: 40 × 40 projections of 4AKE from uniformly random
               viewing directions (no CTF), canonical ψ = 0, white noise at ``--bibas-snr``;
               16,000 training / 4,000 test images. Training images are the noisy canonical
               images (the methods turn them at random); test images are projected at ψ = −θ for
               a random θ with fresh noise. Average and worst image MSE of the predicted canonical
               image against the noise-free canonical one (standardised units: the noisy training
               pixels have unit variance), and angle error (radians) for the rotation-invariant
               autoencoder and spatial-VAE (whose arbitrary frame is aligned by the best global
               sign and shift first); also the median |error| and the error modulo 180°.
               The structure is chain A of 4AKE alone (``--bibas-chains``), one adenylate
               kinase — the biological unit. The file's two chains are related by a 178.8°
               rotation about the model's x axis, perpendicular to z, and the 40-px map of both is
               invariant under it to ~1–2 % of the signal power, so the ψ = 0 image of a view (rot,
               tilt) of the dimer is (nearly) the ψ = 0 image of its twin view (tilt → 180° − tilt)
               turned by ~180°: over all viewing directions the dimer's canonical angle is defined
               only modulo 180° and no method can learn the sign (``--bibas-chains ''`` shows it).
               Near the poles (tilt → 0° or 180°) ψ = 0 does not fix the frame either (rot and ψ
               turn the same axis), so the RMSE without views within 15° of a pole is given too.
               ``--bibas-tilt-range MIN MAX`` restricts the viewing directions.

Usage::

    python benchmarks/inplane.py --sections table1 outliers symmetric bibas
    python benchmarks/inplane.py --print
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryopose.analysis.latent_orbits import (OrbitAnalysisConfig, align_angles, analyze_latents, lowpass_contrast,
                                             reference_values)
from cryopose.analysis.outliers import outlier_features, outlier_scores, roc_auc
from cryopose.simulate.simulator import SimulationConfig, simulate_in_memory
from cryopose.simulate.volumes import load_volume
from cryopose.training.latent import encode_latents, prepare_batch, train_vaegan
from cryopose.training.latent_config import LatentTrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PDB_4AKE = DATA / "pdb" / "4ake_mdanalysis.pdb"
BETAGAL = DATA / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"
DEFOCI_UM = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)

#: The VAE-GAN variants of Table 1 ("equivariant" is the one-plane model of the numbers on
#: docs/results/latent.md; "defaults" the LatentTrainConfig defaults, read with angle_from="auto").
VARIANTS = {
    "paper": dict(lambda_equivariance=0.0, latent_dim=3),
    "equivariant": dict(lambda_equivariance=10.0, latent_dim=3, equivariance_normalization="total"),
    "equivariant-split": dict(lambda_equivariance=10.0, latent_dim=3, equivariance_normalization="split"),
    "defaults": dict(),
}


def _volume(which: str, box: int, pixel: float | None = None, chains=None):
    if which == "4ake":
        d = load_volume(PDB_4AKE, box_size=box, pixel_size_angstrom=pixel, chains=chains)
    else:
        d = load_volume(BETAGAL, box_size=box, pixel_size_angstrom=pixel, input_pixel_size_angstrom=3.54)
    return d.volume, d.pixel_size_angstrom


def _inplane_set(args, *, which="4ake", view=(45.0, 30.0), snr=None, junk=0.0, seed=0):
    vol, px = _volume(which, args.box)
    junk_vol = None
    types = ("noise", "blob", "offcentre")
    if junk > 0:
        junk_vol, _ = _volume("betagal", args.box, px)
        types = ("noise", "blob", "other", "offcentre")
    cfg = SimulationConfig(in_plane_only=True, view_rot_tilt_deg=view, defocus_values_angstrom=tuple(d * 1e4 for d in DEFOCI_UM),
                           snr=snr, junk_fraction=junk, junk_types=types)
    images, meta = simulate_in_memory(vol, pixel_size_angstrom=px, n_particles=args.n, config=cfg, generator=seed,
                                      junk_volume=junk_vol)
    return images, meta


def _train_config(args, **changes) -> LatentTrainConfig:
    base = LatentTrainConfig(epochs=args.epochs, seed=args.seed)
    return dataclasses.replace(base, **changes)


def _fit_and_analyze(args, images, meta, train_cfg: LatentTrainConfig, *, symmetry_order=1, features="posterior",
                     planes=False):
    t0 = time.perf_counter()
    res = train_vaegan(images, train_cfg, progress=False, log=(lambda m: print("   ", m, file=sys.stderr)))
    seconds = time.perf_counter() - t0
    codes = encode_latents(res.model, images, train_cfg, res.scaling)
    ref = reference_values(meta)
    cfg = OrbitAnalysisConfig(symmetry_order=symmetry_order, defocus_values_um=DEFOCI_UM, outlier_features=features,
                              contamination=0.2 if ref["outlier"] is not None and ref["outlier"].any() else 0.1,
                              angle_from="auto" if planes else "pca")
    an = analyze_latents(codes.mu, config=cfg, logvar=codes.logvar, reconstruction_loss=codes.reconstruction_loss,
                         contrast=lowpass_contrast(images), true_psi_deg=ref["psi_deg"],
                         true_defocus_um=ref["defocus_um"], outlier_labels=ref["outlier"],
                         planes=train_cfg.equivariant_planes(),
                         images=lambda idx: prepare_batch(images, idx, train_cfg, res.scaling))
    return an, codes, ref, seconds


def _cell(an, seconds) -> dict:
    m = an.metrics
    return {"angle_rmse_weighted_deg": m.get("angle_rmse_weighted_deg"), "angle_rmse_deg": m.get("angle_rmse_deg"),
            "angle_median_abs_deg": m.get("angle_median_abs_error_deg"), "angle_sign": m.get("angle_sign"),
            "defocus_rmse_um": m.get("defocus_rmse_um"), "explained_variance_ratio": m["explained_variance_ratio"],
            "train_seconds": seconds, "outlier_auc": m.get("outlier_auc")}


def section_table1(args) -> dict:
    rows = []
    for snr in args.snrs:
        snr = None if snr == 0 else snr
        images, meta = _inplane_set(args, snr=snr, seed=args.seed)
        for name, changes in VARIANTS.items():
            if name not in args.variants:
                continue
            extra = {"lambda_reg": args.lambda_reg_noisy} if snr is not None else {}
            cfg = _train_config(args, **changes, **extra)
            print(f"  table1: {'noise-free' if snr is None else f'SNR {snr:g}'}, {name}", file=sys.stderr)
            an, _, _, sec = _fit_and_analyze(args, images, meta, cfg, planes=name == "defaults")
            rows.append({"snr": snr, "variant": name, "config": dataclasses.asdict(cfg), **_cell(an, sec)})
    return {"rows": rows, "n": args.n, "box": args.box, "view": [45.0, 30.0], "structure": "4AKE"}


def section_outliers(args) -> dict:
    images, meta = _inplane_set(args, junk=0.2, seed=args.seed + 1)
    cfg = _train_config(args, **VARIANTS["equivariant"])
    an, codes, ref, sec = _fit_and_analyze(args, images, meta, cfg)
    labels = ref["outlier"]
    table = {}
    for fs in ("mean", "posterior", "posterior+rec"):
        feats = outlier_features(codes.mu, codes.logvar, codes.reconstruction_loss, feature_set=fs)
        scores = outlier_scores(feats, contamination=0.2, seed=args.seed)
        table[fs] = {m: roc_auc(s, labels) for m, s in scores.items()}
    jt = meta.table["rlnCryoposeJunkType"].to_numpy()
    per_type = {}
    feats = outlier_features(codes.mu, codes.logvar, codes.reconstruction_loss, feature_set="posterior")
    for m, s in outlier_scores(feats, contamination=0.2, seed=args.seed).items():
        per_type[m] = {t: roc_auc(s[(jt == t) | (jt == "none")], labels[(jt == t) | (jt == "none")])
                       for t in np.unique(jt) if t != "none"}
    # the same latents, with the PCA and the defocus quantiles fitted without the top 20 % of scores
    cfg_ex = OrbitAnalysisConfig(defocus_values_um=DEFOCI_UM, contamination=0.2, exclude_outliers_from_fit=True)
    an_ex = analyze_latents(codes.mu, config=cfg_ex, logvar=codes.logvar, contrast=lowpass_contrast(images),
                            true_psi_deg=ref["psi_deg"], true_defocus_um=ref["defocus_um"], outlier_labels=labels)
    np.savez_compressed(Path(args.out) / "outliers_codes.npz", mu=codes.mu, logvar=codes.logvar,
                        rec=codes.reconstruction_loss, labels=labels, psi=ref["psi_deg"], defocus=ref["defocus_um"])
    return {"auc": table, "auc_by_junk_type_posterior": per_type, "n": args.n, "junk_fraction": 0.2,
            "n_junk": int(labels.sum()), **_cell(an, sec),
            "excluding_outliers_from_fit": {k: an_ex.metrics.get(k) for k in
                                            ("angle_rmse_weighted_deg", "angle_rmse_deg", "defocus_rmse_um")}}


def section_symmetric(args) -> dict:
    images, meta = _inplane_set(args, which="betagal", view=(0.0, 0.0), seed=args.seed + 2)
    rows = []
    for name, changes in VARIANTS.items():
        if name not in args.variants:
            continue
        cfg = _train_config(args, **changes, equivariance_order=2)
        print(f"  symmetric: {name}", file=sys.stderr)
        t0 = time.perf_counter()
        res = train_vaegan(images, cfg, progress=False, log=(lambda m: print("   ", m, file=sys.stderr)))
        sec = time.perf_counter() - t0
        codes = encode_latents(res.model, images, cfg, res.scaling)
        ref = reference_values(meta)
        for k in (1, 2):
            an = analyze_latents(codes.mu, config=OrbitAnalysisConfig(symmetry_order=k, defocus_values_um=DEFOCI_UM),
                                 logvar=codes.logvar, contrast=lowpass_contrast(images), true_psi_deg=ref["psi_deg"],
                                 true_defocus_um=ref["defocus_um"])
            rows.append({"variant": name, "symmetry_order": k, **_cell(an, sec)})
    return {"rows": rows, "structure": "beta-gal (D2)", "view": [0.0, 0.0], "n": args.n}


# --------------------------------------------------------------------------------------------
# Bibas et al. Table 1 analogue
# --------------------------------------------------------------------------------------------


def _bibas_data(args):
    from cryopose.projection import prepare_volume_ft, project
    from cryopose.rotations import random_rotations, relion_euler_to_rotmat, rotmat_to_relion_euler
    from cryopose.simulate.noise import noise_sigma_for_snr, signal_variance

    vol, px = _volume("4ake", 40, chains=args.bibas_chains)
    g = torch.Generator().manual_seed(args.seed + 10)
    n_train, n_test = args.bibas_train, args.bibas_test
    n = n_train + n_test
    eul = rotmat_to_relion_euler(random_rotations(n, generator=g, dtype=torch.float64))
    if args.bibas_tilt_range is not None:  # viewing directions in a band of tilt (uniform on the sphere)
        lo, hi = (math.radians(v) for v in args.bibas_tilt_range)
        u = torch.rand(n, generator=g, dtype=torch.float64)
        eul[:, 1] = torch.rad2deg(torch.arccos(math.cos(lo) - u * (math.cos(lo) - math.cos(hi))))
    eul[:, 2] = 0.0
    canon_rot = relion_euler_to_rotmat(eul).to(torch.float32)
    theta = torch.rand(n_test, generator=g, dtype=torch.float64) * 2 * math.pi  # test rotations
    eul_test = eul[n_train:].clone()
    eul_test[:, 2] = -torch.rad2deg(theta)  # ψ = −θ  ⇔  image turned by θ
    test_rot = relion_euler_to_rotmat(eul_test).to(torch.float32)
    vft = prepare_volume_ft(torch.as_tensor(vol))
    with torch.no_grad():
        clean = torch.cat([project(vft, canon_rot[i:i + 1000]) for i in range(0, n, 1000)])
        test_clean_rot = torch.cat([project(vft, test_rot[i:i + 1000]) for i in range(0, n_test, 1000)])
    sigma = noise_sigma_for_snr(float(signal_variance(clean[:1000]).mean()), args.bibas_snr)
    noisy_train = clean[:n_train] + sigma * torch.randn(clean[:n_train].shape, generator=g)
    noisy_test = test_clean_rot + sigma * torch.randn(test_clean_rot.shape, generator=g)
    return noisy_train, noisy_test, clean[n_train:], theta.numpy(), px, sigma, eul[n_train:, 1].numpy()


def _image_mse(pred: np.ndarray, clean: torch.Tensor, config, std) -> tuple[float, float]:
    from cryopose.training.rotinv import prepare_images

    target = prepare_images(clean, config, std).numpy()
    per = ((pred - target) ** 2).mean(axis=(1, 2))
    return float(per.mean()), float(per.max())


def _angle_metrics(err: np.ndarray, tilt_deg: np.ndarray) -> dict:
    """Plain angle errors (radians, wrapped) and, as diagnostics, errors modulo π (a 180° ambiguity)
    and the RMSE without views within 15° of the poles (where ψ = 0 does not fix the frame)."""
    err = (np.asarray(err) + np.pi) % (2 * np.pi) - np.pi
    e180 = (err + np.pi / 2) % np.pi - np.pi / 2
    off_pole = np.abs(np.asarray(tilt_deg) - 90.0) < 75.0
    return {"angle_rmse_off_pole_rad": float(np.sqrt(np.mean(err[off_pole] ** 2))),
            "angle_median_abs_off_pole_rad": float(np.median(np.abs(err[off_pole]))),
            "off_pole_fraction": float(off_pole.mean()),
            "angle_rmse_rad": float(np.sqrt(np.mean(err**2))), "angle_mean_abs_rad": float(np.mean(np.abs(err))),
            "angle_median_abs_rad": float(np.median(np.abs(err))),
            "angle_rmse_mod180_rad": float(np.sqrt(np.mean(e180**2))),
            "angle_median_abs_mod180_rad": float(np.median(np.abs(e180))),
            "angle_frac_err_over_90deg": float(np.mean(np.abs(err) > np.pi / 2))}


def section_bibas(args) -> dict:
    from cryopose.models.rotinv import RotInvConfig
    from cryopose.models.spatial_vae import SpatialVAEConfig
    from cryopose.training.rotinv import RotInvTrainConfig, predict_rotinv, train_rotinv, train_spatial_vae

    train, test, test_canon, theta, px, sigma, test_tilt = _bibas_data(args)
    rows = []
    cfg = RotInvTrainConfig(epochs=args.bibas_epochs, batch_size=64, seed=args.seed)
    log = (lambda m: print("   ", m, file=sys.stderr))
    # Rotation-invariant autoencoder: angles are in the canonical frame by construction.
    print("  bibas: rotation-invariant autoencoder", file=sys.stderr)
    res = train_rotinv(train, RotInvConfig(box_size=40), cfg, progress=False, log=log)
    pred = predict_rotinv(res.model, "rotinv", test, cfg, res.standardization)
    err = (pred.theta_rad - theta + np.pi) % (2 * np.pi) - np.pi
    mse_avg, mse_worst = _image_mse(pred.canonical, test_canon, cfg, res.standardization)
    rows.append({"method": "rotation-invariant AE (Bibas et al.)", "mse_avg": mse_avg, "mse_worst": mse_worst,
                 **_angle_metrics(err, test_tilt), "aligned": False, "history": res.history,
                 "train_seconds": res.seconds, "parameters": res.model.n_parameters()})
    (Path(args.out) / "bibas_partial.json").write_text(json.dumps({"rows": rows}, indent=1, default=float))
    # spatial-VAE: unsupervised; align its frame (sign, shift) to the truth, then render there.
    print("  bibas: spatial-VAE", file=sys.stderr)
    cfg_sv = dataclasses.replace(cfg, epochs=args.bibas_epochs_sv)
    res_sv = train_spatial_vae(train, SpatialVAEConfig(box_size=40, hidden=args.sv_hidden), cfg_sv, progress=False,
                               log=log)
    pred_sv = predict_rotinv(res_sv.model, "spatial_vae", test, cfg_sv, res_sv.standardization)
    al = align_angles(np.degrees(theta), np.degrees(pred_sv.theta_rad))
    err_sv = np.radians(al.errors_deg)
    # θ_true = s θ̂ + c = 0  ⇔  θ̂ = −s c  ⇔  θ_sv = s c (θ̂ = −θ_sv)
    canon_angle = math.radians(al.sign * al.shift_deg)
    pred_sv_c = predict_rotinv(res_sv.model, "spatial_vae", test, cfg_sv, res_sv.standardization,
                               canonical_angle=canon_angle)
    mse_avg, mse_worst = _image_mse(pred_sv_c.canonical, test_canon, cfg_sv, res_sv.standardization)
    rows.append({"method": "spatial-VAE (Bepler et al.)", "mse_avg": mse_avg, "mse_worst": mse_worst,
                 **_angle_metrics(err_sv, test_tilt), "aligned": True,
                 "align_sign": al.sign, "align_shift_deg": al.shift_deg,
                 "train_seconds": res_sv.seconds, "parameters": res_sv.model.n_parameters()})
    return {"rows": rows, "snr": args.bibas_snr, "n_train": len(train), "n_test": len(test), "box": 40,
            "tilt_range_deg": args.bibas_tilt_range,
            "rotinv_epochs": args.bibas_epochs, "spatial_vae_epochs": args.bibas_epochs_sv, "sv_hidden": args.sv_hidden,
            "pixel_angstrom": px, "noise_sigma": sigma, "ctf": False,
            "structure": "4AKE" + (f" chain {','.join(args.bibas_chains)}" if args.bibas_chains else " (chains A, B)")}


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def _f(v, fmt="{:.2f}"):
    return "—" if v is None else fmt.format(v)


def print_tables(out: Path) -> None:
    def load(name):
        p = out / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    t1 = load("table1")
    if t1:
        print(f"\nTable 1 analogue (Miolane et al.): {t1['structure']}, view {t1['view']}, {t1['n']} images, "
              f"{t1['box']} px, defocus 0.5–3.0 µm")
        print("| data | VAE-GAN variant | weighted angle rMSE (°) | angle rMSE (°) | median |err| (°) | defocus rMSE (µm) | train (s) |")
        print("|---|---|---|---|---|---|---|")
        for r in t1["rows"]:
            print(f"| {'noise-free' if r['snr'] is None else 'SNR ' + format(r['snr'], 'g')} | {r['variant']} | "
                  f"{_f(r['angle_rmse_weighted_deg'])} | {_f(r['angle_rmse_deg'])} | {_f(r['angle_median_abs_deg'])} | "
                  f"{_f(r['defocus_rmse_um'], '{:.3f}')} | {r['train_seconds']:.0f} |")
    o = load("outliers")
    if o:
        print(f"\nOutliers: {o['n']} images, {o['n_junk']} junk ({o['junk_fraction']:.0%}); ROC AUC")
        print("| features | IsolationForest | LocalOutlierFactor | robust covariance |")
        print("|---|---|---|---|")
        for fs, row in o["auc"].items():
            print(f"| {fs} | {row['isolation_forest']:.3f} | {row['local_outlier_factor']:.3f} | {row['robust_covariance']:.3f} |")
        print("AUC by junk type (posterior features): " + "; ".join(
            f"{m}: " + ", ".join(f"{t} {v:.3f}" for t, v in d.items()) for m, d in o["auc_by_junk_type_posterior"].items()))
        print(f"true particles: weighted angle rMSE {_f(o['angle_rmse_weighted_deg'])}°, "
              f"defocus rMSE {_f(o['defocus_rmse_um'], '{:.3f}')} µm (PCA and quantiles fitted on all particles)")
        ex = o.get("excluding_outliers_from_fit")
        if ex:
            print(f"true particles: weighted angle rMSE {_f(ex['angle_rmse_weighted_deg'])}°, "
                  f"defocus rMSE {_f(ex['defocus_rmse_um'], '{:.3f}')} µm (fitted without the top 20 % outlier scores)")
    s = load("symmetric")
    if s:
        print(f"\n2-fold symmetric view: {s['structure']}, view {s['view']}, {s['n']} images")
        print("| VAE-GAN variant | analysed modulo | weighted angle rMSE (°) | angle rMSE (°) | defocus rMSE (µm) |")
        print("|---|---|---|---|---|")
        for r in s["rows"]:
            print(f"| {r['variant']} | {360 // r['symmetry_order']}° | {_f(r['angle_rmse_weighted_deg'])} | "
                  f"{_f(r['angle_rmse_deg'])} | {_f(r['defocus_rmse_um'], '{:.3f}')} |")
    b = load("bibas")
    if b:
        views = "all viewing directions" if not b.get("tilt_range_deg") else f"tilt in {b['tilt_range_deg']}°"
        print(f"\nBibas et al. Table 1 analogue: {b['structure']} {b['box']}×{b['box']}, SNR {b['snr']:g}, {views}, "
              f"{b['n_train']} train / {b['n_test']} test")
        print("| method | MSE average | MSE worst | angle RMSE (rad) | angle mean |err| (rad) | median |err| (rad) "
              "| RMSE mod 180° (rad) | RMSE off-pole (rad) | train (s) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in b["rows"]:
            print(f"| {r['method']}{' (frame aligned)' if r['aligned'] else ''} | {r['mse_avg']:.4f} | "
                  f"{r['mse_worst']:.4f} | {r['angle_rmse_rad']:.3f} | {r['angle_mean_abs_rad']:.3f} | "
                  f"{_f(r.get('angle_median_abs_rad'), '{:.3f}')} | {_f(r.get('angle_rmse_mod180_rad'), '{:.3f}')} | "
                  f"{_f(r.get('angle_rmse_off_pole_rad'), '{:.3f}')} | "
                  f"{r['train_seconds']:.0f} |")


SECTIONS = {"table1": section_table1, "outliers": section_outliers, "symmetric": section_symmetric,
            "bibas": section_bibas}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", choices=tuple(SECTIONS), default=[])
    p.add_argument("--print", action="store_true", help="print the tables from OUT/*.json")
    p.add_argument("--out", default="benchmarks/results/inplane", help="folder of the JSON results")
    p.add_argument("--n", type=int, default=2500, help="images per in-plane data set (default 2500)")
    p.add_argument("--box", type=int, default=64, help="image box of the in-plane sets (default 64)")
    p.add_argument("--epochs", type=int, default=30, help="VAE-GAN epochs (default 30)")
    p.add_argument("--lambda-reg-noisy", type=float, default=0.001, help="λ_reg for the SNR 0.1 rows (default 0.001)")
    p.add_argument("--snrs", nargs="+", type=float, default=[0.0, 0.1], help="table1 SNRs (0 = noise-free)")
    p.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=["paper", "equivariant"],
                   help="VAE-GAN variants (default paper equivariant)")
    p.add_argument("--bibas-snr", type=float, default=1.0, help="SNR of the Bibas set (default 1)")
    p.add_argument("--bibas-tilt-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="restrict the Bibas set's tilt to this band, degrees (default: all directions)")
    p.add_argument("--bibas-chains", type=lambda v: [c for c in v.split(",") if c] or None, default=["A"],
                   help="chains of 4AKE projected in the bibas section (default A: one adenylate kinase; "
                        "'' = both chains, whose 179° NCS makes the canonical angle ambiguous by 180°)")
    p.add_argument("--bibas-train", type=int, default=16000)
    p.add_argument("--bibas-test", type=int, default=4000)
    p.add_argument("--bibas-epochs", type=int, default=20, help="rotation-invariant AE epochs (default 20)")
    p.add_argument("--bibas-epochs-sv", type=int, default=4, help="spatial-VAE epochs (default 4)")
    p.add_argument("--sv-hidden", type=int, default=128, help="spatial-VAE hidden width (paper 500; default 128 for CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.sections:
        t0 = time.perf_counter()
        print(f"section {name} ...", file=sys.stderr)
        res = SECTIONS[name](args)
        res["seconds"] = time.perf_counter() - t0
        res["command"] = " ".join(sys.argv)
        (out / f"{name}.json").write_text(json.dumps(res, indent=1, default=float))
    if args.print or not args.sections:
        print_tables(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
