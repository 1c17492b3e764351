"""Train the supervised orientation regressor of Lian et al. (Acta Cryst. D 78, 2022) on labelled particles.

A VGG-style CNN (trained from scratch), two further convolutions, max pooling and a fully
connected regressor of a unit quaternion (or rotation vector), trained with
w·ℓ_QD + (1−w)·ℓ_reproj: ℓ_QD = 1 − ⟨q_pred, q_gt⟩², ℓ_reproj the L1 distance between the
reference's CTF-free projections along the predicted and labelled rotations. Adam with ℓ2 1e−4,
learning rate ×1/5 after 80 % of the iterations, 4:1 train/test split; --cv-w chooses w in
0.0…1.0 by five-fold cross-validation on the training split.

Writes OUTDIR/model.pt (model_kind "supervised"; `cryopose predict` reads it, and applies the
recorded --invert-contrast itself),
OUTDIR/train_report.json (test-set errors, CV table, loss curve) and OUTDIR/config.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .common import add_datadir_argument

COMMAND = "train-supervised"
HELP = "train the supervised orientation regressor (Lian et al. 2022) on particles with known poses"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train-supervised`` and ``refine`` (network and training)."""
    from ..models.supervised import REPRESENTATIONS
    from ..training.supervised import AUGMENTATIONS, LR_SCHEDULES

    g = parser.add_argument_group("network and training (Lian et al. 2022)")
    g.add_argument("--representation", choices=REPRESENTATIONS, default="quaternion",
                   help="regressor output: quaternion (default) or axis_angle, the paper's two; s2s2 (6D, "
                        "Gram-Schmidt) or svd (3x3 projected onto SO(3)), continuous, not in the paper")
    g.add_argument("--width", type=int, default=32, help="channels of the first VGG block (default 32)")
    g.add_argument("--blocks", type=int, help="VGG blocks (default log2(box/4): 3 at 32 px, 4 at 64 px)")
    g.add_argument("--iterations", type=int, default=2000, help="training steps (default 2000)")
    g.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    g.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="Adam ℓ2 penalty (default 1e-4)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="step",
                   help="learning-rate decay: ÷5 after 80%% of the steps (the paper's, default) or half a cosine to 0")
    g.add_argument("--w", type=float, default=0.5, help="weight of ℓ_QD, 1-w on ℓ_reproj (default 0.5)")
    g.add_argument("--cv-w", action="store_true", help="choose w in 0.0..1.0 (step 0.1) by five-fold CV")
    g.add_argument("--cv-iterations", type=int, help="steps per CV fold (default --iterations)")
    g.add_argument("--cv-max-particles", type=int, help="cross-validate on at most this many particles")
    g.add_argument("--qd-symmetry-aware", action=argparse.BooleanOptionalAction, default=True,
                   help="take ℓ_QD's minimum over the point group (default; --no-qd-symmetry-aware: the paper's ℓ_QD)")
    g.add_argument("--augment", choices=AUGMENTATIONS, default="quarter",
                   help="turn training images and labels together in the image plane: by multiples of 90° "
                        "(exact, the default), by any angle (bicubic), or not at all (the paper)")
    g.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction (default 0.2, a 4:1 split)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def model_configs(args, box_size: int, symmetry: str):
    """``(SupervisedModelConfig, SupervisedTrainConfig)`` from parsed arguments."""
    from ..models.supervised import SupervisedModelConfig
    from ..training.supervised import SupervisedTrainConfig

    try:
        mcfg = SupervisedModelConfig(box_size=box_size, representation=args.representation, width=args.width,
                                     n_blocks=args.blocks)
        tcfg = SupervisedTrainConfig(iterations=args.iterations, batch_size=args.batch_size, learning_rate=args.lr,
                                     weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, w=args.w,
                                     test_fraction=args.test_fraction,
                                     symmetry=symmetry, qd_symmetry_aware=args.qd_symmetry_aware, seed=args.seed,
                                     augment_inplane=args.augment)
    except ValueError as err:
        raise UserError(str(err)) from None
    return mcfg, tcfg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train-supervised`` options to ``parser``."""
    parser.add_argument("particles", metavar="PARTICLES", help="particle images: .star, .cs or .mrcs")
    parser.add_argument("--poses", required=True, metavar="LABELS.star",
                        help="STAR file with the label poses (matched by rlnImageName, else by order)")
    parser.add_argument("--reference", "-r", required=True, metavar="MAP", help="reference map (.mrc) or atomic model (.pdb/.cif) for ℓ_reproj")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    parser.add_argument("--pixel-size", type=float, metavar="A", help="particle pixel size in Å")
    add_datadir_argument(parser)
    from .common import add_force_argument

    add_force_argument(parser, also="use a reference map whose voxel size differs from the particles' pixel "
                               "size by more than 1 %% (and is no binned copy of their box), with a warning")
    parser.add_argument("--map-pixel-size", type=float, metavar="A", help="the reference's voxel size in Å (header override)")
    parser.add_argument("--symmetry", default="C1", help="point group of the reference (default C1)")
    parser.add_argument("--box-size", type=int, metavar="PX", help="Fourier-crop the particles to this box (e.g. 64)")
    parser.add_argument("--invert-contrast", action="store_true", help="particles are dark: negate them first")
    add_model_arguments(parser)
    from .common import add_runtime_arguments

    add_runtime_arguments(parser, seed=None, progress=False, threads_help="torch CPU threads")


def _names(meta):
    t = meta.table
    return None if t is None or "rlnImageName" not in t.columns else [str(v).strip() for v in t["rlnImageName"]]


def _short(name: str) -> str:
    """``"000012@path/to/stack.mrcs"`` → ``"12@stack.mrcs"``."""
    idx, _, path = name.rpartition("@")
    try:
        idx = str(int(idx))
    except ValueError:
        pass
    return f"{idx}@{Path(path).name}"


def _labels(meta, label_meta, path) -> torch.Tensor:
    """Label rotations in the particles' order: by ``rlnImageName`` (exactly, else by image
    number and stack file name) when both files name images, else row by row."""
    if label_meta.rotmats is None:
        raise UserError(f"{path}: no poses (rlnAngleRot/Tilt/Psi) to train on")
    if len(label_meta) != len(meta):
        raise UserError(f"{path}: {len(label_meta)} label rows for {len(meta)} particles")
    a, b = _names(label_meta), _names(meta)
    if a is None or b is None or a == b:
        return label_meta.rotmats
    for key in (lambda x: x, _short):
        ka, kb = [key(x) for x in a], [key(x) for x in b]
        pos = {name: i for i, name in enumerate(ka)}
        if len(pos) == len(ka) and set(pos) == set(kb):
            return label_meta.rotmats[torch.as_tensor([pos[name] for name in kb])]
    raise UserError(f"{path}: its rlnImageName values do not match the particles' one to one")


def run(args) -> int:
    """Run ``cryopose train-supervised``; returns the exit status (0).

    The model.pt records ``pixel_size_angstrom`` of the network's input grid (the working
    grid) and ``extra["invert_contrast"]``, which ``cryopose predict`` applies by default.

    Raises:
        UserError: Bad options (``--threads`` < 1), labels that do not match the particles,
            or unreadable inputs.
    """
    from ..io.atomic import atomic_write_json
    from ..search.run import load_reference
    from ..io.particles import load_particles
    from ..io.star import read_star
    from ..pipelines.refine import prepare_working_data, train_on_dataset
    from ..training.supervised import save_checkpoint
    from .common import prepare_output_dir, runtime_from_args, write_run_config

    runtime = runtime_from_args(args, command="train-supervised", training=True)
    runtime.apply()
    out = prepare_output_dir(args.output, names=("model.pt", "train_report.json"), force=args.force)
    from .common import particle_options

    stack, meta = load_particles(args.particles, pixel_size_angstrom=args.pixel_size, **particle_options(args))
    label_meta = read_star(args.poses, require_image_names=False,  # the same optics group as the particles
                           optics_groups=None if args.optics_group is None else [args.optics_group])
    labels = _labels(meta, label_meta, args.poses)
    ref = load_reference(args.reference, map_pixel_size_angstrom=args.map_pixel_size,
                         particle_box=int(meta.box_size or stack.box_size), particle_pixel_angstrom=meta.pixel_size_angstrom)
    from .common import check_reference_scale

    check_reference_scale("train-supervised", args.reference, ref, int(meta.box_size or stack.box_size),
                          meta.pixel_size_angstrom, force=args.force)
    wd = prepare_working_data(stack, meta, ref, box_size=args.box_size, invert_contrast=args.invert_contrast)
    mcfg, tcfg = model_configs(args, wd.box_size, args.symmetry)
    res, cv = train_on_dataset(wd.images, labels, wd.reference, model_config=mcfg, train_config=tcfg,
                               cv_w=args.cv_w, cv_iterations=args.cv_iterations,
                               cv_max_particles=args.cv_max_particles,
                               progress=lambda msg: print(f"  {msg}", file=sys.stderr), device=runtime.device)
    w = cv.best_w if cv is not None else tcfg.w
    # the network's input is the working grid itself (mcfg.box_size == wd.box_size)
    save_checkpoint(out / "model.pt", res.model, train_config=tcfg,
                    pixel_size_angstrom=wd.pixel_size_angstrom * wd.box_size / res.model.config.box_size,
                    symmetry=args.symmetry, extra={"w": w, "test_metrics": res.test_metrics},
                    invert_contrast=bool(args.invert_contrast))
    h = res.history
    every = max(1, len(h["loss"]) // 200)
    report = {"w": w, "test_metrics": res.test_metrics, "cv": None if cv is None else cv.as_dict(),
              "n_train": int(res.train_indices.size), "n_test": int(res.test_indices.size),
              "working_box": wd.box_size, "working_pixel_angstrom": wd.pixel_size_angstrom,
              "seconds": res.seconds,
              "loss_curve": {k: [float(v) for v in np.asarray(h[k])[::every]] for k in ("step", "loss", "loss_qd",
                                                                                       "loss_reproj", "lr")}}
    atomic_write_json(Path(out) / "train_report.json", report)
    write_run_config(Path(out) / "config.yaml", command_line=getattr(args, "command_line", ""),
                     config={"model": mcfg, "train": tcfg},
                     extra={"particles": args.particles, "poses": args.poses, "reference": args.reference,
                            "w": w, "box_size": wd.box_size})
    tm = res.test_metrics
    err = (f"test median error {tm['median_error_deg']:.2f}°, mean {tm['mean_error_deg']:.2f}°, "
           f"reprojection RMSE {tm.get('reprojection_rmse', float('nan')):.4f}") if tm else "no test split"
    print(f"cryopose train-supervised: {len(meta)} particles at {wd.box_size} px, w = {w:g}; {err}; "
          f"{res.seconds:.1f} s; wrote {Path(out) / 'model.pt'}", file=sys.stdout)
    return 0
