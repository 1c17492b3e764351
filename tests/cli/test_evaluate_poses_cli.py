"""``cryopose evaluate-poses``: round trips through files cryopose writes (issue 2, must-show 3)."""

from __future__ import annotations

import json

import pytest
import torch

from cryopose.cli.main import main
from cryopose.io.cryosparc import read_cs
from cryopose.io.star import read_star, write_star
from cryopose.rotations import random_rotations
from cryopose.symmetry import symmetry_operators


@pytest.fixture(scope="module")
def real_poses(shared_data):
    """2,019 real cryoSPARC refinement poses (metadata only)."""
    return read_cs(shared_data / "star_cs_fixtures" / "cryosparc_P12_J24_001_particles.cs")


def _evaluate(capsys, est, ref, *extra):
    assert main(["evaluate-poses", str(est), str(ref), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_written_star_against_read_star_is_zero(tmp_path, capsys, shared_data):
    src = shared_data / "particles" / "aspire_sample17" / "sample_particles_relion31.star"
    meta = read_star(src)
    write_star(tmp_path / "out.star", meta)
    res = _evaluate(capsys, tmp_path / "out.star", src)
    assert res["n_particles"] == 17
    assert f"{res['median_error_deg']:.2f}" == "0.00" and f"{res['mean_error_deg']:.2f}" == "0.00"
    assert res["hand"] == "same"
    assert res["median_shift_error_angstrom"] < 1e-3


def test_global_rotation_and_mirror_recovered(tmp_path, capsys, real_poses):
    ref_path = tmp_path / "ref.star"
    write_star(ref_path, real_poses, image_names=[f"{i + 1}@x.mrcs" for i in range(len(real_poses))])
    g = random_rotations(1, generator=torch.Generator().manual_seed(4), dtype=torch.float32)[0]
    j = torch.diag(torch.tensor([1.0, 1.0, -1.0]))
    rotated = real_poses.replace(rotmats=real_poses.rotmats @ g.T)
    mirrored = real_poses.replace(rotmats=j @ real_poses.rotmats @ j @ g.T)
    for name, meta, hand in (("rot", rotated, "same"), ("mirror", mirrored, "mirror")):
        path = tmp_path / f"{name}.star"
        write_star(path, meta, image_names=[f"{i + 1}@x.mrcs" for i in range(len(meta))])
        res = _evaluate(capsys, path, ref_path)
        assert res["hand"] == hand
        assert res["median_error_deg"] < 0.01 and res["mean_error_deg"] < 0.01
        if hand == "same":
            # without the other hand allowed, the mirror is far off
            continue
        res_c1 = _evaluate(capsys, path, ref_path, "--no-mirror")
        assert res_c1["median_error_deg"] > 10


def test_d2_copy_equivalent_modulo_d2(tmp_path, capsys, real_poses):
    ops = symmetry_operators("D2", dtype=torch.float32)
    pick = torch.randint(0, len(ops), (len(real_poses),), generator=torch.Generator().manual_seed(1))
    copy = real_poses.replace(rotmats=real_poses.rotmats @ ops[pick])
    names = [f"{i + 1}@x.mrcs" for i in range(len(real_poses))]
    write_star(tmp_path / "ref.star", real_poses, image_names=names)
    write_star(tmp_path / "d2.star", copy, image_names=names)
    res = _evaluate(capsys, tmp_path / "d2.star", tmp_path / "ref.star", "--symmetry", "D2")
    assert res["median_error_deg"] < 0.01 and res["mean_error_deg"] < 0.01
    res_c1 = _evaluate(capsys, tmp_path / "d2.star", tmp_path / "ref.star")
    assert res_c1["mean_error_deg"] > 10


def test_human_readable_output_and_missing_file(tmp_path, capsys, shared_data):
    src = shared_data / "particles" / "relion31_5ptcl" / "relion31.star"
    assert main(["evaluate-poses", str(src), str(src)]) == 0
    out = capsys.readouterr().out
    assert "median angular error: 0.00°" in out
    assert main(["evaluate-poses", str(tmp_path / "none.star"), str(src)]) == 2
    err = capsys.readouterr().err
    assert "none.star" in err and len(err.strip().splitlines()) == 1
