"""Rotations: RELION Euler angles, quaternions, 6D, axis-angle, random rotations, SO(3) grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from scipy.stats import kstest

from cryopose import rotations as rt

TOL = 1e-10
SHAPES = [(), (5,), (2, 3)]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _random_euler(shape, seed=0):
    g = _gen(seed)
    rot = torch.rand(shape, generator=g, dtype=torch.float64) * 360 - 180
    tilt = torch.rand(shape, generator=g, dtype=torch.float64) * 178 + 1
    psi = torch.rand(shape, generator=g, dtype=torch.float64) * 360 - 180
    return torch.stack([rot, tilt, psi], dim=-1)


def _assert_rotations(r, tol=1e-10):
    eye = torch.eye(3, dtype=r.dtype)
    assert torch.allclose(r.transpose(-1, -2) @ r, eye.expand(r.shape), atol=tol)
    assert torch.allclose(torch.linalg.det(r), torch.ones(r.shape[:-2], dtype=r.dtype), atol=tol)


# ---------------------------------------------------------------- RELION Euler <-> matrix


def test_relion_euler_matches_definition():
    """R = Rz(psi) Ry(tilt) Rz(rot) with RELION's Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]."""
    rot, tilt, psi = 30.0, 50.0, -70.0

    def rz(a):
        c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])

    def ry(b):
        c, s = math.cos(math.radians(b)), math.sin(math.radians(b))
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])

    expect = rz(psi) @ ry(tilt) @ rz(rot)
    got = rt.relion_euler_to_rotmat(torch.tensor([rot, tilt, psi], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, expect, atol=1e-14)
    # viewing direction R^T e_z is the third row: (sin tilt cos rot, sin tilt sin rot, cos tilt)
    t, r = math.radians(tilt), math.radians(rot)
    np.testing.assert_allclose(got[2], [math.sin(t) * math.cos(r), math.sin(t) * math.sin(r), math.cos(t)], atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
def test_euler_matrix_round_trip(shape):
    ang = _random_euler(shape)
    r = rt.relion_euler_to_rotmat(ang)
    assert r.shape == (*shape, 3, 3)
    _assert_rotations(r)
    back = rt.rotmat_to_relion_euler(r)
    assert torch.allclose(back, ang, atol=1e-8)  # angles (degrees), away from gimbal lock
    assert torch.allclose(rt.relion_euler_to_rotmat(back), r, atol=TOL)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_gimbal_lock(tilt):
    rot = torch.tensor([0.0, 25.0, -100.0, 170.0], dtype=torch.float64)
    psi = torch.tensor([10.0, -40.0, 80.0, 179.0], dtype=torch.float64)
    ang = torch.stack([rot, torch.full_like(rot, tilt), psi], -1)
    r = rt.relion_euler_to_rotmat(ang)
    back = rt.rotmat_to_relion_euler(r)
    assert torch.all(back[:, 0] == 0)  # RELION puts the whole in-plane angle in psi
    assert torch.allclose(back[:, 1], torch.full_like(rot, tilt))
    assert torch.allclose(rt.relion_euler_to_rotmat(back), r, atol=TOL)
    # near (not at) the gimbal lock the matrix round trip is still exact
    ang2 = ang.clone()
    ang2[:, 1] = abs(tilt - 1e-9)
    r2 = rt.relion_euler_to_rotmat(ang2)
    assert torch.allclose(rt.relion_euler_to_rotmat(rt.rotmat_to_relion_euler(r2)), r2, atol=1e-8)


# ---------------------------------------------------------------- quaternions


@pytest.mark.parametrize("shape", SHAPES)
def test_quaternion_round_trip(shape):
    r = rt.relion_euler_to_rotmat(_random_euler(shape, seed=1))
    q = rt.rotmat_to_quaternion(r)
    assert q.shape == (*shape, 4)
    assert torch.allclose(q.norm(dim=-1), torch.ones(shape, dtype=torch.float64), atol=TOL)
    assert torch.all(q[..., 0] >= 0)
    assert torch.allclose(rt.quaternion_to_rotmat(q), r, atol=TOL)
    assert torch.allclose(rt.rotmat_to_quaternion(rt.quaternion_to_rotmat(q)), q, atol=TOL)


def test_quaternion_matches_scipy():
    r = rt.random_rotations(50, _gen(2))
    q = rt.rotmat_to_quaternion(r).numpy()
    ref = Rotation.from_matrix(r.numpy()).as_quat()  # scalar-last
    ref = np.concatenate([ref[:, 3:], ref[:, :3]], axis=1)
    ref *= np.sign(ref[:, :1])
    np.testing.assert_allclose(q, ref, atol=1e-12)


def test_quaternion_multiply_and_conjugate():
    g = _gen(3)
    q1 = torch.randn(7, 4, generator=g, dtype=torch.float64)
    q2 = torch.randn(7, 4, generator=g, dtype=torch.float64)
    q1, q2 = q1 / q1.norm(dim=-1, keepdim=True), q2 / q2.norm(dim=-1, keepdim=True)
    prod = rt.quaternion_multiply(q1, q2)
    assert torch.allclose(rt.quaternion_to_rotmat(prod), rt.quaternion_to_rotmat(q1) @ rt.quaternion_to_rotmat(q2), atol=TOL)
    ident = rt.quaternion_multiply(q1, rt.quaternion_conjugate(q1))
    assert torch.allclose(ident, torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).expand(7, 4), atol=TOL)
    assert torch.allclose(rt.quaternion_to_rotmat(rt.quaternion_conjugate(q1)), rt.quaternion_to_rotmat(q1).transpose(-1, -2), atol=TOL)


# ---------------------------------------------------------------- 6D


@pytest.mark.parametrize("shape", SHAPES)
def test_sixd_round_trip(shape):
    r = rt.relion_euler_to_rotmat(_random_euler(shape, seed=4))
    x = rt.rotmat_to_sixd(r)
    assert x.shape == (*shape, 6)
    assert torch.equal(x[..., :3], r[..., :, 0]) and torch.equal(x[..., 3:], r[..., :, 1])  # columns
    assert torch.allclose(rt.sixd_to_rotmat(x), r, atol=TOL)


def test_sixd_of_arbitrary_vectors_is_a_rotation():
    x = torch.randn(100, 6, generator=_gen(5), dtype=torch.float64) * 3
    r = rt.sixd_to_rotmat(x)
    _assert_rotations(r)
    # the first column keeps the direction of the first 3-vector
    assert torch.allclose(r[:, :, 0], x[:, :3] / x[:, :3].norm(dim=-1, keepdim=True), atol=TOL)


# ---------------------------------------------------------------- axis-angle


@pytest.mark.parametrize("shape", SHAPES)
def test_axis_angle_round_trip(shape):
    r = rt.relion_euler_to_rotmat(_random_euler(shape, seed=6))
    w = rt.rotmat_to_axis_angle(r)
    assert w.shape == (*shape, 3)
    assert torch.all(w.norm(dim=-1) <= math.pi + 1e-12)
    assert torch.allclose(rt.axis_angle_to_rotmat(w), r, atol=TOL)


def test_axis_angle_matches_scipy():
    w = torch.randn(50, 3, generator=_gen(7), dtype=torch.float64)
    np.testing.assert_allclose(rt.axis_angle_to_rotmat(w).numpy(), Rotation.from_rotvec(w.numpy()).as_matrix(), atol=1e-13)
    wn = w * (torch.rand(50, 1, generator=_gen(8), dtype=torch.float64) * math.pi / w.norm(dim=-1, keepdim=True))
    np.testing.assert_allclose(rt.rotmat_to_axis_angle(Rotation.from_rotvec(wn.numpy()).as_matrix()).numpy(), wn.numpy(), atol=1e-12)


@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-8, 1e-4, 0.5, math.pi - 1e-4, math.pi - 1e-9, math.pi])
def test_axis_angle_stable_near_0_and_pi(angle):
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    axis = axis / axis.norm()
    w = axis * angle
    r = rt.axis_angle_to_rotmat(w)
    _assert_rotations(r, tol=1e-14)
    np.testing.assert_allclose(r.numpy(), Rotation.from_rotvec(w.numpy()).as_matrix(), atol=1e-14)
    back = rt.rotmat_to_axis_angle(r)
    assert torch.allclose(rt.axis_angle_to_rotmat(back), r, atol=1e-12)
    if angle < math.pi - 1e-6:
        assert torch.allclose(back, w, atol=1e-12, rtol=0)
    else:  # at pi, both signs of the axis describe the rotation
        assert abs(float(back.norm()) - angle) < 1e-7
        assert abs(abs(float(back @ axis)) - angle) < 1e-7


# ---------------------------------------------------------------- gradients


def test_gradcheck_sixd_to_rotmat_at_identity():
    x = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rt.sixd_to_rotmat, (x,))
    y = rt.rotmat_to_sixd(rt.random_rotations(3, _gen(9))).requires_grad_(True)
    assert torch.autograd.gradcheck(rt.sixd_to_rotmat, (y,))


def test_gradcheck_quaternion_to_rotmat_at_identity():
    q = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rt.quaternion_to_rotmat, (q,))
    q2 = torch.randn(3, 4, generator=_gen(10), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rt.quaternion_to_rotmat, (q2,))


def test_gradcheck_axis_angle_at_zero():
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rt.axis_angle_to_rotmat, (w,))
    r = rt.axis_angle_to_rotmat(w)
    (g,) = torch.autograd.grad(r[1, 0], w)  # dR/dw_z at 0 is [e_z]x: R[1, 0] = w_z
    assert torch.allclose(g, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


# ---------------------------------------------------------------- outputs are rotations


@pytest.mark.parametrize(
    "make",
    [
        lambda: rt.relion_euler_to_rotmat(_random_euler((20,), 11)),
        lambda: rt.quaternion_to_rotmat(torch.randn(20, 4, generator=_gen(12), dtype=torch.float64)),
        lambda: rt.sixd_to_rotmat(torch.randn(20, 6, generator=_gen(13), dtype=torch.float64)),
        lambda: rt.axis_angle_to_rotmat(torch.randn(20, 3, generator=_gen(14), dtype=torch.float64) * 4),
        lambda: rt.project_to_rotmat(torch.randn(20, 3, 3, generator=_gen(15), dtype=torch.float64)),
        lambda: rt.random_rotations(20, _gen(16)),
        lambda: rt.so3_grid(30),
        lambda: rt.local_grid(rt.random_rotations(4, _gen(17)), 3.0, 1),
    ],
    ids=["euler", "quaternion", "sixd", "axis_angle", "project", "random", "so3_grid", "local_grid"],
)
def test_every_output_is_a_proper_rotation(make):
    _assert_rotations(make())


def test_project_to_rotmat_is_nearest():
    r = rt.random_rotations(10, _gen(18))
    noisy = r + 1e-3 * torch.randn(10, 3, 3, generator=_gen(19), dtype=torch.float64)
    p = rt.project_to_rotmat(noisy)
    assert (rt.geodesic_distance_deg(p, r) < 0.2).all()
    assert torch.allclose(rt.project_to_rotmat(r), r, atol=TOL)


def test_float32_inputs_stay_float32():
    x = torch.randn(4, 6)
    assert rt.sixd_to_rotmat(x).dtype == torch.float32
    assert rt.axis_angle_to_rotmat(torch.randn(4, 3)).dtype == torch.float32
    assert rt.random_rotations(3, dtype=torch.float32).dtype == torch.float32


# ---------------------------------------------------------------- random rotations


def test_random_rotations_uniform():
    n = 20000
    r = rt.random_rotations(n, _gen(20))
    assert r.shape == (n, 3, 3) and r.dtype == torch.float64
    # Haar measure: E[R] = 0 (each entry has variance 1/3), E[tr R] = 0, E[(tr R)^2] = 1
    assert r.mean(0).abs().max() < 0.02
    tr = r.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert abs(float(tr.mean())) < 0.03
    assert abs(float((tr**2).mean()) - 1.0) < 0.05
    # rotation angle has CDF (θ - sin θ) / π
    theta = torch.arccos(((tr - 1) / 2).clamp(-1, 1)).numpy()
    assert kstest(theta, lambda t: (t - np.sin(t)) / np.pi).pvalue > 1e-3


def test_random_rotations_seeded():
    a = rt.random_rotations(5, _gen(21))
    b = rt.random_rotations(5, _gen(21))
    assert torch.equal(a, b)
    assert rt.random_rotations(0).shape == (0, 3, 3)
    with pytest.raises(ValueError):
        rt.random_rotations(-1)


# ---------------------------------------------------------------- grids


@pytest.mark.parametrize("step,order", [(60, 0), (100, 0), (59.9, 1), (30, 1), (15, 2), (10, 3), (7.5, 3), (3.75, 4)])
def test_healpix_order_for_step(step, order):
    assert rt.healpix_order_for_step(step) == order


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_bad_step_raises(bad):
    with pytest.raises(ValueError):
        rt.so3_grid(bad)


def test_healpix_known_pixels():
    """Pixel centres as healpy.pix2ang(nside, p) (RING scheme)."""
    d1, a1 = rt.sphere_grid(60)  # nside 1
    assert d1.shape == (12, 3)
    z, phi = d1[:, 2], torch.deg2rad(a1[:, 0])
    np.testing.assert_allclose(z.numpy(), [2 / 3] * 4 + [0] * 4 + [-2 / 3] * 4, atol=1e-15)
    np.testing.assert_allclose(phi[[0, 4, 8]].numpy(), [math.pi / 4, 0.0, math.pi / 4], atol=1e-15)
    d2, _ = rt.sphere_grid(30)  # nside 2: first ring z = 1 - 1/12, 4 pixels; pixel 4 starts ring 2
    assert d2.shape == (48, 3)
    np.testing.assert_allclose(d2[:4, 2].numpy(), [11 / 12] * 4, atol=1e-15)
    np.testing.assert_allclose(d2[4, 2].item(), 2 / 3, atol=1e-15)


@pytest.mark.parametrize("step,nside", [(30, 2), (15, 4), (7.5, 8)])
def test_sphere_grid(step, nside):
    dirs, rot_tilt = rt.sphere_grid(step)
    assert dirs.shape == (12 * nside**2, 3) and rot_tilt.shape == (12 * nside**2, 2)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(len(dirs), dtype=torch.float64), atol=1e-14)
    # directions are the viewing directions R^T e_z of (rot, tilt, psi)
    r = rt.relion_euler_to_rotmat(torch.cat([rot_tilt, torch.zeros(len(dirs), 1, dtype=torch.float64)], -1))
    assert torch.allclose(r[:, 2, :], dirs, atol=1e-14)
    # equal-area: first and second moments of a uniform distribution on the sphere
    assert dirs.mean(0).abs().max() < 1e-12
    assert torch.allclose((dirs**2).mean(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.04 / nside**2)  # midpoint-rule error ~ 1/nside²
    # no duplicates, near-uniform nearest-neighbour spacing
    cos = dirs @ dirs.T
    cos.fill_diagonal_(-2)
    nn = torch.rad2deg(torch.arccos(cos.max(1).values.clamp(-1, 1)))
    nominal = 60 / nside
    assert 0.8 * nominal < nn.min() and nn.max() <= nominal * 1.0 + 1e-9
    assert 0.9 * nominal < nn.mean() < 1.0 * nominal


def test_inplane_grid():
    psi = rt.inplane_grid(15)
    assert psi.shape == (24,)
    assert torch.allclose(torch.diff(psi), torch.full((23,), 15.0, dtype=torch.float64))
    assert psi[0] == 0 and psi[-1] < 360


def _nn_spacing_deg(r):
    f = r.reshape(-1, 9)
    tr = f @ f.T
    tr.fill_diagonal_(-10)
    return torch.rad2deg(torch.arccos(((tr.max(1).values - 1) / 2).clamp(-1, 1)))


@pytest.mark.parametrize("step,nside", [(30, 2), (15, 4)])
def test_so3_grid_uniform(step, nside):
    r = rt.so3_grid(step)
    assert r.shape == (72 * nside**3, 3, 3)
    nominal = 60 / nside
    nn = _nn_spacing_deg(r)
    # measured: 29.7 (29.7-29.8) at nside 2, 14.55 (13.1-15.0) at nside 4
    assert 0.95 * nominal < nn.mean() < 1.0 * nominal
    assert nn.min() > 0.85 * nominal and nn.max() < nominal + 1e-6
    # covering: every random rotation is within ~0.85 nominal steps of a grid point
    q = rt.random_rotations(2000, _gen(22)).reshape(-1, 9)
    best = (q @ r.reshape(-1, 9).T).max(1).values
    cover = torch.rad2deg(torch.arccos(((best - 1) / 2).clamp(-1, 1)))
    assert cover.max() < 0.9 * nominal
    # Haar-uniform: the grid's mean matrix is ~0
    assert r.mean(0).abs().max() < 1e-10
    # ordering is direction-major, psi-minor
    dirs, rot_tilt = rt.sphere_grid(step)
    psi = rt.inplane_grid(step)
    k = 5 * len(psi) + 3
    ang = torch.cat([rot_tilt[5], psi[3:4]])
    assert torch.allclose(r[k], rt.relion_euler_to_rotmat(ang), atol=1e-14)


def test_local_grid():
    centres = rt.random_rotations(3, _gen(23))
    loc = rt.local_grid(centres, 2.0, 2)
    assert loc.shape == (3, 125, 3, 3)
    assert torch.allclose(loc[:, 62], centres, atol=1e-15)  # centre of the lattice
    d = rt.geodesic_distance_deg(loc, centres[:, None])
    assert d.max() <= math.sqrt(3) * 2 * 2.0 + 1e-9
    assert d.sort(dim=1).values[:, 1].min() > 2.0 - 1e-9  # nearest non-centre is one step away
    # perturbations on the left: the z-offsets are in-plane rotations (viewing direction kept)
    lattice_z = loc[0, 60:65]  # (i, j) = (0, 0), k = -2..2
    assert torch.allclose(lattice_z[:, 2, :], centres[0, 2, :].expand(5, 3), atol=1e-14)
    with pytest.raises(ValueError):
        rt.local_grid(centres, 0.0, 1)
    with pytest.raises(ValueError):
        rt.local_grid(centres, 1.0, -1)
