"""Centring a map on its density (``cryopose.reconstruction.centring``): moving the map by ``−c``
and the origins by ``−(R c)_xy`` leaves every particle image unchanged."""

from __future__ import annotations

import pytest
import torch

from cryopose.projection import project
from cryopose.reconstruction.centring import density_centre_px, recentred_origins_angstrom, shift_volume
from cryopose.rotations import random_rotations
from cryopose.simulate.volumes import load_volume

BOX = 24
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def akvol(shared_data):
    m = load_volume(shared_data / "pdb" / "4ake_mdanalysis.pdb", box_size=BOX)
    return torch.tensor(m.volume).double(), m.pixel_size_angstrom


def test_shift_volume_moves_the_density_centre(akvol):
    vol, _ = akvol
    c0 = density_centre_px(vol)
    s = torch.tensor([2.0, -1.5, 1.0], dtype=torch.float64)
    moved = shift_volume(vol, s)
    assert torch.allclose(density_centre_px(moved) - c0, s, atol=0.15)
    back = shift_volume(moved, -s)  # sub-pixel: exact but for the Nyquist planes of an even box
    assert (back - vol).norm() / vol.norm() < 0.05
    whole = shift_volume(vol, torch.tensor([2.0, -1.0, 3.0]))  # whole pixels: a periodic roll
    assert torch.allclose(whole, torch.roll(vol, shifts=(3, -1, 2), dims=(0, 1, 2)), atol=1e-9)
    with pytest.raises(ValueError, match="cubic"):
        density_centre_px(vol[:, :, :-1])


def test_recentred_origins_show_the_centred_map_as_the_old_origins_showed_the_map(akvol):
    vol, apix = akvol
    g = torch.Generator().manual_seed(3)
    rot = random_rotations(20, generator=g).float()
    origins_px = (torch.rand(20, 2, generator=g) - 0.5) * 4
    off = shift_volume(vol, torch.tensor([3.0, -2.0, 1.5], dtype=torch.float64)).float()  # an off-centre map
    seen = project(off, rot, shifts_px=origins_px)
    c = density_centre_px(off)
    centred = shift_volume(off.double(), -c).float()
    new = recentred_origins_angstrom(rot, origins_px * apix, c * apix) / apix
    again = project(centred, rot, shifts_px=new)
    err = (again - seen).norm() / seen.norm()
    assert err < 0.02, err
    wrong = project(centred, rot, shifts_px=origins_px)  # without moving the origins: not the same images
    assert (wrong - seen).norm() / seen.norm() > 10 * err
    assert torch.allclose(recentred_origins_angstrom(rot, None, torch.zeros(3)), torch.zeros(20, 2))


def test_rotate_volume_turns_about_the_centre_as_symmetrize_volume_samples():
    """``rotate_volume`` (``V'(x) = V(gᵀ x)``): a quarter turn about z on an odd box is a
    clockwise ``rot90`` of the (y, x) planes, and a turn and its inverse give the map back."""
    from cryopose.models.volume import rotate_volume
    from cryopose.rotations import axis_angle_to_rotmat

    g = torch.Generator().manual_seed(1)
    vol = torch.rand(15, 15, 15, generator=g, dtype=torch.float64)
    quarter = axis_angle_to_rotmat(torch.tensor([0.0, 0.0, torch.pi / 2], dtype=torch.float64))
    assert torch.allclose(rotate_volume(vol, quarter), torch.rot90(vol, -1, dims=(1, 2)), atol=1e-9)
    k = torch.arange(15, dtype=torch.float64) - 7
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    blob = torch.exp(-((x - 2) ** 2 + (y + 1) ** 2 + z ** 2) / 8.0)  # smooth, off the axis
    turn = axis_angle_to_rotmat(torch.tensor([0.3, -0.5, 0.7], dtype=torch.float64))
    back = rotate_volume(rotate_volume(blob, turn), turn.T)
    assert (back - blob).norm() / blob.norm() < 0.12  # two trilinear resamplings
    assert (rotate_volume(blob, turn) - blob).norm() / blob.norm() > 0.3
