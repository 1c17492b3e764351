"""Search warm-up of CryoPoseNet training and local polishing: the grid search finds the true
pose of noise-free projections (with CTF and origins, C1 and D2), the distillation loss is
symmetry-aware, and local polishing brings perturbed poses back to the truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from blobs import blob_volume  # tests/unit/blobs.py
from cryopose.ctf import CTFParams, compute_ctf
from cryopose.fourier import centered_fft2
from cryopose.io.particles import ParticleMetadata
from cryopose.models.volume import symmetrize_volume
from cryopose.pipelines.polish import polish_poses
from cryopose.projection import prepare_volume_ft, project
from cryopose.rotations import geodesic_distance_deg, random_rotations, relion_euler_to_rotmat
from cryopose.symmetry import asymmetric_unit_mask, expand_by_symmetry, symmetry_operators
from cryopose.training.pose_search import GridSearcher, distillation_loss

N = 24
APIX = 6.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _volume(symmetry: str = "C1") -> torch.Tensor:
    v = blob_volume(torch.Generator().manual_seed(11), N)  # asymmetric arrangement of blobs
    if symmetry != "C1":
        v = symmetrize_volume(v, symmetry_operators(symmetry))
    return v


def _images(volume, rot, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = rot.shape[0]
    du = 12000 + 8000 * torch.rand(n, generator=g, dtype=torch.float64)
    ctf = CTFParams.create(defocus_u_angstrom=du, defocus_v_angstrom=du - 300, defocus_angle_deg=30.0)
    shifts_px = torch.randint(-2, 3, (n, 2), generator=g).double()
    c = compute_ctf(ctf, N, APIX).double()
    img = project(volume, rot, ctf=c, shifts_px=shifts_px).float()
    return img, ctf, c.float(), shifts_px.float()


def _error_mod(est, truth, symmetry):
    mates = expand_by_symmetry(truth.double(), symmetry)
    return geodesic_distance_deg(est.double()[:, None], mates).min(dim=1).values


@pytest.mark.parametrize("symmetry", ["C1", "D2"])
def test_grid_search_finds_true_pose_with_ctf_and_origins(symmetry):
    vol = _volume(symmetry)
    rot = random_rotations(40, generator=torch.Generator().manual_seed(2))
    img, _, c, sh = _images(vol, rot)
    searcher = GridSearcher(N, step_deg=15.0, symmetry=symmetry, generator=torch.Generator().manual_seed(0))
    found = searcher(prepare_volume_ft(vol.float()), centered_fft2(img) / N, c, sh, radius=N / 2)
    err = _error_mod(found, rot, symmetry)
    # 15° grid: covering radius ≈ 12.8°; a wrong optimum would be tens of degrees off
    assert float(err.max()) < 16.0 and float(err.median()) < 9.0
    if symmetry != "C1":
        assert bool(asymmetric_unit_mask(found.double()[:, 2, :], symmetry, atol=1e-5).all())
    # without the CTF in the score the same search is far worse: the score really uses it
    bad = searcher(prepare_volume_ft(vol.float()), centered_fft2(img) / N, None, sh, radius=N / 2)
    assert float(_error_mod(bad, rot, symmetry).median()) > float(err.median())


def test_grid_search_with_a_shift_grid_finds_origin_offsets():
    """Origins given 1 px off in x and/or y: the joint rotation × offset search finds the
    offsets (exactly, they are on the grid) and still the poses."""
    vol = _volume()
    rot = random_rotations(40, generator=torch.Generator().manual_seed(3))
    img, _, c, sh = _images(vol, rot, seed=1)
    g = torch.Generator().manual_seed(4)
    off_true = torch.randint(-1, 2, (40, 2), generator=g).float()
    o = torch.tensor([-1.0, 0.0, 1.0])
    offsets = torch.stack(torch.meshgrid(o, o, indexing="xy"), dim=-1).reshape(-1, 2)
    searcher = GridSearcher(N, step_deg=15.0, generator=torch.Generator().manual_seed(0), shift_offsets_px=offsets)
    found = searcher(prepare_volume_ft(vol.float()), centered_fft2(img) / N, c, sh - off_true, radius=N / 2)
    assert float(_error_mod(found, rot, "C1").median()) < 9.0
    assert (searcher.last_shift_offsets == off_true).float().mean() > 0.9
    plain = GridSearcher(N, step_deg=15.0, generator=torch.Generator().manual_seed(0))
    worse = plain(prepare_volume_ft(vol.float()), centered_fft2(img) / N, c, sh - off_true, radius=N / 2)
    assert plain.last_shift_offsets is None
    assert float(_error_mod(worse, rot, "C1").median()) >= float(_error_mod(found, rot, "C1").median())


def test_grid_search_rejects_bad_options():
    with pytest.raises(ValueError, match="step"):
        GridSearcher(N, step_deg=0.0)
    with pytest.raises(ValueError, match="8 px"):
        GridSearcher(4)


def test_distillation_loss_is_symmetry_aware_and_multiple_choice():
    target = relion_euler_to_rotmat(torch.tensor([[30.0, 50.0, 70.0]])).float()
    ops = symmetry_operators("D2", dtype=torch.float32)
    mate = target @ ops[2]
    far = relion_euler_to_rotmat(torch.tensor([[120.0, 10.0, -40.0]])).float()
    cands = torch.stack([far[0], mate[0]])[None].requires_grad_(True)  # (1, 2, 3, 3)
    assert float(distillation_loss(cands, target, symmetry="D2").detach()) < 1e-10
    assert float(distillation_loss(cands, target, symmetry="C1").detach()) > 0.1
    loss = distillation_loss(cands, target @ relion_euler_to_rotmat(torch.tensor([[0.0, 0.0, 5.0]])).float(),
                             symmetry="D2")
    loss.backward()
    # only the nearest candidate (the mate) is pulled
    assert float(cands.grad[0, 0].abs().max()) == 0.0 and float(cands.grad[0, 1].abs().max()) > 0.0


def test_polish_refines_perturbed_poses_against_the_map():
    vol = _volume()
    rot = random_rotations(24, generator=torch.Generator().manual_seed(4))
    img, ctf, _, sh = _images(vol, rot, seed=1)
    kick = relion_euler_to_rotmat(torch.randn(24, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2.0)
    start = (rot @ kick).float()
    meta = ParticleMetadata(pixel_size_angstrom=APIX, box_size=N, rotmats=start, ctf=ctf,
                            shifts_angstrom=(sh * APIX).double())
    before = geodesic_distance_deg(start.double(), rot)
    out = polish_poses(img, meta, start, vol.float(), start_step_deg=3.75, final_step_deg=0.9375)
    after = geodesic_distance_deg(out.double(), rot)
    assert float(before.median()) > 2.0
    assert float(after.median()) < 1.0 and float(after.median()) < 0.5 * float(before.median())


def test_global_polishing_round_corrects_poses_far_off_and_origins_a_pixel_off():
    """The global polishing round (``polish.global_round``) of ``abinitio`` and ``refine``: poses 90° off,
    which a local round cannot reach, and origins about a pixel off are found again."""
    from cryopose.pipelines.polish import global_round

    vol = _volume()
    rot = random_rotations(16, generator=torch.Generator().manual_seed(7))
    img, ctf, _, sh = _images(vol, rot, seed=2)
    start_sh = (sh + torch.tensor([[0.9, -0.8]])) * APIX
    meta = ParticleMetadata(pixel_size_angstrom=APIX, box_size=N, ctf=ctf, shifts_angstrom=start_sh.double())
    far = (rot @ relion_euler_to_rotmat(torch.tensor([[0.0, 90.0, 0.0]], dtype=torch.float64))).float()
    local = polish_poses(img, meta, far, vol.float())
    assert float(geodesic_distance_deg(local.double(), rot).median()) > 30.0
    out_rot, out_sh = global_round(img, meta, vol.float(), symmetry="C1", refine_to_deg=3.75, max_resolution_angstrom=None,
                                  search_shifts=True)
    err = geodesic_distance_deg(out_rot.double(), rot)
    assert float(err.median()) < 3.0 and float(err.max()) < 6.0  # refined to 3.75° steps
    assert float((out_sh / APIX - sh).norm(dim=-1).max()) < 0.5
    keep_rot, keep_sh = global_round(img, meta, vol.float(), symmetry="C1", refine_to_deg=3.75,
                                    max_resolution_angstrom=None, search_shifts=False)
    assert torch.equal(keep_sh, start_sh.float())  # origins kept when cryopose does not estimate them


def test_low_score_particles_needs_two_separated_modes():
    """One population of scores (spread by ice and defocus) flags nothing; two separated modes
    flag the low one; a non-finite score is always low."""
    from cryopose.pipelines.polish import low_score_particles

    g = torch.Generator().manual_seed(3)
    one = 0.4 + 0.05 * torch.randn(1000, generator=g)
    assert not low_score_particles(one).any()
    two = torch.cat([0.39 + 0.04 * torch.randn(600, generator=g), 0.20 + 0.05 * torch.randn(400, generator=g)])
    low = low_score_particles(two)
    assert low[600:].mean() > 0.95 and low[:600].mean() < 0.02
    one[5] = float("nan")
    assert np.flatnonzero(low_score_particles(one)).tolist() == [5]


def test_polishing_rescue_finds_poses_far_off_that_a_local_round_keeps():
    """A local polishing round with ``rescue``: the particles whose poses are 90° off (the low
    mode of the round's scores) are searched globally and come back; the others keep their
    local poses. Without ``rescue`` the round leaves them where they were."""
    from types import SimpleNamespace

    from cryopose.data.dataset import TensorStack
    from cryopose.pipelines.polish import PolishSchedule, polish_rounds

    vol = _volume()
    rot = random_rotations(40, generator=torch.Generator().manual_seed(9))
    img, ctf, _, sh = _images(vol, rot, seed=4)
    meta = ParticleMetadata(pixel_size_angstrom=APIX, box_size=N, ctf=ctf, shifts_angstrom=(sh * APIX).double())
    far = rot.double().clone()
    far[:12] = far[:12] @ relion_euler_to_rotmat(torch.tensor([[0.0, 90.0, 0.0]], dtype=torch.float64))
    far = far.float()
    start = SimpleNamespace(volume=vol.float(), resolution_fsc0p143_angstrom=None)
    outcomes = {}
    for rescue in (False, True):
        schedule = PolishSchedule(rounds=1, global_rounds=0, start_step_deg=3.75, final_step_deg=0.9375,
                                  estimate_shifts=False, working_pixel_angstrom=APIX, rescue=rescue)
        outcomes[rescue] = polish_rounds(TensorStack(img), meta, far, meta.shifts_angstrom, start, schedule=schedule,
                                         reconstruct=lambda *a: start)
    kept = geodesic_distance_deg(outcomes[False].rotmats.double(), rot)
    fixed = geodesic_distance_deg(outcomes[True].rotmats.double(), rot)
    assert float(kept[:12].median()) > 30.0 and outcomes[False].rescued == ()
    searched, replaced = outcomes[True].rescued[0]
    assert 12 <= searched <= 16 and replaced >= 11
    assert float(fixed[:12].median()) < 3.0 and float(fixed[12:].median()) < 3.0
    # the stage timings name what ran: one local round and its rescue, one map each
    assert set(outcomes[True].seconds) == {"local", "rescue", "reconstruct"}
    assert set(outcomes[False].seconds) == {"local", "reconstruct"}
    assert all(len(v) == 1 and v[0] >= 0 for v in outcomes[True].seconds.values())


def test_polishing_rounds_run_two_levels_each_and_only_the_last_reaches_the_final_step(monkeypatch):
    """The lattice steps of :class:`PolishSchedule`: a local round that is the first round starts
    at ``start_step_deg``; after any round (the global one refined to ``start_step_deg``) at half
    of it; the rounds before the last and the rescues stop at twice ``final_step_deg``; the last
    round reaches it."""
    from types import SimpleNamespace

    import cryopose.pipelines.polish as polish

    calls = []

    def fake_global(src, posed, reference, **kw):
        calls.append(("global", kw["refine_to_deg"]))
        return rot, posed.shifts_angstrom.float()

    def fake_local(src, posed, r, reference, **kw):
        calls.append(("local", kw["start_step_deg"], kw["final_step_deg"]))
        return SimpleNamespace(rotmats=r, shifts_angstrom=posed.shifts_angstrom, scores=torch.ones(len(r)))

    def fake_rescue(src, posed, reference, r, sh, scores, **kw):
        calls.append(("rescue", kw["refine_to_deg"]))
        return r, sh, (0, 0)

    monkeypatch.setattr(polish, "global_round", fake_global)
    monkeypatch.setattr(polish, "polish_poses", fake_local)
    monkeypatch.setattr(polish, "rescue_low_scores", fake_rescue)
    vol = _volume().float()
    rot = random_rotations(4, generator=torch.Generator().manual_seed(1)).float()
    meta = ParticleMetadata(pixel_size_angstrom=APIX, box_size=N, shifts_angstrom=torch.zeros(4, 2, dtype=torch.float64))
    start = SimpleNamespace(volume=vol, resolution_fsc0p143_angstrom=None)
    schedule = polish.PolishSchedule(rounds=4, global_rounds=1, start_step_deg=3.75, final_step_deg=0.9375,
                                     estimate_shifts=False, working_pixel_angstrom=APIX, rescue=True)
    from cryopose.data.dataset import TensorStack

    polish.polish_rounds(TensorStack(torch.zeros(4, N, N)), meta, rot, meta.shifts_angstrom, start,
                         schedule=schedule, reconstruct=lambda *a: start)
    assert calls == [("global", 3.75),
                     ("local", 1.875, 1.875), ("rescue", 1.875),
                     ("local", 1.875, 1.875), ("rescue", 1.875),
                     ("local", 1.875, 0.9375), ("rescue", 1.875)]
    calls.clear()  # all rounds local (``refine``'s schedule): the first starts at start_step_deg
    polish.polish_rounds(TensorStack(torch.zeros(4, N, N)), meta, rot, meta.shifts_angstrom, start,
                         schedule=dataclasses.replace(schedule, rounds=2, global_rounds=0),
                         reconstruct=lambda *a: start)
    assert calls == [("local", 3.75, 1.875), ("rescue", 1.875), ("local", 1.875, 0.9375), ("rescue", 1.875)]
