"""VAE-GAN networks and training (Miolane et al. 2020): shapes, losses, checkpoints, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryopose.errors import UserError
from cryopose.models.vaegan import VAEGAN, VAEGANConfig, conv_plan
from cryopose.training.latent import encode_latents, fit_scaling, load_latent_checkpoint, prepare_batch, train_vaegan
from cryopose.training.latent_config import LatentTrainConfig
from cryopose.training.latent_losses import vaegan_losses
from cryopose.training.rotinv import rotate_images


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _rotating_images(n=96, box=16, seed=0):
    """An asymmetric pattern at random in-plane angles and two contrasts ('defocus')."""
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(box, dtype=torch.float32) - box // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    base = torch.exp(-((x - 3) ** 2 + y**2) / 3.0) + 0.5 * torch.exp(-((x + 2) ** 2 + (y - 3) ** 2) / 2.0)
    theta = torch.rand(n, generator=g) * 2 * math.pi
    amp = torch.where(torch.rand(n, generator=g) < 0.5, 0.5, 1.0)
    return rotate_images(base.expand(n, box, box).contiguous(), theta) * amp[:, None, None]


@pytest.mark.parametrize("box", [16, 17, 24, 32])
def test_vaegan_shapes(box):
    m = VAEGAN(VAEGANConfig(box_size=box, latent_dim=4))
    x = torch.rand(2, box, box)
    logits, mu, logvar, z = m(x)
    assert logits.shape == (2, box, box) and mu.shape == (2, 4) and logvar.shape == (2, 4)
    assert m.discriminator(x).shape == (2,)
    assert conv_plan(box)[-1] <= 5
    with pytest.raises(ValueError):
        VAEGANConfig(box_size=box, latent_dim=2)


def test_losses_and_config_validation():
    x = _rotating_images(8)
    cfg = LatentTrainConfig(train_box_size=None, lambda_gan=0.1, lambda_equivariance=1.0)
    sc = fit_scaling(x, cfg)
    batch = prepare_batch(x, np.arange(8), cfg, sc)
    assert float(batch.min()) >= 0 and float(batch.max()) <= 1
    m = VAEGAN(cfg.model_config(16))
    m.train()
    out = vaegan_losses(m, batch, cfg, generator=torch.Generator().manual_seed(0))
    for k in ("total", "rec", "kl", "cone", "gan", "equi"):
        assert torch.isfinite(out[k]), k
    assert float(out["gan"].detach()) > 0 and float(out["equi"].detach()) > 0
    for bad in (dict(latent_dim=2), dict(batch_size=1), dict(lambda_reg=-1.0), dict(validation_fraction=0.9),
                dict(equivariance_order=0), dict(scaling_quantiles=(0.9, 0.1))):
        with pytest.raises(UserError):
            LatentTrainConfig(**bad)


def test_train_checkpoint_resume_and_determinism(tmp_path):
    x = _rotating_images(96)
    cfg = LatentTrainConfig(train_box_size=None, epochs=2, batch_size=16, lambda_gan=0.05, seed=3)
    ck = tmp_path / "checkpoint.pt"
    a = train_vaegan(x, cfg, checkpoint_path=ck, progress=False)
    b = train_vaegan(x, cfg, progress=False)
    assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history], rel=1e-6)
    assert len(a.train_indices) + len(a.validation_indices) == 96 and len(a.validation_indices) > 0
    more = LatentTrainConfig(train_box_size=None, epochs=3, batch_size=16, lambda_gan=0.05, seed=3)
    c = train_vaegan(x, more, checkpoint_path=ck, resume=True, progress=False)
    assert [h["epoch"] for h in c.history] == [1, 2, 3]
    model, scaling, config, raw = load_latent_checkpoint(ck)
    assert raw["epoch"] == 3 and config.epochs == 3 and scaling.high > scaling.low
    codes = encode_latents(model, x, config, scaling)
    assert codes.mu.shape == (96, 5) and codes.logvar.shape == (96, 5) and codes.reconstruction_loss.shape == (96,)
    assert np.all(np.isfinite(codes.reconstruction_loss))
    with pytest.raises(UserError):  # other options cannot resume this checkpoint
        train_vaegan(x, LatentTrainConfig(train_box_size=None, epochs=3, batch_size=16, seed=4),
                     checkpoint_path=ck, resume=True, progress=False)
    with pytest.raises(UserError):
        load_latent_checkpoint(tmp_path / "missing.pt")


def test_equivariance_prior_makes_polar_angle_follow_rotation():
    """With the prior, turning an image by θ moves the latent polar angle by about −θ."""
    torch.manual_seed(0)
    x = _rotating_images(192)
    cfg = LatentTrainConfig(train_box_size=None, epochs=20, batch_size=16, learning_rate=3e-3,
                            lambda_equivariance=10.0, seed=0)
    res = train_vaegan(x, cfg, progress=False)
    base = x[:32]
    th = torch.full((32,), 0.6)
    sc = res.scaling
    with torch.no_grad():
        mu0 = res.model.encoder(prepare_batch(base, np.arange(32), cfg, sc))[0]
        mu1 = res.model.encoder(prepare_batch(rotate_images(base, th), np.arange(32), cfg, sc))[0]
    d = torch.atan2(mu1[:, 1], mu1[:, 0]) - torch.atan2(mu0[:, 1], mu0[:, 0])
    d = torch.atan2(torch.sin(d), torch.cos(d))
    assert float((d + 0.6).abs().median()) < 0.15


def test_hyperparameter_search_without_optuna_says_how_to_install(monkeypatch):
    import sys

    from cryopose.training.latent import hyperparameter_search

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(UserError, match="pip install"):
        hyperparameter_search(_rotating_images(64), LatentTrainConfig(train_box_size=None, epochs=1), n_trials=1)


def test_hyperparameter_search_runs_trials():
    pytest.importorskip("optuna", reason="Optuna is the optional extra cryopose[hpo]")
    from cryopose.training.latent import hyperparameter_search

    base = LatentTrainConfig(train_box_size=None, epochs=1, batch_size=16)
    best, trials = hyperparameter_search(_rotating_images(64), base, n_trials=2, seed=0)
    assert len(trials) == 2 and all(np.isfinite(t["value"]) for t in trials)
    assert best.epochs == 1 and 1e-4 <= best.learning_rate <= 3e-3 and best.decoder_depth >= 2
