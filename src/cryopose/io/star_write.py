"""Writing RELION 3.1 STAR particle files (:func:`write_star`; re-exported by :mod:`cryopose.io.star`).

The written file has ``data_optics`` + ``data_particles``, which RELION 3.1, 4 and 5 read;
image names resolve from the folder programs run in (RELION's convention), see
:mod:`cryopose.io.star`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..rotations import relion_euler_to_rotmat, rotmat_to_relion_euler
from .atomic import atomic_write
from .metadata import ParticleMetadata
from .star_paths import _relion_stack_name, _strip_mrcs_type
from .star_read import _ANGLES, _MANAGED, _ORIGINS_A, _ORIGINS_PX

__all__ = ["write_star"]

_CHUNK_ROWS = 100_000
_SPACE = re.compile(r"\s")


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


def _pose_columns(metadata: ParticleMetadata) -> dict[str, np.ndarray]:
    """``rlnAngleRot/Tilt/Psi`` (degrees, float64) and ``rlnOriginXAngst/YAngst`` of ``metadata``;
    unchanged poses keep the source table's own values (no float32 noise)."""
    n, table = len(metadata), metadata.table
    cols: dict[str, np.ndarray] = {}
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
    return cols


def _ctf_columns(metadata: ParticleMetadata) -> dict[str, np.ndarray]:
    """Per-particle CTF columns (defocus in Å, angles in degrees, B-factor in Å²), empty without CTF."""
    cols: dict[str, np.ndarray] = {}
    if metadata.ctf is not None:
        n, c = len(metadata), metadata.ctf
        for label, t in (("rlnDefocusU", c.defocus_u_angstrom), ("rlnDefocusV", c.defocus_v_angstrom),
                         ("rlnDefocusAngle", c.defocus_angle_deg), ("rlnPhaseShift", c.phase_shift_deg),
                         ("rlnCtfBfactor", c.bfactor_angstrom2)):
            orig = _original(metadata.table, (label,), n)
            cols[label] = _keep_original(t.detach().cpu().numpy()[:, None], orig)[:, 0]
    return cols


def _passed_and_extra_columns(metadata: ParticleMetadata, extra_columns) -> dict[str, object]:
    """The table's other ``rln*`` columns, then ``extra_columns`` (``ValueError`` for a managed
    label or a wrong shape)."""
    n, table = len(metadata), metadata.table
    cols: dict[str, object] = {}
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
    return cols


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
    cols: dict[str, object] = {}
    if image_names is not None:
        if len(image_names) != n:
            raise ValueError(f"write_star: {len(image_names)} image names for {n} particles")
        cols["rlnImageName"] = np.asarray([str(x) for x in image_names], dtype=object)
    elif metadata.image_paths is not None:
        cols["rlnImageName"] = np.asarray(_written_names(metadata, base), dtype=object)
    groups, optics = _optics_groups(metadata)
    cols["rlnOpticsGroup"] = groups
    cols.update(_pose_columns(metadata))
    cols.update(_ctf_columns(metadata))
    cols.update(_passed_and_extra_columns(metadata, extra_columns))
    with atomic_write(path, "w") as f:
        f.write("# Written by cryopose (RELION 3.1 STAR format)\n")
        _write_block(f, "optics", optics, len(optics["rlnOpticsGroup"]))
        _write_block(f, "particles", cols, n)
