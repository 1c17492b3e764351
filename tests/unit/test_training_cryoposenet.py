"""CryoPoseNet training: losses, frequency marching, a 1-epoch smoke run, checkpoint → resume
equivalence, Ctrl-C checkpoints, and amortized inference on unseen particles (tiny, seconds)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cryopose.ctf import CTFParams
from cryopose.data.dataset import ParticleDataset, TensorStack
from cryopose.data.transforms import estimate_normalization, normalize, rotate_half_turn
from cryopose.errors import InputFileError, UserError
from cryopose.runtime import Runtime
from cryopose.fourier import centered_fft2, fourier_downsample_volume
from cryopose.io.particles import ParticleMetadata
from cryopose.models.volume import spherical_mask
from cryopose.pipelines.abinitio import build_model
from cryopose.projection import project
from cryopose.rotations import random_rotations
from cryopose.training.checkpoint import load_checkpoint, save_checkpoint
from cryopose.training.config import AbinitioConfig, ModelConfig, TrainingConfig, config_from_dict
from cryopose.training.losses import (best_candidate_loss, candidate_posteriors, fourier_residuals,
                                      frequency_band_mask)
from cryopose.training.trainer import Trainer, infer_poses, march_radius

N_BOX = 16
APIX = 8.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _volume() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    v = torch.zeros(32, 32, 32, dtype=torch.float64)
    for _ in range(6):  # a few Gaussian blobs: asymmetric, smooth
        c = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * 14
        k = torch.arange(32, dtype=torch.float64) - 16
        z, y, x = torch.meshgrid(k, k, k, indexing="ij")
        v += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 8.0)
    return fourier_downsample_volume(v, N_BOX) * spherical_mask(N_BOX, 6.5, dtype=torch.float64)


def _particles(n: int, seed: int, noise: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    rot = random_rotations(n, generator=g)
    du = 15000 + 5000 * torch.rand(n, generator=g)
    ctf = CTFParams.create(defocus_u_angstrom=du, defocus_v_angstrom=du - 200, defocus_angle_deg=20.0)
    from cryopose.ctf import compute_ctf

    clean = project(_volume(), rot, ctf=compute_ctf(ctf, N_BOX, APIX).double()).float()
    images = clean + noise * clean.std() * torch.randn(clean.shape, generator=g)
    meta = ParticleMetadata(pixel_size_angstrom=APIX, box_size=N_BOX, rotmats=rot.float(), ctf=ctf,
                            shifts_angstrom=torch.zeros(n, 2))
    return TensorStack(images), meta


def _config(epochs=1, **train) -> AbinitioConfig:
    model = ModelConfig(n_hypotheses=2, channels=(8, 8, 16), hidden=(32, 32))
    kw = dict(epochs=epochs, batch_size=16, seed=3, lr=1e-3, volume_lr=0.05, log_every=1)
    kw.update(train)
    return AbinitioConfig(box_size=N_BOX, model=model, training=TrainingConfig(**kw))


def _trainer(config, stack, meta, path=None):
    ds = ParticleDataset(stack, meta, box_size=config.box_size)
    model = build_model(config, box_size=ds.box_size, pixel_size_angstrom=ds.pixel_size_angstrom)
    return Trainer(model, ds, config.training, checkpoint_path=path, progress=False, runtime=Runtime(threads=1))


def test_band_mask_residuals_and_best_candidate():
    m = frequency_band_mask(8, 2.5)
    assert m[4, 4] == 0 and m[4, 5] == 1 and m[4, 7] == 0
    y = torch.randn(3, 8, 8, dtype=torch.complex64)
    pred = torch.stack([y, torch.zeros_like(y)], dim=1)
    res = fourier_residuals(pred, y, m)
    assert res.shape == (3, 2) and torch.allclose(res[:, 0], torch.zeros(3))
    loss, best = best_candidate_loss(res)
    assert float(loss) == 0.0 and best.tolist() == [0, 0, 0]
    loss2, _ = best_candidate_loss(res, mean_weight=0.5)
    assert torch.allclose(loss2, 0.5 * res.mean())
    post = candidate_posteriors(res, float(m.sum()), 1.0)
    assert torch.allclose(post.sum(1), torch.ones(3)) and bool((post[:, 0] > 0.5).all())


def test_frequency_marching_schedule():
    cfg = TrainingConfig(march_start=0.25, march_fraction=0.5)
    assert march_radius(0, 100, 32, cfg) == pytest.approx(4.0)
    assert march_radius(25, 100, 32, cfg) == pytest.approx(10.0)
    assert march_radius(80, 100, 32, cfg) == pytest.approx(16.0)
    assert march_radius(0, 100, 32, dataclasses.replace(cfg, march_fraction=0.0)) == pytest.approx(16.0)


def test_configs_validate_and_round_trip():
    with pytest.raises(UserError, match="--pose-param"):
        ModelConfig(pose_param="axis")
    with pytest.raises(UserError, match="--epochs"):
        TrainingConfig(epochs=0)
    with pytest.raises(UserError, match="--box-size"):
        AbinitioConfig(box_size=8)
    with pytest.raises(UserError):
        ModelConfig(symmetry="X7")
    cfg = _config()
    assert config_from_dict(dataclasses.asdict(cfg)) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.box_size = 4


def test_dataset_crops_normalises_and_converts_shifts():
    stack, meta = _particles(20, 0)
    meta = meta.replace(shifts_angstrom=torch.full((20, 2), 16.0))
    ds = ParticleDataset(stack, meta, box_size=8)
    assert ds.pixel_size_angstrom == pytest.approx(16.0)
    b = ds.batch([3, 1])
    assert b.images.shape == (2, 8, 8) and b.ctf.shape == (2, 8, 8)
    assert torch.allclose(b.shifts_px, torch.ones(2, 2))
    assert b.indices.tolist() == [3, 1]
    lazy = ParticleDataset(stack, meta, box_size=8, cache_limit_mb=0.0, normalization=ds.normalization)
    assert torch.allclose(lazy.images([3, 1]), b.images, atol=1e-6)
    all_ = ds.images(np.arange(20))
    assert abs(float(all_.std()) - 1.0) < 0.05
    with pytest.raises(UserError, match="larger than the images"):
        ParticleDataset(stack, meta, box_size=32)
    norm = estimate_normalization(stack[np.arange(20)])
    assert torch.allclose(normalize(stack[np.arange(2)], norm) * norm.std + 0, normalize(stack[np.arange(2)], norm) * norm.std)
    x = torch.arange(16.0).reshape(1, 4, 4)
    assert rotate_half_turn(x)[0, 2, 2] == x[0, 2, 2] and rotate_half_turn(x)[0, 1, 3] == x[0, 3, 1]


def test_one_epoch_smoke_loss_decreases_and_checkpoint_written(tmp_path):
    stack, meta = _particles(96, 1)
    cfg = _config(epochs=2, march_fraction=0.0)
    tr = _trainer(cfg, stack, meta, tmp_path / "ck.pt")
    tr.train()
    assert tr.finished and tr.step == 2 * (96 // 16)
    assert tr.epoch_losses[1] < tr.epoch_losses[0]  # single steps are too noisy to compare
    state = load_checkpoint(tmp_path / "ck.pt")
    assert state["epoch"] == 2 and state["step"] == tr.step


@pytest.mark.parametrize("search_mode", ["candidate", "replace"])
def test_checkpoint_resume_equals_uninterrupted_run(tmp_path, search_mode):
    # the search warm-up spans the interruption: its random grid rotations must resume too
    stack, meta = _particles(64, 2)
    cfg = _config(epochs=2, search_fraction=1.0, search_mode=search_mode)
    straight = _trainer(cfg, stack, meta)
    straight.train()

    first = _trainer(cfg, stack, meta, tmp_path / "ck.pt")
    calls = {"n": 0}
    orig = first.train_step

    def interrupt_after_five(idx):
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        return orig(idx)

    first.train_step = interrupt_after_five
    with pytest.raises(KeyboardInterrupt):
        first.train()
    state = load_checkpoint(tmp_path / "ck.pt")
    assert state["step"] == 5 and state["epoch"] == 1 and state["position"] == 1

    resumed = _trainer(cfg, stack, meta, tmp_path / "ck.pt")
    resumed.load_state_dict(state)
    resumed.train()
    assert resumed.step == straight.step
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert resumed.history["loss"] == pytest.approx(straight.history["loss"], rel=1e-5)


def test_checkpoint_io_is_atomic_and_checked(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", {"x": torch.ones(2)})
    assert torch.equal(load_checkpoint(p)["x"], torch.ones(2))
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(InputFileError, match="not a cryopose"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_text("hello")
    with pytest.raises(InputFileError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(InputFileError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")


def test_infer_poses_on_unseen_particles():
    stack, meta = _particles(64, 4)
    cfg = _config(epochs=1, symmetric_loss=True)
    tr = _trainer(cfg, stack, meta)
    tr.train()
    new_stack, new_meta = _particles(10, 99)
    ds = ParticleDataset(new_stack, new_meta, box_size=N_BOX, normalization=tr.dataset.normalization)
    inf = infer_poses(tr.model, ds, symmetric=True, batch_size=4)
    assert inf.rotmats.shape == (10, 3, 3)
    assert torch.allclose(inf.rotmats.transpose(1, 2) @ inf.rotmats, torch.eye(3).expand(10, 3, 3), atol=1e-5)
    assert inf.confidence.shape == (10,) and bool(((inf.confidence > 0) & (inf.confidence <= 1 + 1e-6)).all())
    assert inf.shifts_px is not None and torch.allclose(inf.shifts_px, torch.zeros(10, 2))
    # the chosen candidate is the best-fitting one: its residual is no worse than hypothesis 0's
    batch = ds.batch(np.arange(10))
    vft = tr.model.volume.prepare()
    tr.model.eval()  # inference uses the batch-norm running statistics
    with torch.no_grad():
        pred0 = tr.model.render(vft, tr.model.encode(batch.images).rotmats[:, :1], ctf=batch.ctf)
    r0 = fourier_residuals(pred0, centered_fft2(batch.images) / N_BOX, frequency_band_mask(N_BOX, N_BOX / 2))[:, 0]
    # (inference scores on the half-plane band: the same residual up to float rounding)
    assert bool((inf.residual <= r0 * (1 + 1e-4) + 1e-6).all())


def test_band_residuals_equal_rendered_residuals_with_ctf_and_shifts():
    """Inference scores candidates on the half-plane band; the numbers must equal the full-plane
    residuals of rendered predictions (Hermitian symmetry), with CTF, origins and corrections."""
    from cryopose.search.band import make_band
    from cryopose.training.trainer import _predict, band_residuals

    stack, meta = _particles(12, 5)
    meta = meta.replace(shifts_angstrom=torch.randn(12, 2, generator=torch.Generator().manual_seed(1)).double() * 6)
    cfg = _config()
    ds = ParticleDataset(stack, meta, box_size=N_BOX)
    model = build_model(cfg, box_size=N_BOX, pixel_size_angstrom=APIX)
    batch = ds.batch(np.arange(12))
    rot = random_rotations(12 * 3, generator=torch.Generator().manual_seed(2)).float().reshape(12, 3, 3, 3)
    corr = torch.randn(12, 3, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        vft = model.volume.prepare()
        full = fourier_residuals(_predict(model, vft, batch, rot, corr), centered_fft2(batch.images) / N_BOX,
                                 frequency_band_mask(N_BOX, N_BOX / 2))
        half = band_residuals(vft, batch, rot, corr, make_band(N_BOX))
    # float32 rounding of differences of similar numbers: a few 1e-4 relative
    assert torch.allclose(half, full, rtol=2e-3)
    # and the band is not trivially equal: a shift sign error would change the numbers a lot
    flipped = dataclasses.replace(batch, shifts_px=-batch.shifts_px)
    with torch.no_grad():
        wrong = band_residuals(vft, flipped, rot, corr, make_band(N_BOX))
    assert float((wrong - full).abs().max()) > 0.05


@pytest.mark.parametrize("shift_head", [False, True])
def test_winner_only_rendering_gives_the_full_best_candidate_gradients(shift_head):
    """The step scores every candidate without autograd and renders the winner again with it:
    loss and gradients (encoder, shift head and map) must equal those of rendering all."""
    from cryopose.training.trainer import _predict, candidate_poses

    stack, meta = _particles(24, seed=11)
    config = _config()
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, shift_head=shift_head))
    tr = _trainer(config, stack, meta)
    batch = tr.dataset.batch(np.arange(16))
    target = centered_fft2(batch.images) / N_BOX
    mask = frequency_band_mask(N_BOX, 0.4 * N_BOX)

    def grads(fast: bool):
        tr.model.zero_grad(set_to_none=True)
        rot, shifts = candidate_poses(tr.model, batch.images, symmetric=True)
        vft = tr.model.volume.prepare()
        if fast:
            loss, best = tr._best_candidate_loss(vft, batch, rot, shifts, target, mask)
        else:
            loss, best = best_candidate_loss(fourier_residuals(_predict(tr.model, vft, batch, rot, shifts), target, mask))
        loss.backward()
        return float(loss.detach()), best, {k: p.grad.clone() for k, p in tr.model.named_parameters() if p.grad is not None}

    tr.model.eval()  # batch-norm statistics fixed, so that both passes see the same encoder
    loss_all, best_all, g_all = grads(False)
    loss_fast, best_fast, g_fast = grads(True)
    assert loss_fast == pytest.approx(loss_all, rel=1e-5)
    assert torch.equal(best_fast, best_all)
    assert g_fast.keys() == g_all.keys() and len(g_all) > 4
    for k in g_all:
        assert torch.allclose(g_fast[k], g_all[k], rtol=1e-4, atol=1e-6 * float(g_all[k].abs().max()) + 1e-12), k


def test_automatic_working_box_and_epochs():
    from cryopose.pipelines.abinitio import resolve_config
    from cryopose.training.config import auto_epochs, auto_working_box

    assert auto_working_box(64, 5.53) == 36          # the demo's field of view (354 Å): ~10 Å pixels
    assert auto_working_box(128, 3.54) == 46         # β-gal at 128 px (453 Å)
    assert auto_working_box(256, 4.0) == 48          # large field of view: capped at 48 px
    assert auto_working_box(128, 1.2) == 32          # small one (154 Å): at least 32 px
    assert auto_working_box(24, 2.0) == 24           # never larger than the images
    assert [auto_epochs(n) for n in (300, 2000, 10_000, 20_000, 100_000, 10**6)] == [20, 20, 5, 3, 1, 1]
    stack, meta = _particles(40, seed=1)
    cfg = resolve_config(AbinitioConfig(), meta, stack.box_size)
    assert cfg.box_size == stack.box_size and cfg.training.epochs == 20  # 16-px images: their box
    explicit = AbinitioConfig(box_size=16, training=TrainingConfig(epochs=2))
    cfg = resolve_config(explicit, meta, stack.box_size)
    assert cfg.box_size == 16 and cfg.training.epochs == 2


def test_resume_refusal_names_each_differing_option():
    from cryopose.pipelines.abinitio import _differences

    then = {"box_size": 64, "training": {"epochs": 8, "batch_size": 8, "lr": 1e-3}, "model": {"n_hypotheses": 3}}
    now = {"box_size": 64, "training": {"epochs": 6, "batch_size": 4, "lr": 1e-3}, "model": {"n_hypotheses": 1}}
    assert _differences(then, now) == ["training.batch_size: 8 then, 4 now", "model.n_hypotheses: 3 then, 1 now"]
    assert _differences(then, then) == []


def test_polishing_box_grows_with_the_resolution():
    from cryopose.pipelines.polish import polishing_box

    assert polishing_box(128, 3.54, None) == 128 and polishing_box(128, 3.54, float("inf")) == 128
    assert polishing_box(128, 3.54, 30.0) == 44      # Nyquist 0.7 × 30 Å: 2·ceil(453 Å / 21 Å) = 44 px
    assert polishing_box(128, 3.54, 12.0) == 108
    assert polishing_box(128, 3.54, 7.08) == 128     # at Nyquist: the particles' box
    assert polishing_box(256, 1.0, 200.0) == 32      # never below 32 px
    assert polishing_box(24, 8.0, 100.0) == 24       # nor above the particles' box
    boxes = [polishing_box(128, 3.54, r) for r in (40, 30, 20, 15, 10, 8)]
    assert boxes == sorted(boxes)
