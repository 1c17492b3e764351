"""Reading RELION 3.0 / 3.1 / 5 STAR particle files (:func:`read_star`; re-exported by
:mod:`cryopose.io.star`, which describes the accepted versions, conversions and image names).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..conventions import PixelSizeError, check_pixel_size
from ..ctf import CTFParams
from ..errors import InputFileError
from ..rotations import relion_euler_to_rotmat
from .mrc import read_header_info
from .metadata import ParticleMetadata
from .star_paths import _image_names

__all__ = ["read_star"]

_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_ORIGINS_A = ("rlnOriginXAngst", "rlnOriginYAngst")
_ORIGINS_PX = ("rlnOriginX", "rlnOriginY")
_CTF_PARTICLE = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
_CTF_OPTICS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
_CTF_REQUIRED = ("rlnVoltage", "rlnSphericalAberration")
_CTF_OPTIONAL = ("rlnPhaseShift", "rlnCtfBfactor")
_GEOMETRY = ("rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality", "rlnDetectorPixelSize",
             "rlnMagnification")
_MANAGED = set(_ANGLES + _ORIGINS_A + _ORIGINS_PX + _CTF_PARTICLE + _CTF_OPTICS + _CTF_OPTIONAL + _GEOMETRY
               + ("rlnImageName", "rlnOpticsGroup"))


def _parse_blocks(path: Path) -> dict:
    """Parse a STAR file into ``{block name: DataFrame (loop) or dict (key-value pairs)}``.

    A small scanner finds the blocks, labels and row lines; pandas' C reader parses each
    loop's rows (about 10x faster than ``starfile`` on 10^5+ rows). Values ``nan`` become
    NaN; other strings, including ``None``, stay strings.
    """
    if not path.exists():
        raise InputFileError(path, "no such file")
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        raise InputFileError(path, f"cannot read the file ({err})") from None
    blocks: dict = {}
    name, i, n = None, 0, len(lines)
    while i < n:
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            name = line[5:].split()[0] if line[5:].strip() else ""
            blocks[name] = {}
        elif name is None:
            continue  # text before the first data_ block
        elif line.startswith("loop_"):
            labels, first = [], i
            while i < n and (lines[i].strip().startswith("_") or not lines[i].strip()):
                if lines[i].strip():
                    labels.append(lines[i].split()[0][1:])
                i += 1
            start = i
            while i < n:
                s = lines[i].lstrip()
                if s.startswith(("data_", "loop_", "_")):
                    break
                i += 1
            linenos = [j for j in range(start, i) if lines[j].strip() and not lines[j].lstrip().startswith("#")]
            if not labels:
                raise InputFileError(path, f"loop_ at line {first} has no column labels")
            blocks[name] = _parse_loop(path, labels, [lines[j] for j in linenos], linenos)
        elif line.startswith("_"):
            parts = line.split(None, 1)
            if isinstance(blocks[name], dict):
                blocks[name][parts[0][1:]] = parts[1].strip() if len(parts) > 1 else ""
    return blocks


def _parse_loop(path: Path, labels: list[str], rows: list[str], linenos: list[int]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({lab: pd.Series(dtype=object) for lab in labels})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # too many fields in a row
            df = pd.read_csv(io.StringIO("\n".join(rows)), sep=r"\s+", header=None, names=labels, quotechar='"',
                             keep_default_na=False, na_values=["nan", "NaN", "NAN"], engine="c", index_col=False,
                             low_memory=False)
    except Exception as err:  # pandas raises ParserError, ValueError, ParserWarning, ...
        raise InputFileError(path, f"cannot parse STAR file: {_explain_parse_error(path, err)}") from None
    last = df.iloc[:, -1]
    short = last.isna() if pd.api.types.is_numeric_dtype(last.dtype) else (last.isna() | (last.astype(str) == ""))
    for i in np.flatnonzero(short.to_numpy()):  # too few fields: pandas pads the row
        if len(rows[i].split()) < len(labels):
            raise InputFileError(path, f"cannot parse STAR file: {len(rows[i].split())} fields (line {linenos[i] + 1}) "
                                       f"but the loop has {len(labels)} columns", row=i + 1)
    return df


def _explain_parse_error(path: Path, err: Exception) -> str:
    """Find the first loop row whose field count differs from its header (pandas hides it)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return str(err)
    n_labels, row, in_loop = 0, 0, False
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if line.startswith("data_"):
            in_loop, n_labels, row = False, 0, 0
        elif line.startswith("loop_"):
            in_loop, n_labels, row = True, 0, 0
        elif in_loop and line.startswith("_"):
            n_labels = n_labels + 1 if row == 0 else 0
            in_loop = row == 0
        elif in_loop and line and not line.startswith("#"):
            row += 1
            fields = len(line.split())
            if fields != n_labels and n_labels:
                return f"row {row} (line {lineno}) has {fields} fields but the loop has {n_labels} columns"
    return f"{type(err).__name__}: {err}"


def _choose_tables(path: Path, blocks: dict) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if "optics" in loops:
        if "particles" not in loops:
            raise InputFileError(path, "has a data_optics block but no data_particles block")
        return loops["particles"], loops["optics"], "data_particles"
    if not loops:
        raise InputFileError(path, "no particle table found (no loop_ block); is this a RELION particle STAR file?")
    if len(loops) == 1:
        name = next(iter(loops))
        return loops[name], None, f"data_{name}"
    for name in ("particles", "images", ""):
        if name in loops:
            return loops[name], None, f"data_{name}"
    with_images = [k for k, v in loops.items() if "rlnImageName" in v.columns]
    if len(with_images) == 1:
        return loops[with_images[0]], None, f"data_{with_images[0]}"
    names = ", ".join(f"data_{k}" for k in loops)
    raise InputFileError(path, f"cannot tell which block holds the particles (found {names}); "
                               "expected data_particles, data_images or a single data_ block")


def _numeric(path: Path, df: pd.DataFrame, col: str, table: str) -> np.ndarray:
    """Column ``col`` as float64; a non-numeric, NaN or infinite value names the row."""
    s = df[col]
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        vals = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        vals = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        i = int(bad[0])
        raw = s.iloc[i]
        what = "is empty (missing value)" if pd.isna(raw) else f"value {raw!r} is not a finite number"
        raise InputFileError(path, f"{table} column {col}: {what}", row=int(df.index[i]) + 1)
    return vals


def _require_all(path: Path, df_cols, names: tuple[str, ...], what: str, table: str) -> bool:
    """True if all of ``names`` are present, False if none; a partial set is an error."""
    present = [c in df_cols for c in names]
    if all(present):
        return True
    if any(present):
        missing = [c for c, p in zip(names, present) if not p]
        found = [c for c, p in zip(names, present) if p]
        raise InputFileError(path, f"{table} is missing column {', '.join(missing)} ({what}: found "
                                   f"{', '.join(found)} but needs all of {', '.join(names)})")
    return False


def _one_value(path: Path, values: np.ndarray, groups: np.ndarray | None, optics: pd.DataFrame | None,
               label: str, rows: pd.Index, rtol: float = 1e-3) -> float:
    """The single value of a per-particle quantity; differing values are an error."""
    lo, hi = float(values.min()), float(values.max())
    if np.isclose(lo, hi, rtol=rtol, atol=0):
        return float(values[0])
    if groups is not None and optics is not None:
        raise _mixed_optics_error(path, groups, optics)
    i = int(np.flatnonzero(~np.isclose(values, values[0], rtol=rtol, atol=0))[0])
    raise InputFileError(path, f"{label} differs between rows ({values[0]:g} in the first row, {values[i]:g} "
                               f"here); cryopose needs one pixel size and box size per data set", row=int(rows[i]) + 1)


def _mixed_optics_error(path: Path, groups: np.ndarray, optics: pd.DataFrame) -> InputFileError:
    used = set(int(g) for g in np.unique(groups))
    parts = []
    for _, r in optics.iterrows():
        g = int(r["rlnOpticsGroup"])
        if g in used:
            px = r.get("rlnImagePixelSize", float("nan"))
            box = r.get("rlnImageSize", "?")
            parts.append(f"group {g} ({r.get('rlnOpticsGroupName', '')}): {float(px):g} Å, {box} px")
    return InputFileError(path, "optics groups have different pixel or box sizes (" + "; ".join(parts) + "); "
                                "cryopose needs one pixel size and box size per data set: select one group "
                                "with --optics-group N or NAME (in Python: optics_groups=[...]) or re-extract "
                                "the particles at a common pixel and box size")


def _optics_ids(path: Path, optics: pd.DataFrame, ids: np.ndarray, wanted) -> np.ndarray:
    """RELION optics group numbers of ``wanted``: numbers (int or digit strings) or
    ``rlnOpticsGroupName`` values; one not in ``data_optics`` is an error listing the groups."""
    names = optics["rlnOpticsGroupName"].astype(str).tolist() if "rlnOpticsGroupName" in optics.columns else []
    out = []
    for g in wanted:
        text = str(g).strip()
        if text in names:
            out.append(int(ids[names.index(text)]))
        elif text.lstrip("-").isdigit() and int(text) in ids:
            out.append(int(text))
        else:
            have = ", ".join(f"{i}" + (f" ({n})" if names else "") for i, n in zip(ids, names or [""] * len(ids)))
            raise InputFileError(path, f"no optics group {text!r} in data_optics (groups: {have}); give its "
                                       "rlnOpticsGroup number or rlnOpticsGroupName")
    return np.asarray(out, dtype=np.int64)


def _optics_table(path: Path, df: pd.DataFrame, optics: pd.DataFrame, cols: set, table: str, optics_groups):
    """Check ``data_optics`` and map particles to it, keeping only ``optics_groups`` if given.

    Returns:
        ``(df, optics, groups, take)``: the kept particle rows, the kept optics rows, every
        particle's ``rlnOpticsGroup`` number and its row in the kept ``optics`` table.
    """
    if len(optics) == 0 or "rlnOpticsGroup" not in optics.columns:
        raise InputFileError(path, "data_optics has no rows or no rlnOpticsGroup column")
    optics = optics.reset_index(drop=True)
    ids = _numeric(path, optics, "rlnOpticsGroup", "data_optics").astype(np.int64)
    dup = np.flatnonzero(pd.Series(ids).duplicated().to_numpy())
    if dup.size:
        raise InputFileError(path, f"data_optics lists rlnOpticsGroup {ids[dup[0]]} twice", row=int(dup[0]) + 1)
    if "rlnOpticsGroup" in cols:
        groups = _numeric(path, df, "rlnOpticsGroup", table).astype(np.int64)
    elif len(optics) == 1:
        groups = np.full(len(df), ids[0], dtype=np.int64)
    else:
        raise InputFileError(path, f"{table} is missing column rlnOpticsGroup ({len(optics)} optics groups)")
    unknown = np.flatnonzero(~np.isin(groups, ids))
    if unknown.size:
        raise InputFileError(path, f"rlnOpticsGroup {groups[unknown[0]]} is not in data_optics",
                             row=int(unknown[0]) + 1)
    if optics_groups is not None:
        keep = np.isin(groups, _optics_ids(path, optics, ids, optics_groups))
        if not keep.any():
            raise InputFileError(path, f"no particles in optics groups {list(optics_groups)}")
        df, groups = df[keep], groups[keep]
        optics = optics[np.isin(ids, np.unique(groups))].reset_index(drop=True)
        ids = _numeric(path, optics, "rlnOpticsGroup", "data_optics").astype(np.int64)
    take = pd.Index(ids).get_indexer(groups)  # optics row of every particle
    return df, optics, groups, take


def _pixel_size(path: Path, per_particle, groups, optics, df: pd.DataFrame,
                pixel_size_angstrom: float | None) -> float:
    """The data set's pixel size in Å: the file's (``rlnImagePixelSize``, else
    ``rlnDetectorPixelSize·1e4/rlnMagnification``) checked against the explicit one."""
    px_values, px_label = per_particle("rlnImagePixelSize"), "rlnImagePixelSize"
    if px_values is None:
        det, mag = per_particle("rlnDetectorPixelSize"), per_particle("rlnMagnification")
        if det is not None and mag is not None:
            px_values, px_label = det * 1e4 / mag, "rlnDetectorPixelSize·1e4/rlnMagnification"
    file_px = None
    if px_values is not None:
        file_px = _one_value(path, px_values, groups, optics, px_label, df.index)
        check_pixel_size(file_px, source=f"{path} ({px_label})")
    if pixel_size_angstrom is not None:
        return check_pixel_size(pixel_size_angstrom, source="--pixel-size", other=file_px,
                                other_source=f"{path} ({px_label})")
    if file_px is not None:
        return file_px
    raise PixelSizeError(f"{path}: no pixel size in the file (no rlnImagePixelSize, nor rlnDetectorPixelSize "
                         "with rlnMagnification); pass --pixel-size (pixel_size_angstrom=...)")


def _images_and_box(path: Path, df: pd.DataFrame, cols: set, table: str, box: int | None, datadir,
                    require_image_names: bool):
    """Resolve ``rlnImageName`` and fill a missing box size from the first stack's header.

    Returns:
        ``(image_paths, image_indices, box)``; the first two are ``None`` without image names.
    """
    image_paths = image_indices = None
    outside: set[str] = set()
    if datadir is not None and not Path(datadir).is_dir():
        raise InputFileError(path, f"--datadir {datadir} is not a folder")
    if "rlnImageName" in cols:
        image_paths, image_indices, outside = _image_names(path, df, datadir, enforce=require_image_names)
    elif require_image_names:
        raise InputFileError(path, f"{table} is missing column rlnImageName (the particle images, N@stack.mrcs)")
    if (box is None and image_paths is not None and image_paths[0] not in outside
            and os.path.exists(image_paths[0])):
        try:
            (_, ny, nx), _ = read_header_info(image_paths[0])
            box = ny if ny == nx else None
        except InputFileError:
            box = None
    return image_paths, image_indices, box


def _poses(path: Path, df: pd.DataFrame, cols: set, table: str, pixel: float):
    """Rotation matrices ``(N, 3, 3)`` (RELION's) and shifts ``(N, 2)`` in Å, each ``None`` when
    the file has no angles or no origins (origins in pixels are scaled by ``pixel``)."""
    rotmats = shifts = None
    if _require_all(path, cols, _ANGLES, "Euler angles", table):
        eul = np.stack([_numeric(path, df, c, table) for c in _ANGLES], axis=-1)
        rotmats = relion_euler_to_rotmat(torch.from_numpy(eul)).float()
    if _require_all(path, cols, _ORIGINS_A, "origins in Å", table):
        shifts = np.stack([_numeric(path, df, c, table) for c in _ORIGINS_A], axis=-1)
    elif _require_all(path, cols, _ORIGINS_PX, "origins in pixels", table):
        shifts = np.stack([_numeric(path, df, c, table) for c in _ORIGINS_PX], axis=-1) * pixel
    shifts_t = None if shifts is None else torch.from_numpy(shifts).float()
    return rotmats, shifts_t


def _ctf_values(path: Path, df: pd.DataFrame, per_particle) -> dict[str, np.ndarray]:
    """Per-particle CTF columns (defocus from the particles, optics values broadcast), with
    RELION's defaults (amplitude contrast 0 with a warning, phase shift and B-factor 0)."""
    vals = {c: per_particle(c) for c in _CTF_PARTICLE}
    for c in _CTF_REQUIRED:
        v = per_particle(c)
        if v is None:
            raise InputFileError(path, f"missing column {c} (needed with rlnDefocusU; in data_optics for "
                                       "RELION 3.1+, in the particle table for 3.0)")
        vals[c] = v
    vals["rlnAmplitudeContrast"] = per_particle("rlnAmplitudeContrast")
    if vals["rlnAmplitudeContrast"] is None:  # RELION's CTF::read uses Q0 = 0 when absent
        warnings.warn(f"{path}: no rlnAmplitudeContrast column; using 0 as RELION does", UserWarning,
                      stacklevel=4)
        vals["rlnAmplitudeContrast"] = np.zeros(len(df))
    for c in _CTF_OPTIONAL:
        v = per_particle(c)
        vals[c] = np.zeros(len(df)) if v is None else v
    return vals


def _ctf(path: Path, df: pd.DataFrame, cols: set, table: str, per_particle,
         require_image_names: bool) -> CTFParams | None:
    """The particles' CTF, or ``None`` without defocus columns; bad values name the row."""
    if not _require_all(path, cols, _CTF_PARTICLE, "CTF defocus", table):
        if not require_image_names and not any(c in cols for c in _CTF_PARTICLE):
            raise InputFileError(path, f"{table} has no CTF columns (rlnDefocusU, rlnDefocusV, rlnDefocusAngle)")
        return None
    vals = _ctf_values(path, df, per_particle)
    for c, ok, want in (("rlnDefocusU", vals["rlnDefocusU"] > 0, "positive (Å of underfocus, RELION's sign)"),
                        ("rlnDefocusV", vals["rlnDefocusV"] > 0, "positive (Å of underfocus, RELION's sign)"),
                        ("rlnVoltage", vals["rlnVoltage"] > 0, "positive"),
                        ("rlnAmplitudeContrast", (vals["rlnAmplitudeContrast"] >= 0)
                         & (vals["rlnAmplitudeContrast"] < 1), "in [0, 1)")):
        bad = np.flatnonzero(~ok)
        if bad.size:
            raise InputFileError(path, f"{c} must be {want}, got {vals[c][bad[0]]:g}",
                                 row=int(df.index[bad[0]]) + 1)
    return CTFParams.create(
        defocus_u_angstrom=vals["rlnDefocusU"], defocus_v_angstrom=vals["rlnDefocusV"],
        defocus_angle_deg=vals["rlnDefocusAngle"], voltage_kv=vals["rlnVoltage"],
        spherical_aberration_mm=vals["rlnSphericalAberration"],
        amplitude_contrast=vals["rlnAmplitudeContrast"], phase_shift_deg=vals["rlnPhaseShift"],
        bfactor_angstrom2=vals["rlnCtfBfactor"])


def read_star(path: str | os.PathLike, *, pixel_size_angstrom: float | None = None,
              optics_groups=None, require_image_names: bool = True,
              datadir: str | os.PathLike | None = None) -> ParticleMetadata:
    """Read a RELION 3.0 / 3.1 / 5 particle STAR file into :class:`ParticleMetadata`.

    Args:
        path: The ``.star`` file.
        pixel_size_angstrom: Explicit pixel size in Å. Required when the file has none; must
            agree (rtol 1e-3) with the file's when it has one.
        optics_groups: Optional RELION optics groups to keep (3.1+), each an ``rlnOpticsGroup``
            number or an ``rlnOpticsGroupName``; the others' particles are dropped. Use it for
            files whose groups differ in pixel size (the CLI's ``--optics-group``).
        require_image_names: Demand ``rlnImageName``. ``False`` reads a CTF-only or pose-only
            STAR file (then the CTF columns are required instead), as ``load_particles(ctf_star=...)``
            and ``cryopose evaluate-poses`` do: image names, if any, are resolved but not held
            to the allowed folders (no image is read through them).
        datadir: One more folder images may be read from (the CLI's ``--datadir``); relative
            names are also tried against it, after the current folder and the STAR file's folder.

    Returns:
        Metadata with RELION matrices, shifts in Å, CTF (per-optics-group voltage, Cs and
        amplitude contrast broadcast to particles; a missing ``rlnAmplitudeContrast`` is 0
        with a warning, and ``rlnPhaseShift`` and ``rlnCtfBfactor`` default to 0, as in
        RELION's ``CTF::read``), absolute stack paths and 0-based image indices. A relative
        ``N@stack`` name is resolved against the current folder (where RELION programs run and
        resolve names), else the STAR file's folder, else ``datadir``; absolute names are kept.
        Stacks are read only inside those folders: the real path (symlinks followed) of every
        stack must lie in the STAR file's folder, the current folder or ``datadir``. Missing
        angles give ``rotmats=None``, missing origins ``shifts_angstrom=None``, no CTF columns
        ``ctf=None``. ``box_size`` comes from ``rlnImageSize``, else from the first stack's
        header (inside the allowed folders), else is ``None``; ``table`` keeps every column
        as read.

    Raises:
        InputFileError: Unreadable file, no or empty particle table, a partial set of
            angle/origin/CTF columns (naming the missing column), non-numeric or NaN values
            (naming column and 1-based row), bad image names, optics groups of different
            pixel or box sizes, an image name whose stack lies outside the allowed folders
            (naming the row and the name; pass ``datadir``), a ``datadir`` that is not a folder.
        PixelSizeError: No pixel size anywhere, or the explicit one disagrees with the file.
    """
    path = Path(path)
    blocks = _parse_blocks(path)
    df, optics, table = _choose_tables(path, blocks)
    if len(df) == 0:
        raise InputFileError(path, f"the particle table ({table}) has no rows")
    df = df.reset_index(drop=True)
    cols = set(df.columns)
    groups = take = None
    if optics is not None:
        df, optics, groups, take = _optics_table(path, df, optics, cols, table, optics_groups)
    elif optics_groups is not None:
        raise InputFileError(path, "--optics-group given but the file has no data_optics block (one optics group)")

    def per_particle(col: str) -> np.ndarray | None:
        if col in cols:
            return _numeric(path, df, col, table)
        if optics is not None and col in optics.columns:
            return _numeric(path, optics, col, "data_optics")[take]
        return None

    pixel = _pixel_size(path, per_particle, groups, optics, df, pixel_size_angstrom)
    box_values = per_particle("rlnImageSize")
    box = None if box_values is None else int(round(_one_value(path, box_values, groups, optics, "rlnImageSize",
                                                               df.index, rtol=0)))
    image_paths, image_indices, box = _images_and_box(path, df, cols, table, box, datadir, require_image_names)
    rotmats, shifts_t = _poses(path, df, cols, table, pixel)
    ctf = _ctf(path, df, cols, table, per_particle, require_image_names)
    return ParticleMetadata(pixel_size_angstrom=pixel, box_size=box, rotmats=rotmats, shifts_angstrom=shifts_t,
                            ctf=ctf, image_paths=image_paths, image_indices=image_indices, optics_group=groups,
                            table=df, optics=optics, source=str(path))
