"""cryopose.simulate: images, ground truth, noise, CTF sampling, junk, files."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryopose.ctf import compute_ctf
from cryopose.errors import UserError
from cryopose.io.star import read_star
from cryopose.projection import project
from cryopose.rotations import rotmat_to_relion_euler
from cryopose.simulate import (SimulationConfig, load_volume, measure_snr, simulate_in_memory, simulate_particles,
                               snr_from_db, view_directions)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BETAGAL = DATA / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"
CTF_TABLE = DATA / "ctf_distributions" / "empiar10028_ctf_cryodrgn.npy"
BOX = 24


@pytest.fixture(scope="module")
def vol():
    return load_volume(BETAGAL, box_size=BOX)


def _sim(vol, n=40, seed=0, **kw):
    return simulate_in_memory(vol.volume, pixel_size_angstrom=vol.pixel_size_angstrom, n_particles=n,
                              config=SimulationConfig(**kw), generator=seed)


def test_noise_free_image_equals_projection(vol):
    images, meta = _sim(vol, n=12, shift_max_angstrom=20.0, astigmatism_angstrom=800.0, phase_shift_deg=30.0)
    ctf = compute_ctf(meta.ctf, BOX, vol.pixel_size_angstrom)
    expected = project(torch.from_numpy(vol.volume), meta.rotmats,
                       shifts_px=meta.shifts_angstrom / vol.pixel_size_angstrom, ctf=ctf)
    torch.testing.assert_close(images, expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
    assert meta.shifts_angstrom.abs().max() > 1.0  # the shifts are not trivially zero


def test_deterministic_given_seed(vol):
    a, ma = _sim(vol, seed=5, snr=0.5, shift_max_angstrom=5.0, junk_fraction=0.2)
    b, mb = _sim(vol, seed=5, snr=0.5, shift_max_angstrom=5.0, junk_fraction=0.2)
    c, _ = _sim(vol, seed=6, snr=0.5, shift_max_angstrom=5.0, junk_fraction=0.2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ma.rotmats, mb.rotmats, rtol=0, atol=0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("chunk_size", [200, 64])
def test_measured_snr_matches_request(vol, chunk_size):
    """SNR = mean signal variance / noise variance, within 10 % (σ calibrated on chunk 1)."""
    images, meta, clean = simulate_in_memory(
        vol.volume, pixel_size_angstrom=vol.pixel_size_angstrom, n_particles=200,
        config=SimulationConfig(snr=snr_from_db(-10.0), chunk_size=chunk_size), generator=1, return_clean=True)
    assert measure_snr(clean, images) == pytest.approx(0.1, rel=0.10)
    sigma = float(meta.table["rlnCryoposeNoiseSigma"].iloc[0])
    assert float(meta.table["rlnCryoposeSignalVariance"].mean()) / sigma**2 == pytest.approx(0.1, rel=0.10)
    assert (images - clean).std().item() == pytest.approx(sigma, rel=0.02)


def test_invert_contrast_negates_final_images(vol):
    a, _ = _sim(vol, seed=2, snr=1.0)
    b, meta = _sim(vol, seed=2, snr=1.0, invert_contrast=True)
    torch.testing.assert_close(b, -a, rtol=0, atol=0)
    assert (meta.table["rlnCryoposeInvertedContrast"] == 1).all()


def test_uniform_rotations_cover_the_sphere(vol):
    _, meta = _sim(vol, n=300, seed=3, apply_ctf=False)
    d = view_directions(meta.rotmats.double())
    assert d.mean(0).norm() < 0.2  # uniform directions average to ~0
    assert (d[:, 2] ** 2).mean().item() == pytest.approx(1 / 3, abs=0.07)


def test_in_plane_only_poses_share_the_view(vol):
    _, meta = _sim(vol, n=50, in_plane_only=True, view_rot_tilt_deg=(30.0, 70.0))
    d = view_directions(meta.rotmats.double())
    expected = torch.tensor([np.sin(np.radians(70)) * np.cos(np.radians(30)),
                             np.sin(np.radians(70)) * np.sin(np.radians(30)), np.cos(np.radians(70))])
    torch.testing.assert_close(d, expected.expand_as(d).double(), atol=1e-6, rtol=0)
    psi = rotmat_to_relion_euler(meta.rotmats.double())[:, 2]
    assert psi.max() - psi.min() > 270  # psi spread over the circle


def test_shifts_lie_in_the_disc(vol):
    _, meta = _sim(vol, n=200, shift_max_angstrom=12.0)
    r = meta.shifts_angstrom.norm(dim=1)
    assert r.max() <= 12.0 + 1e-4 and r.max() > 10.0
    assert (r < 12.0 / np.sqrt(2)).float().mean().item() == pytest.approx(0.5, abs=0.1)  # uniform by area


def test_defocus_range_and_astigmatism(vol):
    _, meta = _sim(vol, n=100, defocus_range_angstrom=(12000.0, 18000.0), astigmatism_angstrom=500.0)
    mean_df = (meta.ctf.defocus_u_angstrom + meta.ctf.defocus_v_angstrom) / 2
    assert mean_df.min() >= 12000 - 1e-2 and mean_df.max() <= 18000 + 1e-2
    torch.testing.assert_close(meta.ctf.defocus_u_angstrom - meta.ctf.defocus_v_angstrom,
                               torch.full((100,), 500.0), atol=1e-2, rtol=0)


def test_defocus_values_split_evenly(vol):
    values = (5000.0, 10000.0, 15000.0, 20000.0, 25000.0, 30000.0)
    _, meta = _sim(vol, n=62, apply_ctf=True, defocus_values_angstrom=values)
    du = meta.ctf.defocus_u_angstrom.numpy()
    np.testing.assert_array_equal(du, meta.ctf.defocus_v_angstrom.numpy())
    found, counts = np.unique(np.round(du), return_counts=True)
    np.testing.assert_array_equal(found, values)
    assert counts.max() - counts.min() <= 1


def test_ctf_table_rows_are_used(vol):
    table = np.load(CTF_TABLE)
    _, meta = _sim(vol, n=30, ctf_table_path=str(CTF_TABLE))
    du = meta.ctf.defocus_u_angstrom.numpy()
    table_du = np.maximum(table[:, 2], table[:, 3])
    assert all(np.isclose(table_du, v, rtol=1e-6).any() for v in du[:10])
    np.testing.assert_allclose(meta.ctf.voltage_kv.numpy(), 300.0)
    np.testing.assert_allclose(meta.ctf.spherical_aberration_mm.numpy(), 2.0)
    assert (meta.ctf.defocus_u_angstrom >= meta.ctf.defocus_v_angstrom).all()


def test_junk_labels_and_images(vol):
    n, frac = 100, 0.3
    images, meta, clean = simulate_in_memory(
        vol.volume, pixel_size_angstrom=vol.pixel_size_angstrom, n_particles=n,
        config=SimulationConfig(junk_fraction=frac, junk_types=("noise", "blob", "other", "offcentre"), snr=1.0),
        generator=4, junk_volume=np.flip(vol.volume, axis=0).copy(), return_clean=True)
    t = meta.table
    assert t["rlnCryoposeIsOutlier"].sum() == round(frac * n)
    assert ((t["rlnCryoposeJunkType"] != "none") == (t["rlnCryoposeIsOutlier"] == 1)).all()
    counts = t["rlnCryoposeJunkType"].value_counts()
    assert all(7 <= counts[k] <= 8 for k in ("noise", "blob", "other", "offcentre"))
    noise = np.flatnonzero(t["rlnCryoposeJunkType"] == "noise")
    assert clean[torch.from_numpy(noise)].abs().max() == 0  # pure noise
    off = np.flatnonzero(t["rlnCryoposeJunkType"] == "offcentre")
    r = meta.shifts_angstrom[torch.from_numpy(off)].norm(dim=1) / (BOX * vol.pixel_size_angstrom)
    assert r.min() >= 0.2 - 1e-4 and r.max() <= 0.3 + 1e-4
    good_var = t["rlnCryoposeSignalVariance"][~t["rlnCryoposeIsOutlier"].astype(bool)].mean()
    for kind in ("blob", "other"):  # scaled to the true particles' mean signal variance
        v = t["rlnCryoposeSignalVariance"][t["rlnCryoposeJunkType"] == kind]
        np.testing.assert_allclose(v, good_var, rtol=1e-3)


def test_other_junk_needs_a_structure(vol):
    with pytest.raises(UserError, match="junk-structure"):
        _sim(vol, junk_fraction=0.2, junk_types=("other",))


@pytest.mark.parametrize("kw", [dict(snr=0.0), dict(junk_fraction=1.0), dict(defocus_range_angstrom=(3.0, 1.0)),
                                dict(shift_max_angstrom=-1.0), dict(junk_types=("dust",))])
def test_bad_config(kw):
    with pytest.raises(UserError):
        SimulationConfig(**kw)


def test_files_round_trip_ground_truth(vol, tmp_path):
    """Streaming in chunks gives the in-memory result; the STAR reads back as the ground truth."""
    cfg = SimulationConfig(snr=0.2, shift_max_angstrom=8.0, junk_fraction=0.1, chunk_size=16)
    images, meta = simulate_in_memory(vol.volume, pixel_size_angstrom=vol.pixel_size_angstrom, n_particles=50,
                                      config=cfg, generator=9)
    result = simulate_particles(vol.volume, pixel_size_angstrom=vol.pixel_size_angstrom, n_particles=50, config=cfg,
                                generator=9, output=tmp_path / "sim.star")
    assert result.star_path == tmp_path / "sim.star" and result.stack_path == tmp_path / "sim.mrcs"
    with mrcfile.open(result.stack_path) as m:
        np.testing.assert_array_equal(m.data, images.numpy())
        assert float(m.voxel_size.x) == pytest.approx(vol.pixel_size_angstrom, rel=1e-5)
    back = read_star(result.star_path)
    assert len(back) == 50 and back.box_size == BOX
    assert back.pixel_size_angstrom == pytest.approx(vol.pixel_size_angstrom, rel=1e-6)
    torch.testing.assert_close(back.rotmats, meta.rotmats, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.shifts_angstrom, meta.shifts_angstrom, atol=1e-4, rtol=0)
    torch.testing.assert_close(back.ctf.defocus_u_angstrom, meta.ctf.defocus_u_angstrom, atol=1e-2, rtol=0)
    np.testing.assert_array_equal(back.image_indices, np.arange(50))
    for col in ("rlnCryoposeIsOutlier", "rlnCryoposeJunkType"):
        np.testing.assert_array_equal(back.table[col].to_numpy().astype(str), meta.table[col].to_numpy().astype(str))
    assert result.snr_achieved == pytest.approx(0.2, rel=0.10) and result.n_junk == 5


def test_no_ctf_writes_no_ctf(vol, tmp_path):
    cfg = SimulationConfig(apply_ctf=False)
    images, meta = simulate_in_memory(vol.volume, pixel_size_angstrom=vol.pixel_size_angstrom, n_particles=5,
                                      config=cfg, generator=0)
    assert meta.ctf is None
    expected = project(torch.from_numpy(vol.volume), meta.rotmats)
    torch.testing.assert_close(images, expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
    res = simulate_particles(vol.volume, pixel_size_angstrom=vol.pixel_size_angstrom, n_particles=5, config=cfg,
                             generator=0, output=tmp_path / "noctf")
    assert "rlnDefocusU" not in res.star_path.read_text()


def test_phase_flip_images_undoes_the_ctf_sign(vol):
    """Phase flipping noise-free CTF images brings them closer to the CTF-free projections (the
    CTF's sign is undone, its amplitude stays), flipping twice is the identity, and a CTF table of
    the wrong length is named in the error."""
    from cryopose.ctf import phase_flip_images

    kw = dict(defocus_range_angstrom=(60000.0, 90000.0))  # CTF zeros before Nyquist at 14.75 Å/px
    images, meta = _sim(vol, n=16, seed=2, apply_ctf=True, **kw)
    clean, _ = _sim(vol, n=16, seed=2, apply_ctf=False, **kw)
    flipped = phase_flip_images(images, meta.ctf, vol.pixel_size_angstrom, batch_size=5)

    def cc(a, b):
        a, b = a - a.mean((1, 2), keepdim=True), b - b.mean((1, 2), keepdim=True)
        return (a * b).sum((1, 2)) / (a.norm(dim=(1, 2)) * b.norm(dim=(1, 2)))

    assert float((cc(flipped, clean) - cc(images, clean)).min()) > 0.02
    twice = phase_flip_images(flipped, meta.ctf, vol.pixel_size_angstrom)
    torch.testing.assert_close(twice, images, atol=1e-5 * float(images.abs().max()), rtol=0)
    with pytest.raises(ValueError, match="16 images but CTF parameters for 3"):
        phase_flip_images(images, meta.ctf[torch.arange(3)], vol.pixel_size_angstrom)
