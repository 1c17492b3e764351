"""Run diagnostics (:mod:`cryopose.metrics.diagnostics`): view coverage and the warnings."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.metrics.diagnostics import N_VIEW_BINS, run_warnings, view_coverage
from cryopose.rotations import random_rotations


def test_uniform_views_cover_the_sphere_and_one_view_does_not():
    g = torch.Generator().manual_seed(0)
    uniform = random_rotations(5000, generator=g, dtype=torch.float64)
    cov = view_coverage(uniform)
    assert cov.n_directions == 5000
    assert cov.expected_fraction == pytest.approx(1 - math.exp(-5000 / N_VIEW_BINS))
    assert cov.covered_fraction > 0.95 * cov.expected_fraction
    assert cov.top_bin_fraction < 0.05
    one = torch.eye(3, dtype=torch.float64).expand(5000, 3, 3)
    col = view_coverage(one)
    assert col.covered_fraction < 0.01 and col.top_bin_fraction == pytest.approx(1.0)
    assert any("collapsed" in w for w in run_warnings(coverage=col))
    assert not run_warnings(coverage=cov)
    # symmetry mates count: D2 quadruples the directions
    assert view_coverage(uniform[:100], "D2").n_directions == 400


def test_warnings_name_what_to_change():
    assert any("Nyquist" in w for w in run_warnings(resolution_angstrom=40.0, pixel_size_angstrom=3.0))
    assert not run_warnings(resolution_angstrom=7.0, pixel_size_angstrom=3.0)
    assert any("do not correlate" in w for w in run_warnings(resolution_angstrom=float("inf"),
                                                                pixel_size_angstrom=3.0))
    at_bound = torch.tensor([[4.0, 0.0]] * 10 + [[0.1, 0.1]] * 10)
    assert any("bound" in w for w in run_warnings(shift_corrections_px=at_bound, max_shift_px=4.0))
    assert not run_warnings(shift_corrections_px=at_bound[10:], max_shift_px=4.0)
    assert any("--invert-contrast" in w for w in run_warnings(contrast_fraction_bright=0.5))
    assert not run_warnings(contrast_fraction_bright=0.97)
    with pytest.raises(ValueError):
        view_coverage(torch.zeros(0, 3, 3))
