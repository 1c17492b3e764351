"""Int8 inference of the supervised regressor (OrientationRegressor.quantized_for_inference)."""

from __future__ import annotations

import pytest
import torch

from cryopose.metrics.pose_error import symmetry_aware_errors
from cryopose.models.supervised import OrientationRegressor, SupervisedModelConfig
from cryopose.projection import project
from cryopose.rotations import random_rotations
from cryopose.training.supervised import SupervisedTrainConfig, predict_rotmats, train_supervised

pytestmark = pytest.mark.usefixtures("one_thread")


def _volume(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    c = torch.arange(n, dtype=torch.float32) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(n, n, n)
    for _ in range(5):
        p = (torch.rand(3, generator=g) - 0.5) * n * 0.5
        vol += torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * (n / 10) ** 2))
    return vol


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
    vol = _volume(16)
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
