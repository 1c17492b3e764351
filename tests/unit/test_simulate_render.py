"""SliceRenderer (the simulator's fast forward projector) equals cryopose.projection.project."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.ctf import CTFParams, compute_ctf
from cryopose.projection import prepare_volume_ft, project
from cryopose.rotations import random_rotations
from cryopose.simulate.render import SliceRenderer


def _case(n, pad, seed=0, k=60):
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(n, dtype=torch.float32) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.exp(-((x - 1.5) ** 2 + (y + 2) ** 2 + z**2) / 5.0) + 0.1 * torch.randn(n, n, n, generator=g)
    vft = prepare_volume_ft(vol, pad=pad)
    rot = random_rotations(k, generator=g).float()
    shifts = torch.randn(k, 2, generator=g) * 3
    ctf = CTFParams.create(defocus_u_angstrom=torch.rand(k, generator=g) * 2e4 + 5e3,
                           defocus_v_angstrom=torch.rand(k, generator=g) * 2e3 + 4e3, defocus_angle_deg=37.0,
                           phase_shift_deg=20.0)
    return vft, rot, shifts, ctf


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("n, pad", [(16, 2), (17, 2), (15, 3), (16, 3)])
@pytest.mark.parametrize("two_gather", [True, False], ids=["rows4", "plain"])
def test_render_equals_project(n, pad, two_gather):
    vft, rot, shifts, ctf = _case(n, pad)
    expected = project(vft, rot, shifts_px=shifts, ctf=compute_ctf(ctf, n, 2.0))
    renderer = SliceRenderer(vft, sub_batch=7, max_table_bytes=2**40 if two_gather else 0)
    got = renderer.render(rot, shifts_px=shifts, ctf=ctf, pixel_size_angstrom=2.0)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert _rel(got, expected) < 1e-5
    no_ctf = renderer.render(rot)
    assert _rel(no_ctf, project(vft, rot)) < 1e-5


def test_edge_correction_is_needed():
    """Without the outer-ring correction the images differ (even padded grids): the test bites."""
    vft, rot, shifts, _ = _case(16, 2)
    renderer = SliceRenderer(vft)
    renderer._ring = np.zeros(0, dtype=np.int64)
    assert _rel(renderer.render(rot, shifts_px=shifts), project(vft, rot, shifts_px=shifts)) > 1e-3


def test_ctf_params_need_pixel_size():
    vft, rot, _, ctf = _case(16, 2, k=3)
    with pytest.raises(ValueError, match="pixel_size"):
        SliceRenderer(vft).render(rot, ctf=ctf)
