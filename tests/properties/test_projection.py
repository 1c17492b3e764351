"""Physics properties of the Fourier-slice projector, its adjoint, shifts and the CTF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.ctf import CTFParams, compute_ctf
from cryopose.fourier import centered_fft2, centered_ifft2
from cryopose.projection import (
    backproject,
    insert_slices,
    prepare_volume_ft,
    project,
    project_real_space,
    slice_volume_ft,
)
from cryopose.projection.fourier_slice import slice_mask
from cryopose.rotations import relion_euler_to_rotmat, quaternion_to_rotmat

BOXES = [16, 17]


def _random_rotmats(k, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return quaternion_to_rotmat(torch.randn(k, 4, generator=g, dtype=dtype))


def _blobs(n, dtype=torch.float64):
    c = torch.arange(n, dtype=dtype) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    return (torch.exp(-((x - 1.5) ** 2 + (y + 2) ** 2 + (z - 0.5) ** 2) / 6.0)
            + 0.5 * torch.exp(-((x + 3) ** 2 + (y - 2) ** 2 + (z + 1) ** 2) / 4.0)
            + 0.7 * torch.exp(-((x - 2) ** 2 + (y - 3) ** 2 + (z + 3) ** 2) / 3.0))


@pytest.mark.parametrize("n", BOXES)
def test_project_backproject_adjoint(n):
    g = torch.Generator().manual_seed(n)
    v = torch.randn(n, n, n, generator=g, dtype=torch.float64)
    u = torch.randn(5, n, n, generator=g, dtype=torch.float64)
    rot = _random_rotmats(5, n)
    lhs = (project(v, rot) * u).sum()
    rhs = (v * backproject(u, rot)).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-10), (lhs, rhs)


@pytest.mark.parametrize("n", BOXES)
def test_slice_insert_adjoint_complex(n):
    g = torch.Generator().manual_seed(100 + n)
    grid = torch.randn(2 * n, 2 * n, 2 * n, generator=g, dtype=torch.complex128)
    vft = prepare_volume_ft(torch.zeros(n, n, n, dtype=torch.float64))
    vft = type(vft)(torch.view_as_real(grid).permute(3, 0, 1, 2)[None].contiguous(), n, 2)
    rot = _random_rotmats(4, 7 + n)
    s = torch.randn(4, n, n, generator=g, dtype=torch.complex128) * slice_mask(n, dtype=torch.float64)
    lhs = torch.vdot(slice_volume_ft(vft, rot).reshape(-1), s.reshape(-1))
    rhs = torch.vdot(grid.reshape(-1), insert_slices(s, rot, pad=2).reshape(-1))
    assert torch.allclose(lhs, rhs, rtol=1e-10)


def _expected_axis_sum(vol, rot):
    """∫ V(Rᵀ (x, y, z)) dz for a signed-permutation R, by exact index gathering."""
    n = vol.shape[-1]
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    src = np.einsum("ji,jzyx->izyx", rot.numpy().round().astype(int), np.stack([x, y, z]))
    vals = vol.numpy()[(src[2] + n // 2) % n, (src[1] + n // 2) % n, (src[0] + n // 2) % n]
    return torch.from_numpy(vals.sum(axis=0))


@pytest.mark.parametrize("n", BOXES)
@pytest.mark.parametrize("angles", [(0, 0, 0), (0, 90, 0), (90, 90, 0), (0, 90, 90), (30, 180, 0)])
def test_axis_projections_equal_sums(n, angles):
    g = torch.Generator().manual_seed(3)
    vol = torch.randn(n, n, n, generator=g, dtype=torch.float64)
    rot = relion_euler_to_rotmat(torch.tensor([angles], dtype=torch.float64))
    rot = torch.where(rot.abs() < 1e-12, torch.zeros_like(rot), rot)
    if not torch.allclose(rot.abs().sum(-1), torch.ones(3, dtype=torch.float64)):
        rot = rot.round()
    vft = prepare_volume_ft(vol, gridding=False)
    ours = project(vft, rot)[0]
    expected = centered_ifft2(centered_fft2(_expected_axis_sum(vol, rot[0])) * slice_mask(n, dtype=torch.float64)).real
    assert torch.allclose(ours, expected, atol=1e-9 * expected.abs().max())


@pytest.mark.parametrize("n", BOXES)
def test_gridding_corrected_axis_projection_close_to_sum(n):
    vol = _blobs(n)
    ours = project(vol, torch.eye(3, dtype=torch.float64)[None])[0]
    ref = vol.sum(0)
    assert (ours - ref).norm() / ref.norm() < 0.06


@pytest.mark.parametrize("n", BOXES)
def test_fourier_slice_matches_real_space_projection(n):
    vol = _blobs(n)
    rot = relion_euler_to_rotmat(torch.tensor([[30.0, 50.0, -70.0], [100.0, 120.0, 20.0], [-45, 80, 170]],
                                              dtype=torch.float64))
    fs = project(vol, rot)
    rs = project_real_space(vol, rot)
    ncc = ((fs - fs.mean()) * (rs - rs.mean())).sum() / ((fs - fs.mean()).norm() * (rs - rs.mean()).norm())
    assert ncc > 0.995
    assert (fs - rs).norm() / rs.norm() < 0.08
    # a wrong convention (transposed rotation) is clearly worse
    wrong = project(vol, rot.transpose(-1, -2))
    assert (wrong - rs).norm() / rs.norm() > 3 * (fs - rs).norm() / rs.norm()


@pytest.mark.parametrize("n", BOXES)
def test_integer_shift_is_roll_with_relion_sign(n):
    vol = _blobs(n)
    rot = _random_rotmats(2, 5)
    base = project(vol, rot)
    shifted = project(vol, rot, shifts_px=torch.tensor([[2.0, -1.0], [-3.0, 2.0]], dtype=torch.float64))
    # RELION origin s: content drawn at -s
    assert torch.allclose(shifted[0], torch.roll(base[0], shifts=(1, -2), dims=(0, 1)), atol=1e-9)
    assert torch.allclose(shifted[1], torch.roll(base[1], shifts=(-2, 3), dims=(0, 1)), atol=1e-9)


def test_gradients_finite_at_identity():
    n = 16
    vol = _blobs(n).float().requires_grad_(True)
    angles = torch.zeros(2, 3, requires_grad=True)
    target = project(_blobs(n).float(), relion_euler_to_rotmat(torch.tensor([[5.0, 3.0, -4.0]] * 2)))
    loss = ((project(vol, relion_euler_to_rotmat(angles)) - target) ** 2).sum()
    loss.backward()
    assert torch.isfinite(vol.grad).all() and vol.grad.abs().sum() > 0
    assert torch.isfinite(angles.grad).all() and angles.grad.abs().sum() > 0


def test_gradcheck_projector_float64():
    n = 8
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(n, n, n, generator=g, dtype=torch.float64, requires_grad=True)
    angles = torch.tensor([[23.0, 41.0, -17.0]], dtype=torch.float64, requires_grad=True)

    def f(v, a):
        return project(v, relion_euler_to_rotmat(a))

    assert torch.autograd.gradcheck(f, (vol, angles), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_ctf_gradcheck_defocus():
    du = torch.tensor([15000.0, 22000.0], dtype=torch.float64, requires_grad=True)
    dv = torch.tensor([14000.0, 21500.0], dtype=torch.float64, requires_grad=True)

    def f(a, b):
        return compute_ctf(CTFParams.create(defocus_u_angstrom=a, defocus_v_angstrom=b, defocus_angle_deg=20.0),
                           16, 3.0)

    assert torch.autograd.gradcheck(f, (du, dv), eps=1e-3, atol=1e-6, rtol=1e-4)


def test_ctf_properties():
    params = CTFParams.create(defocus_u_angstrom=20000.0, defocus_v_angstrom=20000.0, amplitude_contrast=0.07)
    ctf = compute_ctf(params, 32, 2.0)[0]
    assert torch.isclose(ctf[16, 16], torch.tensor(0.07), atol=1e-6)  # sin(arcsin(w)) at DC
    # isotropic without astigmatism; symmetric under k -> -k
    assert torch.allclose(ctf[1:, 1:], torch.flip(ctf[1:, 1:], dims=(0, 1)), atol=1e-5)
    assert torch.allclose(ctf[16, 16 + 5], ctf[16 + 5, 16], atol=1e-5)
    # astigmatism: defocus along u axis (angle 0 = x axis) is larger
    du = torch.tensor([25000.0], dtype=torch.float64)
    astig = CTFParams.create(defocus_u_angstrom=du, defocus_v_angstrom=15000.0, defocus_angle_deg=0.0)
    rot90 = CTFParams.create(defocus_u_angstrom=du, defocus_v_angstrom=15000.0, defocus_angle_deg=90.0)
    a, b = compute_ctf(astig, 32, 2.0)[0], compute_ctf(rot90, 32, 2.0)[0]
    assert torch.allclose(a, b.T, atol=1e-9)
    # the first zero comes sooner along u (larger defocus) than along v
    first_zero = lambda line: int(torch.nonzero(line[1:] * line[:-1] < 0)[0])  # noqa: E731
    assert first_zero(a[16, 16:]) < first_zero(a[16:, 16])


@pytest.mark.parametrize("threads", [2, 3])
def test_sample_padded_splits_points_over_threads_without_changing_values_or_gradients(threads):
    from cryopose.projection.fourier_slice import sample_padded

    g = torch.Generator().manual_seed(7)
    data = torch.randn(1, 2, 10, 10, 10, generator=g, dtype=torch.float64, requires_grad=True)
    grid = (torch.rand(1, 7, 5, 1, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = sample_padded(data, (grid + 1.0) * (10 - 1) / 2.0)  # the same points as padded-grid indices
        d_new, g_new = torch.autograd.grad((out * out).sum(), (data, grid))
    finally:
        torch.set_num_threads(saved)
    ref = torch.nn.functional.grid_sample(data, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    d_ref, g_ref = torch.autograd.grad((ref * ref).sum(), (data, grid))
    assert out.shape == ref.shape == (1, 2, 7, 5, 1)
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.allclose(d_new, d_ref, atol=1e-12)
    assert torch.allclose(g_new, g_ref, atol=1e-12)
