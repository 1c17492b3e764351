"""Symmetry axes of a map (:mod:`cryopose.reconstruction.symmetry_axes`): recovered frame,
pose convention, and agreement with ``relion_align_symmetry``."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from cryopose.fourier import fourier_downsample_volume
from cryopose.io.mrc import read_map, write_map
from cryopose.projection.real_space import rotate_volume
from cryopose.pipelines.demo import BETAGAL_MAP, BETAGAL_PIXEL_SIZE, bundled_path
from cryopose.projection import project
from cryopose.reconstruction.symmetry_axes import (aligned_rotmats, aligned_volume, find_symmetry_axes,
                                                   symmetry_score)
from cryopose.rotations import geodesic_distance_deg, random_rotations
from cryopose.symmetry import symmetry_operators

BOX = 32
APIX = BETAGAL_PIXEL_SIZE * 64 / BOX


@pytest.fixture(scope="module")
def betagal():
    """The bundled β-galactosidase map (D2, in RELION's D2 frame) at 32 px."""
    vol = torch.from_numpy(read_map(bundled_path(BETAGAL_MAP), pixel_size_angstrom=BETAGAL_PIXEL_SIZE).volume.copy())
    return fourier_downsample_volume(vol.double(), BOX)


def _turned(volume, seed):
    q = random_rotations(1, generator=torch.Generator().manual_seed(seed)).double()[0]
    return rotate_volume(volume, q), q


def _distance_to_normaliser(m: torch.Tensor) -> float:
    """Angle (degrees) from ``m`` to the nearest element of the octahedral group, the rotations
    that map D2's set of axes onto itself (any of them is a valid D2 frame)."""
    octa = symmetry_operators("O")
    return float(geodesic_distance_deg(m[None].expand(octa.shape[0], 3, 3), octa).min())


def test_the_bundled_map_is_in_relions_d2_frame(betagal):
    assert symmetry_score(betagal, "D2") > 0.99
    assert symmetry_score(betagal, "C4") < 0.8  # a group the map does not have scores clearly lower


@pytest.mark.parametrize("seed", [0])
def test_find_symmetry_axes_recovers_the_frame_of_a_turned_map(betagal, seed):
    turned, q = _turned(betagal, seed)
    assert symmetry_score(turned, "D2") < 0.8
    found = find_symmetry_axes(turned, APIX, "D2", resolution_angstrom=40.0)
    # W(x) = V'(R x) = V(qᵀ R x) is D2-symmetric iff qᵀ R maps D2's axes onto themselves
    assert _distance_to_normaliser(q.T @ found.rotation) < 2.0
    assert found.score > 0.95
    assert symmetry_score(aligned_volume(turned, found.rotation), "D2") > 0.95


def test_aligned_poses_give_the_same_projections(betagal):
    """A pose A of the map is A R of the aligned map: same images."""
    turned, _ = _turned(betagal, 2)
    r = random_rotations(1, generator=torch.Generator().manual_seed(7)).double()[0]
    poses = random_rotations(4, generator=torch.Generator().manual_seed(8)).float()
    a = project(turned.float(), poses)
    b = project(aligned_volume(turned.float(), r), aligned_rotmats(poses, r))
    for x, y in zip(a, b):
        assert float(torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1]) > 0.98


def test_c1_is_the_identity_and_bad_input_is_refused(betagal):
    found = find_symmetry_axes(betagal, APIX, "C1")
    assert torch.equal(found.rotation, torch.eye(3, dtype=torch.float64)) and found.score == 1.0
    with pytest.raises(ValueError, match="cube"):
        find_symmetry_axes(betagal[:, :, :30], APIX, "D2")
    with pytest.raises(ValueError, match="unknown symmetry"):
        find_symmetry_axes(betagal, APIX, "Q7")


@pytest.mark.relion
def test_agrees_with_relion_align_symmetry(betagal, tmp_path, relion):
    """RELION's ``relion_align_symmetry`` and cryopose put the same turned map into D2 frames
    that differ at most by an axis permutation (an element of the octahedral group)."""
    turned, _ = _turned(betagal, 3)
    write_map(tmp_path / "turned.mrc", turned.float(), APIX)
    subprocess.run([relion("relion_align_symmetry"), "--i", str(tmp_path / "turned.mrc"), "--sym", "D2",
                    "--o", str(tmp_path / "relion.mrc"), "--angpix", str(APIX), "--box_size", str(BOX),
                    "--keep_centre", "--nr_uniform", "1000"], check=True, capture_output=True, cwd=tmp_path)
    relion = torch.from_numpy(np.array(read_map(tmp_path / "relion.mrc").volume, dtype=np.float64))
    ours = aligned_volume(turned, find_symmetry_axes(turned, APIX, "D2", resolution_angstrom=40.0).rotation)
    # RELION's random start (not seedable) gave scores of 0.94-0.997 over repeated runs; ours 0.994
    relion_score = symmetry_score(relion, "D2")
    assert relion_score > 0.9
    assert symmetry_score(ours, "D2") > max(0.98, relion_score - 0.01)
    best = max(float(torch.corrcoef(torch.stack([rotate_volume(ours, g).flatten(), relion.flatten()]))[0, 1])
               for g in symmetry_operators("O"))
    assert best > 0.95
