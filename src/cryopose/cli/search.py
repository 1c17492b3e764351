"""Find particle poses by exhaustive projection matching against a reference map.

Global search over a Hopf/HEALPix SO(3) grid (nominal step --step: 30, 15, 7.5, 3.75 degrees;
viewing directions restricted to the asymmetric unit of --symmetry) times a lattice of shifts,
CTF-aware normalised cross-correlation, then local refinement halving the step down to
--final-step. Writes POSES.star (RELION 3.1: poses, origins in Å, CTF, the score in
rlnCryoposeSearchScore), POSES_search.json (grid, timings, score summary) and
POSES_config.yaml (version, command line, options).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from ..errors import UserError

COMMAND = "search"
HELP = "find poses by exhaustive, CTF- and symmetry-aware projection matching against a reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``search`` options to ``parser``."""
    from .common import add_contrast_arguments, add_datadir_argument, add_force_argument, add_runtime_arguments

    parser.add_argument("particles", metavar="PARTICLES", help="particles: .star, .cs or .mrcs")
    parser.add_argument("--reference", "-r", required=True, metavar="MAP", help="reference map (.mrc) or atomic model (.pdb/.cif, made into density on the particle grid)")
    parser.add_argument("-o", "--output", required=True, metavar="POSES.star", help="output STAR file")
    parser.add_argument("--pixel-size", type=float, metavar="A", help="particle pixel size in Å (overrides/checks the file)")
    add_datadir_argument(parser)
    parser.add_argument("--map-pixel-size", type=float, metavar="A",
                        help="the reference's voxel size in Å, overriding its header (headers are often wrong)")
    parser.add_argument("--symmetry", default="C1", help="point group of the reference (C1, Cn, Dn, T, O, I; default C1)")
    parser.add_argument("--step", type=float, default=15.0, metavar="DEG",
                        help="nominal step of the global SO(3) grid, degrees (HEALPix: 30, 15, 7.5…; default 15)")
    parser.add_argument("--final-step", type=float, default=1.875, metavar="DEG",
                        help="local refinement halves the step down to this, degrees (default 1.875)")
    parser.add_argument("--candidates", type=int, default=4, help="global candidates refined per particle (default 4)")
    parser.add_argument("--shift-range", type=float, default=0.0, metavar="A",
                        help="largest |shift| searched, Å (default 0: no shift search)")
    parser.add_argument("--shift-step", type=float, metavar="A", help="global shift step, Å (default one pixel)")
    parser.add_argument("--max-resolution", type=float, metavar="A", help="ignore frequencies finer than this, Å")
    parser.add_argument("--mask-diameter", type=float, metavar="A", help="soft circular particle mask diameter, Å")
    parser.add_argument("--box-size", type=int, metavar="PX", help="Fourier-crop the particles to this box first")
    add_contrast_arguments(parser)
    parser.add_argument("--no-ctf", action="store_true", help="ignore the particles' CTF")
    add_force_argument(parser, also="use a reference map whose voxel size differs from the particles' pixel "
                               "size by more than 1 %% (and is no binned copy of their box), with a warning")
    parser.add_argument("--chunk-size", type=int, default=128, help="particles scored at once (default 128)")
    add_runtime_arguments(parser, seed=None, progress=False, threads_help="torch CPU threads")


def run(args) -> int:
    """Run ``cryopose search``."""
    from ..io.particles import load_particles
    from ..search.run import load_reference
    from ..io.star import write_star
    from ..search.projection_matching import SearchConfig
    from ..search.run import GLOBAL_SCORE_COLUMN, SCORE_COLUMN, search_particles
    from .common import prepare_output_dir, runtime_from_args, tri_state, write_run_config

    runtime_from_args(args, command="search", gpu=False).apply()
    out = Path(args.output)
    if out.suffix.lower() != ".star":
        raise UserError(f"-o must name a .star file, got {out}")
    config = SearchConfig(step_deg=args.step, final_step_deg=args.final_step, n_candidates=args.candidates,
                          symmetry=args.symmetry, shift_range_angstrom=args.shift_range,
                          shift_step_angstrom=args.shift_step, max_resolution_angstrom=args.max_resolution,
                          mask_diameter_angstrom=args.mask_diameter, particle_chunk=args.chunk_size)
    from .common import refuse_overwrite

    stem = out.with_suffix("")
    outputs = [out, stem.with_name(stem.name + "_search.json"), stem.with_name(stem.name + "_config.yaml")]
    refuse_overwrite(outputs, force=args.force)
    from .common import particle_options

    stack, meta = load_particles(args.particles, pixel_size_angstrom=args.pixel_size, **particle_options(args))
    if meta.ctf is None and not args.no_ctf:
        print(f"cryopose search: warning: {args.particles} has no CTF parameters; working without CTF",
              file=sys.stderr)
    ref = load_reference(args.reference, map_pixel_size_angstrom=args.map_pixel_size,
                         particle_box=int(meta.box_size or stack.box_size), particle_pixel_angstrom=meta.pixel_size_angstrom)
    from .common import check_reference_scale

    check_reference_scale("search", args.reference, ref, int(meta.box_size or stack.box_size),
                          meta.pixel_size_angstrom, force=args.force)
    prepare_output_dir(out.parent if str(out.parent) else ".")
    meta_out, result, info = search_particles(stack, meta, ref, config=config, box_size=args.box_size,
                                              invert_contrast=tri_state(args, "invert_contrast"),
                                              use_ctf=not args.no_ctf)
    info.update({"particles": str(args.particles), "reference": str(args.reference), "output": str(out)})
    from ..io.outputs import all_or_nothing, atomic_write_json

    with all_or_nothing(outputs):
        write_star(out, meta_out, extra_columns={SCORE_COLUMN: result.scores.numpy(),
                                                 GLOBAL_SCORE_COLUMN: result.global_scores.numpy()})
        atomic_write_json(outputs[1], info)
        write_run_config(outputs[2], command_line=getattr(args, "command_line", ""),
                         config=config, extra={"particles": str(args.particles), "reference": str(args.reference),
                                               "box_size": args.box_size, "invert_contrast": info["invert_contrast"]})
    s = result.seconds
    print(f"cryopose search: {len(meta)} particles on a {info['working_box']} px grid at "
          f"{info['working_pixel_angstrom']:.4g} Å, {info['grid']['global_rotations']} global rotations "
          f"× {info['grid']['global_shifts']} shifts, steps {', '.join(f'{v:g}' for v in info['grid']['steps_deg'])}°; "
          f"median score {info['score']['median']:.4f}; {s['total']:.1f} s ({1000 * s['per_particle']:.1f} ms/particle); "
          f"wrote {out}", file=sys.stdout)
    if "warning" in info:  # e.g. a map header with a wrong pixel size: say it where the user looks
        print(f"cryopose search: warning: {info['warning']} (check --map-pixel-size)", file=sys.stderr)
    if info.get("contrast_detected") and 0.3 < float(info["contrast_fraction_bright"]) < 0.7:
        print("cryopose search: warning: the contrast detection is undecided "
              f"({100 * float(info['contrast_fraction_bright']):.0f}% of the particles look bright); "
              "say it with --invert-contrast or --no-invert-contrast", file=sys.stderr)
    return 0
