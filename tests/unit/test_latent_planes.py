"""Equivariant latent planes: the second plane of order 2, combining planes, the 180° branch from images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryopose.analysis.latent_branch import angles_from_planes, half_turn_branch
from cryopose.analysis.latent_geometry import combine_planes, plane_angles
from cryopose.analysis.latent_orbits import OrbitAnalysisConfig, align_angles, analyze_latents
from cryopose.data.transforms import rotate_images
from cryopose.errors import UserError
from cryopose.training.latent import encode_latents, prepare_batch, train_vaegan
from cryopose.training.latent_config import LatentTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _weak_first_harmonic_images(psi_deg, box=24):
    """A pattern with a strong 2-fold part and a weak off-axis blob (RELION ψ: turned by −ψ)."""
    c = torch.arange(box, dtype=torch.float64) - box // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    s = box / 24.0
    w = 4.0 * s * s
    base = (torch.exp(-((x - 5 * s) ** 2 + y**2) / w) + torch.exp(-((x + 5 * s) ** 2 + y**2) / w)
            + 0.25 * torch.exp(-((x - 1 * s) ** 2 + (y - 4 * s) ** 2) / (3.0 * s * s)))
    theta = -torch.from_numpy(np.radians(psi_deg))
    return rotate_images(base.expand(len(psi_deg), box, box).contiguous(), theta)


def test_config_planes_defaults_and_errors():
    assert LatentTrainConfig().equivariant_planes() == ((0, 1), (3, 2))
    assert LatentTrainConfig(equivariance_order=2).equivariant_planes() == ((0, 2), (3, 4))
    assert LatentTrainConfig(latent_dim=3).equivariant_planes() == ((0, 1),)
    assert LatentTrainConfig(equivariance_order_2=0).equivariant_planes() == ((0, 1),)
    assert LatentTrainConfig(lambda_equivariance=0.0).equivariant_planes() == ()
    with pytest.raises(UserError, match="latent dimension >= 5"):
        LatentTrainConfig(latent_dim=3, equivariance_order_2=2)


def test_combine_planes_fine_plane_with_coarse_branch():
    rng = np.random.default_rng(0)
    psi = rng.uniform(0, 360, 2000)
    phi1 = (psi + 40.0 + rng.normal(0, 20.0, psi.size)) % 360  # coarse: right within ±90°
    phi2 = (2 * psi + 100.0 + rng.normal(0, 1.0, psi.size)) % 360  # fine, modulo 180° once halved
    est, r = combine_planes(phi1, phi2)
    assert r > 0.5 and align_angles(psi, est).rmse_deg < 1.0  # the coarse plane alone: ~20°
    _, r_noise = combine_planes(rng.uniform(0, 360, psi.size), phi2)
    assert r_noise < 0.2
    with pytest.raises(ValueError, match="multiple"):
        combine_planes(phi1, phi2, order1=2, order2=3)


def test_plane_angles_centre_and_bounds():
    z = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, 5.0], [-1.0, 0.0, 5.0], [0.0, -1.0, 5.0]]) + [2.0, 3.0, 0.0]
    (phi,) = plane_angles(z, ((0, 1),))
    np.testing.assert_allclose(phi, [0.0, 90.0, 180.0, 270.0], atol=1e-9)
    with pytest.raises(ValueError, match="latent axes"):
        plane_angles(z, ((2, 1),))


def test_half_turn_branch_resolves_psi_known_modulo_180():
    rng = np.random.default_rng(1)
    psi = rng.uniform(0, 360, 300)
    images = _weak_first_harmonic_images(psi)
    images = images + 0.05 * torch.from_numpy(rng.standard_normal(images.shape))
    fine = psi % 180.0 + rng.normal(0, 1.0, psi.size)
    branch, sep = half_turn_branch(lambda idx: images[torch.from_numpy(idx)], fine, n_reference=200)
    est = (fine + 180.0 * branch) % 360
    assert sep > 1.0 and align_angles(psi, est).rmse_deg < 3.0
    assert align_angles(psi, fine % 360).rmse_deg > 60.0  # without the branch: ~100°


def test_angles_from_planes_uses_images_when_the_first_plane_is_flat():
    rng = np.random.default_rng(2)
    psi = rng.uniform(0, 360, 300)
    images = _weak_first_harmonic_images(psi)
    a2 = np.radians(2 * psi + 30.0)
    z = np.stack([1e-3 * rng.standard_normal(psi.size), 1e-3 * rng.standard_normal(psi.size),
                  np.full(psi.size, 0.5), np.cos(a2), np.sin(a2)], axis=1)
    est, info = angles_from_planes(z, ((0, 1), (3, 2)), 1, None, lambda idx: images[torch.from_numpy(idx)], None)
    assert info["angle_branch_from"] == "images" and info["plane_consistency"] < 0.5
    assert align_angles(psi, est).rmse_deg < 2.0
    est_no_images, info = angles_from_planes(z, ((0, 1), (3, 2)), 1, None, None, None)
    assert align_angles(psi, est_no_images).rmse_deg > 60.0 and math.isfinite(info["plane_consistency"])


def _train_and_read(x, psi, cfg, angle_from):
    res = train_vaegan(x, cfg, progress=False)
    codes = encode_latents(res.model, x, cfg, res.scaling)
    an = analyze_latents(codes.mu, logvar=codes.logvar, true_psi_deg=psi, planes=cfg.equivariant_planes(),
                         config=OrbitAnalysisConfig(radius_direction="increasing", angle_from=angle_from),
                         images=lambda idx: prepare_batch(x, idx, cfg, res.scaling))
    return an.metrics


def test_default_model_reads_psi_of_a_view_with_a_weak_first_harmonic():
    """Training and analysis defaults (16-px images, 15 epochs): ψ to a few degrees; the previous
    defaults (one plane of order 1, ``total`` normalisation, PC1-PC2) gave chance (~74°)."""
    rng = np.random.default_rng(0)
    psi = rng.uniform(0, 360, 256)
    amp = np.where(rng.uniform(size=psi.size) < 0.5, 0.6, 1.0)  # two "defocus" contrasts
    x = (_weak_first_harmonic_images(psi, box=16) * torch.from_numpy(amp)[:, None, None]).to(torch.float32)
    cfg = LatentTrainConfig(train_box_size=None, epochs=15, learning_rate=3e-3, seed=0)
    m = _train_and_read(x, psi, cfg, "auto")
    assert m["angle_source"] == "equivariant planes" and m["angle_rmse_deg"] < 5.0, m
    old = LatentTrainConfig(train_box_size=None, epochs=15, learning_rate=3e-3, seed=0, latent_dim=3,
                            equivariance_normalization="total")
    assert _train_and_read(x, psi, old, "pca")["angle_rmse_deg"] > 30.0
