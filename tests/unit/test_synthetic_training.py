"""Synthetic labelled images from the reference (cryopose.training.synthetic) and their use in
supervised training: measured scale and noise against the simulator's, the images against the
projector, and the trainer's checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryopose.ctf import compute_ctf
from cryopose.fourier import fourier_downsample_images
from cryopose.models.supervised import OrientationRegressor, SupervisedModelConfig
from cryopose.projection import project
from cryopose.simulate import SimulationConfig, simulate_in_memory
from cryopose.training.supervised import SupervisedTrainConfig, evaluate_model, split_train_test, train_supervised
from cryopose.training.synthetic import ReferenceProjections

pytestmark = pytest.mark.usefixtures("one_thread")

PIXEL = 4.0


def _blob_volume(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(n, dtype=torch.float32) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(n, n, n)
    for _ in range(5):
        p = (torch.rand(3, generator=g) - 0.5) * n * 0.5
        vol += torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * (n / 10) ** 2))
    return vol


def _data(n_particles=300, box=24, snr=0.5, shift=0.0, seed=0):
    vol = _blob_volume(box)
    cfg = SimulationConfig(snr=snr, apply_ctf=True, defocus_range_angstrom=(10000.0, 25000.0),
                           shift_max_angstrom=shift)
    images, meta = simulate_in_memory(vol, pixel_size_angstrom=PIXEL, n_particles=n_particles, config=cfg,
                                      generator=seed)
    return vol, images, meta


@pytest.mark.parametrize("shift", [0.0, 8.0])
def test_scale_noise_and_snr_match_the_simulation(shift):
    """On simulated particles (image = projection + σ ε, known σ and SNR) the measured scale is 1,
    the measured σ the simulator's and the source's SNR the data's (with shifts drawn from the labels)."""
    vol, images, meta = _data(snr=0.5, shift=shift)
    train, _ = split_train_test(len(images), 0.2, seed=0)
    src = ReferenceProjections.from_labelled(images, meta.rotmats, vol, indices=train, pixel_size_angstrom=PIXEL,
                                             ctf=meta.ctf, shifts_angstrom=meta.shifts_angstrom)
    sigma = float(meta.table["rlnCryoposeNoiseSigma"].iloc[0])
    assert src.scale == pytest.approx(1.0, abs=0.02)
    assert src.noise_sigma == pytest.approx(sigma, rel=0.03)
    # the simulator's SNR is mean var(signal) / σ²: the source makes images at the same SNR
    assert src.snr == pytest.approx(0.5, rel=0.15)
    x, r = src.sample(64)
    assert x.shape == (64, 24, 24) and r.shape == (64, 3, 3)
    torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3).expand(64, 3, 3), atol=1e-5, rtol=0)
    # same overall variance as the data
    assert float(x.var()) == pytest.approx(float(images.var()), rel=0.15)


def test_clean_images_are_the_projector_with_the_drawn_ctf():
    """With one CTF row the noise-free images are α · project(V, R, CTF), to float rounding."""
    vol, images, meta = _data(n_particles=20)
    src = ReferenceProjections(vol, box_size=24, pixel_size_angstrom=PIXEL, ctf=meta.ctf[torch.tensor([3])],
                               scale=2.5, noise_sigma=0.0, seed=1)
    x, r = src.sample(8)
    ctf = compute_ctf(meta.ctf[torch.tensor([3] * 8)], 24, PIXEL)
    ref = 2.5 * project(vol, r, ctf=ctf)
    torch.testing.assert_close(x, ref, atol=1e-4 * float(ref.abs().max()), rtol=0)
    assert math.isinf(src.snr)
    # a fresh batch: new orientations
    _, r2 = src.sample(8)
    assert not torch.allclose(r, r2)


def test_fourier_cropped_images_are_matched_on_the_network_grid():
    """Particles Fourier-cropped 32 → 16 px with the map at 32 px: the source works at 16 px and
    its noise-free images correlate with the cropped particles' clean signal."""
    vol, images, meta = _data(n_particles=200, box=32, snr=1.0)
    small = fourier_downsample_images(images, 16)
    train, _ = split_train_test(len(small), 0.2, seed=0)
    src = ReferenceProjections.from_labelled(small, meta.rotmats, vol, indices=train, pixel_size_angstrom=2 * PIXEL,
                                             ctf=meta.ctf)
    assert src.box_size == 16
    # cropping keeps the low-frequency signal and removes 3/4 of the white noise: SNR ~ 4 × 1.0
    assert 2.5 < src.snr < 5.5
    clean = src.clean(meta.rotmats[torch.as_tensor(train[:50])].float(), np.arange(50))
    resid = small[torch.as_tensor(train[:50])] - clean
    assert float(resid.var()) == pytest.approx(src.noise_sigma ** 2, rel=0.1)


def test_bad_inputs_raise():
    vol, images, meta = _data(n_particles=40)
    idx = np.arange(30)
    with pytest.raises(ValueError, match="anti-correlates"):
        ReferenceProjections.from_labelled(-images, meta.rotmats, vol, indices=idx, pixel_size_angstrom=PIXEL,
                                           ctf=meta.ctf)
    with pytest.raises(ValueError, match="no labelled"):
        ReferenceProjections.from_labelled(images, meta.rotmats, vol, indices=[], pixel_size_angstrom=PIXEL)
    with pytest.raises(ValueError, match="CTF rows"):
        ReferenceProjections.from_labelled(images, meta.rotmats, vol, indices=idx, pixel_size_angstrom=PIXEL,
                                           ctf=meta.ctf[torch.arange(10)])
    with pytest.raises(ValueError, match="larger than"):
        ReferenceProjections(vol, box_size=32, pixel_size_angstrom=PIXEL)
    with pytest.raises(ValueError, match="cubic"):
        ReferenceProjections(vol[0], box_size=16, pixel_size_angstrom=PIXEL)
    with pytest.raises(ValueError, match="scale"):
        ReferenceProjections(vol, box_size=24, pixel_size_angstrom=PIXEL, scale=0.0)
    with pytest.raises(ValueError, match="synthetic_fraction"):
        SupervisedTrainConfig(synthetic_fraction=1.5)


def test_training_with_synthetic_images():
    """The trainer mixes synthetic images into every batch and needs a source for it on its box;
    a network trained on synthetic images alone (fraction 1) poses the real particles: their
    reprojection RMSE falls to well under the untrained network's."""
    vol, images, meta = _data(n_particles=200, box=16, snr=2.0)
    mc = SupervisedModelConfig(box_size=16, width=8, n_blocks=2, head_channels=32, hidden=64)
    tc = SupervisedTrainConfig(iterations=5, batch_size=16, synthetic_fraction=0.5, w=0.5)
    with pytest.raises(ValueError, match="synthetic source"):
        train_supervised(images, meta.rotmats, vol, model_config=mc, config=tc)
    train, test = split_train_test(len(images), 0.2, seed=0)
    wrong = ReferenceProjections(_blob_volume(24), box_size=12, pixel_size_angstrom=PIXEL)
    with pytest.raises(ValueError, match="12 px images"):
        train_supervised(images, meta.rotmats, vol, model_config=mc, config=tc, synthetic=wrong)
    src = ReferenceProjections.from_labelled(images, meta.rotmats, vol, indices=train, pixel_size_angstrom=PIXEL,
                                             ctf=meta.ctf, seed=1)
    calls = []
    sample = src.sample
    src.sample = lambda b: calls.append(b) or sample(b)
    res = train_supervised(images, meta.rotmats, vol, model_config=mc, config=tc, synthetic=src,
                           train_indices=train, test_indices=test)
    assert calls == [8] * 5 and len(res.history["loss"]) == 5
    src.sample = sample
    torch.manual_seed(1)
    untrained = evaluate_model(OrientationRegressor(mc).eval(), images, meta.rotmats, test, reference_volume=vol)
    tc1 = SupervisedTrainConfig(iterations=100, batch_size=32, synthetic_fraction=1.0, w=0.5, learning_rate=3e-3,
                                seed=1)
    res = train_supervised(images, meta.rotmats, vol, model_config=mc, config=tc1, synthetic=src,
                           train_indices=train, test_indices=test)
    assert res.test_metrics["reprojection_rmse"] < 0.7 * untrained["reprojection_rmse"]
