"""RELION STAR particle files (3.0, 3.1, 5.0): the only module that knows ``rln*`` names.

Reading (:func:`read_star`) accepts

* RELION 3.0: one loop block (``data_``, ``data_images``, ``data_particles`` or any single
  block, e.g. ``data_model_class_1``), origins ``rlnOriginX/Y`` in pixels (converted to Å
  with the pixel size), pixel size from ``rlnImagePixelSize`` or
  ``rlnDetectorPixelSize [µm] · 1e4 / rlnMagnification``, CTF optics values per particle;
* RELION 3.1: ``data_optics`` + ``data_particles`` in either order, ``rlnOriginXAngst/YAngst``,
  voltage, Cs and amplitude contrast per optics group, broadcast to the particles;
* RELION 5: as 3.1; extra optics columns (beam tilt, Zernike, mag matrix) pass through.

Conversions: ``rotmats = relion_euler_to_rotmat(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)``;
``shifts_angstrom = (rlnOriginXAngst, rlnOriginYAngst)`` (same sign); defocus in Å,
``rlnDefocusAngle`` and ``rlnPhaseShift`` in degrees as in :class:`cryopose.ctf.CTFParams`
(defocus U and V are kept as written, even when U < V).

Writing (:func:`write_star`) always produces RELION 3.1 format, which RELION 3.1, 4 and 5
read (checked with ``relion_star_printtable``, ``relion_stack_create`` and
``relion_reconstruct`` in the tests).

Image names (``N@stack`` in ``rlnImageName``) follow RELION's convention: relative names are
relative to the folder the program runs in (the project folder), so written files name
stacks so that they resolve from the current folder. When reading, relative names are tried
against the current folder, then the STAR file's folder, then ``datadir``, and stacks are
read only inside those folders (real paths, symlinks followed).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..conventions import PixelSizeError, check_pixel_size
from ..ctf import CTFParams
from ..errors import InputFileError
from ..rotations import relion_euler_to_rotmat, rotmat_to_relion_euler
from .atomic import atomic_write
from .mrc import read_header_info
from .metadata import ParticleMetadata

__all__ = ["read_star", "write_star"]

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
_CHUNK_ROWS = 100_000
_SPACE = re.compile(r"\s")


# ----------------------------------------------------------------------------------------- reading


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


def _image_roots(star_dir: Path, datadir) -> list[tuple[str, str]]:
    """``(label, real path)`` of the folders images may be read from (symlinks resolved)."""
    roots = [("the STAR file's folder", star_dir), ("the current folder", Path.cwd())]
    if datadir is not None:
        roots.append(("--datadir", Path(datadir).absolute()))
    return [(label, os.path.realpath(p)) for label, p in roots]


def _inside(path: str, roots: list[tuple[str, str]]) -> bool:
    """Whether ``path``'s real path (symlinks followed) lies in one of ``roots``."""
    real = os.path.realpath(path)
    for _, root in roots:
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def _resolve_paths(star_path: Path, df: pd.DataFrame, files: list[str], datadir,
                   enforce: bool) -> tuple[list[str], set[str]]:
    """Stack names → absolute paths, and the set of those outside the allowed folders.

    A relative name is tried against the current folder (RELION's convention: names are
    relative to the project folder RELION runs in), then the STAR file's folder, then
    ``datadir``; the first candidate that exists inside the allowed folders wins, else the
    first that exists, else the first. Paths are normalised (``os.path.normpath``) but
    symlinks are kept in them; the allowed-folder check follows symlinks. With ``enforce``
    a path outside the folders is an :class:`InputFileError` naming the row and the name.
    """
    star_dir = star_path.absolute().parent
    roots = _image_roots(star_dir, datadir)
    codes, uniques = pd.factorize(pd.Series(files, dtype=object), sort=False)
    cwd = Path.cwd()
    bases = [cwd, star_dir] + ([Path(datadir).absolute()] if datadir is not None else [])
    resolved, outside = [], set()
    for k, u in enumerate(uniques):
        p = Path(str(u))
        cands = [os.path.normpath(p)] if p.is_absolute() else list(dict.fromkeys(
            os.path.normpath(b / p) for b in bases))
        existing = [c for c in cands if os.path.exists(c)]
        inside = [c for c in existing if _inside(c, roots)]
        chosen = (inside or existing or cands)[0]
        if not inside and not _inside(chosen, roots):
            if enforce:
                i = int(np.flatnonzero(codes == k)[0])
                allowed = ", ".join(f"{label} {root}" for label, root in roots)
                raise InputFileError(star_path, f"rlnImageName {df['rlnImageName'].iloc[i]!r} resolves to "
                                                f"{os.path.realpath(chosen)}, outside the folders images are read "
                                                f"from ({allowed}); pass --datadir DIR (in Python: datadir=) naming "
                                                "a folder that holds the stack", row=int(df.index[i]) + 1)
            outside.add(chosen)
        resolved.append(chosen)
    return [resolved[c] for c in codes], outside


def _strip_mrcs_type(name: str) -> str:
    """``stack.mrc:mrcs`` → ``stack.mrc``: RELION's ``:mrcs`` suffix reads a ``.mrc`` file as a stack."""
    return name[:-5] if name.endswith(":mrcs") else name


def _relion_stack_name(name: str) -> str:
    """A stack name RELION reads: ``.mrc`` stacks (cryoSPARC's) get the ``:mrcs`` suffix, since
    RELION refuses ``N@stack.mrc`` ("``.mrc`` extensions are reserved for 3D maps")."""
    return name + ":mrcs" if name.lower().endswith(".mrc") else name


def _image_names(path: Path, df: pd.DataFrame, datadir=None,
                 enforce: bool = True) -> tuple[list[str], np.ndarray, set[str]]:
    """``N@stack`` names → (absolute stack paths, 0-based indices, paths outside the allowed
    folders); a bare name is image 1."""
    names = df["rlnImageName"]
    missing = np.flatnonzero(names.isna().to_numpy())
    if missing.size:
        raise InputFileError(path, "rlnImageName is empty", row=int(df.index[missing[0]]) + 1)
    parts = [str(v).partition("@") for v in names.tolist()]
    idx = pd.to_numeric(pd.Series([p[0] if p[1] else "1" for p in parts]), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan)
    files = [_strip_mrcs_type(p[2] if p[1] else p[0]) for p in parts]
    bad = np.flatnonzero(~np.isfinite(idx) | (idx < 1) | (idx != np.round(idx)) | np.array([not f for f in files]))
    if bad.size:
        i = int(bad[0])
        raise InputFileError(path, f"rlnImageName {names.iloc[i]!r} is not of the form N@stack.mrcs with N >= 1",
                             row=int(df.index[i]) + 1)
    paths, outside = _resolve_paths(path, df, files, datadir, enforce)
    return paths, idx.astype(np.int64) - 1, outside


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
    groups = None
    if optics is not None:
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
    elif optics_groups is not None:
        raise InputFileError(path, "--optics-group given but the file has no data_optics block (one optics group)")

    def per_particle(col: str) -> np.ndarray | None:
        if col in cols:
            return _numeric(path, df, col, table)
        if optics is not None and col in optics.columns:
            return _numeric(path, optics, col, "data_optics")[take]
        return None

    # pixel size
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
        pixel = check_pixel_size(pixel_size_angstrom, source="--pixel-size", other=file_px,
                                 other_source=f"{path} ({px_label})")
    elif file_px is not None:
        pixel = file_px
    else:
        raise PixelSizeError(f"{path}: no pixel size in the file (no rlnImagePixelSize, nor rlnDetectorPixelSize "
                             "with rlnMagnification); pass --pixel-size (pixel_size_angstrom=...)")

    # box size
    box_values = per_particle("rlnImageSize")
    box = None if box_values is None else int(round(_one_value(path, box_values, groups, optics, "rlnImageSize",
                                                               df.index, rtol=0)))
    # images
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

    # poses
    rotmats = shifts = None
    if _require_all(path, cols, _ANGLES, "Euler angles", table):
        eul = np.stack([_numeric(path, df, c, table) for c in _ANGLES], axis=-1)
        rotmats = relion_euler_to_rotmat(torch.from_numpy(eul)).float()
    if _require_all(path, cols, _ORIGINS_A, "origins in Å", table):
        shifts = np.stack([_numeric(path, df, c, table) for c in _ORIGINS_A], axis=-1)
    elif _require_all(path, cols, _ORIGINS_PX, "origins in pixels", table):
        shifts = np.stack([_numeric(path, df, c, table) for c in _ORIGINS_PX], axis=-1) * pixel
    shifts_t = None if shifts is None else torch.from_numpy(shifts).float()

    # CTF
    ctf = None
    if _require_all(path, cols, _CTF_PARTICLE, "CTF defocus", table):
        vals = {c: _numeric(path, df, c, table) for c in _CTF_PARTICLE}
        for c in _CTF_REQUIRED:
            v = per_particle(c)
            if v is None:
                raise InputFileError(path, f"missing column {c} (needed with rlnDefocusU; in data_optics for "
                                           "RELION 3.1+, in the particle table for 3.0)")
            vals[c] = v
        vals["rlnAmplitudeContrast"] = per_particle("rlnAmplitudeContrast")
        if vals["rlnAmplitudeContrast"] is None:  # RELION's CTF::read uses Q0 = 0 when absent
            warnings.warn(f"{path}: no rlnAmplitudeContrast column; using 0 as RELION does", UserWarning,
                          stacklevel=2)
            vals["rlnAmplitudeContrast"] = np.zeros(len(df))
        for c in _CTF_OPTIONAL:
            v = per_particle(c)
            vals[c] = np.zeros(len(df)) if v is None else v
        for c, ok, want in (("rlnDefocusU", vals["rlnDefocusU"] > 0, "positive (Å of underfocus, RELION's sign)"),
                            ("rlnDefocusV", vals["rlnDefocusV"] > 0, "positive (Å of underfocus, RELION's sign)"),
                            ("rlnVoltage", vals["rlnVoltage"] > 0, "positive"),
                            ("rlnAmplitudeContrast", (vals["rlnAmplitudeContrast"] >= 0)
                             & (vals["rlnAmplitudeContrast"] < 1), "in [0, 1)")):
            bad = np.flatnonzero(~ok)
            if bad.size:
                raise InputFileError(path, f"{c} must be {want}, got {vals[c][bad[0]]:g}",
                                     row=int(df.index[bad[0]]) + 1)
        ctf = CTFParams.create(
            defocus_u_angstrom=vals["rlnDefocusU"], defocus_v_angstrom=vals["rlnDefocusV"],
            defocus_angle_deg=vals["rlnDefocusAngle"], voltage_kv=vals["rlnVoltage"],
            spherical_aberration_mm=vals["rlnSphericalAberration"],
            amplitude_contrast=vals["rlnAmplitudeContrast"], phase_shift_deg=vals["rlnPhaseShift"],
            bfactor_angstrom2=vals["rlnCtfBfactor"])
    elif not require_image_names and not any(c in cols for c in _CTF_PARTICLE):
        raise InputFileError(path, f"{table} has no CTF columns (rlnDefocusU, rlnDefocusV, rlnDefocusAngle)")

    return ParticleMetadata(pixel_size_angstrom=pixel, box_size=box, rotmats=rotmats, shifts_angstrom=shifts_t,
                            ctf=ctf, image_paths=image_paths, image_indices=image_indices, optics_group=groups,
                            table=df, optics=optics, source=str(path))


# ----------------------------------------------------------------------------------------- writing


def _format_column(values) -> list[str]:
    arr = np.asarray(values)
    if arr.dtype == np.float32:  # shortest repr that reads back to the same float32
        return arr.astype(str).tolist()
    if arr.dtype.kind == "f":
        return [f"{v:.10g}" for v in arr.tolist()]
    if arr.dtype.kind in "iub":
        return [str(int(v)) for v in arr.tolist()]
    out = ["" if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else str(v) for v in arr.tolist()]
    for i, s in enumerate(out):  # RELION splits on whitespace: quote empty strings and ones with spaces
        if not s or _SPACE.search(s):
            out[i] = '"' + _SPACE.sub(" ", s) + '"'
    return out


def _write_block(f, name: str, columns: dict[str, object], n: int) -> None:
    header = [f"\n# version 30001\n\ndata_{name}\n\nloop_ "]
    header += [f"_{label} #{i}" for i, label in enumerate(columns, 1)]
    f.write("\n".join(header) + "\n")
    for start in range(0, n, _CHUNK_ROWS):  # stream: 10^6 rows never sit in memory as text
        stop = min(start + _CHUNK_ROWS, n)
        cols = [_format_column(np.asarray(v)[start:stop]) for v in columns.values()]
        f.write("\n".join(" ".join(r) for r in zip(*cols)) + "\n")


def _optics_groups(md: ParticleMetadata) -> tuple[np.ndarray, dict[str, list]]:
    """Per-particle new optics group numbers and the optics table columns."""
    n = len(md)
    g = md.optics_group if md.optics_group is not None else np.ones(n, dtype=np.int64)
    key = pd.DataFrame({"g": g})
    if md.ctf is not None:
        key["v"] = np.round(md.ctf.voltage_kv.detach().double().cpu().numpy(), 6)
        key["cs"] = np.round(md.ctf.spherical_aberration_mm.detach().double().cpu().numpy(), 6)
        key["ac"] = np.round(md.ctf.amplitude_contrast.detach().double().cpu().numpy(), 6)
    combos = key.drop_duplicates().sort_values(list(key.columns)).reset_index(drop=True)
    split = len(combos) != combos["g"].nunique()
    combos["new"] = np.arange(1, len(combos) + 1) if split else combos["g"].to_numpy()
    new = key.merge(combos, on=list(key.columns), how="left")["new"].to_numpy(dtype=np.int64)
    base = {}
    if md.optics is not None and "rlnOpticsGroup" in md.optics.columns:
        for _, r in md.optics.iterrows():
            base[int(r["rlnOpticsGroup"])] = r
    extra = [c for c in (md.optics.columns if md.optics is not None else [])
             if str(c).startswith("rln") and c not in _MANAGED and c != "rlnOpticsGroupName"]
    table: dict[str, list] = {"rlnOpticsGroup": [], "rlnOpticsGroupName": []}
    table.update({c: [] for c in extra})
    for _, c in combos.iterrows():
        src = base.get(int(c["g"]))
        if src is not None and "rlnOpticsGroupName" in src:
            name = str(src["rlnOpticsGroupName"]) + (f"_{int(c['new'])}" if split else "")
        else:
            name = f"opticsGroup{int(c['new'])}"
        table["rlnOpticsGroup"].append(int(c["new"]))
        table["rlnOpticsGroupName"].append(name)
        for col in extra:
            table[col].append(src[col] if src is not None else np.nan)
        if md.ctf is not None:
            table.setdefault("rlnVoltage", []).append(float(c["v"]))
            table.setdefault("rlnSphericalAberration", []).append(float(c["cs"]))
            table.setdefault("rlnAmplitudeContrast", []).append(float(c["ac"]))
        table.setdefault("rlnImagePixelSize", []).append(float(md.pixel_size_angstrom))
        if md.box_size is not None:
            table.setdefault("rlnImageSize", []).append(int(md.box_size))
        table.setdefault("rlnImageDimensionality", []).append(2)
    for col in extra:  # keep integer columns integral after the object round trip
        if md.optics[col].dtype.kind in "iu":
            table[col] = np.asarray(table[col], dtype=np.int64)
    return new, table


def _outside(rel: str) -> bool:
    """Whether a relative path (``os.path.relpath``) climbs out of its base folder."""
    return rel == ".." or rel.startswith(".." + os.sep) or rel.startswith("../")


def _stack_name(path: str, named: str | None, base: Path) -> str:
    """How to write stack ``path`` (absolute) so that it resolves from folder ``base``.

    ``named`` is the stack part of the particle's ``rlnImageName`` in the source table, if any.
    An absolute name that still names ``path`` stays absolute; otherwise the path relative to
    ``base`` when it lies inside ``base``, or when the source named it that way (``../x.mrcs``
    resolved from ``base``); otherwise the absolute path.
    """
    if named and os.path.isabs(named) and os.path.normpath(named) == path:
        return path
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return path
    if not _outside(rel):
        return Path(rel).as_posix()
    if named and not os.path.isabs(named) and os.path.normpath(base / named) == path:
        return Path(rel).as_posix()
    return path


def _written_names(md: ParticleMetadata, base: Path) -> list[str]:
    """``N@stack`` names of ``md``'s images, resolvable from ``base`` (see :func:`_stack_name`)."""
    named = None
    if "rlnImageName" in md.table.columns and not md.table["rlnImageName"].isna().any():
        named = [_strip_mrcs_type((lambda p: p[2] if p[1] else p[0])(str(v).partition("@")))
                 for v in md.table["rlnImageName"].tolist()]
    keys = md.image_paths if named is None else [f"{a}\0{b}" for a, b in zip(md.image_paths, named)]
    codes, uniques = pd.factorize(pd.Series(keys, dtype=object), sort=False)
    written = []
    for u in uniques:
        path, _, name = str(u).partition("\0")
        written.append(_relion_stack_name(_stack_name(path, name or None, base)))
    idx = md.image_indices if md.image_indices is not None else np.zeros(len(md), dtype=np.int64)
    return [f"{i + 1:06d}@{written[c]}" for i, c in zip(idx.tolist(), codes.tolist())]


def _original(table: pd.DataFrame, labels: tuple[str, ...], n: int) -> np.ndarray | None:
    """The table's own float64 values of ``labels`` ``(n, k)``, if all present and numeric."""
    if len(table) != n or not all(c in table.columns for c in labels):
        return None
    try:
        return np.stack([pd.to_numeric(table[c], errors="raise").to_numpy(np.float64) for c in labels], axis=-1)
    except (ValueError, TypeError):
        return None


def _keep_original(new32: np.ndarray, orig: np.ndarray | None) -> np.ndarray:
    """Values ``(n, k)`` to write: the original float64 value wherever the float32 one is its rounding."""
    if orig is None:
        return new32
    return np.where(orig.astype(np.float32) == new32, orig, new32.astype(np.float64))


def write_star(path: str | os.PathLike, metadata: ParticleMetadata, *,
               extra_columns: dict[str, np.ndarray] | None = None,
               image_names: list[str] | None = None,
               relative_to: str | os.PathLike | None = None) -> None:
    """Write particles as a RELION 3.1 STAR file (``data_optics`` + ``data_particles``), atomically.

    Particle columns: ``rlnImageName`` (``N@path``, 1-based ``N``; see below),
    ``rlnOpticsGroup``, ``rlnAngleRot/Tilt/Psi`` (from ``rotmats`` via
    :func:`cryopose.rotations.rotmat_to_relion_euler`, float64), ``rlnOriginXAngst/YAngst``, ``rlnDefocusU/V/Angle``, ``rlnPhaseShift``, ``rlnCtfBfactor``,
    then every other ``rln*`` column of ``metadata.table`` unchanged (non-RELION columns, such
    as cryoSPARC fields, are not written). Optics: one group per input group (split when its
    particles differ in voltage, Cs or amplitude contrast), with pixel and box size, and the
    input's extra optics columns.

    Image names follow RELION's convention: they resolve from the folder programs run in
    (``relative_to``, default the current folder), not from the STAR file's folder, so
    ``relion_reconstruct --i OUT/poses.star`` run where cryopose ran reads the images. A name
    the source table (``metadata.table["rlnImageName"]``) gave for the same stack is kept:
    an absolute one stays absolute, a relative one that resolved from ``relative_to`` is
    written the same way (normalised, e.g. ``../data/a.mrcs``). Any other stack (a name that
    resolved from the input STAR file's folder, a ``.cs`` input, a new stack) is written
    relative to ``relative_to`` when inside it, else as an absolute path. A ``.mrc`` stack
    (cryoSPARC writes its particle stacks so) is named ``N@stack.mrc:mrcs``, the suffix with
    which RELION reads a ``.mrc`` file as a stack; cryopose reads such names too.

    Args:
        path: Output ``.star`` path.
        metadata: The particles (``len >= 1``).
        extra_columns: More particle columns, name (``rlnFoo`` or ``_rlnFoo``) → ``(N,)`` values;
            they may replace pass-through columns but not the ones cryopose writes itself.
        image_names: ``N`` ``rlnImageName`` strings, used verbatim instead of ``image_paths``.
        relative_to: Folder the written names resolve from (default: the current folder).
            RELION programs resolve names relative to the folder they run in (the RELION
            project folder); pass that folder when it is not the current one.

    Raises:
        ValueError: Empty metadata, wrong lengths, or an extra column clashing with a managed one.
    """
    n = len(metadata)
    if n == 0:
        raise ValueError("write_star: cannot write an empty particle table")
    base = Path(os.path.normpath(Path(relative_to).absolute() if relative_to is not None else Path.cwd()))
    table = metadata.table
    cols: dict[str, object] = {}
    if image_names is not None:
        if len(image_names) != n:
            raise ValueError(f"write_star: {len(image_names)} image names for {n} particles")
        cols["rlnImageName"] = np.asarray([str(x) for x in image_names], dtype=object)
    elif metadata.image_paths is not None:
        cols["rlnImageName"] = np.asarray(_written_names(metadata, base), dtype=object)
    groups, optics = _optics_groups(metadata)
    cols["rlnOpticsGroup"] = groups
    if metadata.rotmats is not None:
        rot = metadata.rotmats.detach().cpu()
        eul = rotmat_to_relion_euler(rot.double()).numpy()
        orig = _original(table, _ANGLES, n)
        if orig is not None:  # unchanged poses keep the file's own angles (no float32 noise)
            same = (relion_euler_to_rotmat(torch.from_numpy(orig)).float() - rot).abs().amax(dim=(1, 2)) <= 1e-7
            eul = np.where(same.numpy()[:, None], orig, eul)
        for j, c in enumerate(_ANGLES):
            cols[c] = eul[:, j]
    if metadata.shifts_angstrom is not None:
        sh = metadata.shifts_angstrom.detach().cpu().numpy()
        orig = _original(table, _ORIGINS_A, n)
        if orig is None and (px := _original(table, _ORIGINS_PX, n)) is not None:
            orig = px * metadata.pixel_size_angstrom
        sh = _keep_original(sh, orig)
        cols["rlnOriginXAngst"], cols["rlnOriginYAngst"] = sh[:, 0], sh[:, 1]
    if metadata.ctf is not None:
        c = metadata.ctf
        for label, t in (("rlnDefocusU", c.defocus_u_angstrom), ("rlnDefocusV", c.defocus_v_angstrom),
                         ("rlnDefocusAngle", c.defocus_angle_deg), ("rlnPhaseShift", c.phase_shift_deg),
                         ("rlnCtfBfactor", c.bfactor_angstrom2)):
            orig = _original(table, (label,), n)
            cols[label] = _keep_original(t.detach().cpu().numpy()[:, None], orig)[:, 0]
    for col in table.columns:
        if str(col).startswith("rln") and col not in _MANAGED:
            cols[col] = table[col].to_numpy()
    for name, values in (extra_columns or {}).items():
        label = str(name).lstrip("_")
        if label in _MANAGED:
            raise ValueError(f"write_star: extra column {label} is written by cryopose itself")
        arr = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values)
        if arr.shape != (n,):
            raise ValueError(f"write_star: extra column {label} has shape {arr.shape}, expected ({n},)")
        cols[label] = arr
    with atomic_write(path, "w") as f:
        f.write("# Written by cryopose (RELION 3.1 STAR format)\n")
        _write_block(f, "optics", optics, len(optics["rlnOpticsGroup"]))
        _write_block(f, "particles", cols, n)
