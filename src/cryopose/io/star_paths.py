"""RELION image names (``N@stack`` in ``rlnImageName``) of STAR files: resolving them to stack
paths when reading, and the ``:mrcs`` suffix of ``.mrc`` stacks (see :mod:`cryopose.io.star`).

Relative names are tried against the current folder, then the STAR file's folder, then
``datadir``; stacks are read only inside those folders (real paths, symlinks followed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputFileError

__all__: list[str] = []


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
