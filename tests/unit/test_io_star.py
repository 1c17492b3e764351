"""RELION STAR reading and writing against the real files in shared/data."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import warnings

import numpy as np
import pytest
import torch

from cryopose.errors import InputFileError, PixelSizeError
from cryopose.io import load_particles, read_star, write_star
from cryopose.io import star_read as star_module
from cryopose.rotations import geodesic_distance_deg, relion_euler_to_rotmat

P = "particles"
FIX = "star_cs_fixtures"


def _star(tmp_path, labels, rows, name="bad.star", block="particles", optics=None):
    text = ""
    if optics is not None:
        text += "data_optics\n\nloop_\n" + "".join(f"_{k}\n" for k in optics) + " ".join(map(str, optics.values())) + "\n\n"
    text += f"data_{block}\n\nloop_\n" + "".join(f"_{lab} #{i}\n" for i, lab in enumerate(labels, 1))
    text += "".join(" ".join(map(str, r)) + "\n" for r in rows)
    path = tmp_path / name
    path.write_text(text)
    return path


def _direction(rot, tilt):
    """Third row of RELION's matrix: the projection direction (sin t cos r, sin t sin r, cos t)."""
    r, t = math.radians(rot), math.radians(tilt)
    return [math.sin(t) * math.cos(r), math.sin(t) * math.sin(r), math.cos(t)]


# ------------------------------------------------------------------------------------ real files

def test_relion31_values(shared_data):
    path = shared_data / P / "relion31_5ptcl" / "relion31.star"
    m = read_star(path)
    assert len(m) == 5 and m.pixel_size_angstrom == pytest.approx(2.806) and m.box_size == 256
    assert m.rotmats.dtype == torch.float32 and m.rotmats.shape == (5, 3, 3)
    torch.testing.assert_close(m.rotmats[0], relion_euler_to_rotmat(torch.tensor([-102.30296, 82.318041, 124.706463],
                                                                               dtype=torch.float64)).float())
    np.testing.assert_allclose(m.rotmats[0, 2].numpy(), _direction(-102.30296, 82.318041), atol=1e-6)
    np.testing.assert_allclose(m.shifts_angstrom[0].numpy(), [0.019324, -0.64686], rtol=1e-6)
    c = m.ctf
    assert c.defocus_u_angstrom[0].item() == pytest.approx(13108.082418)
    assert c.defocus_v_angstrom[0].item() == pytest.approx(12845.582418)
    assert c.defocus_angle_deg[0].item() == pytest.approx(-160.39)
    assert c.spherical_aberration_mm.tolist() == pytest.approx([0.01] * 5)  # from data_optics
    assert c.voltage_kv.tolist() == [300.0] * 5 and c.amplitude_contrast[0].item() == pytest.approx(0.1)
    assert m.image_paths[0] == str(path.parent / "relion31.mrcs") and m.image_indices.tolist() == [0, 1, 2, 3, 4]
    assert m.optics_group.tolist() == [1] * 5 and m.table["rlnNrOfSignificantSamples"].tolist()[0] == 450


def test_relion31_block_order_does_not_matter(shared_data):
    a = read_star(shared_data / P / "relion31_5ptcl" / "relion31.star")
    b = read_star(shared_data / P / "relion31_5ptcl" / "relion31.v2.star")
    assert (a.pixel_size_angstrom, a.box_size, a.image_paths) == (b.pixel_size_angstrom, b.box_size, b.image_paths)
    assert torch.equal(a.rotmats, b.rotmats) and torch.equal(a.shifts_angstrom, b.shifts_angstrom)
    for f in ("defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_deg", "voltage_kv",
              "spherical_aberration_mm", "amplitude_contrast", "phase_shift_deg"):
        assert torch.equal(getattr(a.ctf, f), getattr(b.ctf, f))
    assert a.table.equals(b.table) and a.optics.equals(b.optics)


def test_empiar10076_relion30_values(shared_data):
    m = read_star(shared_data / P / "empiar10076_7ptcl" / "empiar_10076_7.star")
    assert len(m) == 7 and m.rotmats is None and m.shifts_angstrom is None
    assert m.pixel_size_angstrom == pytest.approx(5e4 / 38168) == pytest.approx(1.31, abs=1e-4)
    assert m.box_size == 320  # no rlnImageSize: from the stack header
    assert m.ctf.defocus_u_angstrom[0].item() == pytest.approx(15301.1)
    assert m.ctf.defocus_v_angstrom[0].item() == pytest.approx(14916.4)
    assert m.ctf.defocus_angle_deg[0].item() == pytest.approx(5.28)
    assert m.ctf.amplitude_contrast[0].item() == pytest.approx(0.07) and m.optics is None


def test_aspire_relion30_values(shared_data):
    m = read_star(shared_data / P / "aspire_sample17" / "sample_particles_relion30.star")
    px = 5e4 / 37369.207031
    assert len(m) == 17 and m.pixel_size_angstrom == pytest.approx(px) and m.box_size == 200
    np.testing.assert_allclose(m.rotmats[0, 2].numpy(), _direction(109.186640, 122.200343), atol=1e-6)
    np.testing.assert_allclose(m.shifts_angstrom[0].numpy(), [0.1996 * px] * 2, rtol=1e-6)  # px → Å
    assert m.ctf.voltage_kv[:8].tolist() == [300.0] * 8 and m.ctf.voltage_kv[8:].tolist() == [200.0] * 9


def test_aspire_relion30_and_relion31_agree(shared_data):
    """Same 17 particles. ASPIRE edited the 3.1 copy for its tests: optics pixel 1.4 Å (vs 1.338),
    row 15 replaced by a copy of row 14's pose, and the 3.0 pixel origins copied as Å numbers."""
    a = read_star(shared_data / P / "aspire_sample17" / "sample_particles_relion30.star")
    b = read_star(shared_data / P / "aspire_sample17" / "sample_particles_relion31.star")
    assert a.image_paths == b.image_paths and a.image_indices.tolist() == b.image_indices.tolist()
    same = np.arange(17) != 14
    assert geodesic_distance_deg(a.rotmats[same].double(), b.rotmats[same].double()).max() < 1e-4
    for f in ("defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_deg", "voltage_kv",
              "spherical_aberration_mm", "amplitude_contrast"):
        torch.testing.assert_close(getattr(a.ctf, f), getattr(b.ctf, f))
    torch.testing.assert_close(a.shifts_angstrom[same] / a.pixel_size_angstrom, b.shifts_angstrom[same])
    assert b.pixel_size_angstrom == 1.4 and b.optics_group.tolist() == [1] * 8 + [2] * 9


def test_pfcrt_relion306(shared_data):
    path = shared_data / FIX / "FinalRefinement-OriginalParticles-PfCRT.star"
    with pytest.warns(UserWarning, match="no rlnAmplitudeContrast"):
        m = read_star(path)
    assert len(m) == 5 and m.pixel_size_angstrom == pytest.approx(1.035) and m.box_size is None
    np.testing.assert_allclose(m.shifts_angstrom[0].numpy(), [-0.14063 * 1.035, -0.04688 * 1.035], rtol=1e-5)
    np.testing.assert_allclose(m.rotmats[0, 2].numpy(), _direction(16.093530, 86.352776), atol=1e-6)
    assert m.ctf.amplitude_contrast.tolist() == [0.0] * 5 and m.ctf.spherical_aberration_mm[0].item() == pytest.approx(0.001)
    assert m.image_paths[4].endswith("Extract/job012/FinalRefinement-OriginalParticles-PfCRT.mrcs")
    assert m.image_indices[4] == 4


def test_relion5(shared_data):
    m = read_star(shared_data / FIX / "relion5.star")
    assert len(m) == 17 and m.pixel_size_angstrom == pytest.approx(0.89) and m.box_size == 448
    assert m.ctf.voltage_kv.unique().tolist() == [100.0] and m.ctf.spherical_aberration_mm[0].item() == pytest.approx(1.6)
    assert m.ctf.defocus_u_angstrom[0].item() == pytest.approx(11949.06133)
    np.testing.assert_allclose(m.shifts_angstrom[0].numpy(), [-3.12578, -1.41031], rtol=1e-6)
    assert "rlnBeamTiltX" in m.optics.columns and m.image_paths[1].endswith("toy_images_b.mrcs")


def test_six_optics_groups_need_one_pixel_size(shared_data):
    path = shared_data / FIX / "relion31.6opticsgroups.star"
    with pytest.raises(InputFileError, match=r"6opticsgroups\.star: optics groups have different pixel or box "
                                             r"sizes .*group 2 \(opticsGroup3\): 1\.24 Å.*one pixel size"):
        read_star(path)
    m = read_star(path, optics_groups=[1, 3, 4, 6])  # the 1.25 Å groups
    assert len(m) == 48 + 5 + 7 + 24 and m.pixel_size_angstrom == 1.25 and m.box_size == 196
    cs = m.ctf.spherical_aberration_mm.numpy()
    np.testing.assert_allclose(cs[m.optics_group == 4], 2.6, rtol=1e-6)  # group 4's own Cs, broadcast
    np.testing.assert_allclose(cs[m.optics_group != 4], 2.7, rtol=1e-6)
    assert sorted(m.optics["rlnOpticsGroup"].tolist()) == [1, 3, 4, 6]
    assert (m.table.index.to_numpy() + 1)[0] == 1 and m.rotmats.shape == (84, 3, 3)


# ------------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("rel", [f"{P}/relion31_5ptcl/relion31.star", f"{P}/aspire_sample17/sample_particles_relion30.star",
                                 f"{P}/empiar10076_7ptcl/empiar_10076_7.star", f"{FIX}/relion5.star"])
def test_round_trip(shared_data, tmp_path, rel):
    src = shared_data / rel
    a = read_star(src)
    out = tmp_path / "sub" / "out.star"
    out.parent.mkdir()
    write_star(out, a)
    real = (shared_data / rel).parent.name != FIX  # FIX stacks do not exist
    with pytest.raises(InputFileError, match=r"out\.star, row 1: rlnImageName '000001@/.*' resolves to .*, outside "
                                             r"the folders images are read from .*; pass --datadir") if real \
            else contextlib.nullcontext():
        read_star(out)  # the stacks are outside out.star's folder and the current folder
    b = read_star(out, datadir=shared_data)
    assert (b.pixel_size_angstrom, b.box_size, b.image_paths) == (pytest.approx(a.pixel_size_angstrom), a.box_size,
                                                                  a.image_paths)
    assert b.image_indices.tolist() == a.image_indices.tolist()
    if a.rotmats is not None:
        assert geodesic_distance_deg(a.rotmats.double(), b.rotmats.double()).max() < 1e-4
        torch.testing.assert_close(a.shifts_angstrom, b.shifts_angstrom, rtol=0, atol=1e-6)
        for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):  # the angles themselves
            d = (b.table[col].to_numpy() - a.table[col].to_numpy() + 180) % 360 - 180
            assert np.abs(d).max() < 1e-4
    for f in ("defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_deg", "voltage_kv",
              "spherical_aberration_mm", "amplitude_contrast", "phase_shift_deg", "bfactor_angstrom2"):
        torch.testing.assert_close(getattr(a.ctf, f), getattr(b.ctf, f), rtol=1e-7, atol=0)
    for col in a.table.columns:  # unknown columns pass through unchanged, and so do unchanged values
        if col in b.table.columns and col != "rlnImageName" or col not in star_module._MANAGED:
            if b.table[col].dtype.kind in "fi":
                np.testing.assert_allclose(b.table[col].to_numpy(float), a.table[col].to_numpy(float), rtol=1e-9)
            else:
                assert b.table[col].tolist() == a.table[col].tolist()
    # written names resolve from the current folder (RELION's convention) to the same stacks; those that
    # resolved beside the source STAR, outside the current folder, are written absolute
    names = [str(v).removesuffix(":mrcs").partition("@") for v in b.table["rlnImageName"]]
    assert [int(n[0]) - 1 for n in names] == a.image_indices.tolist()
    assert [os.path.normpath(os.path.join(os.getcwd(), n[2])) for n in names] == a.image_paths
    assert all(os.path.isabs(n[2]) for n in names) == real
    if real:  # images load via the written names
        s_a, _ = load_particles(src)
        s_b, _ = load_particles(out, datadir=shared_data)
        assert torch.equal(s_a[:], s_b[:])


def test_round_trip_of_subset_and_extra_columns(shared_data, tmp_path):
    m = read_star(shared_data / P / "relion31_5ptcl" / "relion31.star").subset([4, 1])
    write_star(tmp_path / "s.star", m, extra_columns={"rlnCryoposeScore": np.array([0.5, 0.25]),
                                                      "_rlnClassNumber": np.array([7, 8])})
    b = read_star(tmp_path / "s.star", datadir=shared_data)
    assert b.image_indices.tolist() == [4, 1] and b.table["rlnClassNumber"].tolist() == [7, 8]
    assert b.table["rlnCryoposeScore"].tolist() == [0.5, 0.25]
    torch.testing.assert_close(b.rotmats, m.rotmats, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="written by cryopose itself"):
        write_star(tmp_path / "x.star", m, extra_columns={"rlnAngleRot": np.zeros(2)})
    with pytest.raises(ValueError, match="empty particle table"):
        write_star(tmp_path / "x.star", m.subset([]))


@pytest.mark.relion
def test_relion_reads_what_we_write(shared_data, tmp_path, relion):
    """RELION 3.1 parses the written STAR (relion_star_printtable), reads every image through the
    written rlnImageName (relion_stack_create, run from the STAR's folder as RELION resolves
    names from its working folder), and its own rewrite of the file reads back identically."""
    printtable, stack_create = relion("relion_star_printtable"), relion("relion_stack_create")
    src = shared_data / P / "relion31_5ptcl" / "relion31.star"
    m = read_star(src)
    write_star(tmp_path / "ours.star", m)
    out = subprocess.run([printtable, "ours.star", "data_particles", "rlnImageName", "rlnAngleRot", "rlnAngleTilt",
                          "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    rows = [r.split() for r in out if r.strip()]
    assert len(rows) == 5 and rows[0][0].startswith("000001@")
    vals = np.array([[float(x) for x in r[1:]] for r in rows])
    np.testing.assert_allclose(vals[:, :3], m.table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), atol=1e-4)
    np.testing.assert_allclose(vals[:, 3:5], m.shifts_angstrom.numpy(), atol=1e-6)
    np.testing.assert_allclose(vals[:, 5], m.table["rlnDefocusU"].to_numpy(), rtol=1e-7)
    px = subprocess.run([printtable, "ours.star", "data_optics", "rlnImagePixelSize", "rlnImageSize"], cwd=tmp_path,
                        capture_output=True, text=True, check=True).stdout.split()
    assert [float(px[0]), int(px[1])] == [2.806, 256]
    res = subprocess.run([stack_create, "--i", "ours.star", "--o", "relion"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    ours, _ = load_particles(src)
    theirs, back = load_particles(tmp_path / "relion.star")  # RELION's STAR of RELION's stack
    assert torch.equal(theirs[:], ours[:])
    assert geodesic_distance_deg(back.rotmats.double(), m.rotmats.double()).max() < 1e-4
    torch.testing.assert_close(back.shifts_angstrom, m.shifts_angstrom, rtol=0, atol=1e-6)
    assert back.pixel_size_angstrom == pytest.approx(2.806)


# ------------------------------------------------------------------------------------ bad input

def test_missing_image_name(tmp_path):
    path = _star(tmp_path, ["rlnDefocusU", "rlnDefocusV"], [[1, 2]], optics={"rlnOpticsGroup": 1, "rlnImagePixelSize": 1.0})
    with pytest.raises(InputFileError, match=r"bad\.star: data_particles is missing column rlnImageName"):
        read_star(path)


def test_defocus_u_without_v(tmp_path):
    path = _star(tmp_path, ["rlnImageName", "rlnDefocusU", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
                            "rlnAmplitudeContrast", "rlnImagePixelSize"], [["1@a.mrcs", 1e4, 0, 300, 2.7, 0.1, 1.0]])
    with pytest.raises(InputFileError, match=r"bad\.star: data_particles is missing column rlnDefocusV \(CTF defocus"):
        read_star(path)


def test_angle_rot_without_tilt(tmp_path):
    path = _star(tmp_path, ["rlnImageName", "rlnAngleRot", "rlnAnglePsi", "rlnImagePixelSize"], [["1@a.mrcs", 1, 2, 1.0]])
    with pytest.raises(InputFileError, match=r"bad\.star: data_particles is missing column rlnAngleTilt"):
        read_star(path)


def test_explicit_pixel_size_must_agree(shared_data):
    with pytest.raises(PixelSizeError, match=r"disagree: 1\.5 Å from --pixel-size vs 2\.806 Å from .*relion31\.star"):
        read_star(shared_data / P / "relion31_5ptcl" / "relion31.star", pixel_size_angstrom=1.5)
    assert read_star(shared_data / P / "relion31_5ptcl" / "relion31.star", pixel_size_angstrom=2.806).pixel_size_angstrom == 2.806


def test_rows_with_different_pixel_sizes(tmp_path):
    path = _star(tmp_path, ["rlnImageName", "rlnDetectorPixelSize", "rlnMagnification"],
                 [["1@a.mrcs", 5, 10000], ["2@a.mrcs", 5, 10000], ["3@a.mrcs", 14, 10000]], block="")
    with pytest.raises(InputFileError, match=r"bad\.star, row 3: rlnDetectorPixelSize·1e4/rlnMagnification differs"):
        read_star(path)


def test_no_pixel_size_anywhere(tmp_path):
    path = _star(tmp_path, ["rlnImageName"], [["1@a.mrcs"]], block="")
    with pytest.raises(PixelSizeError, match=r"bad\.star: no pixel size in the file.*--pixel-size"):
        read_star(path)
    assert read_star(path, pixel_size_angstrom=1.2).pixel_size_angstrom == 1.2


@pytest.mark.parametrize("value, what", [("abc", r"value 'abc' is not a finite number"), ("nan", "is empty"),
                                         ("inf", r"value .* is not a finite number")])
def test_non_numeric_values_name_column_and_row(tmp_path, value, what):
    path = _star(tmp_path, ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnImagePixelSize"],
                 [["1@a.mrcs", 1, 2, 3, 1.0], ["2@a.mrcs", 1, value, 3, 1.0]])
    with pytest.raises(InputFileError, match=rf"bad\.star, row 2: data_particles column rlnAngleTilt: {what}"):
        read_star(path)


def test_empty_table(tmp_path):
    path = _star(tmp_path, ["rlnImageName", "rlnDefocusU"], [])
    with pytest.raises(InputFileError, match=r"bad\.star: the particle table \(data_particles\) has no rows"):
        read_star(path)


def test_ragged_rows(tmp_path):
    path = _star(tmp_path, ["rlnImageName", "rlnDefocusU"], [["1@a.mrcs", 1], ["2@a.mrcs", 1, 5]])
    with pytest.raises(InputFileError, match=r"bad\.star: cannot parse STAR file: row 2 \(line \d+\) has 3 fields "
                                             r"but the loop has 2 columns"):
        read_star(path)
    path = _star(tmp_path, ["rlnImageName", "rlnDefocusU"], [["1@a.mrcs", 1], ["2@a.mrcs"]])
    with pytest.raises(InputFileError, match=r"bad\.star, row 2: cannot parse STAR file: 1 fields \(line \d+\) but the loop has 2"):
        read_star(path)


@pytest.mark.parametrize("name", ["abc@a.mrcs", "0@a.mrcs", "1.5@a.mrcs", "3@"])
def test_bad_image_names(tmp_path, name):
    path = _star(tmp_path, ["rlnImageName", "rlnImagePixelSize"], [["1@a.mrcs", 1.0], [name, 1.0]])
    with pytest.raises(InputFileError, match=r"bad\.star, row 2: rlnImageName"):
        read_star(path)


def test_unknown_optics_group_and_not_a_star_file(tmp_path):
    path = _star(tmp_path, ["rlnImageName", "rlnOpticsGroup"], [["1@a.mrcs", 1], ["2@a.mrcs", 3]],
                 optics={"rlnOpticsGroup": 1, "rlnImagePixelSize": 1.0})
    with pytest.raises(InputFileError, match=r"bad\.star, row 2: rlnOpticsGroup 3 is not in data_optics"):
        read_star(path)
    junk = tmp_path / "junk.star"
    junk.write_text("hello world\n")
    with pytest.raises(InputFileError, match=r"junk\.star: no particle table found"):
        read_star(junk)
    with pytest.raises(InputFileError, match=r"nothere\.star: no such file"):
        read_star(tmp_path / "nothere.star")


def test_image_names_resolve_from_cwd_then_beside_star(tmp_path, monkeypatch):
    """RELION's convention first (names relative to the folder the program runs in), then the
    STAR file's folder; a stack in both places is the current folder's; a missing one is
    reported where RELION would look."""
    (tmp_path / "star").mkdir()
    (tmp_path / "proj" / "Extract").mkdir(parents=True)
    (tmp_path / "proj" / "Extract" / "a.mrcs").write_bytes(b"")
    (tmp_path / "star" / "b.mrcs").write_bytes(b"")
    (tmp_path / "star" / "both.mrcs").write_bytes(b"")
    (tmp_path / "proj" / "both.mrcs").write_bytes(b"")
    path = _star(tmp_path / "star", ["rlnImageName", "rlnImagePixelSize"],
                 [["1@Extract/a.mrcs", 1.0], ["2@b.mrcs", 1.0], ["3@gone.mrcs", 1.0], ["1@both.mrcs", 1.0]])
    monkeypatch.chdir(tmp_path / "proj")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = read_star(path)
    assert m.image_paths == [str(tmp_path / "proj" / "Extract" / "a.mrcs"), str(tmp_path / "star" / "b.mrcs"),
                             str(tmp_path / "proj" / "gone.mrcs"), str(tmp_path / "proj" / "both.mrcs")]


@pytest.mark.parametrize("du, dv", [(0.0, 1e4), (1e4, -5e3)])
def test_defocus_must_be_positive(tmp_path, du, dv):
    """Zero or negative defocus (RELION's sign: Å of underfocus) is refused, naming row and column."""
    labels = ["rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
              "rlnAmplitudeContrast", "rlnImagePixelSize"]
    path = _star(tmp_path, labels, [["1@a.mrcs", 1e4, 1e4, 0, 300, 2.7, 0.1, 1.0],
                                    ["2@a.mrcs", du, dv, 0, 300, 2.7, 0.1, 1.0]])
    col = "rlnDefocusU" if du <= 0 else "rlnDefocusV"
    with pytest.raises(InputFileError, match=rf"bad\.star, row 2: {col} must be positive"):
        read_star(path, require_image_names=False)
