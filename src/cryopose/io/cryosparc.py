"""cryoSPARC ``.cs`` particle files (numpy record arrays), converted to RELION conventions.

Field conversions (cryoSPARC v2+ names):

==========================  =================================================================
``blob/path``, ``blob/idx``  stack path (a leading ``>`` is dropped) and 0-based image index
``blob/psize_A``             pixel size in Å (one value per data set)
``blob/shape``               ``(ny, nx)`` of the images: the box size (square)
``ctf/df1_A``, ``df2_A``     ``rlnDefocusU``, ``rlnDefocusV`` in Å
``ctf/df_angle_rad``         ``rlnDefocusAngle`` = degrees(value)
``ctf/phase_shift_rad``      ``rlnPhaseShift`` = degrees(value)
``ctf/accel_kv``, ``cs_mm``, ``amp_contrast``, ``bfactor``: voltage, Cs, amplitude contrast, B
``ctf/exp_group_id``         optics group = value + 1 (RELION numbers groups from 1)
``alignments3D/pose``        axis-angle (Rodrigues) vector ``v`` in radians;
                             ``R_relion = expm([v]ₓ)ᵀ = expm(-[v]ₓ)``
``alignments3D/shift``       ``rlnOriginX/Y`` in pixels, same sign;
                             ``shifts_angstrom = shift · alignments3D/psize_A``
==========================  =================================================================

Where the pose and shift convention comes from, and what was verified
----------------------------------------------------------------------
* pyem's ``csparc2star.py`` (``pyem/metadata/cryosparc2.py``) maps ``alignments3D/pose`` to
  RELION Euler angles with ``rot2euler(expmap(pose))``, where its ``expmap`` returns the
  *transpose* of the Rodrigues matrix and ``rot2euler`` is RELION's ``Euler_matrix2angles``;
  it copies ``alignments3D/shift`` to ``rlnOriginX/Y`` unchanged (pixels, same sign). Its
  ``expmap`` was contributed by cryoSPARC's author (pyem PR #5, 2017: "the expmap function
  is from cryoSPARC"); the commit merging it says csparc2star "now outputs correct Euler
  angles which give a correct result from re[construction]" (our copy of the page is cut
  there), and pyem issue #4 later reports transformed reconstructions as "all good".
* cryoDRGN's ``parse_pose_csparc`` uses ``expmap(pose)ᵀ`` and ``shift`` as is, and its
  ``parse_pose_star`` uses ``R_from_relion(rot, tilt, psi)`` and ``rlnOriginX/Y`` as is, for
  the same downstream model. ``R_from_relion`` (standard ``Rz(psi) Ry(-tilt) Rz(rot)`` with
  the y axis flipped, ``D R D``, ``D = diag(1, -1, 1)``) equals RELION's
  ``Euler_angles2matrix`` exactly (``tests/unit/test_io_cryosparc.py`` checks this identity
  numerically), so cryoDRGN's two parsers agree with pyem: both say ``R_relion =
  Rodrigues(pose)ᵀ`` and ``rlnOriginX = shift``.
* The shift pixel size: other readers (e.g. cryoSPARC-tools-based scripts) use
  ``shift · alignments3D/psize_A``; we do the same and fall back to ``blob/psize_A``.

Empirical check with the data we have: ``shared/data/particles/empiar10076_7ptcl`` has the
same 7 particles as a STAR and a ``.cs``, but neither carries poses (the STAR has none, the
``.cs`` has no ``alignments3D`` fields), so the pose conversion could **not** be verified
against a RELION file of the same particles. What the tests do verify: the CTF conversion
(defocus, angle in degrees, voltage, Cs, amplitude contrast) and pixel size of those 7
particles agree between the two files; the images load through ``blob/path``; and for the
2019-particle refinement in ``star_cs_fixtures`` the poses convert to proper rotations whose
RELION Euler angles reproduce ``Rodrigues(pose)ᵀ``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..conventions import PixelSizeError, check_pixel_size
from ..ctf import CTFParams
from ..errors import InputFileError
from .metadata import ParticleMetadata

__all__ = ["read_cs", "cryosparc_pose_to_rotmat", "missing_stack_hint"]

_CTF_REQUIRED = ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast")
_POSE = ("alignments3D/pose", "alignments3D/shift")


def cryosparc_pose_to_rotmat(pose) -> torch.Tensor:
    """cryoSPARC axis-angle poses → RELION rotation matrices.

    Args:
        pose: ``(..., 3)`` axis-angle vectors in radians (``alignments3D/pose``).

    Returns:
        ``(..., 3, 3)`` float64 matrices ``R = expm([v]ₓ)ᵀ``, the matrix of
        :func:`cryopose.rotations.relion_euler_to_rotmat` (see the module docstring).
    """
    v = torch.as_tensor(np.asarray(pose), dtype=torch.float64)
    theta = v.norm(dim=-1, keepdim=True)
    k = v / theta.clamp_min(1e-300)
    zero = torch.zeros_like(k[..., 0])
    kx, ky, kz = k.unbind(-1)
    skew = torch.stack([torch.stack([zero, -kz, ky], -1),
                        torch.stack([kz, zero, -kx], -1),
                        torch.stack([-ky, kx, zero], -1)], -2)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=torch.float64).expand(skew.shape)
    rodrigues = eye + s * skew + (1 - c) * (skew @ skew)
    return rodrigues.transpose(-1, -2)


def _search_dirs(path: Path, datadir) -> list[Path]:
    cs_dir = path.absolute().parent
    dirs = [Path(datadir).absolute()] if datadir is not None else []
    return dirs + [cs_dir, cs_dir.parent, Path.cwd()]


def missing_stack_hint(path: str | os.PathLike, datadir=None) -> str:
    """Explain where cryoSPARC ``blob/path`` values were looked for (for "not found" errors)."""
    dirs = ", ".join(str(d) for d in _search_dirs(Path(path), datadir))
    return (f"cryoSPARC blob/path was looked for relative to: {dirs}; pass datadir= "
            "(the cryoSPARC project folder) if the stacks are elsewhere")


def _decode(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8")
    return values.astype(str)


def _field(path: Path, arr: np.ndarray, name: str) -> np.ndarray:
    vals = np.asarray(arr[name], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(vals).reshape(len(vals), -1).all(axis=1))
    if bad.size:
        raise InputFileError(path, f"field {name} is not finite: {arr[name][bad[0]]!r}", row=int(bad[0]) + 1)
    return vals


def _partial(path: Path, names, fields: set, what: str) -> bool:
    present = [n in fields for n in names]
    if all(present):
        return True
    if any(present):
        missing = [n for n, p in zip(names, present) if not p]
        raise InputFileError(path, f"missing field {', '.join(missing)} ({what}: needs all of {', '.join(names)})")
    return False


def _table(arr: np.ndarray) -> pd.DataFrame:
    cols = {}
    for name in arr.dtype.names:
        v = arr[name]
        if v.ndim == 1:
            cols[name] = _decode(v) if v.dtype.kind in "SU" else v
        else:
            flat = v.reshape(len(v), -1)
            for j in range(flat.shape[1]):
                cols[f"{name}/{j}"] = flat[:, j]
    return pd.DataFrame(cols)


def _one(path: Path, values: np.ndarray, name: str, rtol: float) -> float:
    ref = values[0]
    diff = np.flatnonzero(~np.isclose(values, ref, rtol=rtol, atol=0))
    if diff.size:
        i = int(diff[0])
        raise InputFileError(path, f"field {name} differs between rows ({ref:g} in the first, {values[i]:g} here); "
                                   "cryopose needs one pixel size and box size per data set", row=i + 1)
    return float(ref)


def read_cs(path: str | os.PathLike, *, pixel_size_angstrom: float | None = None,
            datadir: str | os.PathLike | None = None) -> ParticleMetadata:
    """Read a cryoSPARC particle ``.cs`` file into :class:`ParticleMetadata` (RELION conventions).

    Args:
        path: The ``.cs`` file (a numpy structured array saved with ``np.save``).
        pixel_size_angstrom: Explicit pixel size in Å; must agree with ``blob/psize_A``.
        datadir: Folder ``blob/path`` is relative to (the cryoSPARC project folder). Without
            it, paths are tried relative to the ``.cs`` folder, its parent (cryoSPARC keeps
            ``.cs`` files in ``Pxx/Jyy/`` and paths relative to ``Pxx/``) and the current
            folder; if none exists, the first candidate is kept and reading the images fails
            naming it (see :func:`missing_stack_hint`).

    Returns:
        Metadata with ``rotmats`` from ``alignments3D/pose`` (``None`` without it),
        ``shifts_angstrom`` from ``alignments3D/shift``, ``ctf`` from ``ctf/*`` (``None``
        without it), and ``table`` holding every field (vector fields split into
        ``name/0``, ``name/1``, ...).

    Raises:
        InputFileError: Not a ``.cs`` file, no rows, missing ``blob/path``/``blob/idx``, a
            partial set of CTF or pose fields (naming the missing one), non-finite values,
            non-square or mixed image sizes, mixed pixel sizes.
        PixelSizeError: No pixel size, or the explicit one disagrees with ``blob/psize_A``.
    """
    path = Path(path)
    arr = _load_records(path)
    fields = set(arr.dtype.names)
    pixel = _cs_pixel_size(path, arr, fields, pixel_size_angstrom)
    box = None
    if "blob/shape" in fields:
        shape = np.asarray(arr["blob/shape"], dtype=np.int64).reshape(len(arr), -1)
        ny, nx = int(shape[0, -2]), int(shape[0, -1])
        if ny != nx:
            raise InputFileError(path, f"images are {ny}×{nx} (blob/shape); cryopose needs square images", row=1)
        box = int(_one(path, shape[:, -1].astype(np.float64), "blob/shape", 0))
    image_paths = _cs_image_paths(path, arr, datadir)
    idx = np.asarray(arr["blob/idx"], dtype=np.int64)
    ctf = _cs_ctf(path, arr, fields)
    rotmats, shifts = _cs_poses(path, arr, fields, pixel)
    groups = None
    if "ctf/exp_group_id" in fields:
        groups = np.asarray(arr["ctf/exp_group_id"], dtype=np.int64) + 1
    return ParticleMetadata(pixel_size_angstrom=pixel, box_size=box, rotmats=rotmats, shifts_angstrom=shifts,
                            ctf=ctf, image_paths=image_paths, image_indices=idx, optics_group=groups,
                            table=_table(arr), optics=None, source=str(path))


def _load_records(path: Path) -> np.ndarray:
    """The ``.cs`` file's record array, flattened; ``InputFileError`` for a missing or non-``.cs``
    file, no rows, or no ``blob/path``/``blob/idx`` field."""
    if not path.exists():
        raise InputFileError(path, "no such file")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises ValueError, OSError, EOFError, UnpicklingError
        raise InputFileError(path, f"not a cryoSPARC .cs file (numpy record array): {err}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None:
        raise InputFileError(path, "not a cryoSPARC .cs file: no named fields")
    arr = arr.reshape(-1)
    fields = set(arr.dtype.names)
    if len(arr) == 0:
        raise InputFileError(path, "the particle table has no rows")
    for name in ("blob/path", "blob/idx"):
        if name not in fields:
            raise InputFileError(path, f"missing field {name} (the particle images)")
    return arr


def _cs_pixel_size(path: Path, arr: np.ndarray, fields: set, pixel_size_angstrom: float | None) -> float:
    """Pixel size in Å: ``blob/psize_A`` (one value) checked against the explicit one, if any."""
    file_px = None
    if "blob/psize_A" in fields:
        file_px = _one(path, _field(path, arr, "blob/psize_A"), "blob/psize_A", 1e-3)
        check_pixel_size(file_px, source=f"{path} (blob/psize_A)")
    if pixel_size_angstrom is not None:
        return check_pixel_size(pixel_size_angstrom, source="--pixel-size", other=file_px,
                                other_source=f"{path} (blob/psize_A)")
    if file_px is not None:
        return file_px
    raise PixelSizeError(f"{path}: no blob/psize_A field; pass --pixel-size (pixel_size_angstrom=...)")


def _cs_image_paths(path: Path, arr: np.ndarray, datadir) -> list[str]:
    """Every particle's stack path: ``blob/path`` (cryoSPARC's leading ``>`` dropped) tried
    against the folders of :func:`_search_dirs`, the first that exists, else the first candidate."""
    raw = pd.Series(_decode(arr["blob/path"]))
    raw = raw.where(~raw.str.startswith(">"), raw.str[1:])
    dirs = _search_dirs(path, datadir)
    codes, uniques = pd.factorize(raw, sort=False)
    resolved = []
    for u in uniques:
        p = Path(u)
        cands = [p] if p.is_absolute() else [d / p for d in dirs]
        hit = next((c for c in cands if c.exists()), cands[0])
        resolved.append(os.path.normpath(hit))
    return [resolved[c] for c in codes]


def _cs_ctf(path: Path, arr: np.ndarray, fields: set) -> CTFParams | None:
    """The particles' CTF from ``ctf/*`` (radians to degrees), or ``None`` without CTF fields."""
    if not _partial(path, _CTF_REQUIRED, fields, "CTF"):
        return None
    v = {n: _field(path, arr, n) for n in _CTF_REQUIRED}
    phase = _field(path, arr, "ctf/phase_shift_rad") if "ctf/phase_shift_rad" in fields else np.zeros(len(arr))
    bfac = _field(path, arr, "ctf/bfactor") if "ctf/bfactor" in fields else np.zeros(len(arr))
    try:
        return CTFParams.create(defocus_u_angstrom=v["ctf/df1_A"], defocus_v_angstrom=v["ctf/df2_A"],
                                defocus_angle_deg=np.rad2deg(v["ctf/df_angle_rad"]),
                                voltage_kv=v["ctf/accel_kv"], spherical_aberration_mm=v["ctf/cs_mm"],
                                amplitude_contrast=v["ctf/amp_contrast"], phase_shift_deg=np.rad2deg(phase),
                                bfactor_angstrom2=bfac)
    except ValueError as err:
        raise InputFileError(path, f"invalid CTF values: {err}") from None


def _cs_poses(path: Path, arr: np.ndarray, fields: set, pixel: float):
    """RELION matrices ``(N, 3, 3)`` and shifts ``(N, 2)`` in Å from ``alignments3D/*`` (shifts
    scaled by ``alignments3D/psize_A``, else ``pixel``), or ``(None, None)``."""
    if not _partial(path, _POSE, fields, "3D alignment"):
        return None, None
    pose = _field(path, arr, "alignments3D/pose").reshape(len(arr), 3)
    rotmats = cryosparc_pose_to_rotmat(pose).float()
    shift_px = _field(path, arr, "alignments3D/shift").reshape(len(arr), 2)
    align_px = pixel
    if "alignments3D/psize_A" in fields:
        align_px = _one(path, _field(path, arr, "alignments3D/psize_A"), "alignments3D/psize_A", 1e-3)
        check_pixel_size(align_px, source=f"{path} (alignments3D/psize_A)")
    return rotmats, torch.from_numpy(shift_px * align_px).float()
