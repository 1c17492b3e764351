"""Shared definition of the ``relion_project`` oracle cases (golden files and live runs).

A case is a map (the real β-galactosidase reconstruction, Fourier-cropped to ``n`` px) and a
RELION 3.1 STAR of 12 particles with non-trivial angles, origins (Å) and CTF (astigmatism,
some phase shift and CTF B-factor). ``make_inputs`` writes both; ``cryopose_images`` computes
cryopose's images for the STAR; ``ncc`` compares.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import starfile
import torch

from cryopose.ctf import CTFParams, compute_ctf
from cryopose.fourier import fourier_downsample_volume
from cryopose.projection import project
from cryopose.rotations import relion_euler_to_rotmat

BETAGAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"
BETAGAL_PIXEL_SIZE = 3.54  # Å, from ../shared/data/maps/SOURCE.md (the header is not trusted)
N_IMAGES = 12
#: relion_project draws odd boxes one pixel off along +x and +y (see conventions.py).
RELION_ODD_BOX_OFFSET_PX = 1.0


def pixel_size(n: int) -> float:
    """Pixel size (Å) of the β-gal map Fourier-cropped from 100 px to ``n`` px."""
    return BETAGAL_PIXEL_SIZE * 100 / n


def make_map(n: int, path: Path) -> None:
    """Write the β-gal map Fourier-cropped to ``n`` px (float32, voxel size set)."""
    vol = mrcfile.read(BETAGAL).astype(np.float32)
    small = fourier_downsample_volume(torch.from_numpy(vol.copy()), n).numpy().astype(np.float32)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(small)
        m.voxel_size = pixel_size(n)


def make_star(n: int, path: Path, seed: int) -> None:
    """Write a RELION 3.1 STAR of ``N_IMAGES`` particles with random poses, origins and CTF."""
    rng = np.random.default_rng(seed)
    apix = pixel_size(n)
    k = N_IMAGES
    dfu = rng.uniform(8000, 30000, k)
    particles = {
        "rlnAngleRot": rng.uniform(-180, 180, k),
        "rlnAngleTilt": np.degrees(np.arccos(rng.uniform(-1, 1, k))),
        "rlnAnglePsi": rng.uniform(-180, 180, k),
        "rlnOriginXAngst": rng.uniform(-4, 4, k) * apix,
        "rlnOriginYAngst": rng.uniform(-4, 4, k) * apix,
        "rlnDefocusU": dfu,
        "rlnDefocusV": dfu - rng.uniform(0, 2500, k),
        "rlnDefocusAngle": rng.uniform(-90, 180, k),
        "rlnPhaseShift": np.where(np.arange(k) % 3 == 0, rng.uniform(0, 90, k), 0.0),
        "rlnCtfBfactor": np.where(np.arange(k) % 4 == 1, rng.uniform(0, 200, k), 0.0),
        "rlnOpticsGroup": np.ones(k, dtype=int),
    }
    lines = ["# RELION 3.1 oracle case written by tests/oracle/oracle_cases.py", "", "data_optics", "", "loop_"]
    optics = {"rlnOpticsGroup": 1, "rlnOpticsGroupName": "opticsGroup1", "rlnAmplitudeContrast": 0.1,
              "rlnSphericalAberration": 2.7, "rlnVoltage": 300.0, "rlnImagePixelSize": apix,
              "rlnImageSize": n, "rlnImageDimensionality": 2}
    lines += [f"_{name} #{i + 1}" for i, name in enumerate(optics)]
    lines += [" ".join(str(v) for v in optics.values()), "", "", "data_particles", "", "loop_"]
    lines += [f"_{name} #{i + 1}" for i, name in enumerate(particles)]
    for row in range(k):
        lines.append(" ".join(f"{particles[name][row]:.6f}" if name != "rlnOpticsGroup" else "1"
                              for name in particles))
    Path(path).write_text("\n".join(lines) + "\n")


def run_relion_project(map_path: Path, star_path: Path, out_prefix: Path, *, ctf: bool) -> Path:
    """Run ``relion_project`` and return the path of the ``.mrcs`` it wrote."""
    cmd = ["relion_project", "--i", str(map_path), "--o", str(out_prefix), "--ang", str(star_path)]
    if ctf:
        cmd.append("--ctf")
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return Path(str(out_prefix) + ".mrcs")


def cryopose_images(map_path: Path, star_path: Path, *, ctf: bool, relion_odd_offset: bool = True) -> np.ndarray:
    """cryopose's projections ``(N, n, n)`` for the particles of ``star_path`` (float64)."""
    vol = torch.from_numpy(mrcfile.read(map_path).astype(np.float64))
    n = vol.shape[-1]
    apix = pixel_size(n)
    st = starfile.read(star_path)["particles"]
    rot = relion_euler_to_rotmat(st[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    shifts = torch.from_numpy(st[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / apix)
    if relion_odd_offset and n % 2 == 1:
        shifts = shifts - RELION_ODD_BOX_OFFSET_PX  # content drawn at +1 px
    ctf_img = None
    if ctf:
        params = CTFParams.create(
            defocus_u_angstrom=st["rlnDefocusU"].to_numpy(), defocus_v_angstrom=st["rlnDefocusV"].to_numpy(),
            defocus_angle_deg=st["rlnDefocusAngle"].to_numpy(), voltage_kv=300.0, spherical_aberration_mm=2.7,
            amplitude_contrast=0.1, phase_shift_deg=st["rlnPhaseShift"].to_numpy(),
            bfactor_angstrom2=st["rlnCtfBfactor"].to_numpy())
        ctf_img = compute_ctf(params, n, apix).double()
    return project(vol, rot, shifts_px=shifts, ctf=ctf_img).numpy()


def ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image normalised cross-correlation of two stacks ``(N, n, n)``."""
    a = a - a.mean(axis=(-1, -2), keepdims=True)
    b = b - b.mean(axis=(-1, -2), keepdims=True)
    return (a * b).sum(axis=(-1, -2)) / np.sqrt((a * a).sum(axis=(-1, -2)) * (b * b).sum(axis=(-1, -2)))
