"""Supervised orientation regression (Lian et al. 2022): network, losses, trainer, CV, checkpoints,
and the reprojection metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryopose.metrics.reprojection import reprojection_rmse
from cryopose.models.supervised import (OrientationRegressor, SupervisedModelConfig, REPRESENTATIONS, load_pose_model,
                                        rotvec_to_quaternion)
from cryopose.projection import project
from cryopose.rotations import (axis_angle_to_rotmat, quaternion_to_rotmat, random_rotations,
                                rotmat_to_quaternion)
from cryopose.symmetry import symmetry_operators
from cryopose.data.transforms import rotate_quarter_turns
from cryopose.rotations import inplane_rotation
from cryopose.metrics.pose_error import symmetry_aware_errors
from cryopose.training.supervised import (SupervisedTrainConfig, cross_validate_w, predict_rotmats, save_checkpoint,
                                          split_train_test, train_supervised)
from cryopose.training.supervised_losses import (ReprojectionLoss, augment_inplane, quaternion_distance_loss,
                                                 symmetric_quaternion_distance_loss)


pytestmark = pytest.mark.usefixtures("one_thread")


def _blob_volume(n: int, seed: int = 0) -> torch.Tensor:
    """An asymmetric volume: a few Gaussian blobs."""
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(n, dtype=torch.float32) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(n, n, n)
    for _ in range(5):
        p = (torch.rand(3, generator=g) - 0.5) * n * 0.5
        vol += torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * (n / 10) ** 2))
    return vol


def _d2_symmetrize(vol: torch.Tensor) -> torch.Tensor:
    """Exact D2 average (RELION axes: 2-folds about z and x) of an odd-box volume ``(z, y, x)``."""
    assert vol.shape[-1] % 2 == 1
    return (vol + vol.flip(1, 2) + vol.flip(0, 1) + vol.flip(0, 2)) / 4.0


def test_model_shapes_and_unit_outputs():
    torch.manual_seed(0)
    for rep, size in (("quaternion", 4), ("axis_angle", 3), ("s2s2", 6), ("svd", 9)):
        m = OrientationRegressor(SupervisedModelConfig(box_size=16, representation=rep, width=4, n_blocks=2,
                                                       head_channels=8, hidden=16))
        raw = m(torch.randn(3, 16, 16))
        assert raw.shape == (3, size)
        q = m.to_quaternion(raw)
        torch.testing.assert_close(q.norm(dim=-1), torch.ones(3))
        r = m.to_rotmat(raw)
        torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3).expand(3, 3, 3), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.linalg.det(r), torch.ones(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(quaternion_to_rotmat(q), r, atol=1e-5, rtol=0)
        # the decoders are differentiable: finite gradients reach every weight
        (1.0 - (q * torch.tensor([1.0, 0.0, 0.0, 0.0])).sum(-1) ** 2).mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    # the CLI (which imports the library lazily) offers exactly the library's outputs
    import argparse

    from cryopose.cli.train_supervised import add_model_arguments

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert tuple(next(a.choices for a in parser._actions if a.dest == "representation")) == REPRESENTATIONS
    with pytest.raises(ValueError):
        SupervisedModelConfig(box_size=8, n_blocks=4)
    with pytest.raises(ValueError):
        SupervisedModelConfig(box_size=16, representation="euler")


def test_rotvec_to_quaternion_matches_rodrigues():
    w = torch.randn(20, 3, dtype=torch.float64)
    w[0] = 0.0
    w[1] = 1e-5
    torch.testing.assert_close(quaternion_to_rotmat(rotvec_to_quaternion(w)), axis_angle_to_rotmat(w))


def test_quaternion_distance_loss_values():
    r = random_rotations(6, generator=torch.Generator().manual_seed(0))
    q = rotmat_to_quaternion(r)
    torch.testing.assert_close(quaternion_distance_loss(q, q), torch.zeros(6, dtype=q.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(quaternion_distance_loss(-q, q), torch.zeros(6, dtype=q.dtype), atol=1e-12, rtol=0)
    half_turn = axis_angle_to_rotmat(torch.tensor([0.0, 0.0, math.pi], dtype=torch.float64))
    q2 = rotmat_to_quaternion(r @ half_turn)
    torch.testing.assert_close(quaternion_distance_loss(q2, q), torch.ones(6, dtype=q.dtype), atol=1e-9, rtol=0)
    # modulo D2, R S has zero symmetric distance to R
    gq = rotmat_to_quaternion(symmetry_operators("D2"))
    q3 = rotmat_to_quaternion(r @ symmetry_operators("D2")[2])
    assert symmetric_quaternion_distance_loss(q3, q, gq).abs().max() < 1e-9
    assert quaternion_distance_loss(q3, q).min() > 0.9


def test_reprojection_loss_zero_for_symmetry_equivalent_rotations():
    vol = _d2_symmetrize(_blob_volume(17))
    loss = ReprojectionLoss(vol)
    r = random_rotations(8, generator=torch.Generator().manual_seed(1)).float()
    ops = symmetry_operators("D2", dtype=torch.float32)
    for s in ops[1:]:
        assert loss(r @ s, r).max() < 1e-4
    other = axis_angle_to_rotmat(torch.tensor([0.3, 0.0, 0.0])).float() @ r
    assert loss(other, r).min() > 0.02  # 17° off: 200× the symmetric residual
    # and the gradient flows to the predicted rotation
    rp = r.clone().requires_grad_(True)
    loss(rp, other).sum().backward()
    assert rp.grad is not None and rp.grad.abs().sum() > 0


def test_reprojection_rmse_metric():
    vol = _d2_symmetrize(_blob_volume(17, seed=3))
    r = random_rotations(10, generator=torch.Generator().manual_seed(2)).float()
    assert reprojection_rmse(vol, r, r).rmse < 1e-6
    eq = reprojection_rmse(vol, r @ symmetry_operators("D2", dtype=torch.float32)[1], r)
    assert eq.rmse < 1e-4
    far = random_rotations(10, generator=torch.Generator().manual_seed(3)).float()
    res = reprojection_rmse(vol, far, r)
    assert 0.3 < res.rmse < 2.0 and res.per_particle.shape == (10,) and res.normalized
    raw = reprojection_rmse(vol, far, r, normalize=False)
    assert raw.rmse == pytest.approx(res.rmse * res.scale, rel=1e-6)
    # a global rotation G applied to the estimates is undone by passing it
    g = axis_angle_to_rotmat(torch.tensor([0.2, -0.4, 0.1])).float()
    assert reprojection_rmse(vol, r @ g.T, r, global_rotation=g).rmse < 1e-4
    with pytest.raises(ValueError):
        reprojection_rmse(vol, r[:3], r)


def _tiny_data(n=48, box=16, seed=0):
    vol = _blob_volume(box, seed)
    rot = random_rotations(n, generator=torch.Generator().manual_seed(seed)).float()
    return project(vol, rot), rot, vol


_TINY_MODEL = dict(box_size=16, width=4, n_blocks=2, head_channels=16, hidden=32)


def test_training_reduces_loss():
    images, rot, vol = _tiny_data()
    cfg = SupervisedTrainConfig(iterations=60, batch_size=32, learning_rate=3e-3, w=0.5, test_fraction=0.25)
    res = train_supervised(images, rot, vol, model_config=SupervisedModelConfig(**_TINY_MODEL), config=cfg)
    loss = np.asarray(res.history["loss"])
    assert loss.shape == (60,)
    assert loss[-10:].mean() < 0.85 * loss[:10].mean()
    assert res.history["lr"][-1] == pytest.approx(3e-3 * 0.2)  # decayed by 1/5 after 80 %
    assert res.history["lr"][40] == pytest.approx(3e-3)
    assert res.train_indices.size == 36 and res.test_indices.size == 12
    assert set(res.test_metrics) == {"n", "median_error_deg", "mean_error_deg", "reprojection_rmse"}


def test_cosine_schedule_halves_midway_and_ends_at_zero():
    from cryopose.training.supervised import _lr_scheduler

    cfg = SupervisedTrainConfig(iterations=100, learning_rate=2e-3, lr_schedule="cosine")
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    sched = _lr_scheduler(opt, cfg)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(cfg.iterations):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(2e-3) and lrs[50] == pytest.approx(1e-3) and lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert lrs[25] == pytest.approx(1e-3 * (1 + np.cos(np.pi / 4)))
    assert np.all(np.diff(lrs) <= 0)
    with pytest.raises(ValueError, match="lr_schedule"):
        SupervisedTrainConfig(lr_schedule="linear")


@pytest.mark.parametrize("n", [16, 17])
def test_quarter_turns_are_projections_along_the_turned_label(n):
    """A projection turned by k·90° is, to float precision, the projection along Rz(k·90°) R; four
    turns are the identity; a continuous turn matches to interpolation accuracy."""
    vol = _blob_volume(n, seed=2)
    rot = random_rotations(8, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    p = project(vol, rot)
    k = torch.tensor([0, 1, 2, 3, 1, 2, 3, 5])
    turned = rotate_quarter_turns(p, k)
    expected = project(vol, inplane_rotation(k.float() * (math.pi / 2)) @ rot)
    assert torch.allclose(turned, expected, atol=1e-5 * float(p.abs().max()))
    assert not torch.allclose(turned[1], p[1], atol=1e-2 * float(p.abs().max()))
    assert torch.equal(rotate_quarter_turns(turned, 4 - k % 4), p)
    x, r = augment_inplane(p, rot, "continuous", generator=torch.Generator().manual_seed(1))
    err = ((x - project(vol, r)) ** 2).mean() / (p**2).mean()
    assert float(err) < 0.01
    assert augment_inplane(p, rot, "none")[0] is p
    with pytest.raises(ValueError, match="augment_inplane"):
        augment_inplane(p, rot, "flip")
    with pytest.raises(ValueError, match="augment_inplane"):
        SupervisedTrainConfig(augment_inplane="mirror")


def test_training_with_quarter_turn_augmentation_runs_and_learns():
    images, rot, vol = _tiny_data()
    cfg = SupervisedTrainConfig(iterations=60, batch_size=32, learning_rate=3e-3, w=0.5, test_fraction=0.25,
                                augment_inplane="quarter")
    res = train_supervised(images, rot, vol, model_config=SupervisedModelConfig(**_TINY_MODEL), config=cfg)
    loss = np.asarray(res.history["loss"])
    assert np.isfinite(loss).all() and loss[-10:].mean() < 0.9 * loss[:10].mean()


def test_split_is_four_to_one_and_disjoint():
    tr, te = split_train_test(100, 0.2, seed=3)
    assert tr.size == 80 and te.size == 20 and not set(tr) & set(te)


def test_cross_validation_picks_a_w():
    images, rot, vol = _tiny_data(n=30)
    cfg = SupervisedTrainConfig(iterations=3, batch_size=8)
    cv = cross_validate_w(images, rot, vol, model_config=SupervisedModelConfig(**_TINY_MODEL), config=cfg,
                          w_values=(0.0, 0.5, 1.0), n_folds=2)
    assert cv.best_w in (0.0, 0.5, 1.0)
    assert cv.scores.shape == (3, 2) and np.isfinite(cv.scores).all()
    assert cv.best_w == cv.w_values[int(np.argmin(cv.mean_scores))]
    with pytest.raises(ValueError):
        cross_validate_w(images, rot, vol, model_config=SupervisedModelConfig(**_TINY_MODEL), config=cfg,
                         n_folds=1)


def test_checkpoint_round_trip(tmp_path):
    images, rot, vol = _tiny_data(n=20)
    res = train_supervised(images, rot, vol, model_config=SupervisedModelConfig(**_TINY_MODEL),
                           config=SupervisedTrainConfig(iterations=2, batch_size=8))
    path = save_checkpoint(tmp_path / "m.pt", res.model, pixel_size_angstrom=4.0, symmetry="d2")
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["model_kind"] == "supervised" and ckpt["symmetry"] == "D2"
    predictor = load_pose_model(path)
    rots, shifts = predictor(images[:5])
    assert shifts is None and rots.shape == (5, 3, 3)
    with torch.no_grad():
        expected = res.model.to_rotmat(res.model(images[:5]))
    torch.testing.assert_close(rots, expected)
    # larger images (same field of view) are Fourier-cropped to the model's box
    assert predictor(torch.randn(2, 32, 32))[0].shape == (2, 3, 3)
    torch.save({"model_kind": "cryoposenet"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="model_kind"):
        load_pose_model(tmp_path / "other.pt")


@pytest.mark.parametrize("symmetry", ["C1", "D2"])
def test_test_time_quarter_turns_are_equivariant(symmetry):
    """Averaging over the four quarter turns makes the prediction exactly equivariant: the image
    turned by 90° is predicted at Rz(90°) times the prediction of the original (modulo the point
    group); without turns the prediction is the plain forward pass."""

    torch.manual_seed(0)
    model = OrientationRegressor(SupervisedModelConfig(**_TINY_MODEL)).eval()
    images = torch.randn(6, _TINY_MODEL["box_size"], _TINY_MODEL["box_size"])
    with torch.no_grad():
        plain = model.predict_rotmat(images)
        torch.testing.assert_close(plain, model.to_rotmat(model(images)))
        r = model.predict_rotmat(images, test_time_turns=True, symmetry=symmetry)
        r_turned = model.predict_rotmat(rotate_quarter_turns(images, 1), test_time_turns=True, symmetry=symmetry)
    expected = inplane_rotation(torch.full((6,), math.pi / 2)).float() @ r
    err = symmetry_aware_errors(r_turned.double(), expected.double(), symmetry=symmetry)
    assert float(err.max()) < 0.05
    assert float(symmetry_aware_errors(r.double(), plain.double(), symmetry=symmetry).max()) > 0.05


# int8 inference (OrientationRegressor.quantized_for_inference)

def test_int8_copy_matches_the_float_network_and_leaves_it_unchanged():
    torch.manual_seed(0)
    model = OrientationRegressor(SupervisedModelConfig(box_size=32, width=8, head_channels=32, hidden=64)).eval()
    images = torch.randn(64, 32, 32)
    with torch.no_grad():
        before = model(images)
        q = model.quantized_for_inference(images[:32])
        raw_f, raw_q = model.fused_for_inference()(images), q(images)
        assert torch.equal(model(images), before)
    assert q.is_int8 and not model.is_int8
    assert any("quantized" in type(m).__module__ for m in q.int8_core.modules())
    # 8-bit activations and per-channel weights: within a few percent of the outputs' spread
    assert float((raw_q - raw_f).abs().max()) < 0.05 * float(raw_f.std())
    assert not torch.equal(raw_q, raw_f)
    with pytest.raises(ValueError, match="calibration images"):
        model.quantized_for_inference(torch.randn(4, 16, 16))
    with pytest.raises(ValueError, match="calibration images"):
        model.quantized_for_inference(torch.randn(0, 32, 32))


def test_int8_poses_of_a_trained_network_stay_close():
    """A network trained on projections: the int8 copy's rotations stay within a few degrees of
    the float ones (median), on particles it was not calibrated on."""
    vol = _blob_volume(16, seed=4)
    rot = random_rotations(160, generator=torch.Generator().manual_seed(1)).float()
    images = project(vol, rot)
    cfg = SupervisedTrainConfig(iterations=150, batch_size=32, learning_rate=3e-3, w=0.5)
    res = train_supervised(images, rot, vol, model_config=SupervisedModelConfig(box_size=16, width=8, n_blocks=2,
                                                                                head_channels=32, hidden=64),
                           config=cfg)
    q = res.model.quantized_for_inference(images[torch.as_tensor(res.train_indices[:64])])
    test = res.test_indices
    r_f = predict_rotmats(res.model, images, test)
    r_q = predict_rotmats(q, images, test)
    diff = symmetry_aware_errors(r_q.double(), r_f.double(), symmetry="C1")
    assert float(diff.median()) < 3.0 and float(diff.max()) < 45.0
