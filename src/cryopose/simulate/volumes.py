"""Volumes to simulate from: MRC maps resampled to a requested grid, and atomic models
(PDB / mmCIF) turned into electron-scattering density.

Both paths return a :class:`cryopose.io.mrc.MapData` with a cubic float32 volume ``(z, y, x)``
whose origin is voxel ``n // 2`` on every axis (:mod:`cryopose.conventions`).

**Maps** (:func:`resample_volume`). A map of ``n0`` voxels of ``a0`` Å covers a field of view
``L0 = n0 · a0``. To reach pixel ``a`` and box ``n``:

* ``a == a0``: real-space crop or zero-pad around the origin ``n // 2``.
* ``m = n0 · a0 / a`` an integer (e.g. 100 px at 3.54 Å → 64 px at 5.53125 Å): Fourier
  crop (``m < n0``) or zero-pad (``m > n0``) of the centred 3D transform to ``m³`` (values keep
  their scale, :func:`cryopose.fourier.fourier_downsample_volume`), then real-space crop/pad
  from ``m`` to ``n``.
* otherwise (non-integer ratio): the map's Fourier series (its band-limited, periodic
  trigonometric interpolant, low-passed at the new Nyquist ``1 / (2a)`` when downsampling) is
  evaluated directly on the new grid ``x_j = (j − n // 2) · a`` — a separable exact
  resampling done with one ``(n × n0)`` matrix per axis — and points outside the old field of
  view are set to zero, which is the real-space crop/pad.

**Atomic models** (:func:`model_to_density`). gemmi's ``DensityCalculatorE`` sums the
electron scattering factors (Peng 1996 five-Gaussian fits, ``Element.c4322``) of every atom,
each blurred by ``exp(−B s²/4)`` with ``B = B_atom + blur``. The result is the
electron-scattering density ``ρ`` in **Å⁻²** (Å of scattering amplitude per Å³: the integral
``∫ρ dV = Σ_atoms f_e(0)``, checked in the tests). Waters are removed, the model's centre of
mass is placed at voxel ``n // 2`` and the map is computed on the exact ``n³`` grid of pixel
``a``. The default blur ``16 a²`` Å² is what ChimeraX ``molmap`` uses at resolution ``2a``
(Gaussian σ = 0.225 · 2a, B = 8π²σ²), so the map is smooth at the Nyquist frequency instead
of aliasing the sharp atomic form factors.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..conventions import check_pixel_size
from ..errors import InputFileError, UserError
from ..fourier import centered_fft3, centered_ifft3, fourier_downsample_volume
from ..io.mrc import MapData, read_map

__all__ = [
    "MAP_SUFFIXES",
    "MODEL_SUFFIXES",
    "DEFAULT_MODEL_BOX",
    "MODEL_MARGIN",
    "load_volume",
    "resample_volume",
    "crop_or_pad_volume",
    "model_to_density",
    "default_model_grid",
]

MAP_SUFFIXES = (".mrc", ".map", ".mrcs", ".ccp4")
MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")
#: Box (px) used for an atomic model when neither box nor pixel size is given.
DEFAULT_MODEL_BOX = 128
#: The box edge is at least this many times the model's diameter (twice its largest distance
#: from the centre of mass) when it is chosen automatically.
MODEL_MARGIN = 1.5
_MIN_AUTO_PIXEL = 1.0


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in MODEL_SUFFIXES + MAP_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def load_volume(input: str | os.PathLike, *, box_size: int | None = None,
                pixel_size_angstrom: float | None = None,
                input_pixel_size_angstrom: float | None = None,
                blur_angstrom2: float | None = None, chains: Sequence[str] | None = None) -> MapData:
    """Load a map or an atomic model as a cubic volume on the requested grid.

    Grid rules (both for maps and models): with both ``box_size`` and ``pixel_size_angstrom``
    the output has exactly that grid. For a **map**, giving only one of them keeps the map's
    field of view ``n0 · a0`` (``--box-size 64`` on the 100 px β-gal map Fourier-crops it to
    64 px at 5.53 Å; ``--pixel-size`` alone gives ``round(n0 a0 / a)`` px) and giving neither
    keeps the map as it is. For a **model**, a missing box or pixel is chosen so that the box
    edge is at least :data:`MODEL_MARGIN` × the model's diameter: pixel only → smallest even
    box that fits; box only → the pixel that fits; neither → :data:`DEFAULT_MODEL_BOX` px with
    the pixel that fits, but not finer than 1 Å (the box then grows).

    Args:
        input: ``.mrc``/``.map``/``.mrcs`` map, or ``.pdb``/``.ent``/``.cif``/``.mmcif``
            (optionally ``.gz``) atomic model.
        box_size: Output box edge in pixels (> 0).
        pixel_size_angstrom: Output pixel size in Å (> 0).
        input_pixel_size_angstrom: The map's own voxel size in Å, overriding its header
            (headers are often wrong). Ignored for models.
        blur_angstrom2: Extra B-factor (Å²) added to every atom of a model; default
            ``16 · pixel²`` (see the module docstring). Ignored for maps.
        chains: Chains of a model to keep (default all); an error for maps.

    Returns:
        :class:`~cryopose.io.mrc.MapData` with a float32 ``(n, n, n)`` volume ``(z, y, x)``,
        origin at ``n // 2``, and its pixel size.

    Raises:
        InputFileError: Unknown file type, unreadable or empty file, or a non-cubic map.
        PixelSizeError: The map header's voxel size is zero and no
            ``input_pixel_size_angstrom`` was given, or a given pixel size is not positive.
        UserError: ``box_size`` not positive, a model that does not fit in the box, or
            ``chains`` given for a map.
    """
    path = Path(input)
    if box_size is not None and int(box_size) <= 0:
        raise UserError(f"box size must be a positive number of pixels, got {box_size}")
    if pixel_size_angstrom is not None:
        pixel_size_angstrom = check_pixel_size(pixel_size_angstrom, source="requested pixel size")
    suffix = _suffix(path)
    if suffix in MODEL_SUFFIXES:
        return model_to_density(path, box_size=box_size, pixel_size_angstrom=pixel_size_angstrom,
                                blur_angstrom2=blur_angstrom2, chains=chains)
    if chains is not None:
        raise UserError(f"{path}: chains can be selected in an atomic model, not in a map")
    if suffix not in MAP_SUFFIXES:
        raise InputFileError(path, f"unknown volume type {suffix!r}: give an MRC map "
                                   f"({', '.join(MAP_SUFFIXES)}) or an atomic model ({', '.join(MODEL_SUFFIXES)})")
    data = read_map(path, pixel_size_angstrom=input_pixel_size_angstrom, require_cubic=True)
    n0, a0 = data.volume.shape[-1], data.pixel_size_angstrom
    if box_size is None and pixel_size_angstrom is None:
        return MapData(volume=data.volume, pixel_size_angstrom=a0, voxel_size_angstrom=(a0,) * 3)
    if pixel_size_angstrom is None:
        pixel_size_angstrom = n0 * a0 / int(box_size)
    if box_size is None:
        box_size = max(1, int(round(n0 * a0 / pixel_size_angstrom)))
    vol = resample_volume(data.volume, a0, pixel_size_angstrom, int(box_size))
    return MapData(volume=vol, pixel_size_angstrom=float(pixel_size_angstrom),
                   voxel_size_angstrom=(float(pixel_size_angstrom),) * 3)


# --------------------------------------------------------------------------------------------
# Map resampling
# --------------------------------------------------------------------------------------------


def crop_or_pad_volume(volume: np.ndarray, box_size: int) -> np.ndarray:
    """Real-space crop or zero-pad a cubic volume ``(n, n, n)`` to ``box_size³``.

    The origin voxel ``n // 2`` lands on ``box_size // 2`` (even and odd sizes).
    """
    n = volume.shape[-1]
    if n == box_size:
        return np.ascontiguousarray(volume, dtype=np.float32)
    if box_size < n:
        s = n // 2 - box_size // 2
        return np.ascontiguousarray(volume[s:s + box_size, s:s + box_size, s:s + box_size], dtype=np.float32)
    out = np.zeros((box_size,) * 3, dtype=np.float32)
    s = box_size // 2 - n // 2
    out[s:s + n, s:s + n, s:s + n] = volume
    return out


def _fourier_pad_volume(volume: torch.Tensor, m: int) -> torch.Tensor:
    """Upsample ``(n, n, n)`` to ``m³`` (``m > n``) by zero-padding its centred transform.

    Taking the real part of the inverse transform splits an even ``n``'s Nyquist term evenly
    between ``±n/2``; values keep their scale.
    """
    n = volume.shape[-1]
    ft = centered_fft3(volume.to(torch.float64))
    big = torch.zeros((m, m, m), dtype=ft.dtype)
    s = m // 2 - n // 2
    big[s:s + n, s:s + n, s:s + n] = ft
    return centered_ifft3(big).real * (m**3) / (n**3)


def _interp_matrix(n_in: int, pixel_in: float, n_out: int, pixel_out: float) -> np.ndarray:
    """Real ``(n_out, n_in)`` matrix evaluating the Fourier series of ``n_in`` samples (spacing
    ``pixel_in``, origin ``n_in // 2``) at ``(j − n_out // 2) · pixel_out``, low-passed at
    ``1 / (2 pixel_out)``; rows of points outside the input field of view are zero."""
    length = n_in * pixel_in
    k = np.arange(n_in) - n_in // 2
    nyquist = 0.5 / pixel_out * length  # new Nyquist in cycles per input field of view
    # Frequencies below the new Nyquist; one exactly at it aliases with its negative on the new
    # grid and gets half weight (what Fourier cropping does for even boxes).
    weight = np.where(np.isclose(np.abs(k), nyquist, rtol=1e-9), 0.5, (np.abs(k) < nyquist).astype(float))
    k, weight = k[weight > 0], weight[weight > 0]
    x_in = (np.arange(n_in) - n_in // 2) * pixel_in
    x_out = (np.arange(n_out) - n_out // 2) * pixel_out
    e_out = np.exp(2j * np.pi * np.outer(x_out, k) / length)
    e_in = np.exp(2j * np.pi * np.outer(x_in, k) / length)
    mat = ((e_out * weight) @ e_in.conj().T).real / n_in
    lo, hi = -(n_in // 2 + 0.5) * pixel_in, (n_in - n_in // 2 - 0.5) * pixel_in
    mat[(x_out < lo) | (x_out >= hi)] = 0.0
    return mat


def resample_volume(volume: np.ndarray, pixel_size_in: float, pixel_size_out: float,
                    box_size: int) -> np.ndarray:
    """Resample a cubic map to a new pixel size and box (see the module docstring).

    Args:
        volume: ``(n0, n0, n0)`` map ``(z, y, x)``, origin ``n0 // 2``.
        pixel_size_in: Its voxel size in Å.
        pixel_size_out: Output pixel size in Å.
        box_size: Output box edge in pixels.

    Returns:
        float32 ``(box_size,) * 3`` map, origin ``box_size // 2``, values on the input's scale
        (a constant map stays the same constant inside the field of view).
    """
    vol = np.asarray(volume, dtype=np.float32)
    n0 = vol.shape[-1]
    if math.isclose(pixel_size_in, pixel_size_out, rel_tol=1e-6):
        return crop_or_pad_volume(vol, box_size)
    m_float = n0 * pixel_size_in / pixel_size_out
    m = int(round(m_float))
    if abs(m_float - m) < 1e-3 and m >= 1:
        t = torch.tensor(vol, dtype=torch.float64)
        res = fourier_downsample_volume(t, m) if m < n0 else _fourier_pad_volume(t, m)
        return crop_or_pad_volume(res.numpy(), box_size)
    mat = _interp_matrix(n0, pixel_size_in, box_size, pixel_size_out)
    out = np.einsum("ai,ijk->ajk", mat, vol.astype(np.float64), optimize=True)
    out = np.einsum("bj,ajk->abk", mat, out, optimize=True)
    out = np.einsum("ck,abk->abc", mat, out, optimize=True)
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Atomic models
# --------------------------------------------------------------------------------------------


def _read_model(path: Path, chains: Sequence[str] | None = None):
    import gemmi

    if not path.is_file():
        raise InputFileError(path, "no such file")
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as err:
        raise InputFileError(path, f"not a readable PDB/mmCIF model ({err})") from None
    if len(st) == 0:
        raise InputFileError(path, "the model file holds no model")
    st.remove_waters()
    st.remove_empty_chains()
    while len(st) > 1:  # keep the first model (NMR ensembles)
        del st[len(st) - 1]
    if chains is not None:
        wanted = [str(c) for c in chains]
        present = [ch.name for ch in st[0]]
        missing = [c for c in wanted if c not in present]
        if not wanted or missing:
            raise InputFileError(path, f"chain(s) {', '.join(missing) or '(none given)'} not in the model "
                                       f"(it has {', '.join(present)})")
        for name in present:
            if name not in wanted:
                st[0].remove_chain(name)
    if st[0].count_atom_sites() == 0:
        raise InputFileError(path, "the model holds no atoms (after removing waters)")
    return st


def _atom_positions(model) -> np.ndarray:
    return np.array([a.pos.tolist() for ch in model for res in ch for a in res], dtype=np.float64)


def default_model_grid(diameter_angstrom: float, *, box_size: int | None = None,
                       pixel_size_angstrom: float | None = None) -> tuple[int, float]:
    """Box and pixel for a model of the given diameter (rules of :func:`load_volume`).

    Returns:
        ``(box_size, pixel_size_angstrom)``.
    """
    span = MODEL_MARGIN * diameter_angstrom
    if box_size is not None and pixel_size_angstrom is not None:
        return int(box_size), float(pixel_size_angstrom)
    if pixel_size_angstrom is not None:
        box = max(16, 2 * math.ceil(span / pixel_size_angstrom / 2))
        return box, float(pixel_size_angstrom)
    if box_size is not None:
        return int(box_size), span / int(box_size)
    pixel = max(_MIN_AUTO_PIXEL, math.ceil(span / DEFAULT_MODEL_BOX * 100) / 100)
    box = max(DEFAULT_MODEL_BOX, 2 * math.ceil(span / pixel / 2))
    return box, pixel


def model_to_density(path: str | os.PathLike, *, box_size: int | None = None,
                     pixel_size_angstrom: float | None = None,
                     blur_angstrom2: float | None = None, chains: Sequence[str] | None = None) -> MapData:
    """Electron-scattering density of an atomic model on a cubic grid (gemmi).

    Follows gemmi's ``DensityCalculatorE`` (electron form factors, real-space summation on a
    periodic P1 cell equal to the box); see the module docstring for units and blur.

    Args:
        path: PDB or mmCIF file (waters are dropped; the first model is used).
        box_size: Box edge in pixels; chosen by :func:`default_model_grid` if ``None``.
        pixel_size_angstrom: Pixel size in Å; chosen by :func:`default_model_grid` if ``None``.
        blur_angstrom2: Extra B-factor in Å² (default ``16 · pixel²``; must be >= 0).
        chains: Chain names to keep (e.g. ``["A"]``: one copy of a homodimer's asymmetric
            unit, such as the monomeric biological unit of 4AKE); default all chains.

    Returns:
        :class:`~cryopose.io.mrc.MapData`: float32 ``(n, n, n)`` ``(z, y, x)`` density in Å⁻²,
        non-negative, with the model's centre of mass (atomic masses) at voxel ``n // 2``.

    Raises:
        InputFileError: The file cannot be read as a model, holds no atoms, or lacks a chain
            of ``chains``.
        UserError: Negative blur, or the model does not fit in the requested box (it would
            wrap around the periodic cell).
    """
    import gemmi

    path = Path(path)
    st = _read_model(path, chains)
    model = st[0]
    com = np.array(model.calculate_center_of_mass().tolist())
    pos = _atom_positions(model)
    radius = float(np.linalg.norm(pos - com, axis=1).max())
    box, pixel = default_model_grid(2 * radius, box_size=box_size, pixel_size_angstrom=pixel_size_angstrom)
    blur = 16.0 * pixel**2 if blur_angstrom2 is None else float(blur_angstrom2)
    if blur < 0:
        raise UserError(f"model blur must be >= 0 Å², got {blur}")
    origin = (box // 2) * pixel
    lo, hi = origin - (box // 2) * pixel, origin + (box - box // 2) * pixel
    moved = pos - com + origin
    if (moved.min() < lo) or (moved.max() >= hi):
        raise UserError(f"{path}: the model ({2 * radius:.1f} Å across) does not fit in a box of "
                        f"{box} px × {pixel:g} Å = {box * pixel:.1f} Å; use a larger box or pixel size")
    if 2 * radius > box * pixel:
        warnings.warn(f"{path}: the model ({2 * radius:.1f} Å across) is larger than the box "
                      f"({box * pixel:.1f} Å); some views will be cut", stacklevel=2)
    shift = gemmi.Position(*(origin - c for c in com))
    for ch in model:
        for res in ch:
            for atom in res:
                atom.pos = atom.pos + shift
    edge = box * pixel
    st.cell = gemmi.UnitCell(edge, edge, edge, 90.0, 90.0, 90.0)
    st.spacegroup_hm = "P 1"
    calc = gemmi.DensityCalculatorE()
    calc.d_min = 2.0 * pixel
    calc.blur = blur
    calc.set_grid_cell_and_spacegroup(st)
    calc.grid.set_size(box, box, box)
    calc.grid.fill(0.0)
    calc.add_model_density_to_grid(model)
    calc.grid.symmetrize_sum()
    arr = np.array(calc.grid, copy=True)  # indexed [x, y, z]
    vol = np.ascontiguousarray(arr.transpose(2, 1, 0), dtype=np.float32)
    vol = np.maximum(vol, 0.0)
    return MapData(volume=vol, pixel_size_angstrom=float(pixel), voxel_size_angstrom=(float(pixel),) * 3)
