"""Heterogeneity: embed the particles, then find the classes (their number too), subsets and maps.

  cryopose heterogeneity train PARTICLES -o OUTDIR [--variant auto|pose-aware|invariant]
  cryopose heterogeneity analyze OUTDIR [--min-class-fraction 0.05]

train writes in OUTDIR: latents.npy (float32 (N, zdim), the input's particle order),
heterogeneity.json (variant, zdim, particles, n_particles, ...), config.yaml, model.pt and
checkpoint.pt (every iteration and on Ctrl-C; continue with --resume). The pose-aware variant
(particles with poses) finds the principal maps of the data set (a consensus map plus a
subspace of maps, as cryoSPARC's 3D variability analysis) and gives each particle the
coordinates of its map in that subspace; the invariant variant (the thesis's VAE-GAN, for
particles without poses) runs when this build has it. --variant auto picks pose-aware when the
STAR has poses.

analyze embeds the latents with UMAP and clusters them with HDBSCAN (the minimum class size a
fraction of the particles), and writes in OUTDIR/analysis: class_00K.star (the original RELION
rows with rlnClassNumber), noise.star (HDBSCAN's noise set: junk candidates),
particles_classes.star, consensus.mrc and class_00K.mrc with half maps (particles with poses),
summary.json (class sizes, FSC; NMI/ARI/AMI when the STAR holds the simulator's
rlnCryoposeTrueClass, |Spearman| of the first principal component with rlnCryoposeTrueMorph)
and report.html.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError

COMMAND = "heterogeneity"
HELP = "heterogeneity: embed particles (pose-aware or invariant), then classes by UMAP + HDBSCAN, subsets and maps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``heterogeneity train`` and ``heterogeneity analyze`` sub-commands."""
    from .common import add_datadir_argument, add_runtime_arguments

    sub = parser.add_subparsers(dest="action", metavar="<action>")
    train = sub.add_parser("train", help="embed the particles: latents.npy, heterogeneity.json, model.pt")
    train.add_argument("particles", metavar="PARTICLES", help="particles: .star (with poses for pose-aware) or .cs")
    train.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    train.add_argument("--variant", default="auto", choices=("auto", "pose-aware", "invariant"),
                       help="pose-aware (needs poses), invariant (VAE-GAN, no poses), auto: pose-aware when the "
                            "particles have poses (default)")
    train.add_argument("--zdim", type=int, default=None, help="latent dimension (pose-aware default 4)")
    train.add_argument("--epochs", type=int, default=None, help="iterations / epochs (pose-aware default 15)")
    train.add_argument("--box-size", type=int, default=None, help="working box in pixels (default: up to 64)")
    train.add_argument("--batch-size", type=int, default=None, help="particles per batch")
    train.add_argument("--max-resolution", type=float, default=None, metavar="A",
                       help="pose-aware: highest resolution compared, Å (default the working Nyquist)")
    train.add_argument("--no-whiten", action="store_true", help="pose-aware: do not whiten with the noise spectrum")
    add_datadir_argument(train)
    train.add_argument("--resume", action="store_true", help="continue the run in OUTDIR (same options)")
    train.add_argument("--force", action="store_true", help="start again in an OUTDIR that holds a run")
    add_runtime_arguments(train, threads_help="torch CPU threads (default: the idle cores); the heterogeneity "
                                              "trainers run on the CPU")

    an = sub.add_parser("analyze", help="UMAP + HDBSCAN classes, RELION subsets, class maps, report")
    an.add_argument("outdir", metavar="OUTDIR", help="a `heterogeneity train` output folder")
    an.add_argument("--min-class-fraction", type=float, default=0.05, metavar="F",
                    help="smallest class as a fraction of the particles (HDBSCAN min_cluster_size; default 0.05)")
    an.add_argument("--particles", metavar="STAR", help="the particles (default: those the run was trained on); "
                                                       "e.g. the same particles aligned by `cryopose search`")
    an.add_argument("--true-map", action="append", metavar="MRC", dest="true_maps",
                    help="map of a true class (repeat, in the order of rlnCryoposeTrueClass): FSC of each class map "
                         "against it")
    an.add_argument("--true-map-pixel-size", type=float, metavar="A",
                    help="voxel size of the --true-map files in Å, overriding their headers")
    an.add_argument("-o", "--output", metavar="DIR", help="analysis folder (default OUTDIR/analysis)")
    an.add_argument("--no-reconstruct", action="store_true", help="no maps")
    an.add_argument("--no-report", action="store_true", help="no report.html")
    add_runtime_arguments(an, seed="seed of UMAP and the half sets (default 0)", progress=False)
    add_datadir_argument(an)
    an.add_argument("--force", action="store_true", help="replace an earlier analysis")


def _train(args) -> int:
    from ..pipelines.heterogeneity import train_heterogeneity
    from ..training.heterogeneity import PoseAwareConfig
    from .common import runtime_from_args, write_run_config

    runtime_from_args(args, command="heterogeneity train", gpu=False, training=True).apply()
    opts = {"zdim": args.zdim, "epochs": args.epochs, "box_size": args.box_size, "batch_size": args.batch_size,
            "seed": args.seed, "num_threads": args.threads}
    given = {k: v for k, v in opts.items() if v is not None}
    pose_kw = dict(given, whiten=not args.no_whiten)
    if args.max_resolution is not None:
        pose_kw["max_resolution_angstrom"] = args.max_resolution
    config = PoseAwareConfig(**pose_kw) if args.variant != "invariant" else None
    out = Path(args.output)

    def write_config(cfg) -> None:
        write_run_config(out / "config.yaml", command_line=getattr(args, "command_line", ""), config=cfg,
                         extra={"particles": str(args.particles), "variant": args.variant, "resume": bool(args.resume)})

    variant = train_heterogeneity(args.particles, out, variant=args.variant, config=config, invariant_options=given,
                                  force=args.force, resume=args.resume, progress=not args.no_progress,
                                  datadir=args.datadir, on_start=write_config)
    print(f"cryopose heterogeneity train: {variant} embedding written to {out / 'latents.npy'}; next: "
          f"cryopose heterogeneity analyze {out}")
    return 0


def _analyze(args) -> int:
    from ..pipelines.heterogeneity_analysis import analyze_heterogeneity
    from .common import runtime_from_args

    runtime_from_args(args, command="heterogeneity analyze", gpu=False).apply()
    res = analyze_heterogeneity(args.outdir, min_class_fraction=args.min_class_fraction, particles=args.particles,
                                datadir=args.datadir, true_maps=args.true_maps,
                                true_map_pixel_size_angstrom=args.true_map_pixel_size,
                                seed=args.seed,
                                reconstruct=not args.no_reconstruct, report=not args.no_report, force=args.force,
                                analysis_dir=args.output)
    s = res.summary
    for w in s["warnings"]:
        print(f"cryopose heterogeneity analyze: warning: {w}", file=sys.stderr)
    sizes = ", ".join(str(v) for v in s["class_sizes"]) or "none"
    line = f"{s['n_classes']} class(es) of {sizes} particles, {s['n_noise']} in the noise set"
    if "scores" in s:
        sc = s["scores"]["all"]
        line += f"; NMI {sc['nmi']:.3f}, ARI {sc['ari']:.3f}, AMI {sc['ami']:.3f} against rlnCryoposeTrueClass"
    if "morph_pc1_abs_spearman" in s:
        line += f"; |Spearman| of PC1 with the morph parameter {s['morph_pc1_abs_spearman']:.3f}"
    print(f"cryopose heterogeneity analyze: {line}; wrote {res.folder}")
    return 0


def run(args) -> int:
    """Run ``cryopose heterogeneity train|analyze``."""
    if getattr(args, "action", None) == "train":
        return _train(args)
    if getattr(args, "action", None) == "analyze":
        return _analyze(args)
    raise UserError("give an action: cryopose heterogeneity train PARTICLES -o OUTDIR, or "
                    "cryopose heterogeneity analyze OUTDIR")
