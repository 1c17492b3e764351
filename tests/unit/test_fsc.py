"""Fourier shell correlation, resolution estimates and the FSC plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryopose.fourier import centered_fft3, radial_index_3d
from cryopose.metrics.fsc import (
    first_crossing,
    fourier_shell_correlation,
    fsc_report,
    plot_fsc,
    resolution_at,
)


def _blob(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, n, n, generator=g, dtype=torch.float64)
    # smooth it a little so that all shells carry power but not equally
    ft = centered_fft3(v) * torch.exp(-(radial_index_3d(n).double() / (0.3 * n)) ** 2)
    return torch.fft.ifftn(torch.fft.ifftshift(ft)).real


@pytest.mark.parametrize("n", [16, 17])
def test_fsc_of_a_map_with_itself_is_one(n):
    v = _blob(n)
    freq, fsc = fourier_shell_correlation(v, v, pixel_size_angstrom=2.0)
    assert fsc.shape == freq.shape == (n // 2 + 1,)
    assert torch.allclose(fsc, torch.ones_like(fsc), atol=1e-12)
    assert freq[1].item() == pytest.approx(1 / (n * 2.0))
    # a real positive scale changes nothing; a sign flips it
    assert torch.allclose(fourier_shell_correlation(v, 3.5 * v)[1], torch.ones_like(fsc), atol=1e-12)
    assert torch.allclose(fourier_shell_correlation(v, -v)[1], -torch.ones_like(fsc), atol=1e-12)


def test_fsc_of_independent_noise_is_near_zero():
    n = 32
    g = torch.Generator().manual_seed(1)
    a = torch.randn(n, n, n, generator=g, dtype=torch.float64)
    b = torch.randn(n, n, n, generator=g, dtype=torch.float64)
    _, fsc = fourier_shell_correlation(a, b)
    # a shell of radius s holds ~4πs² coefficients (half of them independent): |FSC| ~ 1/sqrt(2πs²)
    s = torch.arange(n // 2 + 1, dtype=torch.float64)
    assert (fsc[3:].abs() < 4.0 / torch.sqrt(2 * math.pi * s[3:] ** 2)).all(), fsc
    assert abs(float(fsc[3:].mean())) < 0.05


@pytest.mark.parametrize("n", [12, 13])
def test_fsc_matches_a_direct_full_transform_computation(n):
    a, b = _blob(n, 2), _blob(n, 3) + 0.5 * _blob(n, 2)
    fa, fb = centered_fft3(a), centered_fft3(b)
    shell = torch.round(radial_index_3d(n)).long()
    expected = []
    for s in range(n // 2 + 1):
        m = shell == s
        num = (fa[m] * fb[m].conj()).real.sum()
        expected.append(float(num / torch.sqrt((fa[m].abs() ** 2).sum() * (fb[m].abs() ** 2).sum())))
    _, fsc = fourier_shell_correlation(a, b)
    np.testing.assert_allclose(fsc.numpy(), expected, atol=1e-10)


def test_mask_is_applied_to_both_maps():
    n = 16
    a = _blob(n, 4)
    noise = torch.randn(n, n, n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mask = torch.zeros(n, n, n, dtype=torch.float64)
    mask[4:12, 4:12, 4:12] = 1
    b = a + noise * (1 - mask)  # differs only outside the mask
    _, fsc_masked = fourier_shell_correlation(a, b, mask=mask)
    _, fsc_plain = fourier_shell_correlation(a, b)
    assert torch.allclose(fsc_masked, torch.ones_like(fsc_masked), atol=1e-12)
    assert fsc_plain[1:].min() < 0.99


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="different shapes"):
        fourier_shell_correlation(torch.zeros(8, 8, 8), torch.zeros(10, 10, 10))
    with pytest.raises(ValueError, match="cube"):
        fourier_shell_correlation(torch.zeros(8, 8, 9), torch.zeros(8, 8, 9))


def test_resolution_at_interpolates_the_first_crossing():
    freq = np.arange(11) / (20 * 2.0)  # n = 20, 2 Å/px: Nyquist 0.25 1/Å
    fsc = np.array([1.0, 0.95, 0.9, 0.8, 0.6, 0.4, 0.3, 0.6, 0.1, 0.05, 0.0])
    # 0.5 is crossed between shells 4 (0.6) and 5 (0.4): halfway
    f05, crossed = first_crossing(fsc, freq, 0.5)
    assert crossed and f05 == pytest.approx(4.5 / 40)
    assert resolution_at(fsc, freq, 0.5) == pytest.approx(40 / 4.5)
    # 0.143 first crossed between shells 7 (0.6) and 8 (0.1), not at the dip of shell 6
    assert resolution_at(fsc, freq, 0.143) == pytest.approx(1 / ((7 + 0.457 / 0.5) / 40))
    # never crossed: Nyquist, flagged
    f, crossed = first_crossing(np.ones(11), freq, 0.143)
    assert not crossed and f == pytest.approx(0.25)
    assert resolution_at(np.ones(11), freq, 0.143) == pytest.approx(4.0)
    # the DC shell is ignored even if it is low
    assert first_crossing(np.array([0.0, 1.0, 0.2]), np.array([0, 1, 2.0]), 0.5)[0] == pytest.approx(1 + 0.5 / 0.8)


def test_fsc_report_keys_and_units():
    n = 16
    a = _blob(n, 6)
    b = a + 0.3 * torch.randn(n, n, n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rep = fsc_report(a.numpy(), b.numpy(), 3.0)
    assert rep["pixel_size_angstrom"] == 3.0 and rep["nyquist_angstrom"] == 6.0 and rep["box_size"] == n
    assert len(rep["fsc_curve"]) == n // 2 + 1
    assert set(rep["fsc_curve"][0]) == {"frequency_per_angstrom", "fsc"}
    assert rep["fsc_curve"][-1]["frequency_per_angstrom"] == pytest.approx(1 / 6.0)
    assert 6.0 <= rep["resolution_fsc0p143_angstrom"] <= rep["resolution_fsc0p5_angstrom"]
    assert isinstance(rep["fsc0p5_crossed"], bool) and rep["masked"] is False


def test_plot_fsc_writes_an_image(tmp_path):
    freq = np.arange(9) / 32.0
    out = plot_fsc({"a": (freq, np.linspace(1, 0, 9)), "b": (torch.from_numpy(freq), torch.linspace(1, 0.2, 9))},
                   tmp_path / "fsc.png", title="test")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
