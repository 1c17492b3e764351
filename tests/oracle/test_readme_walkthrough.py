"""README's "Your own data" session on the real particle fixtures, and back into RELION 3.1.

Each fixture of ``shared/data/particles`` is laid out as a user's project holds it: the stacks
where the particle file's image names point (the project folder), the particle file in a job
folder (``Select/job020/particles.star``; cryoSPARC: ``J42/J42_particles.cs``). From that
folder, as README says, ``cryopose abinitio $P -o cryopose/abinitio`` writes ``poses.star``
(kept tiny here: a 16-px working box, one epoch, no polishing or map), and
``relion_reconstruct --i cryopose/abinitio/poses.star --o cryopose/abinitio/relion.mrc --ctf``
run in the same folder must read every image and write a map of the particles' box and pixel
size (``--pad 1 --maxres 60`` only to keep RELION quick at 200–320 px; they change nothing
it reads). The three files are a RELION 3.1 STAR with an optics block and origins in Å, a
RELION 3.0 STAR with origins in pixels and the pixel size as detector pixel / magnification,
and a cryoSPARC ``.cs`` whose MRC header has no pixel size and whose stack is a ``.mrc`` (named
``N@stack.mrc:mrcs`` in ``poses.star``: RELION refuses ``N@stack.mrc``).

Fails, never skips, without RELION (the ``relion`` fixture).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from cryopose.cli.main import main
from cryopose.io.particles import load_particles

pytestmark = [pytest.mark.relion, pytest.mark.usefixtures("one_thread")]

#: fixture folder, particle file, where it goes in the project, stacks, box (px), pixel size (Å)
FIXTURES = {
    "relion31": ("relion31_5ptcl", "relion31.star", "Select/job020/particles.star", ["relion31.mrcs"], 256, 2.806),
    "relion30": ("aspire_sample17", "sample_relion_data.star", "Select/job020/particles.star", ["sample.mrcs"],
                 200, 5 / 37369.2 * 1e4),
    "cryosparc": ("empiar10076_7ptcl", "empiar_10076_7.cs", "J42/J42_particles.cs", ["empiar_10076_7.mrc"], 320, 1.31),
}


def _project(root: Path, shared_data: Path, kind: str) -> tuple[Path, str]:
    folder, name, dest, stacks, _, _ = FIXTURES[kind]
    src = shared_data / "particles" / folder
    proj = root / kind
    (proj / dest).parent.mkdir(parents=True)
    shutil.copy(src / name, proj / dest)
    for stack in stacks:
        shutil.copy(src / stack, proj / stack)
    return proj, dest


@pytest.mark.parametrize("kind", list(FIXTURES))
def test_readme_session_to_poses_star_and_back_into_relion_reconstruct(kind, shared_data, relion, tmp_path,
                                                                       monkeypatch):
    proj, particles = _project(tmp_path, shared_data, kind)
    _, _, _, _, box, apix = FIXTURES[kind]
    monkeypatch.chdir(proj)
    rc = main(["abinitio", particles, "-o", "cryopose/abinitio", "--threads", "1", "--box-size", "16",
               "--epochs", "1", "--polish-rounds", "0", "--no-reconstruct", "--no-report", "--no-progress"])
    assert rc == 0
    _, given = load_particles(particles)
    _, est = load_particles("cryopose/abinitio/poses.star")
    assert len(est) == len(given) and est.pixel_size_angstrom == pytest.approx(apix, rel=1e-4)
    table = starfile.read("cryopose/abinitio/poses.star")
    parts = table["particles"]
    for col in ("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnDefocusU"):
        assert col in parts.columns, col
    assert table["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(apix, rel=1e-4)
    stacks = {str(v).partition("@")[2] for v in parts["rlnImageName"]}
    # names resolve from the project folder; a cryoSPARC .mrc stack gets RELION's :mrcs suffix
    assert stacks == {s + ":mrcs" if s.endswith(".mrc") else s for s in FIXTURES[kind][3]}
    res = subprocess.run([relion("relion_reconstruct"), "--i", "cryopose/abinitio/poses.star", "--o",
                          "cryopose/abinitio/relion.mrc", "--ctf", "--pad", "1", "--maxres", "60"],
                         cwd=proj, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"relion_reconstruct failed in {proj}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    with mrcfile.open(proj / "cryopose/abinitio/relion.mrc", permissive=True) as m:
        vol = np.asarray(m.data, dtype=np.float64)
        voxel = float(m.voxel_size.x)
    assert vol.shape == (box, box, box)
    assert voxel == pytest.approx(apix, rel=1e-3)
    assert np.isfinite(vol).all() and vol.std() > 0
