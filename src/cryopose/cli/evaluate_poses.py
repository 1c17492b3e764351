"""Compare estimated poses with reference poses: angular error after global alignment.

``cryopose evaluate-poses EST.star REF.star [--symmetry D2] [--json] [--reference MAP.mrc]``

The estimated pose set is aligned to the reference by the best global rotation, in both
hands, modulo the point group (:func:`cryopose.metrics.pose_error.align_rotations`); the
report gives mean/median geodesic error in degrees, the hand, and the shift error in Å.
Particles are matched by ``rlnImageName`` when both files have it, else by order.

With ``--reference MAP.mrc`` it also gives the reprojection RMSE of Lian et al. (2022, eq. 16;
:func:`cryopose.metrics.reprojection.reprojection_rmse`): the RMS difference of the map's
CTF-free projections along the estimated and the reference rotation, relative to the RMS of the
reference projections (0 for perfect poses, about 1.4 for unrelated views), averaged over
particles. It needs no point group (symmetry-equivalent poses project identically) and, as in
the paper, no global alignment: the estimates must be in the frame of REF.star and MAP.mrc
(e.g. a network trained on that reference), the hand is not changed, shifts are not used. The
map is Fourier-cropped to ``--reprojection-box`` (default 64 px) to keep it fast, and
``--max-particles`` scores a random (``--seed``) subset. The map must cover the particles' box
in Å (within 1 %) when both pixel sizes and the particle box are known.
"""

from __future__ import annotations

import json
from pathlib import Path

COMMAND = "evaluate-poses"
HELP = "angular and shift error of estimated poses against reference poses (after global alignment)"


def add_arguments(parser) -> None:
    """Add the ``evaluate-poses`` options to ``parser`` (an ``argparse.ArgumentParser``)."""
    parser.add_argument("estimated", type=Path, help="STAR (RELION 3.0/3.1/5) or cryoSPARC .cs with estimated poses")
    parser.add_argument("reference", type=Path, help="STAR or .cs with reference (true) poses")
    parser.add_argument("--symmetry", default="C1", help="point group of the particle (C1, Cn, Dn, T, O, I); default C1")
    parser.add_argument("--no-mirror", action="store_true", help="do not consider the other hand")
    parser.add_argument("--pixel-size", type=float, default=None, help="pixel size in Å when the files have none")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the robust alignment and of the --max-particles subset (default 0)")
    g = parser.add_argument_group("reprojection RMSE (Lian et al. 2022, eq. 16)")
    g.add_argument("--reference", dest="reference_map", type=Path, metavar="MAP.mrc",
                   help="reference map in the frame of REF.star: also report the reprojection RMSE (no alignment)")
    g.add_argument("--map-pixel-size", type=float, metavar="A", help="the map's voxel size in Å (header override)")
    g.add_argument("--reprojection-box", type=int, default=64, metavar="PX",
                   help="Fourier-crop the map to this box for the projections (default 64; the map's box if smaller)")
    g.add_argument("--max-particles", type=int, metavar="N",
                   help="reprojection RMSE of a random subset of N particles (default all)")


def _read(path: Path, pixel_size):
    from ..errors import InputFileError

    if not path.exists():
        raise InputFileError(path, "no such file")
    if path.suffix == ".cs":
        from ..io.cryosparc import read_cs

        return read_cs(path, pixel_size_angstrom=pixel_size)
    from ..io.star import read_star

    return read_star(path, pixel_size_angstrom=pixel_size, require_image_names=False)


def reprojection_report(map_path: Path, est, ref, *, map_pixel_size: float | None = None, box_size: int = 64,
                        max_particles: int | None = None, seed: int = 0) -> dict:
    """Reprojection RMSE (Lian et al. 2022, eq. 16) of estimated against reference poses.

    Particles are paired as :func:`cryopose.metrics.pose_error.evaluate_poses` pairs them
    (``rlnImageName``, else order); no global alignment, hand change or shift is applied.

    Args:
        map_path: Cubic reference map (MRC), ``(n, n, n)``, in the frame of ``ref``'s poses.
        est, ref: ``ParticleMetadata`` with ``rotmats`` ``(N, 3, 3)`` (RELION matrices).
        map_pixel_size: The map's voxel size in Å (overrides the header).
        box_size: Fourier-crop the map to this box (px) first; the map's box if smaller.
        max_particles: Score a random subset of this many particles (seeded by ``seed``).
        seed: Seed of the subset.

    Returns:
        :meth:`cryopose.metrics.reprojection.ReprojectionResult.as_dict`: ``reprojection_rmse``
        (relative), ``reprojection_rmse_median``, ``reprojection_scale``,
        ``reprojection_normalized``, ``reprojection_box_size``, ``n_particles`` (scored).

    Raises:
        InputFileError: Missing, unreadable or non-cubic map, or one whose box in Å differs
            by more than 1 % from the particles' (when both pixel sizes and the box are known).
        UserError: ``box_size < 8`` or ``max_particles < 1``.
        PixelSizeError: Map header without a voxel size and no ``map_pixel_size``.
    """
    import numpy as np
    import torch

    from ..errors import InputFileError, UserError
    from ..io.mrc import read_map
    from ..metrics.pose_error import _image_names, _match_indices
    from ..metrics.reprojection import reprojection_rmse

    if box_size < 8:
        raise UserError(f"--reprojection-box must be >= 8, got {box_size}")
    if max_particles is not None and max_particles < 1:
        raise UserError(f"--max-particles must be >= 1, got {max_particles}")
    if not Path(map_path).is_file():
        raise InputFileError(map_path, "no such map")
    vol = read_map(map_path, pixel_size_angstrom=map_pixel_size, require_cubic=True)
    n_map, a_map = vol.volume.shape[-1], vol.pixel_size_angstrom
    box, apix = ref.box_size or est.box_size, ref.pixel_size_angstrom or est.pixel_size_angstrom
    if box and apix and abs(n_map * a_map - box * apix) > 0.01 * box * apix:
        raise InputFileError(map_path, f"{n_map} px at {a_map:g} Å is a {n_map * a_map:.1f} Å box; the particles' "
                                       f"is {box} px at {apix:g} Å ({box * apix:.1f} Å): not the particles' map "
                                       "(pass --map-pixel-size if its header is wrong)")
    rot_est, rot_ref = torch.as_tensor(est.rotmats), torch.as_tensor(ref.rotmats)
    a, b = _image_names(est), _image_names(ref)
    if a is not None and b is not None and a != b:
        rot_est = rot_est[torch.as_tensor(_match_indices(a, b))]
    idx = np.arange(rot_ref.shape[0])
    if max_particles is not None and max_particles < idx.size:
        idx = np.sort(np.random.default_rng(seed).choice(idx.size, max_particles, replace=False))
    sel = torch.as_tensor(idx)
    res = reprojection_rmse(torch.from_numpy(vol.volume.copy()), rot_est[sel], rot_ref[sel], box_size=box_size)
    return res.as_dict()


def run(args) -> int:
    """Run ``cryopose evaluate-poses``; prints the errors (or one JSON object) and returns 0.

    Raises:
        InputFileError: An unreadable pose file or map, or a map whose box in Å is not the
            particles'.
        UserError: ``--max-particles`` < 1 or ``--reprojection-box`` < 8.
        PixelSizeError: ``--reference-map`` without a voxel size in its header and no
            ``--map-pixel-size``.
    """
    from ..metrics.pose_error import evaluate_poses

    est = _read(args.estimated, args.pixel_size)
    ref = _read(args.reference, args.pixel_size)
    result = evaluate_poses(est, ref, symmetry=args.symmetry, allow_mirror=not args.no_mirror, seed=args.seed)
    if args.reference_map is not None:
        rep = reprojection_report(args.reference_map, est, ref, map_pixel_size=args.map_pixel_size,
                                  box_size=args.reprojection_box, max_particles=args.max_particles, seed=args.seed)
        rep["reprojection_n_particles"] = rep.pop("n_particles")
        result.update(rep)
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
    if "reprojection_rmse" in result:
        print(f"reprojection RMSE:    {result['reprojection_rmse']:.4f} (median "
              f"{result['reprojection_rmse_median']:.4f}; relative, {result['reprojection_n_particles']} particles "
              f"at {result['reprojection_box_size']} px, no alignment)")
    return 0
