"""cryopose's projector + CTF + shifts against RELION 3.1's ``relion_project``.

Golden tests compare with committed ``relion_project`` output (see golden/README.md); live
tests run ``relion_project`` now (CI installs RELION; they fail, not skip, without it).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import oracle_cases as oc  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("n", [64, 65])
@pytest.mark.parametrize("ctf", [False, True], ids=["noctf", "ctf"])
def test_golden_relion_project(n, ctf):
    tag = "ctf" if ctf else "noctf"
    relion = mrcfile.read(GOLDEN / f"relion_{tag}_{n}.mrcs").astype(np.float64)
    ours = oc.cryopose_images(GOLDEN / f"betagal_{n}.mrc", GOLDEN / f"particles_{n}.star", ctf=ctf)
    scores = oc.ncc(ours, relion)
    assert scores.min() >= 0.99, f"NCC per image: {np.round(scores, 5)}"
    # Same scale as RELION (projection = sum of density along the beam).
    scale = (ours * relion).sum() / (ours * ours).sum()
    assert abs(scale - 1) < 0.01


def test_golden_discriminates_conventions():
    """The comparison is sharp enough to catch a wrong sign or a transposed convention."""
    import starfile
    import torch
    from cryopose.projection import project
    from cryopose.rotations import relion_euler_to_rotmat

    n = 64
    relion = mrcfile.read(GOLDEN / f"relion_noctf_{n}.mrcs").astype(np.float64)
    vol = torch.from_numpy(mrcfile.read(GOLDEN / f"betagal_{n}.mrc").astype(np.float64))
    st = starfile.read(GOLDEN / f"particles_{n}.star")["particles"]
    rot = relion_euler_to_rotmat(st[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    shifts = torch.from_numpy(st[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / oc.pixel_size(n))
    good = oc.ncc(project(vol, rot, shifts_px=shifts).numpy(), relion).min()
    wrong_shift = oc.ncc(project(vol, rot, shifts_px=-shifts).numpy(), relion).min()
    transposed = oc.ncc(project(vol, rot.transpose(-1, -2), shifts_px=shifts).numpy(), relion).min()
    assert good > 0.999
    assert wrong_shift < 0.95 and transposed < 0.95


def test_golden_ctf_sign_and_astigmatism():
    """The CTF's overall sign and its astigmatism angle are RELION's."""
    relion = mrcfile.read(GOLDEN / "relion_ctf_64.mrcs").astype(np.float64)
    ours = oc.cryopose_images(GOLDEN / "betagal_64.mrc", GOLDEN / "particles_64.star", ctf=True)
    assert oc.ncc(ours, relion).min() > 0.999
    assert oc.ncc(-ours, relion).max() < -0.99


def test_golden_odd_box_offset_is_relion_quirk():
    """Without the documented 1-px offset, RELION's odd-box images are visibly displaced."""
    relion = mrcfile.read(GOLDEN / "relion_noctf_65.mrcs").astype(np.float64)
    ours = oc.cryopose_images(GOLDEN / "betagal_65.mrc", GOLDEN / "particles_65.star", ctf=False,
                              relion_odd_offset=False)
    shifted = np.roll(ours, (1, 1), axis=(-2, -1))
    assert oc.ncc(shifted, relion).min() > 0.99
    assert oc.ncc(ours, relion).min() < oc.ncc(shifted, relion).min()


@pytest.mark.relion
@pytest.mark.parametrize("n", [64, 65])
def test_live_relion_project(n, tmp_path):
    if shutil.which("relion_project") is None:
        pytest.fail("relion_project not on PATH: install RELION 3.1 (apt-get install -y relion)")
    oc.make_map(n, tmp_path / "map.mrc")
    oc.make_star(n, tmp_path / "particles.star", seed=1000 + n)
    out = oc.run_relion_project(tmp_path / "map.mrc", tmp_path / "particles.star", tmp_path / "proj", ctf=True)
    relion = mrcfile.read(out).astype(np.float64)
    ours = oc.cryopose_images(tmp_path / "map.mrc", tmp_path / "particles.star", ctf=True)
    scores = oc.ncc(ours, relion)
    assert scores.min() >= 0.99, f"NCC per image: {np.round(scores, 5)}"
