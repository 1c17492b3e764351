"""Projection matching (``cryopose.search``): band slicing, scores, global + local search, symmetry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryopose.ctf import CTFParams, compute_ctf
from cryopose.errors import UserError
from cryopose.metrics.pose_error import symmetry_aware_errors
from cryopose.projection import prepare_volume_ft, project, slice_volume_ft
from cryopose.rotations import axis_angle_to_rotmat, random_rotations
from cryopose.search.band import make_band, slice_band
from cryopose.search.projection_matching import (SearchConfig, asymmetric_so3_grid, local_search, score_poses,
                                                 search_poses, shift_lattice)
from cryopose.simulate.volumes import load_volume
from cryopose.symmetry import asymmetric_unit_mask, expand_by_symmetry, symmetry_order

BOX = 24


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def akvol(shared_data):
    m = load_volume(shared_data / "pdb" / "4ake_mdanalysis.pdb", box_size=BOX)
    return torch.tensor(m.volume), m.pixel_size_angstrom


@pytest.fixture(scope="module")
def betagal(shared_data):
    m = load_volume(shared_data / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc", box_size=BOX)
    return torch.tensor(m.volume), m.pixel_size_angstrom


def _particles(vol, px, n, seed, *, shift_px=2.0, snr=None):
    g = torch.Generator().manual_seed(seed)
    rot = random_rotations(n, generator=g).float()
    sh = (torch.rand(n, 2, generator=g) - 0.5) * 2 * shift_px
    ctf = CTFParams.create(defocus_u_angstrom=torch.rand(n, generator=g) * 15000 + 8000,
                           defocus_v_angstrom=None, amplitude_contrast=0.1)
    img = project(vol, rot, shifts_px=sh, ctf=compute_ctf(ctf, vol.shape[-1], px))
    if snr is not None:
        img = img + img.std() / math.sqrt(snr) * torch.randn(img.shape, generator=g)
    return img, rot, sh, ctf


def test_band_is_half_plane_without_dc():
    band = make_band(16)
    k = torch.stack([band.kx, band.ky], -1)
    assert not ((k == 0).all(-1)).any()
    keys = {(int(a), int(b)) for a, b in k.tolist()}
    assert all((-a, -b) not in keys for a, b in keys)  # one member of every Hermitian pair
    # together with their mirrors they fill the disc |k| < n/2 minus DC
    assert 2 * len(band) == int(((torch.arange(16) - 8)[:, None] ** 2 + (torch.arange(16) - 8)[None] ** 2
                                 < 64).sum()) - 1


def test_slice_band_equals_projector_slices(akvol):
    vol, _ = akvol
    vft = prepare_volume_ft(vol)
    rot = random_rotations(5, generator=torch.Generator().manual_seed(1)).float()
    band = make_band(BOX, 7.0)
    full = slice_volume_ft(vft, rot).reshape(5, -1)[:, band.flat_index]
    torch.testing.assert_close(slice_band(vft, rot, band), full, rtol=1e-5, atol=1e-5 * full.abs().max().item())


def test_score_is_one_at_true_pose_and_lower_elsewhere(akvol):
    vol, px = akvol
    img, rot, sh, ctf = _particles(vol, px, 6, 2)
    s_true = score_poses(img, vol, px, rot, sh * px, ctf=ctf)
    assert torch.all(s_true > 0.999)
    off = axis_angle_to_rotmat(torch.tensor([0.0, 0.0, math.radians(20.0)])).float() @ rot
    assert torch.all(score_poses(img, vol, px, off, sh * px, ctf=ctf) < s_true - 0.02)


def test_shift_lattice_disc():
    s = shift_lattice(2.5, 1.0)
    assert torch.equal(s[0], torch.zeros(2)) and (s.norm(dim=-1) <= 2.5 + 1e-6).all() and s.shape[0] == 21
    assert shift_lattice(0.0, 1.0).shape == (1, 2)


def test_asymmetric_grid_covers_so3_modulo_group():
    full = asymmetric_so3_grid(30.0, "C1")
    d2 = asymmetric_so3_grid(30.0, "D2")
    assert full.shape[0] == 576
    assert full.shape[0] / 4 <= d2.shape[0] <= full.shape[0] / 4 * 1.3
    probes = random_rotations(200, generator=torch.Generator().manual_seed(0)).float()
    # nearest grid point modulo D2 is as close as the full grid's nearest point (covering radius ~25°)
    mates = expand_by_symmetry(d2.double(), "D2").reshape(-1, 3, 3)
    tr = torch.einsum("pij,gij->pg", probes.double(), mates)
    worst = torch.rad2deg(torch.arccos(((tr.max(1).values - 1) / 2).clamp(-1, 1))).max()
    assert worst < 28.0


def test_search_recovers_noise_free_poses_and_shifts(akvol):
    vol, px = akvol
    img, rot, sh, ctf = _particles(vol, px, 16, 3)
    res = search_poses(img, vol, px, ctf=ctf, config=SearchConfig(shift_range_angstrom=3 * px,
                                                                   final_step_deg=1.875))
    err = symmetry_aware_errors(res.rotmats, rot)
    assert err.max() < 2.5, err  # within about the final step (1.875°)
    assert (res.shifts_angstrom / px - sh).norm(dim=-1).max() < 0.35
    assert res.scores.min() > 0.97 and res.scores.shape == (16,)
    assert res.info["global_rotations"] == 4608 and res.info["steps_deg"] == [15.0, 7.5, 3.75, 1.875]


def test_search_centres_the_shift_lattice_on_starting_origins(akvol):
    vol, px = akvol
    img, rot, sh, ctf = _particles(vol, px, 12, 5, shift_px=0.0)
    big = torch.tensor([[5.0, -4.0]]).repeat(12, 1) + 0.6 * sh.new_tensor(np.random.default_rng(5).normal(size=(12, 2)))
    img = project(vol, rot, shifts_px=big, ctf=compute_ctf(ctf, vol.shape[-1], px))
    cfg = SearchConfig(shift_range_angstrom=1.5 * px, final_step_deg=1.875)
    start = (big + 0.8 * torch.tensor([[1.0, -1.0]])) * px  # origins known to about a pixel
    res = search_poses(img, vol, px, ctf=ctf, config=cfg, shifts_angstrom=start)
    assert symmetry_aware_errors(res.rotmats, rot).max() < 2.5
    assert (res.shifts_angstrom / px - big).norm(dim=-1).max() < 0.35  # the starting origins are included
    blind = search_poses(img, vol, px, ctf=ctf, config=cfg)  # the same lattice around zero cannot reach 6 px
    assert (blind.shifts_angstrom / px - big).norm(dim=-1).min() > 3.0
    with pytest.raises(UserError, match="starting origins"):
        search_poses(img, vol, px, ctf=ctf, config=cfg, shifts_angstrom=start[:3])


def test_search_with_noise_is_close(akvol):
    vol, px = akvol
    img, rot, _, ctf = _particles(vol, px, 16, 4, shift_px=0.0, snr=1.0)
    res = search_poses(img, vol, px, ctf=ctf, config=SearchConfig())
    err = symmetry_aware_errors(res.rotmats, rot)
    assert err.median() < 5.0, err


def test_symmetric_search_returns_equivalent_poses_in_asymmetric_unit(betagal):
    vol, px = betagal
    img, rot, _, ctf = _particles(vol, px, 12, 5, shift_px=0.0)
    res = search_poses(img, vol, px, ctf=ctf, config=SearchConfig(symmetry="D2"))
    assert res.info["global_rotations"] < 4608 / 4 * 1.3
    err_sym = symmetry_aware_errors(res.rotmats, rot, symmetry="D2")
    assert err_sym.max() < 3.0, err_sym
    # the returned representatives lie in the asymmetric unit of the viewing directions
    assert asymmetric_unit_mask(res.rotmats.double()[:, 2, :], "D2", atol=1e-6).all()
    assert symmetry_order("D2") == 4


def test_chunking_does_not_change_results(akvol):
    vol, px = akvol
    img, _, _, ctf = _particles(vol, px, 7, 6, shift_px=1.0)
    cfg = SearchConfig(step_deg=30.0, final_step_deg=7.5, shift_range_angstrom=px)
    a = search_poses(img, vol, px, ctf=ctf, config=cfg)
    b = search_poses(img, vol, px, ctf=ctf, config=SearchConfig(step_deg=30.0, final_step_deg=7.5,
                                                                 shift_range_angstrom=px, particle_chunk=3,
                                                                 max_block_elements=500))
    torch.testing.assert_close(a.rotmats, b.rotmats, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)


def test_lazy_source_is_read_in_chunks(akvol):
    vol, px = akvol
    img, rot, _, ctf = _particles(vol, px, 5, 7, shift_px=0.0)
    reads = []

    class Source:
        def __len__(self):
            return 5

        def __getitem__(self, idx):
            reads.append(len(idx))
            return img[torch.as_tensor(idx)]

    res = search_poses(Source(), vol, px, ctf=ctf, config=SearchConfig(particle_chunk=2))
    assert reads == [2, 2, 1]
    assert symmetry_aware_errors(res.rotmats, rot).max() < 2.5


def test_local_search_polishes_perturbed_poses(akvol):
    vol, px = akvol
    img, rot, _, ctf = _particles(vol, px, 8, 8, shift_px=0.0)
    g = torch.Generator().manual_seed(9)
    axis = torch.nn.functional.normalize(torch.randn(8, 3, generator=g), dim=-1)
    start = axis_angle_to_rotmat(axis * math.radians(5.0)).float() @ rot
    res = local_search(img, vol, px, start, ctf=ctf, config=SearchConfig(final_step_deg=0.9375),
                       start_step_deg=3.75)
    assert symmetry_aware_errors(res.rotmats, rot).max() < 1.5


def test_bad_inputs_raise(akvol):
    vol, px = akvol
    from cryopose.errors import UserError

    with pytest.raises(UserError):
        search_poses(torch.zeros(2, 20, 20), vol, px)
    with pytest.raises(UserError):
        SearchConfig(step_deg=-1)
    with pytest.raises(UserError):
        search_poses(torch.zeros(2, BOX, BOX), vol, px, ctf=CTFParams.create(defocus_u_angstrom=np.ones(3) * 1e4))


def test_reference_scale_problem_accepts_same_scale_and_binned_maps_only():
    from cryopose.io.mrc import MapData
    from cryopose.search.run import reference_scale_problem

    def ref(box, px):
        return MapData(volume=np.zeros((box, box, box), np.float32), pixel_size_angstrom=px,
                       voxel_size_angstrom=(px, px, px))

    assert reference_scale_problem(ref(64, 2.0), 64, 2.0) is None
    assert reference_scale_problem(ref(96, 2.0 * 1.009), 64, 2.0) is None  # within 1 %, larger box
    assert reference_scale_problem(ref(32, 4.0), 64, 2.0) is None  # binned 2×: same field of view
    problem = reference_scale_problem(ref(64, 1.0), 64, 2.0)  # header says 1 Å
    assert "voxel size (1 Å)" in problem and "pixel size (2 Å)" in problem and "50%" in problem
    assert reference_scale_problem(ref(64, 2.03), 64, 2.0) is not None  # 1.5 % off
