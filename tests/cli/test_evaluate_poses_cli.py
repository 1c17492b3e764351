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


def _blob_map(n: int = 32) -> torch.Tensor:
    """A few Gaussian blobs within the inner half of an ``n`` box, ``(z, y, x)``."""
    g = torch.Generator().manual_seed(7)
    c = torch.arange(n, dtype=torch.float32) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(n, n, n)
    for _ in range(5):
        p = (torch.rand(3, generator=g) - 0.5) * n * 0.4
        vol += torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * (n / 12) ** 2))
    return vol


def _posed(rot: torch.Tensor, apix: float, n: int):
    """Metadata of ``len(rot)`` particles (one CTF, as STAR files need) with these poses."""
    from cryopose.ctf import CTFParams
    from cryopose.io.particles import ParticleMetadata

    ctf = CTFParams.create(defocus_u_angstrom=torch.full((rot.shape[0],), 15000.0))
    return ParticleMetadata(pixel_size_angstrom=apix, box_size=n, rotmats=rot, ctf=ctf)


def test_reprojection_rmse_identity_perturbed_and_d2_equivalent(tmp_path, capsys):
    from cryopose.io.mrc import write_map
    from cryopose.models.volume import symmetrize_volume
    from cryopose.rotations import axis_angle_to_rotmat

    n, apix, count = 32, 2.0, 60
    ops = symmetry_operators("D2", dtype=torch.float32)
    write_map(tmp_path / "map.mrc", _blob_map(n), apix)
    write_map(tmp_path / "d2.mrc", symmetrize_volume(_blob_map(n), ops), apix)
    g = torch.Generator().manual_seed(3)
    truth = random_rotations(count, generator=g, dtype=torch.float32)
    names = [f"{i + 1}@x.mrcs" for i in range(count)]
    axes = torch.nn.functional.normalize(torch.randn(count, 3, generator=g), dim=-1)
    sets = {"ref": truth, "same": truth.clone(),
            "perturbed": truth @ axis_angle_to_rotmat(axes * torch.deg2rad(torch.tensor(10.0))),
            "d2": truth @ ops[torch.randint(0, len(ops), (count,), generator=g)]}
    for name, rot in sets.items():
        write_star(tmp_path / f"{name}.star", _posed(rot, apix, n), image_names=names)
    ref = tmp_path / "ref.star"

    same = _evaluate(capsys, tmp_path / "same.star", ref, "--reference", str(tmp_path / "map.mrc"))
    assert same["reprojection_rmse"] < 1e-6 and same["reprojection_n_particles"] == count
    assert same["reprojection_box_size"] == n and same["reprojection_normalized"] is True
    assert {"reprojection_rmse_median", "reprojection_scale"} <= set(same)
    pert = _evaluate(capsys, tmp_path / "perturbed.star", ref, "--reference", str(tmp_path / "map.mrc"))
    assert pert["reprojection_rmse"] > 0.03  # 10° per particle: about 0.08
    # symmetry-blind: D2-equivalent poses reproject identically on the D2 map, not on the C1 map
    d2 = _evaluate(capsys, tmp_path / "d2.star", ref, "--reference", str(tmp_path / "d2.mrc"))
    assert d2["reprojection_rmse"] < 1e-4
    assert _evaluate(capsys, tmp_path / "d2.star", ref, "--reference", str(tmp_path / "map.mrc"))[
        "reprojection_rmse"] > 0.2
    # working box and subset
    small = _evaluate(capsys, tmp_path / "perturbed.star", ref, "--reference", str(tmp_path / "map.mrc"),
                      "--reprojection-box", "16", "--max-particles", "10")
    assert small["reprojection_box_size"] == 16 and small["reprojection_n_particles"] == 10
    assert small["n_particles"] == count  # the angular errors still use every particle
    # human-readable table
    assert main(["evaluate-poses", str(tmp_path / "same.star"), str(ref), "--reference",
                 str(tmp_path / "map.mrc")]) == 0
    assert "reprojection RMSE:    0.0000" in capsys.readouterr().out


def test_reprojection_rejects_bad_reference_maps(tmp_path, capsys):
    from cryopose.io.mrc import write_map

    rot = random_rotations(5, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    write_star(tmp_path / "p.star", _posed(rot, 2.0, 32), image_names=[f"{i + 1}@x.mrcs" for i in range(5)])
    write_map(tmp_path / "wrong_apix.mrc", _blob_map(32), 3.0)  # 96 Å box vs the particles' 64 Å
    write_map(tmp_path / "half.mrc", _blob_map(16), 4.0)  # same 64 Å box at another voxel size: fine
    star = str(tmp_path / "p.star")
    for bad in ("missing.mrc", "wrong_apix.mrc"):
        assert main(["evaluate-poses", star, star, "--reference", str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and bad in err[0]
    assert _evaluate(capsys, star, star, "--reference", str(tmp_path / "half.mrc"))["reprojection_rmse"] < 1e-6
