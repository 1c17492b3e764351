"""RELION 3.1 reads the STAR files cryopose writes, run from the user's folder.

RELION resolves a relative image name (``N@stack`` in rlnImageName) from the folder the program
runs in (the project folder), not from the STAR file's folder. A RELION-made data set, 100
particles of the β-galactosidase map at 16 px (``relion_project --ctf``, run in the project
folder, so its names are ``data/particles.mrcs``), is given to cryopose as RELION wrote it
(relative names), with absolute names, and as a STAR beside the stack naming it
``particles.mrcs`` (relative to its own folder, which cryopose also reads). For each,
``relion_reconstruct --i OUT/poses.star`` run in the project folder must read the images and
give the map cryopose reconstructs from the same file: with the true poses (the shared writer
every command uses) correlation > 0.99 inside the particle sphere; with the poses of a tiny
``cryopose abinitio`` run (poor poses, a blurred map) FSC > 0.7 in every shell, where a map
of other poses of the same images stays below 0.5.

Fails, never skips, without RELION (the ``relion`` fixture).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

sys.path.insert(0, str(Path(__file__).parent))
import oracle_cases as oc  # noqa: E402

from cryopose.cli.main import main  # noqa: E402
from cryopose.io.particles import load_particles  # noqa: E402
from cryopose.io.star import write_star  # noqa: E402
from cryopose.metrics.fsc import fourier_shell_correlation  # noqa: E402
from cryopose.reconstruction import reconstruct  # noqa: E402

N = 16
K = 100
STACK = "data/particles.mrcs"

pytestmark = [pytest.mark.relion, pytest.mark.usefixtures("one_thread")]


def _angles_star(path: Path, seed: int) -> None:
    """RELION 3.1 STAR of K uniform random poses, origins (Å) and astigmatic defoci."""
    from cryopose.rotations import quaternion_to_rotmat, rotmat_to_relion_euler

    rng = np.random.default_rng(seed)
    apix = oc.pixel_size(N)
    u = rng.normal(size=(K, 4))
    eul = rotmat_to_relion_euler(quaternion_to_rotmat(torch.from_numpy(u / np.linalg.norm(u, axis=1,
                                                                                        keepdims=True)))).numpy()
    dfu = rng.uniform(8000, 25000, K)
    cols = {"rlnAngleRot": eul[:, 0], "rlnAngleTilt": eul[:, 1], "rlnAnglePsi": eul[:, 2],
            "rlnOriginXAngst": rng.uniform(-1, 1, K) * apix, "rlnOriginYAngst": rng.uniform(-1, 1, K) * apix,
            "rlnDefocusU": dfu, "rlnDefocusV": dfu - rng.uniform(0, 1000, K), "rlnDefocusAngle": rng.uniform(0, 180, K)}
    lines = ["", "data_optics", "", "loop_", "_rlnOpticsGroup", "_rlnOpticsGroupName", "_rlnAmplitudeContrast",
             "_rlnSphericalAberration", "_rlnVoltage", "_rlnImagePixelSize", "_rlnImageSize",
             "_rlnImageDimensionality", f"1 opticsGroup1 0.1 2.7 300 {apix:.6f} {N} 2", "", "data_particles", "",
             "loop_"] + [f"_{c}" for c in cols] + ["_rlnOpticsGroup"]
    lines += [" ".join(f"{v:.6f}" for v in row) + " 1" for row in np.stack(list(cols.values()), axis=1)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory, relion):
    """The user's folder ``proj/``: truth.mrc, and data/particles.{mrcs,star} made by relion_project in it;
    plus the same particles named by absolute paths (abs.star) and from beside the stack (data/beside.star)."""
    proj = tmp_path_factory.mktemp("relion_star_paths") / "proj"
    (proj / "data").mkdir(parents=True)
    oc.make_map(N, proj / "truth.mrc")
    _angles_star(proj / "angles.star", seed=11)
    res = subprocess.run([relion("relion_project"), "--i", "truth.mrc", "--o", "data/particles", "--ang",
                          "angles.star", "--ctf"], cwd=proj, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (proj / "data" / "particles.star").read_text()
    assert f"000001@{STACK}" in text  # RELION names the stack relative to the folder it ran in
    (proj / "abs.star").write_text(text.replace(f"@{STACK}", f"@{proj / STACK}"))
    (proj / "data" / "beside.star").write_text(text.replace(f"@{STACK}", "@particles.mrcs"))
    return proj


INPUTS = {"relative": "data/particles.star", "absolute": "abs.star", "beside": "data/beside.star"}


def _relion_map(relion, proj: Path, star: str, out: str) -> torch.Tensor:
    """``relion_reconstruct --ctf`` run in ``proj`` (the user's folder), as a user would."""
    res = subprocess.run([relion("relion_reconstruct"), "--i", star, "--o", out, "--ctf"], cwd=proj,
                         capture_output=True, text=True)
    assert res.returncode == 0, f"relion_reconstruct --i {star} failed in {proj}:\n{res.stdout}\n{res.stderr}"
    return torch.from_numpy(mrcfile.read(proj / out).astype(np.float64))


def _our_map(star: Path) -> torch.Tensor:
    stack, meta = load_particles(star)
    return reconstruct(stack, meta, half_maps=False, progress=False).volume.double()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    c = torch.arange(N, dtype=torch.float64) - N // 2
    inside = (c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) < (N / 2 - 2) ** 2
    x, y = a[inside] - a[inside].mean(), b[inside] - b[inside].mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def _fsc(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    _, fsc = fourier_shell_correlation(a, b, pixel_size_angstrom=oc.pixel_size(N))
    return np.asarray(fsc)[1:]  # shells 1 .. Nyquist


def _names(star: Path) -> set[str]:
    return {str(v).partition("@")[2] for v in starfile.read(star)["particles"]["rlnImageName"]}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_written_star_reconstructs_in_relion_from_the_users_folder(project, relion, monkeypatch, kind):
    monkeypatch.chdir(project)
    _, meta = load_particles(INPUTS[kind])
    out = Path(f"out_{kind}") / "poses.star"
    out.parent.mkdir()
    write_star(out, meta)  # the writer behind predict, search, refine, abinitio, latent, rotinv
    # relative names stay as RELION wrote them; absolute stay absolute; names beside the STAR become
    # names from the user's folder
    assert _names(out) == {str(project / STACK) if kind == "absolute" else STACK}
    theirs = _relion_map(relion, project, str(out), f"relion_{kind}.mrc")
    ours = _our_map(out)
    assert _corr(theirs, ours) > 0.99
    assert _fsc(theirs, ours).min() > 0.9


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_abinitio_poses_star_reconstructs_in_relion(project, relion, monkeypatch, kind):
    """The issue's case: ``cryopose abinitio in.star -o out`` then ``relion_reconstruct --i out/poses.star``."""
    monkeypatch.chdir(project)
    out = f"abinitio_{kind}"
    assert main(["abinitio", INPUTS[kind], "-o", out, "--box-size", str(N), "--epochs", "1", "--batch-size", "50",
                 "--hypotheses", "2", "--polish-rounds", "0", "--no-reconstruct", "--no-report", "--threads", "1",
                 "--no-progress"]) == 0
    star = project / out / "poses.star"
    assert _names(star) == {str(project / STACK) if kind == "absolute" else STACK}
    theirs = _relion_map(relion, project, f"{out}/poses.star", f"{out}/relion.mrc")
    ours = _our_map(star)
    fsc = _fsc(theirs, ours)
    assert fsc.min() > 0.7, fsc
    assert _corr(theirs, ours) > 0.95
    # the check tells maps apart: RELION's map of the same images at the true poses is another map
    truth_poses = _relion_map(relion, project, INPUTS["relative"], f"{out}/relion_true_poses.mrc")
    assert _fsc(theirs, truth_poses).min() < 0.5


def test_relion_resolves_names_from_its_working_folder(project, relion, tmp_path):
    """Why names are written from the user's folder: a name relative to the STAR file's own folder
    (what cryopose wrote before, ``../data/particles.mrcs`` in ``out/``) is not found by RELION."""
    text = (project / INPUTS["relative"]).read_text().replace(f"@{STACK}", "@../data/particles.mrcs")
    (project / "old").mkdir()
    (project / "old" / "poses.star").write_text(text)
    res = subprocess.run([relion("relion_reconstruct"), "--i", "old/poses.star", "--o", str(tmp_path / "x.mrc")],
                         cwd=project, capture_output=True, text=True)
    assert res.returncode != 0 and "../data/particles.mrcs" in res.stdout + res.stderr
