"""Ab initio by expectation-maximisation over a pose grid (:mod:`cryopose.search.marginal`):
from random poses it finds the map and the poses of an asymmetric particle, with and without
an origin search, and in a point group; bad input is refused."""

from __future__ import annotations

import pytest
import torch

from cryopose.ctf import CTFParams, compute_ctf
from blobs import blob_volume  # tests/unit/blobs.py
from cryopose.metrics.pose_error import align_rotations
from cryopose.projection import prepare_volume_ft, project
from cryopose.rotations import random_rotations
from cryopose.search.marginal import marginal_ab_initio

N = 24
APIX = 6.0

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _volume(seed: int) -> torch.Tensor:
    """A particle without symmetry (:func:`blobs.blob_volume`)."""
    return blob_volume(torch.Generator().manual_seed(seed), N)


def _particles(n: int, seed: int, *, shift_px: int = 0, snr: float = 1.0):
    """CTF-modulated projections with white noise at ``snr`` (signal variance over the box),
    integer origins within ±``shift_px``."""
    g = torch.Generator().manual_seed(seed)
    vol = _volume(seed)
    rot = random_rotations(n, generator=g)
    du = 12000 + 8000 * torch.rand(n, generator=g, dtype=torch.float64)
    ctf = CTFParams.create(defocus_u_angstrom=du, defocus_v_angstrom=du - 300, defocus_angle_deg=30.0)
    sh = torch.randint(-shift_px, shift_px + 1, (n, 2), generator=g).double()
    clean = project(vol, rot, ctf=compute_ctf(ctf, N, APIX).double(), shifts_px=sh)
    noise = torch.randn(clean.shape, generator=g, dtype=torch.float64) * (clean.var() / snr).sqrt()
    return (clean + noise).float(), ctf, rot, sh


def _median_error(found: torch.Tensor, truth: torch.Tensor, symmetry: str = "C1") -> float:
    return float(align_rotations(found.double(), truth, symmetry=symmetry, seed=0).errors_deg.median())


def test_random_poses_converge_to_the_particles_poses():
    """Origins known: the poses come out at the grid's resolution (15°: a median error near 7°
    from the grid alone), the posteriors sharpen over the iterations, the origins are kept."""
    images, ctf, rot, sh = _particles(400, seed=3, snr=0.3)
    out = marginal_ab_initio(images, ctf, APIX, shifts_angstrom=sh * APIX, iterations=8, seed=0)
    assert _median_error(out.rotmats, rot) < 10.0
    assert out.max_weights[0] < 0.2 and out.max_weights[-1] > 0.8
    assert torch.allclose(out.shifts_angstrom, (sh * APIX).float())
    assert out.reconstruction.volume.shape == (N, N, N) and len(out.resolutions_angstrom) == 8
    assert out.resolutions_angstrom[0] == pytest.approx(40.0) and out.resolutions_angstrom[-1] == pytest.approx(17.14,
                                                                                                               abs=0.01)


def test_the_most_probable_hypothesis_is_the_true_pose_and_origin():
    """The E-step's likelihood against the true map: for grid poses and lattice origins (RELION
    sign), with the CTF, the best of the grid × lattice hypotheses is the particle's own, in
    the point group's asymmetric unit too."""
    from cryopose.fourier import centered_fft2
    from cryopose.search.band import make_band
    from cryopose.search.grids import asymmetric_so3_grid, shift_lattice
    from cryopose.search.marginal import GRID_STEP_DEG, _e_step

    vol = _volume(2).float()
    band = make_band(N, N * APIX / 15.0)
    lattice = shift_lattice(3.0, 1.0)
    g = torch.Generator().manual_seed(0)
    for symmetry in ("C1", "D2"):
        grid = asymmetric_so3_grid(GRID_STEP_DEG, symmetry)
        j = torch.randint(0, grid.shape[0], (40,), generator=g)
        s = torch.randint(0, lattice.shape[0], (40,), generator=g)
        ctf = CTFParams.create(defocus_u_angstrom=12000 + 8000 * torch.rand(40, generator=g, dtype=torch.float64))
        c = compute_ctf(ctf, N, APIX).float()
        images = project(vol, grid[j], ctf=c, shifts_px=lattice[s])
        x = centered_fft2(images).reshape(40, -1)[:, band.flat_index]
        values, top_j, top_s, scale = _e_step(x, c.reshape(40, -1)[:, band.flat_index], prepare_volume_ft(vol), grid,
                                              lattice, band, torch.ones(len(band)))
        assert torch.equal(top_j[:, 0], j) and torch.equal(top_s[:, 0], s)
        assert scale == pytest.approx(1.0, rel=1e-3) and bool((values[:, 0] > values[:, 1]).all())


def test_bad_input_is_refused():
    images, ctf, _, _ = _particles(4, seed=0)
    with pytest.raises(ValueError, match="images must be"):
        marginal_ab_initio(images[0], ctf, APIX)
    with pytest.raises(ValueError, match="iterations"):
        marginal_ab_initio(images, ctf, APIX, iterations=0)
    with pytest.raises(ValueError, match="resolutions"):
        marginal_ab_initio(images, ctf, APIX, final_resolution_angstrom=0.0)
    with pytest.raises(ValueError, match="initial_noise_factor"):
        marginal_ab_initio(images, ctf, APIX, initial_noise_factor=0.5)
