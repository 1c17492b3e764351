"""Run diagnostics (:mod:`cryopose.metrics.diagnostics`): view coverage and the warnings."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.metrics.diagnostics import (N_VIEW_BINS, UNDERSAMPLED_WARN, run_warnings,
                                          sampling_compensation_factor, view_coverage)
from cryopose.rotations import random_rotations, relion_euler_to_rotmat
from cryopose.symmetry import asymmetric_unit_mates


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


def _cap(n: int, half_angle_deg: float, g: torch.Generator) -> torch.Tensor:
    """``n`` poses whose viewing directions are uniform on a cap around z, psi uniform."""
    cos_t = 1 - torch.rand(n, generator=g, dtype=torch.float64) * (1 - math.cos(math.radians(half_angle_deg)))
    eul = torch.stack([360 * torch.rand(n, generator=g, dtype=torch.float64), torch.rad2deg(torch.acos(cos_t)),
                       360 * torch.rand(n, generator=g, dtype=torch.float64)], dim=1)
    return relion_euler_to_rotmat(eul)


def test_fourier_sampling_uniform_preferred_missing_and_folded_views():
    """Baldwin & Lyumkis's SCF is 1 for uniform views and lower for a preferred view among
    uniform ones, which miss no direction; views within 50° of one axis leave the Fourier
    directions within 40° of it unsampled (1 − cos 40° = 23 % of them) and warn, though the
    view bins alone look well covered; uniform poses folded into D2's asymmetric unit miss a
    few directions (below the warning), into O's many (a warning that names --symmetry), and
    the point group's mates restore both."""
    g = torch.Generator().manual_seed(1)
    uniform = random_rotations(4000, generator=g, dtype=torch.float64)
    cov = view_coverage(uniform)
    assert cov.scf > 0.98 and cov.undersampled_fraction == 0
    # 40 % within 10° of one view, the rest uniform (the realistic benchmark's views)
    mixed = view_coverage(torch.cat([_cap(1600, 10.0, g), uniform[:2400]]))
    assert 0.5 < mixed.scf < 0.9 and mixed.undersampled_fraction == 0
    assert not run_warnings(coverage=mixed)
    collapsed = view_coverage(_cap(4000, 50.0, g))
    assert collapsed.scf < 0.05 and collapsed.covered_fraction > 0.2  # the bin count alone misses it
    assert collapsed.undersampled_fraction == pytest.approx(1 - math.cos(math.radians(40)), abs=0.04)
    assert any("Fourier directions" in w for w in run_warnings(coverage=collapsed))
    folded_d2 = view_coverage(asymmetric_unit_mates(uniform, "D2"))
    assert folded_d2.undersampled_fraction < UNDERSAMPLED_WARN
    assert not any("Fourier directions" in w for w in run_warnings(coverage=folded_d2))
    folded_o = view_coverage(asymmetric_unit_mates(uniform, "O"))
    assert any("--symmetry" in w and "Fourier directions" in w for w in run_warnings(coverage=folded_o))
    for sym in ("D2", "O"):
        assert view_coverage(asymmetric_unit_mates(uniform, sym), sym).undersampled_fraction == 0
        assert sampling_compensation_factor(asymmetric_unit_mates(uniform, sym), sym) > 0.98
    with pytest.raises(ValueError, match="rotmats"):
        sampling_compensation_factor(torch.zeros(0, 3, 3))


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
