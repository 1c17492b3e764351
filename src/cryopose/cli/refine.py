"""Reference-based poses for a whole data set: search a labelled subset, train the supervised
regressor (Lian et al. 2022) on it, infer the rest, reconstruct the map and report.

Writes OUTDIR/particles.star (final poses; rlnCryoposePoseSource 0 = search, 1 = network,
2 = network + local search: how each pose was first found; with --polish-rounds > 0, the
default, every pose is then refined against the data's own map), OUTDIR/map.mrc, half1.mrc,
half2.mrc (at the particles' box after polishing, else on the working grid; and
map_network_only.mrc on the working grid with --local-refine), OUTDIR/model.pt
(model_kind "supervised"; records the network's input pixel size and --invert-contrast for
`cryopose predict`), OUTDIR/report.json (timings, per-particle speed of search vs
inference, FSC resolutions, known-pose resolution and pose errors when the input STAR has
poses), OUTDIR/fsc.png and OUTDIR/config.yaml.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .train_supervised import add_model_arguments, model_configs

COMMAND = "refine"
HELP = "search a labelled subset, train the supervised regressor, infer the rest, reconstruct"

_SOURCE_CODES = {"search": 0, "network": 1, "network+local": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``refine`` options to ``parser``."""
    from .common import (add_contrast_arguments, add_datadir_argument, add_runtime_arguments,
                         add_shift_estimation_arguments)

    parser.add_argument("particles", metavar="PARTICLES", help="particles: .star, .cs or .mrcs")
    parser.add_argument("--reference", "-r", required=True, metavar="MAP", help="reference map (.mrc) or atomic model (.pdb/.cif, made into density on the particle grid)")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    parser.add_argument("--labeled-fraction", type=float, default=0.2,
                        help="fraction of particles labelled by search (default 0.2)")
    parser.add_argument("--pixel-size", type=float, metavar="A", help="particle pixel size in Å")
    add_datadir_argument(parser)
    from .common import add_force_argument

    add_force_argument(parser, also="use a reference map whose voxel size differs from the particles' pixel "
                               "size by more than 1 %% (and is no binned copy of their box), with a warning")
    parser.add_argument("--map-pixel-size", type=float, metavar="A", help="the reference's voxel size in Å")
    parser.add_argument("--symmetry", default="C1", help="point group of the reference (default C1)")
    parser.add_argument("--box-size", type=int, metavar="PX",
                        help="working box of search, network and local refinement (Fourier-cropped; default: "
                             "pixels of about 10 Å, 32-48 px, as abinitio's training box)")
    parser.add_argument("--polish-rounds", type=int, default=2, metavar="N",
                        help="rounds of local refinement of every pose against the data's own map, growing "
                             "the box up to the particles' (default 2; 0 = the map on the working grid only)")
    parser.add_argument("--no-rescue", dest="rescue", action="store_false",
                        help="do not search globally, after each polishing round, the particles whose score "
                             "falls in the low mode of the round's scores (poses far off)")
    parser.add_argument("--network-box", type=int, metavar="PX",
                        help="box of the network's input (Fourier-cropped, same field of view; default --box-size)")
    add_contrast_arguments(parser)
    add_shift_estimation_arguments(parser, "centring, ±2 px in the search, local refinement")
    add_runtime_arguments(parser, seed=None, progress=False, threads_help="torch CPU threads")
    from ..models.quantize import INT8_CALIBRATION_PARTICLES
    from ..pipelines.refine import DEFAULT_LOCAL_REFINE_STEP_DEG as local_step

    s = parser.add_argument_group("search of the labelled subset")
    s.add_argument("--step", type=float, default=15.0, metavar="DEG", help="global grid step (default 15)")
    s.add_argument("--final-step", type=float, default=1.875, metavar="DEG", help="finest local step (default 1.875)")
    s.add_argument("--shift-range", type=float, default=0.0, metavar="A", help="largest |shift| searched, Å")
    s.add_argument("--max-resolution", type=float, metavar="A", help="search band limit, Å")
    local = s.add_mutually_exclusive_group()
    local.add_argument("--local-refine", action="store_true", default=True,
                       help="polish the network's predictions by a local search from --local-step (the default)")
    local.add_argument("--no-local-refine", dest="local_refine", action="store_false",
                       help="keep the network's predictions as they are")
    s.add_argument("--local-step", type=float, default=local_step, metavar="DEG",
                   help=f"first step of that local search (default {local_step:g})")
    parser.add_argument("--test-time-turns", action="store_true",
                        help="infer each unlabelled particle as the mean of the network's predictions for its four "
                             "quarter turns, modulo --symmetry (4× the inference time)")
    parser.add_argument("--int8", action="store_true",
                        help="infer the unlabelled particles with the network in 8-bit integers, calibrated on "
                             f"{INT8_CALIBRATION_PARTICLES} labelled particles (several times faster on a CPU)")
    add_model_arguments(parser)


def run(args) -> int:
    """Run ``cryopose refine``; returns the exit status (0).

    The model.pt records ``pixel_size_angstrom`` of the network's input grid (``--network-box``
    px over the working grid's field of view) and ``extra["invert_contrast"]``, so that
    ``cryopose predict`` checks the particles' box in Å and negates them as training did.

    Raises:
        UserError: Bad options (``--threads`` < 1, a network box larger than the working box,
            too few particles to label), or unreadable inputs.
    """
    from ..pipelines.refine import refine
    from .common import prepare_output_dir, runtime_from_args

    runtime_from_args(args, command="refine", gpu=False, training=True).apply()
    out = prepare_output_dir(args.output, names=("particles.star", "map.mrc", "model.pt", "report.json"),
                             force=args.force)
    stack, meta, ref, box = _load_inputs(args)
    config, tcfg = _refine_config(args, box)
    res = refine(stack, meta, ref, config=config, progress=lambda msg: print(f"  {msg}", file=sys.stderr))
    _write_outputs(args, out, res, config, tcfg)
    r = res.report
    known = r.get("known_pose_resolution_fsc0p143_angstrom")
    ktext = f" (known poses: {known:.2f} Å)" if known is not None else ""
    sp = r["per_particle_seconds"]
    print(f"cryopose refine: {r['n_labeled']} searched + {r['n_unlabeled']} inferred particles; resolution "
          f"{r['resolution_fsc0p143_angstrom']:.2f} Å at FSC 0.143{ktext}; search {1000 * sp['search']:.2f} ms/particle, "
          f"inference {1000 * sp['inference']:.3f} ms/particle; wrote {out}", file=sys.stdout)
    return 0


def _load_inputs(args):
    """Read the particles and the reference, check the reference's scale and choose the working box.

    Returns:
        ``(stack, metadata, reference MapData, working box in px)``.

    Raises:
        UserError: Unreadable inputs, a reference whose scale does not fit the particles.
    """
    from ..io.particles import load_particles
    from ..pipelines.refine import refine_working_grid
    from ..search.run import load_reference
    from .common import check_reference_scale, particle_options

    stack, meta = load_particles(args.particles, pixel_size_angstrom=args.pixel_size, **particle_options(args))
    if meta.ctf is None:
        print(f"cryopose refine: warning: {args.particles} has no CTF parameters; working without CTF",
              file=sys.stderr)
    ref = load_reference(args.reference, map_pixel_size_angstrom=args.map_pixel_size,
                         particle_box=int(meta.box_size or stack.box_size), particle_pixel_angstrom=meta.pixel_size_angstrom)
    check_reference_scale("refine", args.reference, ref, int(meta.box_size or stack.box_size),
                          meta.pixel_size_angstrom, force=args.force)
    box, _ = refine_working_grid(int(meta.box_size or stack.box_size), meta.pixel_size_angstrom,
                                 ref.pixel_size_angstrom, args.box_size)
    return stack, meta, ref, box


def _refine_config(args, box: int):
    """The :class:`~cryopose.pipelines.refine.RefineConfig` of the command's options (network
    box ``--network-box``, else the working ``box``), and its training config."""
    from ..pipelines.refine import RefineConfig
    from ..search.projection_matching import SearchConfig
    from .common import tri_state

    mcfg, tcfg = model_configs(args, args.network_box or box, args.symmetry)
    scfg = SearchConfig(step_deg=args.step, final_step_deg=args.final_step, symmetry=args.symmetry,
                        shift_range_angstrom=args.shift_range, max_resolution_angstrom=args.max_resolution)
    config = RefineConfig(labeled_fraction=args.labeled_fraction, search=scfg, model=mcfg, train=tcfg,
                          cv_w=args.cv_w, cv_iterations=args.cv_iterations, cv_max_particles=args.cv_max_particles,
                          test_time_turns=args.test_time_turns, int8_inference=args.int8,
                          local_refine=args.local_refine, local_refine_step_deg=args.local_step,
                          polish_rounds=args.polish_rounds, polish_rescue=args.rescue,
                          box_size=args.box_size, network_box_size=args.network_box,
                          invert_contrast=tri_state(args, "invert_contrast"),
                          estimate_shifts=tri_state(args, "estimate_shifts"),
                          seed=args.seed)
    return config, tcfg


def _write_outputs(args, out, res, config, tcfg) -> None:
    """Write ``particles.star`` (with ``rlnCryoposePoseSource``), the maps and ``fsc.png``,
    ``model.pt``, ``report.json`` and ``config.yaml`` into ``out``."""
    from ..io.atomic import atomic_write_json
    from ..io.mrc import write_map
    from ..io.star import write_star
    from ..metrics.fsc import plot_fsc
    from ..training.supervised import save_checkpoint
    from .common import write_run_config

    codes = np.array([_SOURCE_CODES[s] for s in res.pose_source], dtype=np.int64)
    write_star(out / "particles.star", res.metadata, extra_columns={"rlnCryoposePoseSource": codes})
    rec = res.reconstruction
    px = rec.pixel_size_angstrom  # the working grid
    write_map(out / "map.mrc", rec.volume, px)
    if res.network_only_reconstruction is not None:
        write_map(out / "map_network_only.mrc", res.network_only_reconstruction.volume, px)
    if rec.half_maps is not None:
        write_map(out / "half1.mrc", rec.half_maps[0], px)
        write_map(out / "half2.mrc", rec.half_maps[1], px)
        curves = {"refine (half maps)": (rec.fsc_frequency_per_angstrom, rec.fsc)}
        if res.known_pose_reconstruction is not None and res.known_pose_reconstruction.fsc is not None:
            k = res.known_pose_reconstruction
            curves["known poses (half maps)"] = (k.fsc_frequency_per_angstrom, k.fsc)
        try:
            plot_fsc(curves, out / "fsc.png", title="cryopose refine")
        except Exception as err:  # a figure must never lose the run's results
            print(f"  (no fsc.png: {err})", file=sys.stderr)
    w = res.cv.best_w if res.cv is not None else tcfg.w
    # the checkpoint records the grid the network reads (--network-box px, Fourier-cropped from the
    # working grid, same field of view), so that `cryopose predict` checks the right box in Å
    save_checkpoint(out / "model.pt", res.model, train_config=tcfg,
                    pixel_size_angstrom=float(res.report["network_pixel_angstrom"]), symmetry=args.symmetry,
                    extra={"w": w, "test_metrics": res.train.test_metrics},
                    invert_contrast=bool(res.report["contrast_inverted"]))

    atomic_write_json(out / "report.json", res.report)
    for warning in res.report.get("warnings", []):
        print(f"cryopose refine: warning: {warning}", file=sys.stderr)
    write_run_config(out / "config.yaml", command_line=getattr(args, "command_line", ""), config=config,
                     extra={"particles": args.particles, "reference": args.reference})
