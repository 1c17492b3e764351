"""Preprocessing of raw particles: noise spectrum, whitening, RELION normalisation, centring
and contrast detection (:mod:`cryopose.data.preprocess`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryopose.data.dataset import ParticleDataset, TensorStack
from cryopose.data.preprocess import (centre_particles, estimate_noise_spectrum, radial_average,
                                      whitening_filter)
from cryopose.data.transforms import Normalization, background_mean, background_std, normalize
from cryopose.fourier import centered_fft2, centered_ifft2, fourier_downsample_volume, radial_index_2d
from cryopose.io.mrc import read_map
from cryopose.io.particles import ParticleMetadata
from cryopose.pipelines.demo import BETAGAL_MAP, BETAGAL_PIXEL_SIZE, bundled_path
from cryopose.simulate.simulator import SimulationConfig, simulate_in_memory

BOX = 32
APIX = BETAGAL_PIXEL_SIZE * 64 / BOX


def _coloured_noise(n_images: int, n: int, low_gain: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with power ∝ 1 + (low_gain − 1)·exp(−(|k| / (n/8))²) (cycles per box)."""
    white = torch.randn(n_images, n, n, generator=generator, dtype=torch.float64)
    r = radial_index_2d(n).double()
    amp = torch.sqrt(1.0 + (low_gain - 1.0) * torch.exp(-(r / (n / 8.0)) ** 2))
    return centered_ifft2(centered_fft2(white) * amp).real


def test_white_noise_spectrum_is_flat_at_the_pixel_variance():
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(400, BOX, BOX, generator=g, dtype=torch.float64)
    spec = estimate_noise_spectrum(x, pixel_size_angstrom=APIX)
    p = np.asarray(spec.power)
    assert p.shape == (BOX // 2 + 1,)
    assert np.allclose(p[1:], 4.0, rtol=0.15)
    assert spec.colour_ratio() == pytest.approx(1.0, abs=0.15)
    assert spec.frequencies_per_angstrom()[-1] == pytest.approx(0.5 / APIX)


def test_coloured_noise_is_measured_and_whitened():
    g = torch.Generator().manual_seed(1)
    x = _coloured_noise(400, BOX, 4.0, g)
    spec = estimate_noise_spectrum(x, pixel_size_angstrom=APIX)
    assert spec.colour_ratio() > 2.5  # 4× at k → 0, less averaged over shells 1..n/8
    w = whitening_filter(spec, BOX)
    assert w.shape == (BOX, BOX) and bool((w > 0).all())
    white = centered_ifft2(centered_fft2(x) * w.double()).real
    after = estimate_noise_spectrum(white, pixel_size_angstrom=APIX)
    assert after.colour_ratio() == pytest.approx(1.0, abs=0.2)
    # the whitened noise keeps about the variance it had
    assert float(white.var()) == pytest.approx(float(x.var()), rel=0.35)


def test_whitening_filter_rejects_bad_spectra():
    with pytest.raises(ValueError, match="shells"):
        whitening_filter([1.0] * 5, BOX)
    with pytest.raises(ValueError, match="positive"):
        whitening_filter([1.0] * (BOX // 2) + [0.0], BOX)
    with pytest.raises(ValueError):
        estimate_noise_spectrum(torch.zeros(3, BOX, BOX), pixel_size_angstrom=APIX)


def test_radial_average_of_a_radial_function_recovers_it():
    r = radial_index_2d(BOX).double()
    prof = radial_average((r.round() ** 2)[None])[0]
    assert torch.allclose(prof, torch.arange(BOX // 2 + 1, dtype=torch.float64) ** 2)


def test_per_image_normalisation_is_relions():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, BOX, BOX, generator=g) * torch.linspace(0.5, 5.0, 10)[:, None, None] + 3.0
    norm = Normalization(std=1.0, per_image=True)
    y = normalize(x, norm)
    assert torch.allclose(background_mean(y), torch.zeros(10), atol=1e-5)
    assert torch.allclose(background_std(y), torch.ones(10), atol=1e-5)
    old = normalize(x, Normalization(std=2.0))  # encoders written before: one global scale
    assert torch.allclose(old * 2.0, x - background_mean(x)[:, None, None], atol=1e-5)


def _simulated(n: int, *, invert: bool, snr: float | None, shift_max_px: float, seed: int):
    vol = torch.from_numpy(read_map(bundled_path(BETAGAL_MAP), pixel_size_angstrom=BETAGAL_PIXEL_SIZE).volume.copy())
    small = fourier_downsample_volume(vol.double(), BOX).float()
    cfg = SimulationConfig(snr=snr, shift_max_angstrom=shift_max_px * APIX, invert_contrast=invert,
                           defocus_range_angstrom=(10000.0, 20000.0))
    images, meta = simulate_in_memory(small, pixel_size_angstrom=APIX, n_particles=n, config=cfg, generator=seed)
    return TensorStack(images), meta


@pytest.mark.parametrize("invert", [False, True])
def test_centring_finds_the_origins_and_the_contrast(invert):
    stack, meta = _simulated(300, invert=invert, snr=1.0, shift_max_px=5.0, seed=3)
    true_px = meta.shifts_angstrom / APIX
    ds = ParticleDataset(stack, meta, use_shifts=False, per_image=True, whiten=True)
    res = centre_particles(ds)
    assert res.contrast_sign == (-1 if invert else 1)
    assert (res.contrast_fraction < 0.2) if invert else (res.contrast_fraction > 0.8)
    err = (res.shifts_px - true_px).norm(dim=1)
    before = true_px.norm(dim=1)
    assert float(before.median()) > 2.5
    # to about a pixel (the rotational average's centre is not each view's centre exactly)
    assert float(err.median()) < 1.5, (float(err.median()), float(before.median()))


def test_dataset_whitens_images_and_ctfs_alike():
    stack, meta = _simulated(200, invert=False, snr=0.5, shift_max_px=0.0, seed=4)
    plain = ParticleDataset(stack, meta, per_image=True)
    white = ParticleDataset(stack, meta, per_image=True, whiten=True)
    assert plain.whitening is None and white.whitening is not None
    assert white.normalization.noise_power is not None
    idx = np.arange(8)
    b0, b1 = plain.batch(idx), white.batch(idx)
    assert torch.allclose(b1.ctf, b0.ctf * white.whitening, atol=1e-6)
    ft = centered_fft2(b0.images) * white.whitening
    assert torch.allclose(b1.images, centered_ifft2(ft).real, atol=1e-4)
    # the saved normalisation rebuilds the same data (as `predict` does from encoder.pt)
    again = ParticleDataset(stack, meta, normalization=white.normalization)
    assert torch.allclose(again.batch(idx).images, b1.images, atol=1e-5)
    white.invert_contrast()
    assert torch.allclose(white.batch(idx).images, -b1.images)


def test_whitening_without_ctf_gives_the_filter_as_ctf():
    g = torch.Generator().manual_seed(5)
    images = torch.randn(50, BOX, BOX, generator=g)
    meta = ParticleMetadata(pixel_size_angstrom=APIX, box_size=BOX, image_indices=np.arange(50))
    ds = ParticleDataset(TensorStack(images), meta, whiten=True)
    b = ds.batch(np.arange(4))
    assert b.ctf is not None and torch.allclose(b.ctf, ds.whitening.expand(4, -1, -1))
    assert math.isfinite(float(b.images.sum()))


def test_each_optics_group_is_whitened_with_its_own_spectrum():
    """Two optics groups, white and coloured background (as two detectors or doses): each group
    gets its own spectrum and comes out white, where one pooled spectrum leaves both coloured;
    the CTFs of a batch carry each particle's group filter, and a saved normalisation (as
    ``predict`` reads it from encoder.pt) rebuilds the same images."""
    import dataclasses

    g = torch.Generator().manual_seed(8)
    n_each = 200
    images = torch.cat([torch.randn(n_each, BOX, BOX, generator=g, dtype=torch.float64),
                        _coloured_noise(n_each, BOX, 6.0, g)]).float()
    groups = np.repeat([1, 2], n_each)
    meta = ParticleMetadata(pixel_size_angstrom=APIX, box_size=BOX, image_indices=np.arange(2 * n_each),
                            optics_group=groups)
    ds = ParticleDataset(TensorStack(images), meta, per_image=True, whiten=True)
    assert sorted(ds.noise_spectra_by_group) == [1, 2]
    assert ds.noise_spectra_by_group[2].colour_ratio() > 2.5 > 1.3 > ds.noise_spectra_by_group[1].colour_ratio()
    for grp in (1, 2):
        idx = np.flatnonzero(groups == grp)
        after = estimate_noise_spectrum(ds.images(idx), pixel_size_angstrom=APIX)
        assert after.colour_ratio() == pytest.approx(1.0, abs=0.2), grp
    pooled = ParticleDataset(TensorStack(images), meta.replace(optics_group=None), per_image=True, whiten=True)
    assert pooled.noise_spectra_by_group == {}
    ratios = [estimate_noise_spectrum(pooled.images(np.flatnonzero(groups == grp)),
                                      pixel_size_angstrom=APIX).colour_ratio() for grp in (1, 2)]
    assert ratios[0] < 0.8 and ratios[1] > 1.3  # one spectrum for both: over- and under-whitened
    b = ds.batch(np.array([0, n_each]))
    assert torch.allclose(b.ctf[0], ds.whitening_for([0])[0]) and not torch.allclose(b.ctf[0], b.ctf[1])
    again = ParticleDataset(TensorStack(images), meta, normalization=ds.normalization)
    assert torch.allclose(again.images(np.arange(0, 2 * n_each, 37)), ds.images(np.arange(0, 2 * n_each, 37)),
                          atol=1e-5)
    saved = dataclasses.asdict(ds.normalization)
    assert Normalization(**saved) == ds.normalization
    with pytest.raises(ValueError, match="pooled"):
        Normalization(std=1.0, group_noise_power=((1, (1.0, 1.0)),))
