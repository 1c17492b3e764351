"""CryoPoseNet parts: encoder shapes, batch-norm folding (also of the supervised regressor), pose
heads (shapes, gradients, gradcheck), volume, rendering."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.data.transforms import rotate_half_turn
from cryopose.models.cryoposenet import CryoPoseNet, rotate_half_turn_poses
from cryopose.models.encoders import CryoPoseNetEncoder, encoder_output_size
from cryopose.models.pose_heads import PoseHead, ShiftHead, params_to_rotmat
from cryopose.models.supervised import OrientationRegressor, SupervisedModelConfig
from cryopose.models.volume import VoxelVolume, spherical_mask, symmetrize_volume
from cryopose.projection import prepare_volume_ft, project
from cryopose.rotations import random_rotations, relion_euler_to_rotmat, rotmat_to_sixd, sixd_to_rotmat
from cryopose.symmetry import symmetry_operators


def _is_rotation(r: torch.Tensor, tol: float = 1e-5) -> bool:
    eye = torch.eye(3, dtype=r.dtype).expand(r.shape)
    return bool(torch.allclose(r.transpose(-1, -2) @ r, eye, atol=tol)
                and torch.allclose(torch.linalg.det(r), torch.ones(r.shape[:-2], dtype=r.dtype), atol=tol))


def test_encoder_is_the_papers_architecture_and_maps_to_512_features():
    enc = CryoPoseNetEncoder(32)
    convs = [m for m in enc.conv if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in enc.conv) == 3
    linears = [m for m in enc.mlp if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [512, 512]
    assert linears[0].in_features == 128 * 4 * 4
    out = enc(torch.randn(5, 32, 32))
    assert out.shape == (5, 512)
    assert enc(torch.randn(5, 1, 32, 32)).shape == (5, 512)


@pytest.mark.parametrize("make_model", [
    lambda: CryoPoseNetEncoder(16, channels=(4, 8, 8), hidden=(16, 16), batch_norm=True),
    lambda: OrientationRegressor(SupervisedModelConfig(box_size=16, width=4, n_blocks=2, head_channels=16,
                                                       hidden=32)),
], ids=["cryoposenet-encoder", "supervised-regressor"])
def test_fused_model_gives_the_same_outputs_and_leaves_the_original_alone(make_model):
    """``fused_for_inference`` (:func:`fold_batch_norm_`) of both CNNs: same eval outputs, no batch
    norm left, the original model untouched."""
    torch.manual_seed(0)
    model = make_model()
    model.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics
            model(torch.randn(8, 16, 16) * 3 + 1)
    model.eval()
    fused = model.fused_for_inference()
    x = torch.randn(5, 16, 16)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    assert not fused.training


@pytest.mark.parametrize("batch_norm", [False, True], ids=["paper", "batch-norm"])
def test_int8_encoder_copy_is_close_to_the_float_encoder_and_leaves_it_alone(batch_norm):
    """``CryoPoseNetEncoder.quantized_for_inference``: int8 layers inside, features within a few
    percent of their spread on images it was not calibrated on, the original unchanged."""
    torch.manual_seed(0)
    enc = CryoPoseNetEncoder(16, channels=(8, 16, 16), hidden=(32, 32), batch_norm=batch_norm)
    if batch_norm:
        with torch.no_grad():
            for _ in range(3):
                enc(torch.randn(16, 16, 16))
    enc.eval()
    images = torch.randn(96, 16, 16)
    with torch.no_grad():
        before = enc(images)
        q = enc.quantized_for_inference(images[:64], batch_size=16)
        f, out = enc.fused_for_inference()(images[64:]), q(images[64:])
        assert torch.equal(enc(images), before)
    assert q.is_int8 and not enc.is_int8
    assert any("quantized" in type(m).__module__ for m in q.int8_core.modules())
    assert out.shape == f.shape == (32, 32) and out.dtype == torch.float32
    assert float((out - f).abs().max()) < 0.1 * float(f.std())
    assert not torch.equal(out, f)
    with pytest.raises(ValueError, match="calibration images"):
        enc.quantized_for_inference(torch.randn(4, 8, 8))
    with pytest.raises(ValueError, match="calibration images"):
        enc.quantized_for_inference(torch.randn(0, 16, 16))
    with pytest.raises(ValueError, match="encoder expects 16-px"):
        q(torch.randn(2, 8, 8))


def test_quantize_int8_rejects_empty_calibration_and_bad_batch_size():
    from cryopose.models.quantize import quantize_int8

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with pytest.raises(ValueError, match="at least one input"):
        quantize_int8(net, torch.zeros(0, 4))
    with pytest.raises(ValueError, match="batch_size"):
        quantize_int8(net, torch.zeros(2, 4), batch_size=0)


def test_encoder_rejects_wrong_and_too_small_boxes():
    with pytest.raises(ValueError, match="encoder expects 32-px"):
        CryoPoseNetEncoder(32)(torch.randn(2, 24, 24))
    with pytest.raises(ValueError, match="too small"):
        encoder_output_size(6)
    assert encoder_output_size(20) == 2


@pytest.mark.parametrize("kind,dim", [("s2s2", 6), ("quaternion", 4), ("euler", 3)])
def test_pose_heads_give_rotations_and_gradients(kind, dim):
    torch.manual_seed(0)
    head = PoseHead(16, kind=kind, n_hypotheses=3)
    assert head.linear.out_features == 3 * dim
    feats = torch.randn(4, 16, requires_grad=True)
    rot = head(feats)
    assert rot.shape == (4, 3, 3, 3)
    assert _is_rotation(rot)
    rot.square().mul(torch.randn_like(rot)).sum().backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_params_to_rotmat_matches_the_rotation_conventions():
    r = random_rotations(6, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(params_to_rotmat(rotmat_to_sixd(r), "s2s2"), r, atol=1e-12)
    ang = torch.tensor([[30.0, 40.0, 50.0]], dtype=torch.float64)
    assert torch.allclose(params_to_rotmat(torch.deg2rad(ang), "euler"), relion_euler_to_rotmat(ang), atol=1e-12)
    q = torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # unnormalised identity
    assert torch.allclose(params_to_rotmat(q, "quaternion"), torch.eye(3, dtype=torch.float64)[None])
    with pytest.raises(ValueError, match="unknown pose parameterisation"):
        params_to_rotmat(q, "axis")
    with pytest.raises(ValueError, match="needs 6 numbers"):
        params_to_rotmat(q, "s2s2")


def test_s2s2_map_passes_gradcheck_in_float64():
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: params_to_rotmat(t, "s2s2"), (x,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda t: params_to_rotmat(t, "quaternion"), (x[:, :4].detach().requires_grad_(),),
                                    eps=1e-6, atol=1e-7)


def test_shift_head_starts_at_zero_and_is_bounded():
    head = ShiftHead(8, max_shift=3.0)
    assert torch.equal(head(torch.randn(4, 8)), torch.zeros(4, 2))
    with torch.no_grad():
        head.linear.bias.fill_(100.0)
    assert torch.allclose(head(torch.randn(2, 8)), torch.full((2, 2), 3.0))
    with pytest.raises(ValueError):
        ShiftHead(8, max_shift=0.0)


def test_half_turn_of_image_equals_projection_at_turned_pose():
    g = torch.Generator().manual_seed(3)
    vol = torch.rand(16, 16, 16, generator=g, dtype=torch.float64) * spherical_mask(16, 6, dtype=torch.float64)
    rot = random_rotations(2, generator=g)
    a = rotate_half_turn(project(vol, rot))
    b = project(vol, rotate_half_turn_poses(rot))
    inner = (slice(None), slice(1, None), slice(1, None))  # row/column 0 wrap in a half turn
    assert torch.allclose(a[inner], b[inner], atol=1e-9 * float(b.abs().max()) + 1e-12)


def test_symmetrized_volume_is_invariant_under_its_group():
    g = torch.Generator().manual_seed(0)
    vol = torch.rand(12, 12, 12, generator=g, dtype=torch.float64)
    ops = symmetry_operators("D2")
    sym = symmetrize_volume(vol, ops)
    for op in ops:  # D2 operators map the grid onto itself (half turns about x, y, z)
        again = symmetrize_volume(sym, op[None])
        inner = (slice(1, None),) * 3
        assert torch.allclose(again[inner], sym[inner], atol=1e-9)
    assert symmetrize_volume(vol, torch.eye(3, dtype=torch.float64)[None]) is vol


def test_voxel_volume_init_mask_and_prepare():
    g = torch.Generator().manual_seed(0)
    v = VoxelVolume(16, init="noise", init_std=0.5, mask_radius=5.0, generator=g)
    v.scale.fill_(2.0)
    dens = v.density()
    assert dens.shape == (16, 16, 16)
    assert float(dens.detach()[0, 0, 0]) == 0.0  # outside the mask
    assert torch.allclose(dens, v.param * 2.0 * v.mask)
    vft = v.prepare()
    assert vft.box_size == 16 and vft.size == 32
    assert torch.equal(VoxelVolume(8, init="zeros").density(), torch.zeros(8, 8, 8))
    with pytest.raises(ValueError, match="unknown volume init"):
        VoxelVolume(8, init="ones")


def test_render_equals_projector_with_ctf_and_shift():
    g = torch.Generator().manual_seed(5)
    model = CryoPoseNet(box_size=16, n_hypotheses=2, generator=g)
    rot = random_rotations(6, generator=g).float().reshape(3, 2, 3, 3)
    ctf = torch.rand(3, 16, 16, generator=g)
    shifts = torch.randn(3, 2, generator=g)
    vft = model.volume.prepare()
    pred = model.render(vft, rot, ctf=ctf, shifts_px=shifts)
    assert pred.shape == (3, 2, 16, 16) and pred.is_complex()
    dens = model.volume.density().detach()
    for h in range(2):
        ref = project(prepare_volume_ft(dens), rot[:, h], shifts_px=shifts, ctf=ctf, return_fourier=True) / 16
        assert torch.allclose(pred[:, h], ref, atol=1e-5)


def test_model_gradients_reach_encoder_and_volume():
    torch.manual_seed(0)
    model = CryoPoseNet(box_size=16, n_hypotheses=2, shift_head=True, max_shift_px=2.0)
    out = model.encode(torch.randn(4, 16, 16))
    assert out.rotmats.shape == (4, 2, 3, 3) and out.shifts_px.shape == (4, 2)
    vft = model.volume.prepare()
    pred = model.render(vft, out.rotmats, shifts_px=out.shifts_px)
    pred.abs().square().sum().backward()
    enc = [p for p in model.encoder_parameters() if p.grad is not None]
    assert enc and all(torch.isfinite(p.grad).all() for p in enc)
    assert model.volume.param.grad is not None and model.volume.param.grad.abs().sum() > 0
    names = {n for n, _ in model.named_parameters()}
    assert len(model.encoder_parameters()) == len(names) - 1
    assert math.isclose(float(torch.linalg.det(sixd_to_rotmat(torch.randn(6)))), 1.0, rel_tol=1e-5)


def test_build_model_is_seeded_and_leaves_the_global_random_state_alone():
    from cryopose.pipelines.abinitio import build_model
    from cryopose.training.config import AbinitioConfig

    cfg = AbinitioConfig(box_size=16)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model(cfg, box_size=16, pixel_size_angstrom=5.0)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)  # another global state: the same weights
    b = build_model(cfg, box_size=16, pixel_size_angstrom=5.0)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
