"""cryopose's known-pose reconstruction against RELION 3.1's ``relion_reconstruct``.

Particles: 200 images of the real β-galactosidase map Fourier-cropped to 32 px (11.06 Å/px),
projected by ``relion_project --ctf`` at random poses, origins and defoci; seeded white noise
(SNR 0.5, box-wide variance ratio) is added here so the test is deterministic (RELION's own
``--add_noise`` has no seed option). Both programs reconstruct with CTF correction; their maps
must agree (real-space correlation inside the particle sphere > 0.95) and resolve the truth
equally well (FSC = 0.5 resolutions against the true map within 10 %).

Fails, never skips, without RELION: CI installs it (``apt-get install -y relion``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import oracle_cases as oc  # noqa: E402

from cryopose.io.particles import load_particles  # noqa: E402
from cryopose.metrics.fsc import fsc_report  # noqa: E402
from cryopose.reconstruction import reconstruct  # noqa: E402

N = 32
K = 200


def _need(exe: str) -> None:
    if shutil.which(exe) is None:
        pytest.fail(f"{exe} not on PATH: install RELION 3.1 (apt-get install -y relion) to run the oracle tests")


def _write_star(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    apix = oc.pixel_size(N)
    u = rng.normal(size=(K, 4))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    from cryopose.rotations import quaternion_to_rotmat, rotmat_to_relion_euler

    eul = rotmat_to_relion_euler(quaternion_to_rotmat(torch.from_numpy(u))).numpy()  # uniform on SO(3)
    dfu = rng.uniform(8000, 25000, K)
    cols = {"rlnAngleRot": eul[:, 0], "rlnAngleTilt": eul[:, 1], "rlnAnglePsi": eul[:, 2],
            "rlnOriginXAngst": rng.uniform(-2, 2, K) * apix, "rlnOriginYAngst": rng.uniform(-2, 2, K) * apix,
            "rlnDefocusU": dfu, "rlnDefocusV": dfu - rng.uniform(0, 1000, K),
            "rlnDefocusAngle": rng.uniform(0, 180, K)}
    lines = ["", "data_optics", "", "loop_", "_rlnOpticsGroup", "_rlnOpticsGroupName", "_rlnAmplitudeContrast",
             "_rlnSphericalAberration", "_rlnVoltage", "_rlnImagePixelSize", "_rlnImageSize",
             "_rlnImageDimensionality", f"1 opticsGroup1 0.1 2.7 300 {apix:.6f} {N} 2", "", "data_particles", "",
             "loop_"] + [f"_{c}" for c in cols] + ["_rlnOpticsGroup"]
    block = np.stack(list(cols.values()), axis=1)
    lines += [" ".join(f"{v:.6f}" for v in row) + " 1" for row in block]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    _need("relion_project")
    _need("relion_reconstruct")
    work = tmp_path_factory.mktemp("relion_reconstruct")
    oc.make_map(N, work / "truth.mrc")
    _write_star(work / "angles.star", seed=7)
    subprocess.run(["relion_project", "--i", "truth.mrc", "--o", "proj", "--ang", "angles.star", "--ctf"],
                   cwd=work, check=True, capture_output=True)
    with mrcfile.open(work / "proj.mrcs", mode="r+") as m:
        clean = m.data.astype(np.float64)
        sigma = np.sqrt(clean.reshape(K, -1).var(axis=1).mean() / 0.5)
        m.data[:] = (clean + np.random.default_rng(8).normal(0, sigma, clean.shape)).astype(np.float32)
    subprocess.run(["relion_reconstruct", "--i", "proj.star", "--o", "relion.mrc", "--ctf"],
                   cwd=work, check=True, capture_output=True)
    stack, meta = load_particles(work / "proj.star")
    ours = reconstruct(stack, meta, generator=torch.Generator().manual_seed(0)).volume.double()
    relion = torch.from_numpy(mrcfile.read(work / "relion.mrc").astype(np.float64))
    truth = torch.from_numpy(mrcfile.read(work / "truth.mrc").astype(np.float64))
    return ours, relion, truth


@pytest.mark.relion
def test_maps_agree_with_relion_reconstruct(case):
    ours, relion, _ = case
    c = torch.arange(N, dtype=torch.float64) - N // 2
    inside = (c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) < (N / 2 - 2) ** 2
    a, b = ours[inside], relion[inside]
    a, b = a - a.mean(), b - b.mean()
    corr = float((a * b).sum() / (a.norm() * b.norm()))
    assert corr > 0.95, corr


@pytest.mark.relion
def test_resolution_against_truth_matches_relion(case):
    ours, relion, truth = case
    apix = oc.pixel_size(N)
    r_ours = fsc_report(ours, truth, apix)
    r_relion = fsc_report(relion, truth, apix)
    for key in ("resolution_fsc0p5_angstrom", "resolution_fsc0p143_angstrom"):
        assert r_ours[key] <= 1.10 * r_relion[key], (key, r_ours[key], r_relion[key])
        assert r_ours[key] >= 0.80 * r_relion[key], (key, r_ours[key], r_relion[key])
    # a real test: the data do not reach Nyquist at FSC = 0.5
    assert r_relion["fsc0p5_crossed"] and r_ours["fsc0p5_crossed"]
