"""Data generator of ``benchmarks/realistic.py``: particles "as a user hands them over", made by
RELION 3.1's ``relion_project`` from real structures, with the noise added here.

One data set is a (structure, row, SNR, seed, N, box) combination; see the module docstring of
``benchmarks/realistic.py`` for the specification (spectrum, SNR definition, views, shifts).
Everything is written under a work folder and reused when it is already there:

``WORK/volumes/``                  the true maps (and the 15 Å low-passes for ``cryopose refine``)
``WORK/<structure>_b<box>_n<N>_s<seed>/``
    ``geom_<views>_<shifts>.star``  ``relion_project``'s input: true poses, true origins (Å), CTF
    ``clean_<views>_<shifts>.mrcs`` ``relion_project --ctf`` output (noise-free, shifted, CTF'd)
    ``<row>_snr<snr>/particles.mrcs``  the noisy stack (what the method reads)
    ``<row>_snr<snr>/particles.star``  what the method sees: CTF, no poses, no origins (the
                                       ``ideal`` row gives zero origins: the particles are centred)
    ``<row>_snr<snr>/truth.star``      the same particles with the true poses and origins
    ``<row>_snr<snr>/data.json``       the spec, the noise σ, the measured SNR and noise spectrum

Only numpy, mrcfile and cryopose's own rotation, FFT and PDB→map code are used; the images are
``relion_project``'s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import time
import zlib
from pathlib import Path

import mrcfile
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYOPOSE_SHARED_DATA", REPO.parent / "shared" / "data"))

#: Rows of the benchmark and the factors each one turns on.
ROW_FACTORS = {
    "ideal": {"views": "uniform", "shifted": False, "noise": "white", "origins_given": True},
    "shifts": {"views": "uniform", "shifted": True, "noise": "white", "origins_given": False},
    "views": {"views": "preferred", "shifted": False, "noise": "white", "origins_given": False},
    "coloured": {"views": "uniform", "shifted": False, "noise": "coloured", "origins_given": False},
    "all": {"views": "preferred", "shifted": True, "noise": "coloured", "origins_given": False},
}

BASE_BOX = 128


@dataclasses.dataclass(frozen=True)
class Structure:
    """A benchmark structure.

    Attributes:
        name: Key used on the command line and in folder names.
        symmetry: Point group for scoring (RELION symbol).
        base_pixel_angstrom: Pixel size at the 128 px box; other boxes keep the field of
            view ``128 × base_pixel_angstrom`` (pixel ``base · 128 / box``).
        source: The file in ``shared/data`` it is made from.
        description: One line for the report.
    """

    name: str
    symmetry: str
    base_pixel_angstrom: float
    source: Path
    description: str


STRUCTURES = {
    "betagal": Structure("betagal", "D2", 3.54, SHARED / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc",
                         "β-galactosidase, real RELION-tutorial map (100³, 3.54 Å) zero-padded to 128 px"),
    "4ake": Structure("4ake", "C1", 1.2, SHARED / "pdb" / "4ake_mdanalysis.pdb",
                      "4AKE chain A, cryopose model_to_density (gemmi, blur 16·a² Å²), 1.2 Å/px at 128 px"),
}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Knobs of the simulated data (defaults: the issue's).

    Attributes:
        shift_sigma_px: σ of the Gaussian in-plane shift, per axis, in pixels of the data set's box.
        preferred_fraction: Fraction of particles whose viewing direction lies in the cap.
        preferred_cone_deg: Half-angle of that cap (directions uniform on the cap).
        preferred_rot_tilt_deg: ``(rot, tilt)`` of the cap's centre (RELION angles; the viewing
            direction of ``(rot, tilt)`` is ``(cos rot sin tilt, sin rot sin tilt, cos tilt)``
            in the map's frame, the third row of RELION's matrix).
        noise_k0_per_angstrom: ``k0`` of the coloured spectrum ``P(k) ∝ 1 + 3 exp(−(k/k0)²)``.
        noise_low_high_ratio: ``P(0) / P(∞)`` (4: the ``3`` above is ``ratio − 1``).
        ctf_table: ``(M, 9)`` cryoDRGN CTF table to draw CTFs from (without replacement).
    """

    shift_sigma_px: float = 4.0
    preferred_fraction: float = 0.4
    preferred_cone_deg: float = 10.0
    preferred_rot_tilt_deg: tuple[float, float] = (0.0, 0.0)
    noise_k0_per_angstrom: float = 0.025
    noise_low_high_ratio: float = 4.0
    ctf_table: Path = SHARED / "ctf_distributions" / "empiar10028_ctf_cryodrgn.npy"

    def key(self) -> dict:
        """JSON-ready dict of the spec (recorded in every data set's ``data.json``)."""
        d = dataclasses.asdict(self)
        d["ctf_table"] = str(self.ctf_table)
        d["preferred_rot_tilt_deg"] = list(self.preferred_rot_tilt_deg)
        return d


def pixel_size(structure: Structure, box: int) -> float:
    """Pixel size in Å of ``structure`` in a ``box``-px data set (same field of view as 128 px)."""
    return structure.base_pixel_angstrom * BASE_BOX / int(box)


def _stable_int(text: str) -> int:
    return zlib.crc32(text.encode())


# ----------------------------------------------------------------------------------- volumes


def truth_volume(structure: Structure, box: int, workdir: Path) -> Path:
    """Write (once) and return the true map of ``structure`` at ``box`` px.

    β-gal: the 100³ map at 3.54 Å zero-padded in real space to 128³ (origin ``n // 2`` kept,
    :func:`cryopose.simulate.volumes.crop_or_pad_volume`), then Fourier-cropped to ``box`` if
    ``box < 128`` (:func:`cryopose.fourier.fourier_downsample_volume`). 4AKE: chain A by
    :func:`cryopose.simulate.volumes.model_to_density` directly on the ``box`` grid.
    """
    import torch

    from cryopose.fourier import fourier_downsample_volume
    from cryopose.io.mrc import read_map, write_map
    from cryopose.simulate.volumes import crop_or_pad_volume, model_to_density

    apix = pixel_size(structure, box)
    out = workdir / "volumes" / f"{structure.name}_{box}px_{apix:.4g}A.mrc"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if structure.name == "betagal":
        vol = read_map(structure.source, pixel_size_angstrom=structure.base_pixel_angstrom).volume
        vol = crop_or_pad_volume(np.asarray(vol, dtype=np.float32), max(BASE_BOX, box))
        if box < BASE_BOX:
            vol = fourier_downsample_volume(torch.from_numpy(vol.astype(np.float64)), box).numpy()
    elif structure.name == "4ake":
        vol = model_to_density(structure.source, box_size=box, pixel_size_angstrom=apix, chains=["A"]).volume
    else:
        raise ValueError(f"unknown structure {structure.name}")
    write_map(out, vol, apix)
    return out


def lowpass_map(src: Path, resolution_angstrom: float, out: Path) -> Path:
    """Write ``src`` low-passed at ``resolution_angstrom`` (once): its centred 3D transform
    (:func:`cryopose.fourier.centered_fft3`) times a raised-cosine edge from
    ``1/res − 1/(n·a)`` to ``1/res + 1/(n·a)`` cycles/Å."""
    import torch

    from cryopose.fourier import centered_fft3, centered_ifft3, radial_index_3d
    from cryopose.io.mrc import read_map, write_map

    if out.exists():
        return out
    m = read_map(src)
    vol = torch.from_numpy(np.asarray(m.volume, dtype=np.float64))
    n, apix = vol.shape[-1], m.pixel_size_angstrom
    k = radial_index_3d(n).double() / (n * apix)
    f0, w = 1.0 / resolution_angstrom, 1.0 / (n * apix)
    t = ((k - (f0 - w)) / (2 * w)).clamp(0, 1)
    filt = 0.5 * (1 + torch.cos(math.pi * t))
    write_map(out, centered_ifft3(centered_fft3(vol) * filt).real.numpy(), apix)
    return out


# ----------------------------------------------------------------------------------- geometry


def draw_geometry(structure: Structure, n: int, box: int, seed: int, spec: DataSpec) -> dict:
    """All random draws of one (structure, N, box, seed): shared by the rows, so rows differ
    only in the factor they turn on.

    Returns:
        dict of numpy arrays: ``euler_uniform`` and ``euler_preferred`` ``(n, 3)`` RELION
        ``(rot, tilt, psi)`` in degrees (the preferred set equals the uniform one except on the
        ``preferred`` mask, exactly ``round(fraction · n)`` particles), ``preferred`` ``(n,)``
        bool, ``shifts_px`` ``(n, 2)`` ``(x, y)`` origins in px (Gaussian, σ per axis), and
        ``ctf_rows`` ``(n,)`` indices into the CTF table.
    """
    import torch

    from cryopose.rotations import quaternion_to_rotmat, rotmat_to_relion_euler

    rng = np.random.default_rng([int(seed), _stable_int(structure.name), int(n), int(box)])
    q = rng.standard_normal((n, 4))
    euler_u = rotmat_to_relion_euler(quaternion_to_rotmat(torch.from_numpy(q))).numpy()
    # preferred: direction uniform on a cap of half-angle c around the centre, psi uniform
    cos_t = rng.uniform(math.cos(math.radians(spec.preferred_cone_deg)), 1.0, n)
    phi = rng.uniform(0.0, 2 * math.pi, n)
    sin_t = np.sqrt(1 - cos_t**2)
    local = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=-1)
    r0, t0 = np.radians(spec.preferred_rot_tilt_deg)
    rz = np.array([[np.cos(r0), -np.sin(r0), 0], [np.sin(r0), np.cos(r0), 0], [0, 0, 1]])
    ry = np.array([[np.cos(t0), 0, np.sin(t0)], [0, 1, 0], [-np.sin(t0), 0, np.cos(t0)]])
    d = local @ (rz @ ry).T
    rot = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    tilt = np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))
    psi = rng.uniform(-180.0, 180.0, n)
    n_pref = int(round(spec.preferred_fraction * n))
    preferred = np.zeros(n, dtype=bool)
    preferred[rng.permutation(n)[:n_pref]] = True
    euler_p = euler_u.copy()
    euler_p[preferred] = np.stack([rot, tilt, psi], axis=-1)[preferred]
    shifts = rng.normal(0.0, spec.shift_sigma_px, (n, 2))
    table_len = np.load(spec.ctf_table, mmap_mode="r").shape[0]
    ctf_rows = rng.choice(table_len, size=n, replace=n > table_len)
    return {"euler_uniform": euler_u, "euler_preferred": euler_p, "preferred": preferred,
            "shifts_px": shifts, "ctf_rows": ctf_rows}


# ----------------------------------------------------------------------------------- STAR files


def write_star(path: Path, *, apix: float, box: int, ctf: np.ndarray, image_names: list[str] | None = None,
               euler: np.ndarray | None = None, origins_angstrom: np.ndarray | None = None) -> None:
    """Write a RELION 3.1 particle STAR (``data_optics`` + ``data_particles``), atomically.

    Args:
        path: Output file.
        apix: Pixel size (Å), written as ``rlnImagePixelSize`` (the target's, not the table's).
        box: ``rlnImageSize``.
        ctf: ``(n, 9)`` rows of the cryoDRGN table; dfU, dfV, dfAng per particle; kV, Cs,
            amplitude contrast per optics group (one group per distinct triple); phase shift.
        image_names: ``rlnImageName`` values (omitted for ``relion_project``'s input).
        euler: ``(n, 3)`` ``rlnAngleRot/Tilt/Psi`` in degrees, or ``None`` (no pose columns).
        origins_angstrom: ``(n, 2)`` ``rlnOriginXAngst/YAngst``, or ``None`` (no origin columns).
    """
    n = ctf.shape[0]
    triples = np.round(ctf[:, 5:8].astype(np.float64), 6)
    uniq, group = np.unique(triples, axis=0, return_inverse=True)
    group = np.asarray(group).reshape(-1) + 1
    lines = ["", "# version 30001", "", "data_optics", "", "loop_"]
    optics_cols = ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnAmplitudeContrast", "rlnSphericalAberration",
                   "rlnVoltage", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"]
    lines += [f"_{c} #{i}" for i, c in enumerate(optics_cols, 1)]
    for g, (kv, cs, ac) in enumerate(uniq, 1):
        lines.append(f"{g} opticsGroup{g} {ac:.6g} {cs:.6g} {kv:.6g} {apix:.8g} {int(box)} 2")
    lines += ["", "", "# version 30001", "", "data_particles", "", "loop_"]
    cols: list[tuple[str, list[str]]] = []
    if image_names is not None:
        cols.append(("rlnImageName", list(image_names)))
    if euler is not None:
        for j, c in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
            cols.append((c, [f"{v:.6f}" for v in euler[:, j]]))
    if origins_angstrom is not None:
        for j, c in enumerate(("rlnOriginXAngst", "rlnOriginYAngst")):
            cols.append((c, [f"{v:.6f}" for v in origins_angstrom[:, j]]))
    for j, c in ((2, "rlnDefocusU"), (3, "rlnDefocusV"), (4, "rlnDefocusAngle"), (8, "rlnPhaseShift")):
        cols.append((c, [f"{v:.6f}" for v in ctf[:, j]]))
    cols.append(("rlnOpticsGroup", [str(int(g)) for g in group]))
    lines += [f"_{c} #{i}" for i, (c, _) in enumerate(cols, 1)]
    body = [" ".join(row) for row in zip(*(v for _, v in cols))]
    assert len(body) == n
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines + body) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------- noise


def noise_power_spectrum(box: int, apix: float, spec: DataSpec, coloured: bool, *, rfft: bool = True) -> np.ndarray:
    """Shape of the noise power ``P(k)`` on the (half) transform grid, normalised so that its mean
    over the full ``box × box`` grid is 1 (then unit-variance white noise filtered by ``sqrt(P)``
    keeps variance 1 per pixel, by Parseval). White: ``P = 1``. Coloured:
    ``P(k) ∝ 1 + (ratio − 1) exp(−(k/k0)²)``, ``k`` in cycles/Å.

    Returns:
        ``(box, box // 2 + 1)`` for ``rfft`` (``numpy.fft.rfft2`` layout), else ``(box, box)``
        (``numpy.fft.fft2`` layout).
    """
    ky = np.fft.fftfreq(box, d=apix)
    kx_full = np.fft.fftfreq(box, d=apix)
    k_full = np.sqrt(ky[:, None] ** 2 + kx_full[None, :] ** 2)
    if coloured:
        p_full = 1.0 + (spec.noise_low_high_ratio - 1.0) * np.exp(-(k_full / spec.noise_k0_per_angstrom) ** 2)
    else:
        p_full = np.ones_like(k_full)
    p_full = p_full / p_full.mean()
    return p_full[:, : box // 2 + 1] if rfft else p_full


def radial_power(images: np.ndarray, apix: float, edges_per_angstrom: np.ndarray) -> np.ndarray:
    """Mean of ``|fft2(image)|² / box²`` (per-pixel variance density) over images and over the
    frequency bins ``edges[i] ≤ |k| < edges[i+1]`` (cycles/Å)."""
    box = images.shape[-1]
    p = (np.abs(np.fft.fft2(images.astype(np.float64))) ** 2).mean(axis=0) / box**2
    ky = np.fft.fftfreq(box, d=apix)
    k = np.sqrt(ky[:, None] ** 2 + ky[None, :] ** 2)
    out = []
    for lo, hi in zip(edges_per_angstrom[:-1], edges_per_angstrom[1:]):
        sel = (k >= lo) & (k < hi)
        out.append(float(p[sel].mean()) if sel.any() else float("nan"))
    return np.array(out)


# ----------------------------------------------------------------------------------- data sets


def dataset_dir(workdir: Path, structure: Structure, n: int, box: int, seed: int) -> Path:
    """Folder of the geometry-level cache of one (structure, N, box, seed)."""
    return workdir / f"{structure.name}_b{box}_n{n}_s{seed}"


def row_dir(workdir: Path, structure: Structure, row: str, snr: float, n: int, box: int, seed: int) -> Path:
    """Folder of one data set (the particles a method reads)."""
    return dataset_dir(workdir, structure, n, box, seed) / f"{row}_snr{snr:g}"


def load_subset(folder: Path, n: int, seed: int):
    """A data folder's particles, its truth, and a seeded random subset of them (for the scripts
    that replay one stage on part of a realistic set).

    Args:
        folder: A data-set folder (``particles.star``, ``truth.star``; :func:`row_dir`).
        n: Particles to keep (0, or at least the set's size: all).
        seed: Seed of the subset.

    Returns:
        ``(indices, images, metadata, truth)``: sorted ``(M,)`` int64 indices into the set, the
        images and metadata of those particles (``load_particles``), and their true metadata
        (poses, origins) from ``truth.star``.
    """
    from cryopose.io.particles import load_particles
    from cryopose.io.star import read_star

    stack, meta = load_particles(folder / "particles.star")
    truth = read_star(folder / "truth.star", datadir=folder)
    n_all = len(meta)
    idx = np.arange(n_all) if n <= 0 or n >= n_all else np.sort(np.random.default_rng(seed).choice(n_all, n,
                                                                                                    replace=False))
    return idx, stack.subset(idx), meta.subset(idx), truth.subset(idx)


def _clean_stack(structure: Structure, views: str, shifted: bool, n: int, box: int, seed: int, spec: DataSpec,
                 workdir: Path, log) -> tuple[Path, Path, dict, float]:
    """The noise-free ``relion_project`` stack of one geometry (made once); returns
    ``(stack, geometry STAR, draws, seconds spent in relion_project now)``."""
    d = dataset_dir(workdir, structure, n, box, seed)
    d.mkdir(parents=True, exist_ok=True)
    apix = pixel_size(structure, box)
    geo = draw_geometry(structure, n, box, seed, spec)
    key = f"{views}_{'shifted' if shifted else 'centred'}"
    star = d / f"geom_{key}.star"
    stack = d / f"clean_{key}.mrcs"
    done = d / f"clean_{key}.done"
    if done.exists() and stack.exists():
        return stack, star, geo, 0.0
    table = np.load(spec.ctf_table, mmap_mode="r")
    ctf = np.asarray(table[geo["ctf_rows"]], dtype=np.float64)
    euler = geo["euler_preferred" if views == "preferred" else "euler_uniform"]
    origins = geo["shifts_px"] * apix if shifted else np.zeros((n, 2))
    write_star(star, apix=apix, box=box, ctf=ctf, euler=euler, origins_angstrom=origins)
    vol = truth_volume(structure, box, workdir)
    root = d / f"clean_{key}"
    cmd = ["relion_project", "--i", str(vol), "--o", str(root), "--ang", str(star), "--ctf"]
    log(f"  relion_project ({n} particles, {box} px, {views} views, {'shifted' if shifted else 'centred'}): "
        + " ".join(cmd))
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"relion_project failed ({proc.returncode}): {proc.stderr[-2000:]}")
    with mrcfile.mmap(stack, mode="r") as m:
        if m.data.shape != (n, box, box):
            raise RuntimeError(f"relion_project wrote {m.data.shape}, expected {(n, box, box)}")
    (d / f"clean_{key}.relion_project.txt").write_text(" ".join(cmd) + "\n\n" + proc.stdout[-4000:])
    done.write_text(json.dumps({"command": cmd, "seconds": dt}) + "\n")
    return stack, star, geo, dt


def make_dataset(structure: Structure, row: str, snr: float, n: int, box: int, seed: int, workdir: Path, *,
                 spec: DataSpec = DataSpec(), chunk: int = 1000, log=print) -> dict:
    """Make (or reuse) one data set; returns its ``data.json`` dict (with ``"dir"``).

    Steps: the geometry's noise-free stack by ``relion_project --ctf`` (cached, shared by rows
    with the same views and shifts); σ² = mean_i var(S_i) / SNR over all particles; noise
    ``σ · irfft2(rfft2(z) · sqrt(P))`` with ``z`` i.i.d. N(0, 1) per pixel (``P`` of
    :func:`noise_power_spectrum`); the noisy images divided by σ (unit noise variance per pixel,
    as after RELION's normalisation; the SNR does not change) and written as float32 ``.mrcs``
    with the pixel size. The measured SNR is ``mean_i var(S_i) / var(noise)`` pooled over all
    pixels of all images (:func:`cryopose.simulate.noise.measure_snr`'s definition).
    """
    if row not in ROW_FACTORS:
        raise ValueError(f"unknown row {row!r} (one of {', '.join(ROW_FACTORS)})")
    f = ROW_FACTORS[row]
    out = row_dir(workdir, structure, row, snr, n, box, seed)
    meta_path = out / "data.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta["dir"] = str(out)
        meta["generated_now"] = False
        return meta
    t_all = time.perf_counter()
    apix = pixel_size(structure, box)
    clean, geom_star, geo, t_relion = _clean_stack(structure, f["views"], f["shifted"], n, box, seed, spec,
                                                   workdir, log)
    out.mkdir(parents=True, exist_ok=True)
    with mrcfile.mmap(clean, mode="r") as m:
        var = np.concatenate([m.data[i:i + chunk].astype(np.float64).reshape(-1, box * box).var(axis=1)
                              for i in range(0, n, chunk)])
    signal_var = float(var.mean())
    sigma = math.sqrt(signal_var / snr)
    power = noise_power_spectrum(box, apix, spec, f["noise"] == "coloured")
    amp = np.sqrt(power)
    rng = np.random.default_rng([int(seed), _stable_int(structure.name), _stable_int(row), int(round(snr * 1e6)),
                                 int(n), int(box)])
    tmp = out / "particles.mrcs.tmp"
    noise_sum = noise_sq = 0.0
    edges = np.linspace(0.0, 0.5 / apix, 11)
    spectrum_acc = np.zeros(len(edges) - 1)
    spectrum_images = 0
    with mrcfile.mmap(clean, mode="r") as src, mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=2,
                                                                overwrite=True) as dst:
        dst.set_image_stack()
        dst.voxel_size = apix
        for i in range(0, n, chunk):
            s = src.data[i:i + chunk].astype(np.float64)
            z = rng.standard_normal(s.shape)
            if f["noise"] == "coloured":
                z = np.fft.irfft2(np.fft.rfft2(z) * amp, s=(box, box))
            noise = sigma * z
            noise_sum += float(noise.sum())
            noise_sq += float((noise * noise).sum())
            if spectrum_images < 2000:
                spectrum_acc += radial_power(noise, apix, edges) * noise.shape[0]
                spectrum_images += noise.shape[0]
            dst.data[i:i + chunk] = ((s + noise) / sigma).astype(np.float32)
        dst.update_header_stats()
    os.replace(tmp, out / "particles.mrcs")
    count = n * box * box
    noise_var = noise_sq / count - (noise_sum / count) ** 2
    names = [f"{i + 1:06d}@particles.mrcs" for i in range(n)]
    table = np.load(spec.ctf_table, mmap_mode="r")
    ctf = np.asarray(table[geo["ctf_rows"]], dtype=np.float64)
    euler = geo["euler_preferred" if f["views"] == "preferred" else "euler_uniform"]
    origins = geo["shifts_px"] * apix if f["shifted"] else np.zeros((n, 2))
    write_star(out / "particles.star", apix=apix, box=box, ctf=ctf, image_names=names,
               origins_angstrom=np.zeros((n, 2)) if f["origins_given"] else None)
    write_star(out / "truth.star", apix=apix, box=box, ctf=ctf, image_names=names, euler=euler,
               origins_angstrom=origins)
    measured = spectrum_acc / max(spectrum_images, 1) / sigma**2
    centres = 0.5 * (edges[:-1] + edges[1:])
    p_req = noise_power_spectrum(box, apix, spec, f["noise"] == "coloured", rfft=False)
    requested = radial_power_of_filter(p_req, apix, edges)
    meta = {
        "structure": structure.name, "row": row, "snr_requested": snr, "seed": seed, "n": n, "box": box,
        "pixel_size_angstrom": apix, "symmetry": structure.symmetry, "factors": f, "spec": spec.key(),
        "truth_map": str(truth_volume(structure, box, workdir)),
        "relion_project_input": str(geom_star), "clean_stack": str(clean),
        "mean_signal_variance": signal_var, "noise_sigma": sigma,
        "stack_scale": 1.0 / sigma,
        "snr_measured": signal_var / noise_var,
        "noise_spectrum": {"bin_centres_per_angstrom": centres.tolist(), "measured": measured.tolist(),
                           "requested": requested.tolist(), "images": spectrum_images},
        "preferred_fraction_drawn": float(geo["preferred"].mean()) if f["views"] == "preferred" else 0.0,
        "shift_rms_px": float(np.sqrt((geo["shifts_px"] ** 2).sum(1).mean())) if f["shifted"] else 0.0,
        "seconds": {"relion_project": t_relion, "total": time.perf_counter() - t_all},
    }
    tmpj = out / "data.json.tmp"
    tmpj.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmpj, meta_path)
    meta["dir"] = str(out)
    meta["generated_now"] = True
    return meta


def radial_power_of_filter(power_full: np.ndarray, apix: float, edges_per_angstrom: np.ndarray) -> np.ndarray:
    """Mean of a full-grid power shape (``fft2`` layout) over the bins of :func:`radial_power`."""
    box = power_full.shape[-1]
    ky = np.fft.fftfreq(box, d=apix)
    k = np.sqrt(ky[:, None] ** 2 + ky[None, :] ** 2)
    return np.array([float(power_full[(k >= lo) & (k < hi)].mean()) if ((k >= lo) & (k < hi)).any()
                     else float("nan") for lo, hi in zip(edges_per_angstrom[:-1], edges_per_angstrom[1:])])


def remove_clean_stacks(workdir: Path, structure: Structure, n: int, box: int, seed: int) -> None:
    """Delete the noise-free stacks of one (structure, N, box, seed) (they can be remade)."""
    d = dataset_dir(workdir, structure, n, box, seed)
    for p in d.glob("clean_*"):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
