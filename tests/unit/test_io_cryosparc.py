"""cryoSPARC .cs reading and its conversion to RELION conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib import recfunctions as rfn
from scipy.spatial.transform import Rotation

from cryopose.errors import InputFileError, PixelSizeError
from cryopose.io import load_particles, read_cs, read_star, write_star
from cryopose.io.cryosparc import cryosparc_pose_to_rotmat
from cryopose.rotations import geodesic_distance_deg, relion_euler_to_rotmat


def _cs7(shared_data):
    return shared_data / "particles" / "empiar10076_7ptcl" / "empiar_10076_7.cs"


def _cs2019(shared_data):
    return shared_data / "star_cs_fixtures" / "cryosparc_P12_J24_001_particles.cs"


def test_empiar10076_cs_agrees_with_star(shared_data):
    """The same 7 particles in both formats: pixel size, box, CTF and images must agree.
    (Neither file carries poses, so poses cannot be compared on this data; see cryosparc.py.)"""
    cs = read_cs(_cs7(shared_data))
    st = read_star(shared_data / "particles" / "empiar10076_7ptcl" / "empiar_10076_7.star")
    assert len(cs) == 7 and cs.rotmats is None and cs.shifts_angstrom is None
    assert cs.pixel_size_angstrom == pytest.approx(st.pixel_size_angstrom, rel=1e-6)
    assert cs.box_size == st.box_size == 320
    assert cs.image_paths == st.image_paths and cs.image_indices.tolist() == st.image_indices.tolist()
    for f in ("defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_deg", "voltage_kv",
              "spherical_aberration_mm", "amplitude_contrast", "phase_shift_deg"):
        torch.testing.assert_close(getattr(cs.ctf, f), getattr(st.ctf, f), rtol=2e-6, atol=1e-5)
    assert cs.ctf.defocus_angle_deg[0].item() == pytest.approx(5.28, abs=1e-5)  # 0.0921534 rad
    assert cs.optics_group.tolist() == [24] * 7  # ctf/exp_group_id 23, 1-based
    s_cs, _ = load_particles(_cs7(shared_data))
    s_st, _ = load_particles(shared_data / "particles" / "empiar10076_7ptcl" / "empiar_10076_7.star")
    assert torch.equal(s_cs[:], s_st[:])


def test_refinement_poses_and_shifts(shared_data):
    arr = np.load(_cs2019(shared_data))
    m = read_cs(_cs2019(shared_data))
    assert len(m) == 2019 and m.pixel_size_angstrom == pytest.approx(2.95) and m.box_size == 180
    # R_relion = Rodrigues(pose)ᵀ, checked against SciPy's independent rotation-vector code
    expected = np.transpose(Rotation.from_rotvec(arr["alignments3D/pose"].astype(np.float64)).as_matrix(), (0, 2, 1))
    np.testing.assert_allclose(m.rotmats.numpy(), expected, atol=2e-6)
    r = m.rotmats.double()
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(2019, 3, 3),
                               atol=1e-6, rtol=0)
    assert torch.allclose(torch.linalg.det(r), torch.ones(2019, dtype=torch.float64), atol=1e-6)
    np.testing.assert_allclose(m.shifts_angstrom.numpy(), arr["alignments3D/shift"] * 2.95, rtol=1e-6)
    np.testing.assert_allclose(m.ctf.defocus_angle_deg.numpy(), np.rad2deg(arr["ctf/df_angle_rad"]), rtol=1e-6)
    assert m.ctf.voltage_kv[0].item() == 200.0 and m.table["alignments3D/shift/0"][0] == arr["alignments3D/shift"][0, 0]


def test_cryosparc_poses_survive_a_relion_star(shared_data, tmp_path):
    """cs → RELION Euler angles in a STAR file → matrices again: the same rotations and shifts."""
    m = read_cs(_cs2019(shared_data))
    write_star(tmp_path / "from_cs.star", m, relative_to=shared_data / "star_cs_fixtures")
    b = read_star(tmp_path / "from_cs.star")
    assert geodesic_distance_deg(m.rotmats.double(), b.rotmats.double()).max() < 1e-4
    torch.testing.assert_close(b.shifts_angstrom, m.shifts_angstrom, rtol=0, atol=1e-6)
    assert not any(c.startswith("blob") or "/" in c for c in b.table.columns)  # cryoSPARC fields not written
    assert b.table["rlnImageName"][0].startswith("000001@J19/extract/")  # relative to `relative_to`


def test_cryodrgn_and_pyem_conventions_agree():
    """cryoDRGN reads STAR angles with R_from_relion = D·Rz(psi)·Ry(-tilt)·Rz(rot)·D (standard
    active rotations, D = diag(1, -1, 1)) and cryoSPARC poses as expm(pose)ᵀ; pyem writes
    RELION angles for expm(pose)ᵀ. They agree iff R_from_relion is RELION's matrix, which it is:"""
    rng = np.random.default_rng(0)
    eul = np.column_stack([rng.uniform(-180, 180, 50), rng.uniform(0, 180, 50), rng.uniform(-180, 180, 50)])
    d = np.diag([1.0, -1.0, 1.0])
    std = (Rotation.from_euler("z", eul[:, 2:3], degrees=True) * Rotation.from_euler("y", -eul[:, 1:2], degrees=True)
           * Rotation.from_euler("z", eul[:, 0:1], degrees=True)).as_matrix()
    np.testing.assert_allclose(d @ std @ d, relion_euler_to_rotmat(torch.from_numpy(eul)).numpy(), atol=1e-12)
    # and our pose conversion is that same expm(pose)ᵀ
    v = rng.normal(size=(50, 3))
    np.testing.assert_allclose(cryosparc_pose_to_rotmat(v).numpy(),
                               np.transpose(Rotation.from_rotvec(v).as_matrix(), (0, 2, 1)), atol=1e-12)
    np.testing.assert_allclose(cryosparc_pose_to_rotmat(np.zeros(3)).numpy(), np.eye(3))


def _project(tmp_path, shared_data, blob_path="J1/extract/empiar_10076_7.mrc"):
    """A cryoSPARC-like layout: project P1/, stacks under P1/J1/extract, the .cs in P1/J2/."""
    arr = np.load(_cs7(shared_data))
    arr = rfn.drop_fields(arr, "blob/path", usemask=False)
    arr = rfn.append_fields(arr, "blob/path", np.array([blob_path.encode()] * 7), usemask=False)
    (tmp_path / "P1" / "J1" / "extract").mkdir(parents=True)
    (tmp_path / "P1" / "J2").mkdir()
    cs = tmp_path / "P1" / "J2" / "J2_particles.cs"
    with open(cs, "wb") as f:
        np.save(f, arr)
    return cs


def test_blob_paths_resolve_from_the_project_folder(shared_data, tmp_path):
    cs = _project(tmp_path, shared_data, blob_path=">J1/extract/empiar_10076_7.mrc")  # '>' prefix dropped
    (tmp_path / "P1" / "J1" / "extract" / "empiar_10076_7.mrc").symlink_to(
        shared_data / "particles" / "empiar10076_7ptcl" / "empiar_10076_7.mrc")
    stack, meta = load_particles(cs)
    assert meta.image_paths[0] == str(tmp_path / "P1" / "J1" / "extract" / "empiar_10076_7.mrc")
    assert stack[6].shape == (1, 320, 320)


def test_missing_stack_names_the_paths_tried(shared_data, tmp_path):
    cs = _project(tmp_path, shared_data)
    with pytest.raises(InputFileError, match=r"J2_particles\.cs, row 1: stack file not found: .*P1/J2/J1/extract/"
                                             r"empiar_10076_7\.mrc; cryoSPARC blob/path was looked for relative to: "
                                             r".*P1/J2, .*P1, .*datadir="):
        load_particles(cs)
    elsewhere = tmp_path / "moved"
    (elsewhere / "J1" / "extract").mkdir(parents=True)
    (elsewhere / "J1" / "extract" / "empiar_10076_7.mrc").symlink_to(
        shared_data / "particles" / "empiar10076_7ptcl" / "empiar_10076_7.mrc")
    stack, _ = load_particles(cs, datadir=elsewhere)
    assert len(stack) == 7


def test_partial_fields_are_errors(shared_data, tmp_path):
    arr = np.load(_cs2019(shared_data))[:10]
    for field, missing in (("ctf/df2_A", r"missing field ctf/df2_A \(CTF"),
                           ("alignments3D/shift", r"missing field alignments3D/shift \(3D alignment"),
                           ("blob/path", r"missing field blob/path")):
        path = tmp_path / "bad.cs"
        with open(path, "wb") as f:
            np.save(f, rfn.drop_fields(arr, field, usemask=False))
        with pytest.raises(InputFileError, match=rf"bad\.cs: {missing}"):
            read_cs(path)


def test_bad_cs_files(shared_data, tmp_path):
    with pytest.raises(PixelSizeError, match=r"disagree: 1 Å from --pixel-size vs 1\.31 Å"):
        read_cs(_cs7(shared_data), pixel_size_angstrom=1.0)
    junk = tmp_path / "junk.cs"
    junk.write_bytes(b"not numpy")
    with pytest.raises(InputFileError, match=r"junk\.cs: not a cryoSPARC \.cs file"):
        read_cs(junk)
    empty = tmp_path / "empty.cs"
    with open(empty, "wb") as f:
        np.save(f, np.load(_cs7(shared_data))[:0])
    with pytest.raises(InputFileError, match=r"empty\.cs: the particle table has no rows"):
        read_cs(empty)
    arr = np.load(_cs2019(shared_data))[:5].copy()
    arr["alignments3D/pose"][3, 1] = np.nan
    nan = tmp_path / "nan.cs"
    with open(nan, "wb") as f:
        np.save(f, arr)
    with pytest.raises(InputFileError, match=r"nan\.cs, row 4: field alignments3D/pose is not finite"):
        read_cs(nan)
