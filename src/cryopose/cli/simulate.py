"""Simulate a particle data set with known poses, shifts and CTF (and optional junk).

Writes OUT.mrcs (the images), OUT.star (RELION 3.1, ground-truth poses, origins in Å, CTF,
junk labels) and OUT_config.yaml (version, command line, configuration, noise σ).

Images follow relion_project --ctf --add_noise --white_noise σ: Fourier-slice projection,
origin shift, CTF, white Gaussian noise. SNR = mean over the true particles of the variance
of the noise-free (CTF-modulated) image over the whole box, divided by the variance σ² of
the white noise; one σ for the data set (σ is calibrated on the first chunk of images and
reported; pass it to relion_project --white_noise to get the same noise level).

Heterogeneous data sets: several maps (INPUT and/or repeated --map/--volume, one frame: same box
and pixel size) with --class-fractions 0.5,0.3,0.2 give a discrete mixture, the true class in
rlnCryoposeTrueClass (1-based; rlnClassNumber stays free); --morph A.mrc B.mrc draws t ~ U(0, 1)
per particle from the map (1 − t)·A + t·B, recorded in rlnCryoposeTrueMorph.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from ..errors import UserError

COMMAND = "simulate"
HELP = "simulate particle images with ground-truth poses, shifts, CTF, noise and junk"

_DEFAULT_DEFOCUS = (10000.0, 25000.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    io = parser.add_argument_group("input and output")
    io.add_argument("input", nargs="?", metavar="INPUT",
                    help="structure: MRC map (.mrc/.map) or atomic model (.pdb/.cif), e.g. "
                         "shared/data/maps/relion_tutorial_betagal_100px_3.54A.mrc or shared/data/pdb/4ake_mdanalysis.pdb")
    io.add_argument("--volume", "--map", "-i", metavar="FILE", action="append", default=None,
                    help="the same as INPUT (for scripts); repeat it for a mixture of several maps")
    io.add_argument("--class-fractions", metavar="F1,F2,...",
                    help="discrete mixture: the fraction of particles from each structure, in the order given "
                         "(default: equal fractions when several structures are given)")
    io.add_argument("--morph", nargs=2, metavar=("A", "B"),
                    help="continuous morph: each particle from (1 - t)·A + t·B with t ~ U(0, 1) "
                         "(rlnCryoposeTrueMorph)")
    io.add_argument("-o", "--output", required=True, metavar="OUT.star",
                    help="output STAR (or stem): writes OUT.mrcs, OUT.star and OUT_config.yaml")
    io.add_argument("-n", "--n-particles", type=int, default=1000, help="number of particles (default 1000)")
    io.add_argument("--box-size", type=int, help="image/volume box in pixels (map: keeps its field of view "
                                                 "if --pixel-size is not given; model: chosen to fit)")
    io.add_argument("--pixel-size", type=float, metavar="A", help="image pixel size in Å (map: resampled)")
    io.add_argument("--map-pixel-size", type=float, metavar="A",
                    help="the input map's voxel size in Å, overriding its header (needed when the header says 0)")
    io.add_argument("--model-blur", type=float, metavar="A2",
                    help="B-factor (Å²) added to every atom of a model (default 16·pixel², molmap at 2·pixel)")
    io.add_argument("--chains", metavar="A,B", type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
                    help="keep only these chains of an atomic model (e.g. A: one copy of a homodimer)")
    io.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same data set")
    io.add_argument("--chunk-size", type=int, default=1000, help="images made and written at a time (default 1000)")
    io.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")

    pose = parser.add_argument_group("poses and shifts")
    pose.add_argument("--in-plane-only", action="store_true",
                      help="one viewing direction (--view-rot-tilt), in-plane angle psi uniform")
    pose.add_argument("--view-rot-tilt", type=float, nargs=2, metavar=("ROT", "TILT"),
                      help="RELION rot and tilt (degrees) of the view for --in-plane-only (default 0 0)")
    pose.add_argument("--shift-max-angstrom", type=float, default=0.0, metavar="A",
                      help="shifts uniform in a disc of this radius in Å (default 0)")

    ctf = parser.add_argument_group("CTF (RELION conventions; defocus positive = underfocus)")
    ctf.add_argument("--no-ctf", action="store_true", help="no CTF")
    ctf.add_argument("--defocus-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                     help="mean defocus uniform in [MIN, MAX] Å (default 10000 25000)")
    ctf.add_argument("--defocus-values", type=float, nargs="+", metavar="UM",
                     help="defocus values in µm (e.g. 0.5 1.0 1.5 2.0 2.5 3.0), particles split evenly")
    ctf.add_argument("--ctf-table", metavar="FILE",
                     help="CTF table to draw rows from (with the seed): .npy cryoDRGN array [box, Å/px, dfU, dfV, "
                          "dfAng, kV, Cs, w, phase], .csv with those 9 columns, or a RELION .star; "
                          "pickles (.pkl) are refused")
    ctf.add_argument("--astigmatism-angstrom", type=float, metavar="A",
                     help="defocus U − V in Å, random angle (default 0)")
    ctf.add_argument("--voltage-kv", type=float, help="voltage in kV (default 300)")
    ctf.add_argument("--cs-mm", type=float, help="spherical aberration in mm (default 2.7)")
    ctf.add_argument("--amplitude-contrast", type=float, help="amplitude contrast ratio (default 0.1)")
    ctf.add_argument("--phase-shift-deg", type=float, help="phase-plate shift in degrees (default 0)")
    ctf.add_argument("--ctf-bfactor", type=float, metavar="A2", help="CTF B-factor envelope in Å² (default 0)")

    noise = parser.add_argument_group(
        "noise", "SNR = (variance of the noise-free, CTF-modulated image over the whole box, averaged over "
                 "the true particles) / (variance of the white Gaussian noise); one noise σ for the data set, "
                 "as relion_project --add_noise --white_noise σ. Default: no noise.")
    noise.add_argument("--snr", type=float, help="linear SNR (e.g. 0.1)")
    noise.add_argument("--snr-db", type=float, help="SNR in dB, 10·log10(SNR) (e.g. -10)")
    noise.add_argument("--invert-contrast", action="store_true",
                       help="multiply the final images by -1 (dark particles); recorded in the STAR")

    junk = parser.add_argument_group("junk (outliers), labelled rlnCryoposeIsOutlier / rlnCryoposeJunkType")
    junk.add_argument("--junk-fraction", type=float, default=0.0, metavar="F", help="fraction of junk in [0, 1)")
    junk.add_argument("--junk-types", metavar="LIST",
                      help="comma-separated from noise,blob,other,offcentre (default: all, 'other' only with "
                           "--junk-structure)")
    junk.add_argument("--junk-structure", metavar="FILE", help="map or model projected as 'other' junk")
    io.add_argument("--force", action="store_true",
                    help="replace existing output files (default: refuse; other STAR files may point at the stack)")


def _config(args, *, snr):
    from ..simulate import SimulationConfig, parse_junk_types

    ctf_opts = {"--defocus-range": args.defocus_range, "--defocus-values": args.defocus_values,
                "--ctf-table": args.ctf_table, "--astigmatism-angstrom": args.astigmatism_angstrom,
                "--voltage-kv": args.voltage_kv, "--cs-mm": args.cs_mm,
                "--amplitude-contrast": args.amplitude_contrast, "--phase-shift-deg": args.phase_shift_deg,
                "--ctf-bfactor": args.ctf_bfactor}
    given = [k for k, v in ctf_opts.items() if v is not None]
    if args.no_ctf and given:
        raise UserError(f"--no-ctf cannot be combined with {', '.join(given)}")
    sources = [k for k in ("--defocus-range", "--defocus-values", "--ctf-table") if ctf_opts[k] is not None]
    if len(sources) > 1:
        raise UserError(f"give only one of --defocus-range, --defocus-values, --ctf-table (got {', '.join(sources)})")
    if args.ctf_table is not None:
        table_given = [k for k in ("--voltage-kv", "--cs-mm", "--amplitude-contrast", "--phase-shift-deg",
                                   "--astigmatism-angstrom") if ctf_opts[k] is not None]
        if table_given:
            raise UserError(f"--ctf-table gives the CTF per particle; drop {', '.join(table_given)}")
    if args.view_rot_tilt is not None and not args.in_plane_only:
        raise UserError("--view-rot-tilt needs --in-plane-only")
    if args.junk_types is not None:
        types = parse_junk_types(args.junk_types)
        if "other" in types and args.junk_structure is None:
            raise UserError("junk type 'other' needs --junk-structure FILE")
    else:
        types = ("noise", "blob", "other", "offcentre") if args.junk_structure else ("noise", "blob", "offcentre")
    kw = {}
    if args.defocus_range is not None:
        kw["defocus_range_angstrom"] = tuple(args.defocus_range)
    if args.defocus_values is not None:
        kw["defocus_values_angstrom"] = tuple(v * 1e4 for v in args.defocus_values)
    for name, attr in (("astigmatism_angstrom", "astigmatism_angstrom"), ("voltage_kv", "voltage_kv"),
                       ("spherical_aberration_mm", "cs_mm"), ("amplitude_contrast", "amplitude_contrast"),
                       ("phase_shift_deg", "phase_shift_deg"), ("ctf_bfactor_angstrom2", "ctf_bfactor")):
        if getattr(args, attr) is not None:
            kw[name] = getattr(args, attr)
    return SimulationConfig(
        in_plane_only=args.in_plane_only, view_rot_tilt_deg=tuple(args.view_rot_tilt or (0.0, 0.0)),
        shift_max_angstrom=args.shift_max_angstrom, apply_ctf=not args.no_ctf,
        ctf_table_path=args.ctf_table, snr=snr, invert_contrast=args.invert_contrast,
        junk_fraction=args.junk_fraction, junk_types=types, chunk_size=args.chunk_size,
        progress=not args.no_progress and args.n_particles > args.chunk_size,
        class_fractions=_class_fractions(args), morph=args.morph is not None, **kw)


def _structures(args) -> list[str]:
    """The structure files in order: INPUT, then every --volume/--map; or the two --morph maps."""
    given = ([args.input] if args.input is not None else []) + list(args.volume or [])
    if args.morph is not None:
        if given:
            raise UserError("--morph A B names the two structures; drop INPUT / --volume")
        return list(args.morph)
    if not given:
        raise UserError("give the structure: INPUT, --volume (repeat it for a mixture) or --morph A B")
    return given


def _class_fractions(args):
    from ..simulate.mixture import parse_class_fractions

    n = len(_structures(args))
    if args.class_fractions is None:
        return None if n == 1 or args.morph is not None else tuple([1.0 / n] * n)
    if args.morph is not None:
        raise UserError("--class-fractions is for a discrete mixture; --morph draws t ~ U(0, 1)")
    fractions = parse_class_fractions(args.class_fractions)
    if len(fractions) != n:
        raise UserError(f"--class-fractions gives {len(fractions)} fractions for {n} structure(s)")
    return fractions


def run(args) -> int:
    """Run ``cryopose simulate``: load the structure, simulate, write files and config."""
    from ..simulate import load_volume, simulate_particles, snr_from_db
    from ..io.outputs import all_or_nothing, check_free_space
    from .common import configure_torch, prepare_output_dir, refuse_overwrite, write_run_config

    if args.snr is not None and args.snr_db is not None:
        raise UserError("give either --snr or --snr-db, not both")
    if args.n_particles < 1:
        raise UserError(f"--n-particles must be >= 1, got {args.n_particles}")
    if args.box_size is not None and args.box_size < 1:
        raise UserError(f"--box-size must be a positive number of pixels, got {args.box_size}")
    if args.chunk_size < 1:
        raise UserError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    configure_torch(args.threads)
    snr = snr_from_db(args.snr_db) if args.snr_db is not None else args.snr
    config = _config(args, snr=snr)

    paths = _structures(args)
    out = Path(args.output)
    if out.suffix.lower() in (".star", ".mrcs"):
        out = out.with_suffix("")
    outputs = [out.with_suffix(".star"), out.with_suffix(".mrcs"), out.with_name(out.name + "_config.yaml")]
    refuse_overwrite(outputs, force=args.force)  # before any work
    options = dict(box_size=args.box_size, pixel_size_angstrom=args.pixel_size,
                   input_pixel_size_angstrom=args.map_pixel_size, blur_angstrom2=args.model_blur, chains=args.chains)
    if len(paths) == 1:
        vol = load_volume(paths[0], **options)
        volumes = vol.volume
    else:
        from ..simulate.mixture import load_volumes

        loaded = load_volumes(paths, **options)
        vol, volumes = loaded[0], [m.volume for m in loaded]
    box = vol.volume.shape[-1]
    junk_vol = None
    if args.junk_structure is not None and "other" in config.junk_types:
        junk_vol = load_volume(args.junk_structure, box_size=box, pixel_size_angstrom=vol.pixel_size_angstrom,
                               blur_angstrom2=args.model_blur).volume
    # the stack (float32 after a 1024-byte header) and about 400 bytes of STAR per particle
    check_free_space(outputs[1], 1024 + args.n_particles * (4 * box * box + 400))
    prepare_output_dir(out.parent if str(out.parent) else ".")
    with all_or_nothing(outputs):
        result = simulate_particles(volumes, pixel_size_angstrom=vol.pixel_size_angstrom,
                                    n_particles=args.n_particles, config=config, generator=args.seed,
                                    output=out, junk_volume=junk_vol)
        write_run_config(outputs[2], command_line=getattr(args, "command_line", ""), config=config,
                         extra={"volume": paths[0] if len(paths) == 1 else paths, "box_size": box,
                                "pixel_size_angstrom": vol.pixel_size_angstrom, "n_particles": args.n_particles,
                                "seed": args.seed, "result": result})
    snr_text = ("no noise" if result.noise_sigma == 0 else
                f"noise sigma {result.noise_sigma:.6g}, SNR requested {result.snr_requested:.4g}, "
                f"achieved {result.snr_achieved:.4g}")
    print(f"cryopose simulate: {result.n_particles} particles of {box} px at {vol.pixel_size_angstrom:.4g} Å "
          f"({result.n_junk} junk), {snr_text}; wrote {result.star_path} and {result.stack_path} "
          f"in {result.seconds:.1f} s", file=sys.stdout)
    return 0
