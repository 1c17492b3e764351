"""Reconstruct a map from particles with known poses (like RELION's relion_reconstruct --ctf).

Writes MAP.mrc (the Wiener-filtered full map), MAP_half1.mrc and MAP_half2.mrc (the half-set
maps) and MAP_fsc.json (half-map FSC curve, FSC = 0.5 and 0.143 resolutions, the version and
command line of the run). Half sets come from rlnRandomSubset when the STAR file has it,
otherwise from a random split seeded by --seed. With --no-half-maps only MAP.mrc is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMAND = "reconstruct"
HELP = "reconstruct a map (and half maps + FSC) from particles with known poses and CTF"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``reconstruct`` options to ``parser``."""
    from .common import add_datadir_argument, add_force_argument, add_runtime_arguments

    parser.add_argument("particles", metavar="PARTICLES", help="particles with poses: .star, .cs or .mrcs")
    parser.add_argument("-o", "--output", required=True, metavar="MAP.mrc",
                        help="output map; also writes MAP_half1.mrc, MAP_half2.mrc and MAP_fsc.json")
    parser.add_argument("--symmetry", default="C1", metavar="SYM",
                        help="point group in RELION's conventions: C1 (default), Cn, Dn, T, O, I, I1-I4")
    parser.add_argument("--pixel-size", type=float, metavar="A",
                        help="pixel size in Å (must agree with the particle file if it gives one)")
    parser.add_argument("--no-half-maps", action="store_true",
                        help="one map from all particles, no half maps and no FSC (Tikhonov-regularised)")
    parser.add_argument("--no-ctf", action="store_true", help="ignore the CTF of the particle file (CTF = 1)")
    parser.add_argument("--pad", type=int, default=2, help="Fourier padding factor (default 2, as RELION)")
    parser.add_argument("--chunk-size", type=int, help="images read at a time (default: 64 MiB of images)")
    add_datadir_argument(parser)
    add_force_argument(parser)
    add_runtime_arguments(parser, seed="seed of the random half-set split (default 0)",
                          threads_help="CPU threads (default: all): the two half sets are inserted in parallel, "
                                       "each worker using threads // 2 torch threads")


def _sibling(path: Path, tag: str, suffix: str | None = None) -> Path:
    return path.with_name(f"{path.stem}_{tag}{suffix if suffix is not None else path.suffix}")


def run(args: argparse.Namespace) -> int:
    """Run ``cryopose reconstruct``; returns the exit status."""
    import dataclasses

    import torch

    from ..errors import UserError
    from ..io.particles import load_particles
    from ..io.outputs import all_or_nothing, check_free_space

    out = Path(args.output)
    if out.suffix.lower() not in (".mrc", ".map"):
        raise UserError(f"-o {out}: the output map must end in .mrc or .map")
    if not out.parent.exists():
        raise UserError(f"-o {out}: folder {out.parent} does not exist")
    from .common import refuse_overwrite

    halves = [_sibling(out, "half1"), _sibling(out, "half2"), _sibling(out, "fsc", ".json")]
    refuse_overwrite([out] if args.no_half_maps else [out, *halves], force=args.force,
                     stale=halves if args.no_half_maps else ())
    from .common import particle_options, runtime_from_args

    runtime = runtime_from_args(args, command="reconstruct")
    threads = runtime.threads or torch.get_num_threads()
    # on the CPU the two half sets are inserted by two workers; on a GPU one stream does both
    workers = 1 if args.no_half_maps or runtime.device.type != "cpu" else min(2, threads)
    dataclasses.replace(runtime, threads=max(1, threads // workers)).apply()
    stack, meta = load_particles(args.particles, pixel_size_angstrom=args.pixel_size, **particle_options(args))
    if meta.ctf is None and not args.no_ctf:
        print(f"cryopose reconstruct: warning: {args.particles} has no CTF parameters; reconstructing without CTF "
              "correction", file=sys.stderr)
    outputs = [out] if args.no_half_maps else [out, *halves]
    check_free_space(out, (len(outputs)) * (1024 + 4 * int(stack.box_size) ** 3))
    with all_or_nothing(outputs):
        return _reconstruct_and_write(args, stack, meta, out, workers, runtime)


def _reconstruct_and_write(args, stack, meta, out: Path, workers: int, runtime) -> int:
    """Reconstruct, write the map (and half maps and FSC), print the summary."""
    from .. import __version__
    from ..io.atomic import atomic_write_json
    from ..io.mrc import write_map
    from ..reconstruction import reconstruct

    result = reconstruct(stack, meta, symmetry=args.symmetry, pad=args.pad, chunk_size=args.chunk_size,
                         generator=runtime.generator(), device=runtime.device,
                         half_maps=not args.no_half_maps, use_ctf=not args.no_ctf, threads=workers,
                         progress=False if args.no_progress else None)
    apix = result.pixel_size_angstrom
    write_map(out, result.volume, apix)
    written = [out]
    if result.half_maps is not None:
        for i, half in enumerate(result.half_maps, start=1):
            write_map(_sibling(out, f"half{i}"), half, apix)
            written.append(_sibling(out, f"half{i}"))
        report = result.fsc_report()
        report.update({"cryopose_version": __version__, "command_line": getattr(args, "command_line", ""),
                       "particles": str(args.particles), "map": str(out), "seed": int(args.seed),
                       "ctf_applied": bool(meta.ctf is not None and not args.no_ctf)})
        fsc_path = _sibling(out, "fsc", ".json")
        atomic_write_json(fsc_path, report, indent=1)
        written.append(fsc_path)
        flag = "" if report["fsc0p143_crossed"] else " (never crossed: Nyquist)"
        print(f"reconstructed {sum(result.n_particles)} particles ({result.symmetry}): half-map FSC 0.143 at "
              f"{result.resolution_fsc0p143_angstrom:.2f} Å{flag}, FSC 0.5 at "
              f"{result.resolution_fsc0p5_angstrom:.2f} Å")
    else:
        print(f"reconstructed {sum(result.n_particles)} particles ({result.symmetry}), no half maps")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
