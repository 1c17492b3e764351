"""Latent-space analysis of particles with a VAE-GAN (Miolane, Poitevin, Li, Holmes, CVPR-W 2020).

`cryopose latent train PARTICLES -o OUTDIR` trains the VAE-GAN (conv encoder with batch norm
to a Gaussian latent of dimension L, conv decoder, discriminator; loss BCE + λ_reg·KL +
λ_GAN·GAN + λ_cone·(z1²+z2²−z3²)²; Adam (0.9, 0.999), batch 16) and writes
OUTDIR/checkpoint.pt (after every epoch, atomically; --resume continues), OUTDIR/history.json
and OUTDIR/config.yaml. --hpo-trials N first searches the learning rate, decoder depth, λ_reg
and λ_GAN on the validation loss with Optuna (optional extra: pip install 'cryopose[hpo]').

`cryopose latent analyze OUTDIR` encodes the particles, takes the PCA of the latent means,
reads the in-plane angle from the model's equivariant planes (default, for a model trained with
the rotation-equivariance prior: ψ modulo 180° from the order-2 plane (μ4, μ5), the branch from
(μ1, μ2) or, when that plane is flat, from the images; --angle-from pca: the paper's polar angle
of the first two components, eq. 4; divided by k for a k-fold symmetric view), the defocus from the radius by quantile matching with the
known defocus distribution (eq. 5), and scores outliers with IsolationForest,
LocalOutlierFactor and robust covariance. Writes OUTDIR/latent_particles.star (rlnAnglePsi and
rlnDefocusU/V replaced by the estimates, the input values kept as rlnCryoposeInput*, plus
rlnCryoposeOutlierScore*, rlnCryoposeLatentRadius/PolarAngle/Confidence), OUTDIR/analysis.json
(metrics against the input's angles, defocus and rlnCryoposeIsOutlier labels when present) and
the figures latent_pca.png, roc.png, angle_hexbin.png, defocus_hexbin.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from .common import add_datadir_argument

COMMAND = "latent"
HELP = "VAE-GAN latent space: in-plane angles, defocus and outliers (Miolane et al. 2020)"


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("particles", metavar="PARTICLES", help="particle images: .star, .cs or .mrcs")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--pixel-size", type=float, metavar="A", help="particle pixel size in Å (header override)")
    add_datadir_argument(p)
    g = p.add_argument_group("network and loss")
    g.add_argument("--latent-dim", type=int, default=5,
                   help="latent dimension L (paper: 3 or 4; default 5: the cone's three axes and a second "
                        "equivariant plane)")
    g.add_argument("--train-box", type=int, default=32,
                   help="Fourier-downsample to this box before the networks (default 32; 0 = the data's box)")
    g.add_argument("--channels", type=int, default=16, help="first-layer filters (default 16)")
    g.add_argument("--decoder-depth", type=int, help="decoder layers (default: the minimum for the box)")
    g.add_argument("--lambda-reg", type=float, default=0.01, help="KL weight λ_reg (default 0.01)")
    g.add_argument("--lambda-gan", type=float, default=0.0, help="GAN weight λ_GAN (default 0: no discriminator)")
    g.add_argument("--lambda-cone", type=float, default=100.0,
                   help="cone weight λ_cone, relative to the BCE summed over pixels (default 100)")
    g.add_argument("--lambda-equivariance", type=float, default=10.0,
                   help="rotation-equivariance prior (not in the paper; 0 = the paper's model; default 10)")
    g.add_argument("--equivariance-order", type=int, default=1,
                   help="k of a k-fold symmetric view for the equivariance prior (default 1)")
    g.add_argument("--equivariance-order-2", type=int,
                   help="order of the second equivariant plane (mu4, mu5) (default 2k when L >= 5; 0 = none)")
    g.add_argument("--equivariance-normalization", choices=("split", "total"), default="split",
                   help="split: each plane and the rest divided by its own mean square (a plane cannot "
                        "shrink away); total: by the whole latent's (default split)")
    g.add_argument("--no-mask", action="store_true", help="do not apply the soft circular mask (inscribed circle)")
    g.add_argument("--invert-contrast", action="store_true", help="particles are dark: negate them first")
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=int, default=30, help="passes over the data (default 30)")
    t.add_argument("--batch-size", type=int, default=16, help="images per step (paper: 16)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--final-lr-fraction", type=float, default=0.05,
                   help="cosine decay of the rate down to this fraction (1 = constant; default 0.05)")
    t.add_argument("--kl-warmup-epochs", type=int, default=0, help="ramp λ_reg up over this many epochs")
    t.add_argument("--validation-fraction", type=float, default=0.1, help="held-out fraction (default 0.1)")
    t.add_argument("--resume", action="store_true", help="continue from OUTDIR/checkpoint.pt")
    from .common import add_runtime_arguments

    add_runtime_arguments(p, threads_help="torch CPU threads")
    h = p.add_argument_group("hyper-parameter search (Optuna)")
    h.add_argument("--hpo-trials", type=int, default=0, help="trials before the final training (0 = none)")
    h.add_argument("--hpo-epochs", type=int, help="epochs per trial (default --epochs)")
    h.add_argument("--hpo-timeout", type=float, help="stop starting trials after this many seconds")


def _add_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", metavar="OUTDIR", help="folder of `cryopose latent train`")
    p.add_argument("--particles", metavar="PARTICLES", help="particles to analyse (default: those trained on)")
    p.add_argument("--pixel-size", type=float, metavar="A", help="particle pixel size in Å (header override)")
    add_datadir_argument(p)
    p.add_argument("-o", "--output", metavar="STAR", help="output STAR (default OUTDIR/latent_particles.star)")
    p.add_argument("--symmetry-order", type=int, default=1,
                   help="k of a k-fold symmetric projection: angles are estimated modulo 360/k (default 1)")
    p.add_argument("--angle-from", choices=("auto", "pca"), default="auto",
                   help="auto: the equivariant latent planes when the model has them (the 180° branch from "
                        "the images if the first plane is flat), else the PCA; pca: the paper's eq. 4")
    d = p.add_mutually_exclusive_group()
    d.add_argument("--defocus-values", type=float, nargs="+", metavar="UM",
                   help="known defocus values in µm (equal shares)")
    d.add_argument("--defocus-range", type=float, nargs=2, metavar=("MIN_UM", "MAX_UM"),
                   help="known defocus range in µm (uniform)")
    p.add_argument("--radius-direction", choices=("auto", "increasing", "decreasing"), default="auto",
                   help="how the latent radius follows defocus (auto: from the images' low-pass contrast)")
    p.add_argument("--outlier-features", choices=("mean", "posterior", "posterior+rec"), default="posterior",
                   help="detector features: latent means, (means, log-variances), or those plus the "
                        "reconstruction loss (default posterior)")
    p.add_argument("--contamination", type=float, default=0.1, help="expected outlier fraction (default 0.1)")
    p.add_argument("--exclude-outliers-from-fit", action="store_true",
                   help="fit the PCA and the defocus mapping without the top --contamination fraction of outlier scores")
    p.add_argument("--primary-outlier-method", default="robust_covariance",
                   choices=("isolation_forest", "local_outlier_factor", "robust_covariance"),
                   help="detector written as rlnCryoposeOutlierScore (default robust_covariance)")
    p.add_argument("--no-reference", action="store_true",
                   help="do not compare with the input's angles, defocus and outlier labels")
    p.add_argument("--no-figures", action="store_true", help="write no PNG figures")
    p.add_argument("--seed", type=int, default=0, help="random state of the detectors (default 0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``latent train`` and ``latent analyze`` sub-commands."""
    sub = parser.add_subparsers(dest="latent_command", metavar="<train|analyze>")
    sub.required = True
    _add_train(sub.add_parser("train", help="train the VAE-GAN on particle images",
                              description="Train the VAE-GAN (Miolane et al. 2020, Sec. 3.1)."))
    _add_analyze(sub.add_parser("analyze", help="in-plane angles, defocus and outlier scores from the latent space",
                                description="PCA/polar estimates (eqs. 4-6) and outlier scores."))


def _train_config(args):
    from ..training.latent import LatentTrainConfig

    return LatentTrainConfig(
        latent_dim=args.latent_dim, train_box_size=args.train_box or None, channels=args.channels,
        decoder_depth=args.decoder_depth, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        final_lr_fraction=args.final_lr_fraction, lambda_reg=args.lambda_reg, lambda_gan=args.lambda_gan,
        lambda_cone=args.lambda_cone, lambda_equivariance=args.lambda_equivariance,
        equivariance_order=args.equivariance_order, equivariance_order_2=args.equivariance_order_2,
        equivariance_normalization=args.equivariance_normalization,
        mask_radius_fraction=None if args.no_mask else 1.0, kl_warmup_epochs=args.kl_warmup_epochs,
        validation_fraction=args.validation_fraction, invert_contrast=args.invert_contrast, seed=args.seed)


def _run_train(args) -> int:
    import dataclasses

    from ..io.atomic import atomic_write_json
    from ..io.particles import load_particles
    from ..training.latent import CHECKPOINT_NAME, hyperparameter_search, train_vaegan
    from .common import prepare_output_dir, runtime_from_args, write_run_config

    runtime_from_args(args, command="latent train", gpu=False, training=True).apply()
    config = _train_config(args)
    out = prepare_output_dir(args.output)
    from .common import particle_options

    stack, meta = load_particles(args.particles, pixel_size_angstrom=args.pixel_size, **particle_options(args))
    log = (lambda msg: print(f"  {msg}", file=sys.stderr))
    trials = None
    if args.hpo_trials > 0:
        base = dataclasses.replace(config, epochs=args.hpo_epochs or config.epochs)
        best, trials = hyperparameter_search(stack, base, n_trials=args.hpo_trials, timeout_s=args.hpo_timeout,
                                             seed=args.seed, log=log)
        config = dataclasses.replace(best, epochs=config.epochs)
        atomic_write_json(out / "hpo_trials.json", trials, indent=1)
    ckpt = out / CHECKPOINT_NAME
    if ckpt.exists() and not args.resume:
        raise UserError(f"{ckpt} exists: pass --resume to continue it or choose another -o")
    res = train_vaegan(stack, config, checkpoint_path=ckpt, resume=args.resume, progress=not args.no_progress,
                       log=log)
    atomic_write_json(out / "history.json", res.history, indent=1)
    write_run_config(out / "config.yaml", command_line=args.command_line, config=config,
                     extra={"particles": str(Path(args.particles).absolute()), "pixel_size_angstrom":
                            meta.pixel_size_angstrom, "n_particles": len(stack), "hpo_trials": trials})
    last = res.history[-1]
    print(f"trained on {len(res.train_indices)} images ({len(res.validation_indices)} held out), "
          f"{len(res.history)} epochs: validation loss {last['val_loss']:.4g}; wrote {ckpt}")
    return 0


def _particles_of(outdir: Path, explicit):
    import yaml

    if explicit:
        return explicit
    cfg = outdir / "config.yaml"
    if not cfg.is_file():
        raise UserError(f"{cfg} not found: pass --particles")
    doc = yaml.safe_load(cfg.read_text()) or {}
    if not doc.get("particles"):
        raise UserError(f"{cfg} does not name the particles: pass --particles")
    return doc["particles"]


def _write_outputs(args, outdir: Path, star_path: Path, meta, analysis, codes, ref) -> None:
    import torch

    from ..ctf import CTFParams
    from ..io.atomic import atomic_write_json
    from ..io.star import write_star
    from ..rotations import relion_euler_to_rotmat, rotmat_to_relion_euler

    n = len(meta)
    extra: dict[str, np.ndarray] = {}
    if meta.rotmats is not None:
        eul = rotmat_to_relion_euler(meta.rotmats.double())
        extra["rlnCryoposeInputAnglePsi"] = eul[:, 2].numpy()
    else:
        eul = torch.zeros(n, 3, dtype=torch.float64)
    eul = eul.clone()
    eul[:, 2] = torch.from_numpy(analysis.psi_deg)
    changes = {"rotmats": relion_euler_to_rotmat(eul).to(torch.float32)}
    if analysis.defocus_um is not None:
        df = torch.from_numpy(analysis.defocus_um * 1e4).to(torch.float32)
        extra["rlnCryoposeLatentDefocusAngst"] = analysis.defocus_um * 1e4
        extra["rlnCryoposeLatentConfidence"] = analysis.confidence
        if meta.ctf is not None:
            c = meta.ctf
            extra["rlnCryoposeInputDefocusU"] = c.defocus_u_angstrom.double().numpy()
            extra["rlnCryoposeInputDefocusV"] = c.defocus_v_angstrom.double().numpy()
            changes["ctf"] = CTFParams(**{**{f: getattr(c, f) for f in c.__dataclass_fields__},
                                          "defocus_u_angstrom": df, "defocus_v_angstrom": df.clone()})
    extra["rlnCryoposeLatentRadius"] = analysis.radius
    extra["rlnCryoposeLatentPolarAngle"] = analysis.polar_angle_deg
    for j in range(codes.mu.shape[1]):
        extra[f"rlnCryoposeLatent{j + 1}"] = codes.mu[:, j]
    names = {"isolation_forest": "IsolationForest", "local_outlier_factor": "LocalOutlierFactor",
             "robust_covariance": "RobustCovariance"}
    for m, s in analysis.outlier_scores.items():
        extra[f"rlnCryoposeOutlierScore{names[m]}"] = s
    extra["rlnCryoposeOutlierScore"] = analysis.outlier_scores[args.primary_outlier_method]
    write_star(star_path, meta.replace(**changes), extra_columns=extra)
    doc = {"n_particles": n, "star": str(star_path), "metrics": analysis.metrics,
           "symmetry_order": args.symmetry_order, "radius_increases_with_defocus": analysis.radius_increasing,
           "primary_outlier_method": args.primary_outlier_method}
    atomic_write_json(outdir / "analysis.json", doc, indent=1, default=float)
    if args.no_figures:
        return
    from ..analysis.outliers import roc_curve
    from ..report.latent_figures import plot_estimate_hexbin, plot_latent_pca, plot_roc_curves

    good = np.ones(n, dtype=bool) if ref["outlier"] is None else ref["outlier"] == 0
    color_angle = ref["psi_deg"] if ref["psi_deg"] is not None else analysis.psi_deg
    color_df = ref["defocus_um"] if ref["defocus_um"] is not None else analysis.defocus_um
    plot_latent_pca(analysis.components, outdir / "latent_pca.png", angle_deg=color_angle, defocus_um=color_df,
                    outlier=None if ref["outlier"] is None else ref["outlier"] == 1,
                    title="Latent PCA" + (" (true values)" if ref["psi_deg"] is not None else " (estimates)"))
    auc = analysis.metrics.get("outlier_auc")
    if auc:
        curves = {}
        for m, s in analysis.outlier_scores.items():
            fpr, tpr, _ = roc_curve(s, ref["outlier"])
            curves[m] = (fpr, tpr, auc[m])
        plot_roc_curves(curves, outdir / "roc.png")
    if analysis.alignment is not None:
        from ..analysis.latent_orbits import apply_alignment

        al = analysis.alignment
        plot_estimate_hexbin(ref["psi_deg"][good], apply_alignment(analysis.psi_deg[good], al),
                             outdir / "angle_hexbin.png", label="in-plane angle", unit="°", period=al.period_deg,
                             title=f"weighted rMSE {analysis.metrics.get('angle_rmse_weighted_deg', al.rmse_deg):.2f}°")
    if analysis.defocus_um is not None and ref["defocus_um"] is not None:
        plot_estimate_hexbin(ref["defocus_um"][good], analysis.defocus_um[good], outdir / "defocus_hexbin.png",
                             label="defocus", unit="µm", gridsize=30,
                             title=f"rMSE {analysis.metrics['defocus_rmse_um']:.3f} µm")


def _run_analyze(args) -> int:
    from ..analysis.latent_orbits import OrbitAnalysisConfig, analyze_checkpoint, defocus_distribution_from, reference_values
    from ..io.particles import load_particles
    from ..training.latent import CHECKPOINT_NAME
    from .common import write_run_config

    outdir = Path(args.outdir)
    ckpt = outdir / CHECKPOINT_NAME
    if not ckpt.is_file():
        raise UserError(f"{ckpt} not found: run `cryopose latent train ... -o {outdir}` first")
    particles = _particles_of(outdir, args.particles)
    from .common import particle_options

    stack, meta = load_particles(particles, pixel_size_angstrom=args.pixel_size, **particle_options(args))
    known = {}
    if args.defocus_values:
        known = {"defocus_values_um": tuple(args.defocus_values)}
    elif args.defocus_range:
        known = {"defocus_range_um": tuple(args.defocus_range)}
    else:
        df = reference_values(meta)["defocus_um"]
        if df is not None:
            known = defocus_distribution_from(df)
    try:
        config = OrbitAnalysisConfig(symmetry_order=args.symmetry_order, radius_direction=args.radius_direction,
                                     angle_from=args.angle_from,
                                     outlier_features=args.outlier_features, contamination=args.contamination,
                                     primary_outlier_method=args.primary_outlier_method, seed=args.seed,
                                     exclude_outliers_from_fit=args.exclude_outliers_from_fit, **known)
    except ValueError as err:
        raise UserError(str(err)) from None
    analysis, codes, ref = analyze_checkpoint(ckpt, stack, meta, config=config, use_reference=not args.no_reference)
    star_path = Path(args.output) if args.output else outdir / "latent_particles.star"
    _write_outputs(args, outdir, star_path, meta, analysis, codes, ref)
    write_run_config(outdir / "analyze_config.yaml", command_line=args.command_line, config=config,
                     extra={"particles": str(Path(particles).absolute())})
    m = analysis.metrics
    parts = [f"{len(stack)} particles"]
    if "angle_rmse_weighted_deg" in m:
        parts.append(f"weighted angle rMSE {m['angle_rmse_weighted_deg']:.2f}° (modulo {m['angle_period_deg']:g}°)")
    elif "angle_rmse_deg" in m:
        parts.append(f"angle rMSE {m['angle_rmse_deg']:.2f}°")
    if "defocus_rmse_um" in m:
        parts.append(f"defocus rMSE {m['defocus_rmse_um']:.3f} µm")
    if "outlier_auc" in m:
        parts.append("outlier AUC " + ", ".join(f"{k} {v:.3f}" for k, v in m["outlier_auc"].items()))
    print("; ".join(parts) + f"; wrote {star_path}")
    return 0


def run(args) -> int:
    """Run ``cryopose latent train`` or ``cryopose latent analyze``."""
    if args.latent_command == "train":
        return _run_train(args)
    return _run_analyze(args)
