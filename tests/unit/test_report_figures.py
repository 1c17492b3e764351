"""The asymmetric unit drawn on the viewing-direction plot: its area and that the poses mapped
into it by ``asymmetric_unit_mates`` fall inside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.report.figures import asymmetric_unit_map, plot_angular_distribution
from cryopose.rotations import quaternion_to_rotmat
from cryopose.symmetry import asymmetric_unit_mates, expand_by_symmetry, symmetry_order


@pytest.mark.parametrize("symbol", ["C1", "C4", "D2", "D7", "T", "O"])
def test_asymmetric_unit_map_covers_one_over_the_group_order(symbol):
    rot = np.linspace(-180, 180, 721)[:-1] + 0.25
    tilt = np.linspace(0, 180, 361)[:-1] + 0.25
    inside = asymmetric_unit_map(symbol, rot, tilt)
    weight = np.sin(np.radians(tilt))[:, None] * np.ones_like(inside, dtype=float)
    area = float((inside * weight).sum() / weight.sum())
    assert area == pytest.approx(1 / symmetry_order(symbol), rel=0.02)


def _inside(symbol, directions):
    rot = torch.rad2deg(torch.atan2(directions[:, 1], directions[:, 0])).numpy()
    tilt = torch.rad2deg(torch.arccos(directions[:, 2].clamp(-1, 1))).numpy()
    return np.array([asymmetric_unit_map(symbol, [r], [t])[0, 0] for r, t in zip(rot, tilt)])


def test_poses_mapped_into_the_unit_lie_inside_the_outline(tmp_path):
    q = torch.randn(300, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rotmats = quaternion_to_rotmat(q / q.norm(dim=1, keepdim=True))
    mates = asymmetric_unit_mates(rotmats, "D2")
    assert _inside("D2", mates[:, 2, :]).all()
    # of each pose's four D2 mates exactly one views from inside the outline
    every = expand_by_symmetry(rotmats, "D2")  # (N, 4, 3, 3)
    counts = _inside("D2", every[:, :, 2, :].reshape(-1, 3)).reshape(-1, 4).sum(axis=1)
    assert (counts == 1).all()
    a = plot_angular_distribution(mates, tmp_path / "d2.png", symmetry="D2")
    b = plot_angular_distribution(mates, tmp_path / "c1.png", symmetry="C1")
    assert a.read_bytes() != b.read_bytes() and a.stat().st_size > 1000
