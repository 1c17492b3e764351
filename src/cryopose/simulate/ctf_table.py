"""CTF tables for ``cryopose simulate --ctf-table``, read from formats that cannot run code.

A table has one row per micrograph or particle in cryoDRGN's layout
``[box, Å/px, dfU Å, dfV Å, dfAng °, kV, Cs mm, amplitude contrast, phase shift °]``
(the box and pixel columns are not used). Accepted files:

* ``.npy``: a float ``(M, 9)`` array (``cryodrgn parse_ctf_*`` output saved with
  :func:`numpy.save`), read with ``allow_pickle=False``;
* ``.star``: a RELION particle or CTF STAR file (3.0/3.1/5); its CTF columns become the rows
  (``rlnCtfBfactor`` is not part of the table and is dropped);
* ``.csv``: comma-separated, 9 columns in the order above, one optional header line.

A pickle (``.pkl``, cryoDRGN's ``ctf.pkl``) is refused, because unpickling a file can run any
code; the message says how to convert a trusted one to ``.npy``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputFileError

__all__ = ["CTF_TABLE_SUFFIXES", "load_ctf_table"]

#: File types :func:`load_ctf_table` reads.
CTF_TABLE_SUFFIXES = (".npy", ".star", ".csv")
_COLUMNS = 9
_LAYOUT = "box, Å/px, dfU Å, dfV Å, dfAng °, kV, Cs mm, amplitude contrast, phase shift °"
_ACCEPTED = (f".npy (a float (M, 9) array, read with allow_pickle=False), .star (RELION CTF columns) or "
             f".csv (9 comma-separated columns: {_LAYOUT}; one optional header line)")
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".p")


def _refuse_pickle(path: Path) -> InputFileError:
    return InputFileError(path, "a pickle is not read as a CTF table, because unpickling a file can run code. Give "
                                f"the table as {_ACCEPTED}. cryoDRGN's ctf.pkl is a pickled (N, 9) array: only if "
                                "you trust the file, convert it once with python -c \"import pickle,numpy; "
                                "numpy.save('ctf.npy', pickle.load(open('ctf.pkl','rb')))\"")


def _read_npy(path: Path) -> np.ndarray:
    try:
        table = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InputFileError(path, "refused: the .npy holds Python objects (an object array), and loading "
                                       "those could run code; save the table as a float (M, 9) array") from None
        raise InputFileError(path, f"not a readable .npy CTF table ({err})") from None
    except (OSError, EOFError) as err:
        raise InputFileError(path, f"not a readable .npy CTF table ({err})") from None
    if not isinstance(table, np.ndarray) or not np.issubdtype(table.dtype, np.number):
        raise InputFileError(path, f"a .npy CTF table must hold one numeric (M, 9) array, not a "
                                   f"{getattr(table, 'dtype', type(table).__name__)}")
    return table.astype(np.float64)


def _read_star(path: Path) -> np.ndarray:
    from ..conventions import PixelSizeError
    from ..io.star import read_star

    try:
        meta = read_star(path, require_image_names=False)
    except PixelSizeError:  # the table's pixel column is not used: any value will do
        meta = read_star(path, require_image_names=False, pixel_size_angstrom=1.0)
    if meta.ctf is None:
        raise InputFileError(path, "no CTF columns (rlnDefocusU, rlnDefocusV, rlnDefocusAngle) for a CTF table")
    c = meta.ctf
    n = len(c.defocus_u_angstrom)
    box = np.full(n, float(meta.box_size or 0))
    apix = np.full(n, float(meta.pixel_size_angstrom))
    cols = [c.defocus_u_angstrom, c.defocus_v_angstrom, c.defocus_angle_deg, c.voltage_kv,
            c.spherical_aberration_mm, c.amplitude_contrast, c.phase_shift_deg]
    return np.stack([box, apix] + [col.double().numpy() for col in cols], axis=1)


def _read_csv(path: Path) -> np.ndarray:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(path, f"not a readable .csv CTF table ({err})") from None
    if lines:
        try:
            [float(v) for v in lines[0].split(",")]
        except ValueError:
            lines = lines[1:]  # a header line
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append([float(v) for v in line.split(",")])
        except ValueError:
            raise InputFileError(path, f"non-numeric value in CSV line {line!r}", row=i + 1) from None
        if len(rows[-1]) != _COLUMNS:
            raise InputFileError(path, f"{len(rows[-1])} columns, expected {_COLUMNS} ({_LAYOUT})", row=i + 1)
    return np.asarray(rows, dtype=np.float64).reshape(-1, _COLUMNS)


def load_ctf_table(path: str | os.PathLike) -> np.ndarray:
    """Read a CTF table from ``.npy``, ``.star`` or ``.csv`` (see the module docstring); no code runs.

    Args:
        path: The file; its suffix (case-insensitive) says the format.

    Returns:
        float64 array ``(M, 9)``: ``[box, Å/px, dfU Å, dfV Å, dfAng °, kV, Cs mm, amplitude
        contrast, phase shift °]``.

    Raises:
        InputFileError: Missing file; a pickle (``.pkl``: refused, with how to convert a trusted
            one) or another unknown suffix; an object-array ``.npy``; an unreadable file, wrong
            shape, no rows, non-finite values, a non-positive voltage or an amplitude contrast
            outside [0, 1).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        raise _refuse_pickle(path)
    readers = {".npy": _read_npy, ".star": _read_star, ".csv": _read_csv}
    if suffix not in readers:
        raise InputFileError(path, f"unknown CTF table type {path.suffix!r}: give {_ACCEPTED}")
    table = readers[suffix](path)
    if table.ndim != 2 or table.shape[1] != _COLUMNS or table.shape[0] == 0:
        raise InputFileError(path, f"CTF table must be (M, 9) rows [{_LAYOUT}], got shape {table.shape}")
    if not np.isfinite(table).all():
        raise InputFileError(path, "CTF table holds NaN or infinite values")
    if (table[:, 5] <= 0).any():
        raise InputFileError(path, "CTF table has a non-positive voltage (column 6, kV)")
    if ((table[:, 7] < 0) | (table[:, 7] >= 1)).any():
        raise InputFileError(path, "CTF table has an amplitude contrast outside [0, 1) (column 8)")
    return table
