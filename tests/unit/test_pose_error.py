"""Pose-error metrics: conventions (global rotation, hand, symmetry) and their recovery."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from cryopose import rotations as rt
from cryopose import symmetry as sy
from cryopose.metrics import pose_error as pe

J = pe.MIRROR


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _projected(r, atoms):
    """(x, y) image positions of point atoms under pose R: image = ∫ V(Rᵀ p) dz puts atom a at
    (R a)_xy (for isotropic blobs, V(x) = Σ g(x − a))."""
    return (r @ atoms.T).transpose(-1, -2)[..., :2]


def _same_point_sets(p, q, tol=1e-10):
    d = (p[:, None] - q[None]).norm(dim=-1)
    return bool(d.min(dim=1).values.max() < tol and d.min(dim=0).values.max() < tol)


# ---------------------------------------------------------------- the conventions themselves


def test_convention_global_rotation():
    """V'(x) = V(Gᵀ x) (atoms at G a) is seen with poses R' = R Gᵀ."""
    g = _gen(0)
    atoms = torch.randn(20, 3, generator=g, dtype=torch.float64)
    r, grot = rt.random_rotations(5, g), rt.random_rotations(1, g)[0]
    assert torch.allclose(_projected(r @ grot.T, atoms @ grot.T), _projected(r, atoms), atol=1e-12)
    assert not torch.allclose(_projected(grot.T @ r, atoms @ grot.T), _projected(r, atoms), atol=1e-3)


def test_convention_mirror():
    """V'(x) = V(J x) (atoms at J a) gives the same images with R' = J R J (a proper rotation)."""
    g = _gen(1)
    atoms = torch.randn(20, 3, generator=g, dtype=torch.float64)
    r = rt.random_rotations(5, g)
    assert torch.allclose(torch.linalg.det(J @ r @ J), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(_projected(J @ r @ J, atoms @ J), _projected(r, atoms), atol=1e-12)


@pytest.mark.parametrize("symbol", ["D2", "T"])
def test_convention_symmetry_acts_on_the_right(symbol):
    """A symmetric map (atom set closed under S) gives identical images for R and R S."""
    g = _gen(2)
    ops = sy.symmetry_operators(symbol)
    atoms = (ops @ torch.randn(3, generator=g, dtype=torch.float64)).reshape(-1, 3)
    atoms = torch.cat([atoms, (ops @ torch.randn(3, generator=g, dtype=torch.float64)).reshape(-1, 3)])
    r = rt.random_rotations(1, g)[0]
    for s in ops:
        assert _same_point_sets(_projected(r @ s, atoms), _projected(r, atoms))
    # left multiplication is not a symmetry of the images (for a non-trivial S)
    assert not _same_point_sets(_projected(ops[1] @ r, atoms), _projected(r, atoms), tol=1e-3)


# ---------------------------------------------------------------- recovery


def test_recovers_random_global_rotation():
    g = _gen(3)
    ref = rt.random_rotations(500, g)
    grot = rt.random_rotations(1, g)[0]
    res = pe.align_rotations(ref @ grot.T, ref)
    assert res.hand == "same" and not res.mirrored
    assert res.median_error_deg < 1e-8 and res.errors_deg.max() < 1e-8
    assert f"{res.mean_error_deg:.2f}" == "0.00"
    assert rt.geodesic_distance_deg(res.global_rotation, grot) < 1e-8
    assert torch.allclose(res.aligned_est, ref, atol=1e-10)
    assert res.other_hand_median_error_deg > 30
    assert res.symmetry == "C1" and res.errors_deg.shape == (500,)


def test_recovers_mirror():
    g = _gen(4)
    ref = rt.random_rotations(500, g)
    res = pe.align_rotations(J @ ref @ J, ref)
    assert res.hand == "mirror" and res.mirrored
    assert res.errors_deg.max() < 1e-8
    assert rt.geodesic_distance_deg(res.global_rotation, torch.eye(3, dtype=torch.float64)) < 1e-8
    no_mirror = pe.align_rotations(J @ ref @ J, ref, allow_mirror=False)
    assert no_mirror.hand == "same" and no_mirror.median_error_deg > 30
    assert no_mirror.other_hand_median_error_deg is None


@pytest.mark.parametrize("mirrored", [False, True])
def test_global_rotation_means_map_superposition(mirrored):
    """Estimated map V_est(x) = V_ref(Gᵀ J^m x) (atoms at J^m G a) with poses reproducing the
    reference images: the alignment returns that G and hand."""
    g = _gen(5)
    atoms = torch.randn(15, 3, generator=g, dtype=torch.float64)
    ref = rt.random_rotations(300, g)
    grot = rt.random_rotations(1, g)[0]
    jm = J if mirrored else torch.eye(3, dtype=torch.float64)
    est = jm @ ref @ grot.T @ jm
    est_atoms = atoms @ (jm @ grot).T
    assert torch.allclose(_projected(est, est_atoms), _projected(ref, atoms), atol=1e-12)  # same images
    res = pe.align_rotations(est, ref)
    assert res.mirrored == mirrored
    assert rt.geodesic_distance_deg(res.global_rotation, grot) < 1e-8
    assert res.errors_deg.max() < 1e-8


def test_recovers_d2_symmetric_copy():
    g = _gen(6)
    ref = rt.random_rotations(400, g)
    ops = sy.symmetry_operators("D2")
    idx = torch.randint(4, (400,), generator=g)
    est = ref @ ops[idx]
    res = pe.align_rotations(est, ref, symmetry="d2")
    assert res.symmetry == "D2" and res.hand == "same"
    assert res.errors_deg.max() < 1e-8
    assert torch.allclose(res.aligned_est, ref, atol=1e-10)
    # the test can fail: without the symmetry the copies are real errors
    assert pe.align_rotations(est, ref, symmetry="C1").median_error_deg > 10


@pytest.mark.parametrize("symbol", ["D7", "O", "I"])
def test_recovers_symmetry_rotation_and_mirror_together(symbol):
    g = _gen(7)
    n = 300
    ref = rt.random_rotations(n, g)
    grot = rt.random_rotations(1, g)[0]
    ops = sy.symmetry_operators(symbol)
    est = J @ (ref @ ops[torch.randint(len(ops), (n,), generator=g)] @ grot.T) @ J
    res = pe.align_rotations(est, ref, symmetry=symbol)
    assert res.hand == "mirror"
    assert res.errors_deg.max() < 1e-8
    # G is determined up to a group element: G ~ G S
    assert rt.geodesic_distance_deg(res.global_rotation @ ops, grot).min() < 1e-8
    # per-particle bookkeeping: aligned_est = J est J G S_iᵀ, and errors are measured against ref
    s_i = ops[res.symmetry_indices]
    assert torch.allclose(res.aligned_est, J @ est @ J @ res.global_rotation @ s_i.transpose(-1, -2), atol=1e-12)
    assert torch.allclose(rt.geodesic_distance_deg(res.aligned_est, ref), res.errors_deg)


def test_robust_to_20_percent_outliers():
    g = _gen(8)
    n = 1000
    ref = rt.random_rotations(n, g)
    grot = rt.random_rotations(1, g)[0]
    est = ref @ grot.T
    bad = torch.randperm(n, generator=g)[: n // 5]
    est[bad] = rt.random_rotations(n // 5, g)
    res = pe.align_rotations(est, ref)
    assert rt.geodesic_distance_deg(res.global_rotation, grot) < 1e-8
    good = torch.ones(n, dtype=torch.bool)
    good[bad] = False
    assert res.errors_deg[good].max() < 1e-8
    assert res.median_error_deg < 1e-8
    assert res.errors_deg[bad].median() > 30  # outliers stay outliers
    assert res.mean_error_deg > 10


def test_noisy_poses_with_outliers_and_symmetry():
    g = _gen(9)
    n = 1500
    ref = rt.random_rotations(n, g)
    grot = rt.random_rotations(1, g)[0]
    ops = sy.symmetry_operators("D2")
    noise = rt.axis_angle_to_rotmat(torch.randn(n, 3, generator=g, dtype=torch.float64) * math.radians(2.0))
    est = noise @ ref @ ops[torch.randint(4, (n,), generator=g)] @ grot.T
    est[: n // 5] = rt.random_rotations(n // 5, g)
    res = pe.align_rotations(est, ref, symmetry="D2")
    assert rt.geodesic_distance_deg(res.global_rotation @ ops, grot).min() < 0.3
    # 2° per axis: the inliers' angle error has median ~ 3.1° (Maxwell, sigma 2°)
    assert 2.5 < res.errors_deg[n // 5:].median() < 3.8


def test_deterministic():
    g = _gen(10)
    ref = rt.random_rotations(300, g)
    est = rt.random_rotations(300, g)  # unrelated: the hardest case for determinism
    a = pe.align_rotations(est, ref, symmetry="T", seed=3)
    b = pe.align_rotations(est, ref, symmetry="T", seed=3)
    assert torch.equal(a.global_rotation, b.global_rotation) and torch.equal(a.errors_deg, b.errors_deg)


def test_single_particle_and_bad_shapes():
    r = rt.random_rotations(1, _gen(11))
    assert pe.align_rotations(r, rt.random_rotations(1, _gen(12))).errors_deg.item() < 1e-8
    with pytest.raises(ValueError):
        pe.align_rotations(r, rt.random_rotations(2, _gen(12)))
    with pytest.raises(ValueError):
        pe.align_rotations(torch.zeros(0, 3, 3), torch.zeros(0, 3, 3))
    with pytest.raises(ValueError):
        pe.align_rotations(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(sy.SymmetryError):
        pe.align_rotations(r, r, symmetry="X9")


def test_symmetry_aware_errors():
    g = _gen(13)
    ref = rt.random_rotations(50, g)
    ops = sy.symmetry_operators("C4")
    tilt = rt.axis_angle_to_rotmat(torch.tensor([0.0, math.radians(5.0), 0.0], dtype=torch.float64))
    est = tilt @ ref @ ops[torch.randint(4, (50,), generator=g)]
    err = pe.symmetry_aware_errors(est, ref, symmetry="C4")
    assert torch.allclose(err, torch.full((50,), 5.0, dtype=torch.float64), atol=1e-10)


# ---------------------------------------------------------------- shifts and evaluate_poses


def test_shift_error_angstrom():
    est = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]], dtype=torch.float64)
    ref = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    res = pe.shift_error_angstrom(est, ref)
    assert torch.allclose(res.errors_angstrom, torch.tensor([0.0, 5.0, 1.0], dtype=torch.float64))
    assert res.mean_error_angstrom == pytest.approx(2.0) and res.median_error_angstrom == pytest.approx(1.0)
    with pytest.raises(ValueError):
        pe.shift_error_angstrom(est, ref[:2])


def _meta(rotmats, shifts, names=None):
    table = pd.DataFrame({"rlnImageName": names}) if names is not None else pd.DataFrame(index=range(len(rotmats)))
    return SimpleNamespace(rotmats=rotmats, shifts_angstrom=shifts, table=table, pixel_size_angstrom=1.5)


def _names(n, folder="Extract/job007"):
    return [f"{i + 1:06d}@{folder}/particles.mrcs" for i in range(n)]


def test_evaluate_poses_by_order():
    g = _gen(14)
    n = 200
    ref_r = rt.random_rotations(n, g)
    grot = rt.random_rotations(1, g)[0]
    ref_s = torch.randn(n, 2, generator=g, dtype=torch.float64) * 5
    est_s = ref_s + torch.tensor([3.0, 4.0], dtype=torch.float64)
    out = pe.evaluate_poses(_meta((J @ ref_r @ grot.T @ J).float(), est_s), _meta(ref_r, ref_s), symmetry="c1")
    json.dumps(out)  # plain Python types only
    assert out["n_particles"] == n and out["symmetry"] == "C1" and out["hand"] == "mirror"
    assert out["matched_by"] == "order"
    assert out["median_error_deg"] < 1e-3  # float32 estimate
    assert out["mean_shift_error_angstrom"] == pytest.approx(5.0) and out["median_shift_error_angstrom"] == pytest.approx(5.0)
    g_back = rt.relion_euler_to_rotmat(torch.tensor(out["global_rotation_relion_euler_deg"], dtype=torch.float64))
    assert rt.geodesic_distance_deg(g_back, grot) < 1e-3
    for key in ("mean_error_deg", "median_error_deg", "hand", "global_rotation_relion_euler_deg",
                "mean_shift_error_angstrom", "median_shift_error_angstrom", "symmetry", "n_particles"):
        assert key in out


def test_evaluate_poses_matches_by_image_name():
    g = _gen(15)
    n = 100
    ref_r = rt.random_rotations(n, g)
    ref_s = torch.randn(n, 2, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    names = _names(n)
    est = _meta(ref_r[perm], ref_s[perm], [names[i] for i in perm.tolist()])
    out = pe.evaluate_poses(est, _meta(ref_r, ref_s, names))
    assert out["matched_by"] == "rlnImageName"
    assert out["median_error_deg"] < 1e-8 and out["mean_shift_error_angstrom"] < 1e-12
    # different folders, unpadded indices: matched by index and stack basename
    est2 = _meta(ref_r[perm], ref_s[perm], [f"{i + 1}@/abs/other/particles.mrcs" for i in perm.tolist()])
    out2 = pe.evaluate_poses(est2, _meta(ref_r, ref_s, names))
    assert out2["matched_by"] == "rlnImageName" and out2["median_error_deg"] < 1e-8
    # wrong order without names would be a large error: the name matching matters
    assert pe.evaluate_poses(_meta(ref_r[perm], ref_s[perm]), _meta(ref_r, ref_s))["median_error_deg"] > 10


def test_evaluate_poses_mismatch_errors():
    g = _gen(16)
    r = rt.random_rotations(10, g)
    s = torch.zeros(10, 2, dtype=torch.float64)
    names = _names(10)
    other = names[:9] + ["000099@Extract/job007/particles.mrcs"]
    with pytest.raises(pe.ParticleMatchError, match="rlnImageName"):
        pe.evaluate_poses(_meta(r, s, other), _meta(r, s, names))
    with pytest.raises(pe.ParticleMatchError, match="9 estimated vs 10 reference"):
        pe.evaluate_poses(_meta(r[:9], s[:9]), _meta(r, s))
    with pytest.raises(pe.ParticleMatchError):
        pe.evaluate_poses(_meta(r[:9], s[:9], names[:9]), _meta(r, s, names))
    with pytest.raises(pe.ParticleMatchError):  # sets must be equal, not merely overlapping
        pe.evaluate_poses(_meta(r, s, names), _meta(r[:5], s[:5], names[:5]))
    dup = names[:9] + names[:1]
    with pytest.raises(pe.ParticleMatchError, match="repeat"):
        pe.evaluate_poses(_meta(r, s, dup), _meta(r, s, names))


def test_evaluate_poses_with_particle_metadata():
    """The real ParticleMetadata (cryopose.io.particles) works as input."""
    from cryopose.io.particles import ParticleMetadata

    g = _gen(17)
    n = 50
    ref_r = rt.random_rotations(n, g)
    grot = rt.random_rotations(1, g)[0]
    names = _names(n)
    table = pd.DataFrame({"rlnImageName": names})
    ref = ParticleMetadata(pixel_size_angstrom=1.5, box_size=32, rotmats=ref_r.float(),
                           shifts_angstrom=torch.zeros(n, 2), table=table)
    est = ParticleMetadata(pixel_size_angstrom=1.5, box_size=32, rotmats=(ref_r @ grot.T).float(),
                           shifts_angstrom=torch.ones(n, 2), table=table.copy())
    out = pe.evaluate_poses(est, ref, symmetry="C1")
    assert out["n_particles"] == n and out["hand"] == "same" and out["median_error_deg"] < 1e-3
    assert out["mean_shift_error_angstrom"] == pytest.approx(math.sqrt(2))
    no_poses = ParticleMetadata(pixel_size_angstrom=1.5, box_size=32, table=table.copy())
    with pytest.raises(pe.ParticleMatchError, match="no poses"):
        pe.evaluate_poses(no_poses, ref)
