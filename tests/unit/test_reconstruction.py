"""Known-pose reconstruction: exact scatter, noise-free recovery, CTF, shifts, symmetry, half maps."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryopose.ctf import CTFParams, compute_ctf
from cryopose.errors import UserError
from cryopose.fourier import centered_fft2, centered_fft3, fourier_downsample_volume, radial_index_3d
from cryopose.metrics.fsc import fourier_shell_correlation
from cryopose.projection import insert_slices, project
from cryopose.reconstruction import (
    Backprojector,
    FilterOptions,
    radial_filter,
    random_half_sets,
    reconstruct,
    reconstruct_from_tensors,
    soft_mask_outside_map,
)
from cryopose.rotations import random_rotations

BETAGAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"


def _betagal(n: int) -> tuple[torch.Tensor, float]:
    vol = torch.from_numpy(mrcfile.read(BETAGAL).astype(np.float64).copy())
    return fourier_downsample_volume(vol, n), 3.54 * 100 / n


def _poses(k: int, seed: int) -> torch.Tensor:
    return random_rotations(k, generator=torch.Generator().manual_seed(seed))


def _fsc_vs(truth, vol, apix=1.0):
    return fourier_shell_correlation(vol, truth, pixel_size_angstrom=apix)[1]


def _corr(a, b) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _ctf(k: int, n: int, apix: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    du = 8000 + 12000 * torch.rand(k, generator=g, dtype=torch.float64)
    params = CTFParams.create(defocus_u_angstrom=du, defocus_v_angstrom=du - 500,
                              defocus_angle_deg=torch.rand(k, generator=g) * 180)
    return compute_ctf(params, n, apix).double()


@pytest.mark.parametrize("n", [24, 25])
def test_scatter_is_the_exact_trilinear_insertion(n):
    """The Friedel-halved fused scatter equals insert_slices (the projector's adjoint) on x >= 0."""
    g = torch.Generator().manual_seed(n)
    k = 7
    images = torch.randn(k, n, n, generator=g, dtype=torch.float64)
    rot = _poses(k, n)
    ctf = _ctf(k, n, 5.0, n)
    bp = Backprojector(n, n_sets=1, batch_slices=3)
    bp.insert(images, rot, ctf=ctf)
    d, w = bp.grids()
    ft = centered_fft2(images)
    ref_d = insert_slices(ft * ctf, rot.double(), pad=2)
    ref_w = insert_slices((ctf * ctf).to(torch.float64), rot.double(), pad=2)
    size = 2 * n
    half = slice(size // 2, size)  # x = 0 .. N/2 - 1 of the centred grid
    kk = torch.arange(size, dtype=torch.float64) - size // 2
    r2 = kk[:, None, None] ** 2 + kk[None, :, None] ** 2 + kk[None, None, half] ** 2
    inside = r2 < (size / 2) ** 2
    scale = ref_w.abs().max()
    assert (d[:, :, : size // 2] - ref_d[:, :, half] * inside).abs().max() < 1e-5 * ref_d.abs().max()
    assert (w[:, :, : size // 2] - ref_w[:, :, half] * inside).abs().max() < 1e-5 * scale
    # centred transforms in, with shifts: the same as real images with shifts
    shifts = torch.randn(k, 2, generator=g, dtype=torch.float64) * 3
    a, b = Backprojector(n, n_sets=1), Backprojector(n, n_sets=1)
    a.insert(images, rot, shifts_px=shifts, ctf=ctf)
    b.insert(ft, rot, shifts_px=shifts, ctf=ctf, fourier=True)
    assert torch.allclose(a.grids()[0], b.grids()[0], atol=1e-5 * float(a.grids()[0].abs().max()))


@pytest.mark.parametrize("n", [24, 25])
def test_ctf_at_pixels_equals_compute_ctf(n):
    k = 6
    g = torch.Generator().manual_seed(n)
    params = CTFParams.create(defocus_u_angstrom=torch.linspace(5000, 30000, k),
                              defocus_v_angstrom=torch.linspace(4000, 29000, k),
                              defocus_angle_deg=torch.rand(k, generator=g) * 360 - 90,
                              voltage_kv=torch.tensor([300.0, 200, 120, 300, 300, 300]),
                              spherical_aberration_mm=torch.tensor([2.7, 2.0, 0.01, 2.7, 2.7, 2.7]),
                              amplitude_contrast=0.07, phase_shift_deg=torch.tensor([0.0, 0, 90, 45, 0, 0]),
                              bfactor_angstrom2=torch.tensor([0.0, 0, 0, 0, 150, 0]))
    bp = Backprojector(n)
    full = compute_ctf(params, n, 1.7).reshape(k, n * n)[:, bp._pixels]
    assert torch.allclose(bp.ctf_at_pixels(params, 1.7), full, atol=2e-5)


def test_noise_free_projections_reconstruct_to_near_nyquist():
    n = 32
    vol, apix = _betagal(n)
    rot = _poses(300, 1)
    images = project(vol, rot).float()
    res = reconstruct_from_tensors(images, rot, pixel_size_angstrom=apix, generator=torch.Generator().manual_seed(0))
    fsc = _fsc_vs(vol, res.volume.double(), apix)
    assert fsc[1:n // 2].min() > 0.9, fsc  # every shell below Nyquist
    assert res.volume.shape == (n, n, n) and res.volume.dtype == torch.float32
    # same density scale as the map that was projected
    scale = float((res.volume.double() * vol).sum() / (vol * vol).sum())
    assert 0.9 < scale < 1.1


def test_ctf_is_corrected():
    n = 32
    vol, apix = _betagal(n)
    k = 200
    rot = _poses(k, 2)
    ctf = _ctf(k, n, apix, 3)
    images = project(vol, rot, ctf=ctf).float()
    res = reconstruct_from_tensors(images, rot, None, ctf, pixel_size_angstrom=apix)
    fsc = _fsc_vs(vol, res.volume.double(), apix)
    assert fsc[1:n // 2 - 1].min() > 0.9, fsc
    # The FSC ignores a per-shell scale, which is mostly what a missing CTF correction leaves
    # (the defocus-averaged CTF); real-space agreement with the truth does not.
    wrong = reconstruct_from_tensors(images, rot, pixel_size_angstrom=apix)
    assert _corr(res.volume, vol) > 0.99
    assert _corr(wrong.volume, vol) < 0.9


def test_ctf_params_and_tensor_give_the_same_map():
    n = 24
    vol, apix = _betagal(n)
    k = 40
    rot = _poses(k, 4)
    params = CTFParams.create(defocus_u_angstrom=torch.linspace(9000, 20000, k),
                              defocus_v_angstrom=torch.linspace(8800, 19000, k))
    images = project(vol, rot, ctf=compute_ctf(params, n, apix).double()).float()
    a = reconstruct_from_tensors(images, rot, None, params, pixel_size_angstrom=apix, half_maps=False)
    b = reconstruct_from_tensors(images, rot, None, compute_ctf(params, n, apix), pixel_size_angstrom=apix,
                                 half_maps=False)
    assert torch.allclose(a.volume, b.volume, atol=1e-5 * float(a.volume.abs().max()))


def test_shifted_particles_give_the_same_map():
    n = 32
    vol, apix = _betagal(n)
    k = 120
    rot = _poses(k, 5)
    shifts = (torch.rand(k, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64) - 0.5) * 8
    centred = project(vol, rot).float()
    shifted = project(vol, rot, shifts_px=shifts).float()
    kw = dict(pixel_size_angstrom=apix, generator=torch.Generator().manual_seed(1))
    a = reconstruct_from_tensors(centred, rot, **kw).volume.double()
    kw["generator"] = torch.Generator().manual_seed(1)
    b = reconstruct_from_tensors(shifted, rot, shifts, **kw).volume.double()
    assert _corr(a, b) > 0.999
    kw["generator"] = torch.Generator().manual_seed(1)
    wrong = reconstruct_from_tensors(shifted, rot, -shifts, **kw).volume.double()
    assert _fsc_vs(vol, wrong)[4:n // 2].mean() < _fsc_vs(vol, b)[4:n // 2].mean() - 0.2


def _d2_symmetrise(vol: torch.Tensor) -> torch.Tensor:
    """Average of V(S x) over D2 = {I, diag(-1,-1,1), diag(1,-1,-1), diag(-1,1,-1)} (even n)."""
    def flip(v, dims):  # V(-x) about index n // 2 for even n: flip, then roll by one
        return torch.roll(torch.flip(v, dims), shifts=(1,) * len(dims), dims=dims)

    # volume axes (z, y, x): x -> -x is dim 2, y -> dim 1, z -> dim 0
    return (vol + flip(vol, (1, 2)) + flip(vol, (0, 1)) + flip(vol, (0, 2))) / 4


def test_d2_symmetry_reconstruction():
    n = 24
    vol, apix = _betagal(n)
    vol = _d2_symmetrise(vol)
    k = 40
    rot = _poses(k, 7)
    images = project(vol, rot).float()
    c1 = reconstruct_from_tensors(images, rot, pixel_size_angstrom=apix, half_maps=False).volume.double()
    d2 = reconstruct_from_tensors(images, rot, pixel_size_angstrom=apix, half_maps=False,
                                  symmetry="d2").volume.double()
    fsc_c1, fsc_d2 = _fsc_vs(vol, c1), _fsc_vs(vol, d2)
    assert fsc_d2[1:n // 2].min() > 0.9, fsc_d2
    assert fsc_d2[1:n // 2].mean() > fsc_c1[1:n // 2].mean() + 0.02  # 4x the views
    sym = _d2_symmetrise(d2)
    c = torch.arange(n, dtype=torch.float64) - n // 2
    inner = (c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) < (n / 2 - 4) ** 2
    assert ((sym - d2)[inner]).norm() < 0.02 * d2[inner].norm()


def test_half_maps_and_fsc_are_reported():
    n = 24
    vol, apix = _betagal(n)
    k = 120
    rot = _poses(k, 8)
    g = torch.Generator().manual_seed(9)
    images = project(vol, rot).float()
    images = images + 0.3 * images.std() * torch.randn(images.shape, generator=g)
    res = reconstruct_from_tensors(images, rot, pixel_size_angstrom=apix, generator=torch.Generator().manual_seed(2))
    h1, h2 = res.half_maps
    assert h1.shape == h2.shape == (n, n, n)
    assert not torch.allclose(h1, h2)
    assert res.fsc.shape == (n // 2 + 1,) and res.fsc_frequency_per_angstrom.shape == (n // 2 + 1,)
    assert res.fsc_frequency_per_angstrom[-1].item() == pytest.approx(1 / (2 * apix))
    assert res.fsc[1:4].min() > 0.9
    assert res.n_particles == (60, 60) and res.half_source == "random"
    assert 2 * apix <= res.resolution_fsc0p143_angstrom <= res.resolution_fsc0p5_angstrom
    rep = res.fsc_report()
    for key in ("resolution_fsc0p5_angstrom", "resolution_fsc0p143_angstrom", "fsc_curve", "nyquist_angstrom",
                "pixel_size_angstrom", "regularization"):
        assert key in rep
    # the filter options change the full map but not the half-map FSC's first pass
    other = reconstruct_from_tensors(images, rot, pixel_size_angstrom=apix, generator=torch.Generator().manual_seed(2),
                                     options=FilterOptions(full_map_ssnr="wiener", mask_corners=False))
    assert not torch.allclose(other.volume, res.volume)


def test_given_half_sets_and_chunking_do_not_change_the_result():
    n = 24
    vol, apix = _betagal(n)
    k = 90
    rot = _poses(k, 10)
    images = project(vol, rot).float()
    sets = random_half_sets(k, generator=torch.Generator().manual_seed(3))
    assert int(sets.sum()) == k // 2
    a = reconstruct_from_tensors(images, rot, pixel_size_angstrom=apix, half_sets=sets, chunk_size=23)
    b = reconstruct_from_tensors(images, rot, pixel_size_angstrom=apix, half_sets=sets, chunk_size=1000)
    assert a.half_source == "given"
    assert torch.allclose(a.volume, b.volume, atol=1e-5 * float(a.volume.abs().max()))
    assert torch.allclose(a.fsc, b.fsc, atol=1e-6)
    # two Python threads (one per half set) accumulate the same grids
    bp1, bp2 = Backprojector(n, threads=1), Backprojector(n, threads=2)
    for bp in (bp1, bp2):
        bp.insert(images, rot, sets=sets)
    assert torch.equal(bp1.grids(1)[1], bp2.grids(1)[1]) and torch.equal(bp1.grids(0)[0], bp2.grids(0)[0])


def test_streaming_reconstruct_uses_rln_random_subset():
    """``reconstruct`` on a stack + metadata object honours rlnRandomSubset."""
    import pandas as pd

    from cryopose.io.particles import ParticleMetadata

    n = 24
    vol, apix = _betagal(n)
    k = 40
    rot = _poses(k, 11)
    images = project(vol, rot).float()

    class Stack:
        box_size = n

        def __len__(self):
            return k

        def iter_chunks(self, size):
            for s in range(0, k, size):
                idx = np.arange(s, min(s + size, k))
                yield idx, images[idx]

    subset = np.where(np.arange(k) < 10, 1, 2)
    meta = ParticleMetadata(pixel_size_angstrom=apix, box_size=n, rotmats=rot.float(),
                            table=pd.DataFrame({"rlnRandomSubset": subset}))
    res = reconstruct(Stack(), meta, chunk_size=16)
    assert res.half_source == "rlnRandomSubset" and res.n_particles == (10, 30)
    with pytest.raises(UserError, match="no poses"):
        reconstruct(Stack(), meta.replace(rotmats=None))


def test_bad_inputs():
    with pytest.raises(UserError, match="at least 2"):
        reconstruct_from_tensors(torch.zeros(1, 8, 8), torch.eye(3)[None], pixel_size_angstrom=1.0)
    with pytest.raises(ValueError):
        reconstruct_from_tensors(torch.zeros(2, 8, 9), torch.eye(3).expand(2, 3, 3), pixel_size_angstrom=1.0)
    with pytest.raises(UserError):
        reconstruct_from_tensors(torch.zeros(2, 8, 8), torch.eye(3).expand(2, 3, 3), pixel_size_angstrom=1.0,
                                 symmetry="X7")
    with pytest.raises(ValueError):
        FilterOptions(full_map_ssnr="magic")


def test_soft_mask_outside_map_keeps_the_sphere_and_flattens_the_corners():
    n = 16
    v = torch.randn(n, n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = soft_mask_outside_map(v)
    assert torch.equal(m[n // 2, n // 2, n // 2], v[n // 2, n // 2, n // 2])
    corners = m[0, 0, 0], m[-1, -1, -1], m[0, -1, 0]
    assert max(abs(float(c - corners[0])) for c in corners) < 1e-12


def test_radial_filter_scales_whole_shells():
    n = 16
    v = torch.randn(n, n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(radial_filter(v, torch.ones(n // 2 + 1)), v, atol=1e-12)
    gain = torch.zeros(n // 2 + 1, dtype=torch.float64)
    gain[:4] = 2.0
    out = radial_filter(v, gain)
    _, fsc = fourier_shell_correlation(out, v)
    assert torch.allclose(fsc[1:4], torch.ones(3, dtype=torch.float64), atol=1e-12)
    r = torch.round(radial_index_3d(n)).long()
    ft_out, ft_v = centered_fft3(out), centered_fft3(v)
    assert torch.allclose(ft_out[r < 4], 2 * ft_v[r < 4], atol=1e-9)
    assert ft_out[r >= 4].abs().max() < 1e-9


@pytest.mark.parametrize("symmetry", ["C2", "C4", "D2", "D4", "O"])
def test_symmetrised_grids_equal_every_image_inserted_at_all_poses(symmetry):
    """RELION-style grid symmetrisation (one insertion per image) gives the grids of inserting
    every image at all G poses R S_g (the trilinear kernel is invariant under the signed
    permutations these groups are made of), for both half sets, with origins and a CTF."""
    n, k = 20, 30
    g = torch.Generator().manual_seed(5)
    images = torch.randn(k, n, n, generator=g)
    rot = random_rotations(k, generator=g)
    shifts = 2.0 * torch.randn(k, 2, generator=g)
    ctf = compute_ctf(CTFParams.create(defocus_u_angstrom=torch.full((k,), 12000.0),
                                            defocus_v_angstrom=torch.full((k,), 11000.0),
                                            defocus_angle_deg=torch.linspace(0, 90, k)), n, 2.0).float()
    sets = torch.arange(k) % 2
    per_pose = Backprojector(n, symmetry=symmetry, symmetrise_grids=False)
    on_grid = Backprojector(n, symmetry=symmetry)
    assert per_pose.grid_operators is None and on_grid.grid_operators is not None
    for bp in (per_pose, on_grid):
        bp.insert(images, rot, shifts_px=shifts, ctf=ctf, sets=sets)
    for s in (0, 1):
        (d0, w0), (d1, w1) = per_pose.grids(s), on_grid.grids(s)
        assert float(w0.abs().max()) > 0
        assert torch.allclose(d1, d0, rtol=0, atol=1e-5 * float(d0.abs().max()))
        assert torch.allclose(w1, w0, rtol=0, atol=1e-5 * float(w0.abs().max()))


def test_groups_off_the_grid_insert_every_pose():
    """C3 and I do not map grid nodes onto grid nodes: every image is inserted at all poses,
    and asking for grid symmetrisation is an error naming the group."""
    assert Backprojector(8, symmetry="C3").grid_operators is None
    assert Backprojector(8, symmetry="I").grid_operators is None
    assert Backprojector(8, symmetry="C1").grid_operators is None
    with pytest.raises(ValueError, match="C3"):
        Backprojector(8, symmetry="C3", symmetrise_grids=True)
