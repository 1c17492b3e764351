"""Compare estimated poses with reference poses: angular error after global alignment.

``cryopose evaluate-poses EST.star REF.star [--symmetry D2] [--json]``

The estimated pose set is aligned to the reference by the best global rotation, in both
hands, modulo the point group (:func:`cryopose.metrics.pose_error.align_rotations`); the
report gives mean/median geodesic error in degrees, the hand, and the shift error in Å.
Particles are matched by ``rlnImageName`` when both files have it, else by order.
"""

from __future__ import annotations

import json
from pathlib import Path

COMMAND = "evaluate-poses"
HELP = "angular and shift error of estimated poses against reference poses (after global alignment)"


def add_arguments(parser) -> None:
    parser.add_argument("estimated", type=Path, help="STAR (RELION 3.0/3.1/5) or cryoSPARC .cs with estimated poses")
    parser.add_argument("reference", type=Path, help="STAR or .cs with reference (true) poses")
    parser.add_argument("--symmetry", default="C1", help="point group of the particle (C1, Cn, Dn, T, O, I); default C1")
    parser.add_argument("--no-mirror", action="store_true", help="do not consider the other hand")
    parser.add_argument("--pixel-size", type=float, default=None, help="pixel size in Å when the files have none")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--seed", type=int, default=0, help="seed of the robust alignment (default 0)")


def _read(path: Path, pixel_size):
    from ..errors import InputFileError

    if not path.exists():
        raise InputFileError(path, "no such file")
    if path.suffix == ".cs":
        from ..io.cryosparc import read_cs

        return read_cs(path, pixel_size_angstrom=pixel_size)
    from ..io.star import read_star

    return read_star(path, pixel_size_angstrom=pixel_size, require_image_names=False)


def run(args) -> int:
    from ..metrics.pose_error import evaluate_poses

    est = _read(args.estimated, args.pixel_size)
    ref = _read(args.reference, args.pixel_size)
    result = evaluate_poses(est, ref, symmetry=args.symmetry, allow_mirror=not args.no_mirror, seed=args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"particles:            {result['n_particles']}")
    print(f"symmetry:             {result['symmetry']}")
    print(f"hand:                 {result['hand']}")
    print(f"median angular error: {result['median_error_deg']:.2f}°")
    print(f"mean angular error:   {result['mean_error_deg']:.2f}°")
    if result.get("median_shift_error_angstrom") is not None:
        print(f"median shift error:   {result['median_shift_error_angstrom']:.2f} Å")
        print(f"mean shift error:     {result['mean_shift_error_angstrom']:.2f} Å")
    return 0
