"""Invariant heterogeneity VAE-GAN: invariances, generator physics, training run and its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from cryopose.ctf import CTFParams
from cryopose.data.dataset import ParticleDataset, TensorStack
from cryopose.data.transforms import rotate_images
from cryopose.errors import UserError
from cryopose.io.metadata import ParticleMetadata
from cryopose.io.mrc import write_stack
from cryopose.io.star import write_star
from cryopose.models.hetero_vaegan import HeteroVAEGANConfig, InvariantVAEGAN, NoiseGenerator
from cryopose.projection import project
from cryopose.rotations import random_rotations
from cryopose.simulate.noise import add_white_noise, noise_sigma_for_snr, signal_variance
from cryopose.simulate.simulator import SimulationConfig, simulate_in_memory
from cryopose.training.hetero_vaegan import (HeteroVAEGANTrainConfig, build_model, encode_dataset,
                                             fit_invariant_vaegan, load_generator, train_invariant_vaegan)

pytestmark = pytest.mark.usefixtures("one_thread")
PIXEL = 5.0


def _model(box=32, **kw) -> InvariantVAEGAN:
    return InvariantVAEGAN(HeteroVAEGANConfig(box_size=box, **kw), generator=torch.Generator().manual_seed(0)).eval()


def _blobs(n: int, count: int, seed: int) -> torch.Tensor:
    """Smooth images ``(count, n, n)``: five Gaussian blobs (σ 2 px) within 0.5 · n/2 of the centre."""
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(n, dtype=torch.float32) - n // 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    out = torch.zeros(count, n, n)
    for i in range(count):
        r = 0.25 * n * torch.rand(5, generator=g)
        a = 2 * torch.pi * torch.rand(5, generator=g)
        for x0, y0, w in zip(r * torch.cos(a), r * torch.sin(a), 0.5 + torch.rand(5, generator=g)):
            out[i] += w * torch.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 2.0**2))
    return out


def test_encoder_and_critic_are_invariant_to_integer_shifts_and_quarter_turns():
    model = _model()
    x = torch.randn(6, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        score = model.critic(x)
        other = model.encode(torch.randn(6, 32, 32, generator=torch.Generator().manual_seed(2)))[0]
        scale = float((other - mu).abs().max())
        for moved in (torch.roll(x, (3, -5), dims=(1, 2)), torch.roll(x, (-11, 7), dims=(1, 2)),
                      torch.rot90(x, 1, (1, 2)), torch.rot90(x, 2, (1, 2)), torch.rot90(x, 3, (1, 2)),
                      torch.rot90(torch.roll(x, (2, 9), dims=(1, 2)), 1, (1, 2))):
            mu2, logvar2 = model.encode(moved)
            assert float((mu2 - mu).abs().max()) < 1e-5 * max(scale, 1.0)
            assert torch.allclose(logvar2, logvar, atol=1e-5)
            assert torch.allclose(model.critic(moved), score, atol=1e-5)
    assert scale > 1e-3  # the encoder does tell other images apart


def test_encoder_is_nearly_invariant_to_any_in_plane_angle():
    model = _model()
    x = _blobs(32, 8, seed=3)
    with torch.no_grad():
        mu = model.encode(x)[0]
        spread = float((model.encode(_blobs(32, 8, seed=4))[0] - mu).norm(dim=1).median())
        for deg in (13.0, 37.0, 141.0):
            turned = rotate_images(x, torch.full((8,), np.deg2rad(deg)))
            err = float((model.encode(turned)[0] - mu).norm(dim=1).median())
            # measured 0.08-0.21 of the spread: bilinear rotation of the image and bilinear polar
            # sampling of its amplitude; a quarter turn (exact above) gives 3e-6
            assert err < 0.3 * spread, (deg, err, spread)


def test_generator_shapes_and_its_images_are_the_projector_s_images_of_its_maps():
    model = _model(box=16, n_basis=3)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(4, 8, generator=g)
    rotmats = random_rotations(4, generator=g, dtype=torch.float32)
    with torch.no_grad():
        volumes = model.generator.volumes(z)
        images = model.generator.project(z, rotmats)
    assert volumes.shape == (4, 16, 16, 16) and images.shape == (4, 16, 16)
    expected = torch.stack([project(volumes[i], rotmats[i:i + 1])[0] for i in range(4)])
    assert torch.allclose(images, expected, atol=1e-4 * float(expected.abs().max()))
    assert float((volumes[0] - volumes[1]).abs().max()) > 0  # the latent changes the map
    with torch.no_grad():
        fakes = model.generate_images(z, rotmats, torch.ones(4, 16, 16), g)
    assert fakes.shape == (4, 16, 16) and float((fakes - images).std()) == pytest.approx(1.0, rel=0.2)


def test_noise_generators_have_trainable_scales():
    clean = torch.zeros(8, 16, 16)
    for kind in ("gaussian", "poisson"):
        noise = NoiseGenerator(kind)
        out = noise(clean, torch.Generator().manual_seed(0))
        out.pow(2).mean().backward()
        grads = [p.grad for p in noise.parameters() if p.grad is not None]
        assert grads and any(float(gr.abs().sum()) > 0 for gr in grads), kind
    assert torch.equal(NoiseGenerator("none")(clean), clean)
    with pytest.raises(ValueError, match="noise model"):
        NoiseGenerator("speckle")


def _two_class(n: int, n_particles: int, snr: float, seed: int = 0):
    """Sphere (radius 0.2 n) and rod (radius 0.08 n, length 0.75 n), half each, one white-noise σ for
    both at the given SNR; images, metadata, labels."""
    c = torch.arange(n, dtype=torch.float32) - n // 2
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    sphere = ((xx**2 + yy**2 + zz**2) < (0.2 * n) ** 2).float()
    rod = ((xx**2 + yy**2) < (0.08 * n) ** 2).float() * (zz.abs() < 0.375 * n).float()
    cfg = SimulationConfig(snr=None, defocus_range_angstrom=(10000.0, 20000.0))
    parts = [simulate_in_memory(v, pixel_size_angstrom=PIXEL, n_particles=n_particles // 2, config=cfg,
                                generator=seed * 10 + k) for k, v in enumerate((sphere, rod))]
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n_particles))
    images = torch.cat([p[0] for p in parts])[order]
    # one noise level for both classes (a per-class SNR would let the noise level betray the class)
    sigma = noise_sigma_for_snr(float(signal_variance(images).mean()), snr)
    images = add_white_noise(images, sigma, generator=torch.Generator().manual_seed(seed + 99))
    ctf = CTFParams.concatenate([p[1].ctf for p in parts])[order]
    labels = np.repeat([0, 1], n_particles // 2)[order.numpy()]
    return images, ParticleMetadata(pixel_size_angstrom=PIXEL, box_size=n, ctf=ctf), labels


def _write(folder, images, meta):
    stack = folder / "mix.mrcs"
    write_stack(stack, images.numpy(), PIXEL)
    n = len(images)
    meta = meta.replace(image_paths=[str(stack)] * n, image_indices=np.arange(n))
    star = folder / "mix.star"
    write_star(star, meta, image_names=[f"{i + 1:06d}@{stack}" for i in range(n)])
    return star


def test_one_epoch_writes_the_output_contract_and_refuses_to_overwrite(tmp_path):
    images, meta, _ = _two_class(16, 64, snr=1.0)
    star = _write(tmp_path, images, meta)
    config = HeteroVAEGANTrainConfig(box_size=16, zdim=4, epochs=1, batch_size=32, n_basis=2)
    run = train_invariant_vaegan(star, tmp_path / "run", config, progress=False)
    out = tmp_path / "run"
    latents = np.load(out / "latents.npy")
    assert latents.dtype == np.float32 and latents.shape == (64, 4) and np.isfinite(latents).all()
    summary = json.loads((out / "heterogeneity.json").read_text())
    assert summary["variant"] == "invariant" and summary["zdim"] == 4 and summary["n_particles"] == 64
    assert summary["particles"] == str(star) and summary["epochs"] == 1
    assert summary["loss_weights"]["weight_gradient_penalty"] == 10.0
    assert yaml.safe_load((out / "config.yaml").read_text())["config"]["zdim"] == 4
    assert (out / "checkpoint.pt").is_file() and np.array_equal(run.latents, latents)
    maps = load_generator(out)
    assert (maps.box_size, maps.zdim, maps.pixel_size_angstrom) == (16, 4, PIXEL)
    volumes = maps(latents[:3])
    assert volumes.shape == (3, 16, 16, 16) and torch.isfinite(volumes).all()
    with pytest.raises(ValueError, match="latents must be"):
        maps(np.zeros((2, 5)))
    with pytest.raises(UserError, match="already holds a run"):
        train_invariant_vaegan(star, out, config, progress=False)
    with pytest.raises(UserError, match="exclude each other"):
        train_invariant_vaegan(star, out, config, progress=False, force=True, resume=True)
    train_invariant_vaegan(star, out, config, progress=False, force=True)


def test_resume_continues_exactly_and_refuses_other_options(tmp_path):
    images, meta, _ = _two_class(16, 48, snr=1.0)
    star = _write(tmp_path, images, meta)
    two = HeteroVAEGANTrainConfig(box_size=16, zdim=3, epochs=2, batch_size=16, n_basis=2, n_critic=2)
    straight = train_invariant_vaegan(star, tmp_path / "a", two, progress=False)
    one = HeteroVAEGANTrainConfig(**{**two.__dict__, "epochs": 1})
    train_invariant_vaegan(star, tmp_path / "b", one, progress=False)
    resumed = train_invariant_vaegan(star, tmp_path / "b", two, progress=False, resume=True)
    assert resumed.summary["epochs"] == 2
    np.testing.assert_allclose(resumed.latents, straight.latents, rtol=1e-5, atol=1e-5)
    other = HeteroVAEGANTrainConfig(**{**two.__dict__, "weight_kl": 0.5, "epochs": 3})
    with pytest.raises(UserError, match="weight_kl"):
        train_invariant_vaegan(star, tmp_path / "b", other, progress=False, resume=True)
    with pytest.raises(UserError, match="no checkpoint.pt"):
        train_invariant_vaegan(star, tmp_path / "c", two, progress=False, resume=True)


def test_latents_separate_a_sphere_from_a_rod():
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    images, meta, labels = _two_class(24, 200, snr=0.5, seed=1)
    dataset = ParticleDataset(TensorStack(images), meta, whiten=True)
    config = HeteroVAEGANTrainConfig(box_size=None, epochs=12, batch_size=32, seed=0)
    fit = fit_invariant_vaegan(dataset, config)

    def nmi(latents):
        return normalized_mutual_info_score(labels, KMeans(2, n_init=10, random_state=0).fit_predict(latents))

    before = nmi(encode_dataset(build_model(config, dataset), dataset))
    after = nmi(fit.latents)
    # measured: 0.62 untrained (the invariant features alone), 0.88 after 12 epochs; chance: ~0
    assert after > 0.7 and after > before + 0.1, (before, after)
