"""Pose-aware heterogeneity model and trainer, and the clustering of latents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.analysis.clustering import (cluster_latents, embed_latents, label_scores,
                                          principal_component_spearman)
from cryopose.ctf import CTFParams, compute_ctf
from cryopose.data.dataset import ParticleDataset, TensorStack
from cryopose.errors import UserError
from cryopose.io.mrc import read_map
from cryopose.models.hetero_linear import LinearMaps, half_plane_mask, slice_coefficients
from cryopose.projection import project
from cryopose.simulate import SimulationConfig, simulate_in_memory
from cryopose.training.heterogeneity import HeteroTrainer, PoseAwareConfig, build_pose_aware_model

pytestmark = pytest.mark.usefixtures("one_thread")
MAPS = Path(__file__).resolve().parents[3] / "shared" / "data" / "maps"


def _random_rotmats(b: int, seed: int = 0) -> torch.Tensor:
    from cryopose.simulate import sample_rotations

    return sample_rotations(b, generator=torch.Generator().manual_seed(seed)).float()


def test_half_plane_mask_keeps_each_friedel_pair_once():
    n = 16
    m = half_plane_mask(n)
    mirror = torch.flip(m[1:, 1:], dims=(0, 1))  # frequency -k of index n//2 + k (odd part of the grid)
    inner = m[1:, 1:]
    assert not bool((inner & mirror).sum() > 1)  # only the DC is its own mirror
    circle = half_plane_mask(n) | torch.flip(torch.nn.functional.pad(mirror, (1, 0, 1, 0)), dims=())
    k = torch.arange(n) - n // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    assert bool(((kx**2 + ky**2) < (n / 2) ** 2)[1:, 1:].eq(circle[1:, 1:]).all())


def test_slice_coefficients_equal_the_projector():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 16, 16, 16, generator=g)
    rot = _random_rotmats(4)
    shifts = torch.randn(4, 2, generator=g)
    ctf = compute_ctf(CTFParams.create(defocus_u_angstrom=torch.full((4,), 15000.0)), 16, 3.0)
    mask = half_plane_mask(16)
    got = slice_coefficients(maps, rot, mask, shifts_px=shifts, ctf=ctf)
    for k in range(3):
        ft = project(maps[k], rot, shifts_px=shifts, ctf=ctf, return_fourier=True)[:, mask]
        ref = torch.cat([ft.real, ft.imag], dim=-1)
        assert torch.allclose(got[:, k], ref, atol=1e-4 * float(ref.abs().max()))


def test_latents_recover_the_coordinates_without_noise():
    g = torch.Generator().manual_seed(2)
    model = LinearMaps(16, 2)
    model.mean.copy_(torch.rand(16, 16, 16, generator=g))
    model.basis.copy_(torch.randn(2, 16, 16, 16, generator=g) * 0.1)
    z = torch.randn(5, 2, generator=g)
    rot = _random_rotmats(5, seed=3)
    images = torch.stack([project(model.map_at(z[i]), rot[i:i + 1])[0] for i in range(5)])
    r, a = model.residuals_and_slices(images, rot)
    assert torch.allclose(model.latents(r, a, prior=False), z, atol=5e-3)


def _mixture_dataset(n: int, snr: float, seed: int = 0):
    vols = [read_map(MAPS / f"10076_class{c}_32.mrc", pixel_size_angstrom=13.1).volume for c in "DE"]
    cfg = SimulationConfig(class_fractions=(0.5, 0.5), snr=snr, defocus_range_angstrom=(10000.0, 25000.0))
    images, meta = simulate_in_memory([np.array(v) for v in vols], pixel_size_angstrom=13.1, n_particles=n,
                                      config=cfg, generator=seed)
    return ParticleDataset(TensorStack(images), meta, whiten=False), meta.table["rlnCryoposeTrueClass"].to_numpy()


def test_trainer_separates_two_states_and_resumes():
    ds, truth = _mixture_dataset(200, snr=2.0)
    cfg = PoseAwareConfig(zdim=2, epochs=4, batch_size=100, whiten=False, num_threads=1)
    model = build_pose_aware_model(cfg, box_size=32, pixel_size_angstrom=13.1)
    trainer = HeteroTrainer(model, ds, cfg)
    trainer.initialise()
    trainer.train()
    z = trainer.latents().numpy()
    first = z[:, 0]
    threshold = np.median(first)
    accuracy = max(((first > threshold) == (truth == 2)).mean(), ((first > threshold) == (truth == 1)).mean())
    assert accuracy > 0.9
    assert trainer.history[-1]["singular_values"][0] > 2 * trainer.history[-1]["singular_values"][1]
    # resume: 2 epochs, a new trainer from that state, 2 more = 4 straight
    short = HeteroTrainer(build_pose_aware_model(cfg, box_size=32, pixel_size_angstrom=13.1), ds,
                          PoseAwareConfig(**{**cfg.__dict__, "epochs": 2}))
    short.initialise()
    short.train()
    again = HeteroTrainer(build_pose_aware_model(cfg, box_size=32, pixel_size_angstrom=13.1), ds, cfg)
    again.load_state_dict(short.state_dict())
    again.train()
    assert torch.allclose(again.model.basis, model.basis, atol=1e-5)


def test_operator_is_linear_and_amplifies_the_true_difference_above_noise():
    """``apply_operator`` is linear in the maps, and the true direction of variation (D − E)
    gets a larger Rayleigh quotient than a random smooth direction (what the iteration needs)."""
    ds, _ = _mixture_dataset(200, snr=2.0)
    cfg = PoseAwareConfig(zdim=2, epochs=1, batch_size=100, whiten=False, num_threads=1)
    trainer = HeteroTrainer(build_pose_aware_model(cfg, box_size=32, pixel_size_angstrom=13.1), ds, cfg)
    trainer.initialise()
    d, e = (torch.from_numpy(np.array(read_map(MAPS / f"10076_class{c}_32.mrc",
                                                pixel_size_angstrom=13.1).volume)).float() for c in "DE")
    g = torch.Generator().manual_seed(5)
    rnd = trainer.model.basis[0]  # seeded, low-pass filtered noise (initialise)
    diff = (d - e) * trainer.mask
    probes = torch.stack([diff / diff.norm(), rnd / rnd.norm()])
    out = trainer.apply_operator(probes)
    q = (probes * out).flatten(1).sum(1)
    assert q[0] > 5 * q[1]
    a, b = torch.randn(2, generator=g)
    combo = trainer.apply_operator((a * probes[0] + b * probes[1])[None])[0]
    assert torch.allclose(combo, a * out[0] + b * out[1], atol=1e-4 * float(out.abs().max()))


def test_config_rejects_bad_values():
    with pytest.raises(UserError, match="zdim"):
        PoseAwareConfig(zdim=0)
    with pytest.raises(UserError, match="shift fraction"):
        PoseAwareConfig(shift_fraction=1.5)


def _blobs(n_per: tuple[int, ...], dim: int = 4, seed: int = 0, spread: float = 8.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(len(n_per), dim))
    z = np.concatenate([c + rng.normal(size=(k, dim)) for c, k in zip(centres, n_per)])
    return z.astype(np.float32), np.repeat(np.arange(len(n_per)), n_per)


def test_cluster_latents_finds_the_class_count_and_noise_label():
    z, truth = _blobs((150, 90, 60))
    res = cluster_latents(z, min_class_fraction=0.05, seed=0)
    assert res.n_classes == 3 and res.sizes.tolist() == sorted(res.sizes.tolist(), reverse=True)
    assert label_scores(truth, res.labels)["all"]["nmi"] > 0.9
    assert res.embedding.shape == (300, 2) and not res.warnings


def test_one_blob_gives_one_class_and_a_warning():
    z, _ = _blobs((200,), seed=3)
    res = cluster_latents(z, min_class_fraction=0.1, seed=0)
    assert res.n_classes == 1 and "one class" in res.warnings[0]


def test_scores_and_spearman():
    truth = np.array([1, 1, 2, 2, 3, 3])
    perfect = label_scores(truth, np.array([5, 5, 0, 0, -1, -1]))
    assert perfect["all"]["nmi"] == pytest.approx(1.0) and perfect["n_assigned"] == 4
    t = np.linspace(0, 1, 50)
    z = np.stack([3 * t, 0.01 * np.sin(40 * t)], axis=1)
    assert principal_component_spearman(z, t) == pytest.approx(1.0)
    with pytest.raises(UserError, match="not finite"):
        embed_latents(np.full((10, 3), np.nan))
