"""Fourier shell correlation of two maps: FSC = 0.5 and 0.143 resolutions, curve, plot.

Prints a short summary, or with --json one JSON object on stdout (units in the key names:
resolution_fsc0p5_angstrom, resolution_fsc0p143_angstrom, nyquist_angstrom,
pixel_size_angstrom, fsc_curve of {frequency_per_angstrom, fsc}). A threshold that is never
crossed is reported at Nyquist with fsc0p5_crossed / fsc0p143_crossed false.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

COMMAND = "fsc"
HELP = "FSC between two maps (resolution at 0.5 and 0.143, JSON, plot)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fsc`` options to ``parser``."""
    parser.add_argument("map1", metavar="MAP1", help="first map (.mrc)")
    parser.add_argument("map2", metavar="MAP2", help="second map (.mrc), same box and pixel size")
    parser.add_argument("--mask", metavar="M", help="real-space mask (.mrc) applied to both maps")
    parser.add_argument("--plot", metavar="FSC.png", help="write a plot of the curve")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.add_argument("--force", action="store_true", help="replace an existing --plot file")
    parser.add_argument("--pixel-size", type=float, metavar="A",
                        help="pixel size in Å for both maps, overriding their headers")


def run(args: argparse.Namespace) -> int:
    """Run ``cryopose fsc``; returns the exit status."""
    from ..errors import UserError
    from ..io.mrc import read_map
    from ..io.atomic import json_ready
    from ..metrics.fsc import fsc_report, plot_fsc

    if args.plot:
        from ..io.outputs import check_outputs

        check_outputs([args.plot], force=args.force)
    m1 = read_map(args.map1, pixel_size_angstrom=args.pixel_size, require_cubic=True)
    m2 = read_map(args.map2, pixel_size_angstrom=args.pixel_size, require_cubic=True)
    if m1.volume.shape != m2.volume.shape:
        raise UserError(f"maps differ in size: {args.map1} is {'×'.join(map(str, m1.volume.shape))} but "
                        f"{args.map2} is {'×'.join(map(str, m2.volume.shape))}")
    if not math.isclose(m1.pixel_size_angstrom, m2.pixel_size_angstrom, rel_tol=1e-3):
        raise UserError(f"maps differ in pixel size: {args.map1} has {m1.pixel_size_angstrom:g} Å but "
                        f"{args.map2} has {m2.pixel_size_angstrom:g} Å (use --pixel-size if a header is wrong)")
    for path, m in ((args.map1, m1), (args.map2, m2)):
        if not np.isfinite(m.volume).all():
            raise UserError(f"{path}: the map holds NaN or infinite values; an FSC with it means nothing")
        if float(np.ptp(m.volume)) == 0.0:
            raise UserError(f"{path}: the map is constant ({float(m.volume.flat[0]):g} everywhere); an FSC with it "
                            "means nothing")
    mask = None
    if args.mask:
        mk = read_map(args.mask, pixel_size_angstrom=m1.pixel_size_angstrom, require_cubic=True)
        if mk.volume.shape != m1.volume.shape:
            raise UserError(f"mask {args.mask} is {'×'.join(map(str, mk.volume.shape))} but {args.map1} is "
                            f"{'×'.join(map(str, m1.volume.shape))}")
        mask = mk.volume
    rep = fsc_report(m1.volume, m2.volume, m1.pixel_size_angstrom, mask=mask)
    rep.update({"map1": str(args.map1), "map2": str(args.map2), "mask": args.mask})
    if args.plot:
        label = f"{Path(args.map1).name} vs {Path(args.map2).name}" + (" (masked)" if mask is not None else "")
        freq = [p["frequency_per_angstrom"] for p in rep["fsc_curve"]]
        fsc = [p["fsc"] for p in rep["fsc_curve"]]
        plot_fsc({label: (freq, fsc)}, args.plot)
        rep["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(json_ready(rep)))
        return 0

    def line(tag, thr):
        res = rep[f"resolution_fsc{tag}_angstrom"]
        note = "" if rep[f"fsc{tag}_crossed"] else "  (never crosses: limited by Nyquist)"
        return f"FSC = {thr:<5}: {res:7.2f} Å{note}"

    print(f"FSC {args.map1} vs {args.map2}" + (f" (mask {args.mask})" if mask is not None else ""))
    print(f"  box {rep['box_size']} px, pixel {rep['pixel_size_angstrom']:g} Å, "
          f"Nyquist {rep['nyquist_angstrom']:.2f} Å")
    print("  " + line("0p5", 0.5))
    print("  " + line("0p143", 0.143))
    if args.plot:
        print(f"  plot: {args.plot}")
    return 0
