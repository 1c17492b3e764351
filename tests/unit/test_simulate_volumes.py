"""cryopose.simulate.volumes: map resampling and atomic model → electron density."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryopose.conventions import PixelSizeError
from cryopose.errors import InputFileError, UserError
from cryopose.fourier import fourier_downsample_volume
from cryopose.simulate.volumes import crop_or_pad_volume, load_volume, model_to_density, resample_volume

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BETAGAL = DATA / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"
PDB = DATA / "pdb" / "4ake_mdanalysis.pdb"


@pytest.fixture(scope="module")
def betagal():
    return mrcfile.read(BETAGAL).astype(np.float32)


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_box_only_fourier_crops_and_keeps_field_of_view(betagal):
    vol = load_volume(BETAGAL, box_size=40)
    assert vol.volume.shape == (40, 40, 40) and vol.volume.dtype == np.float32
    assert vol.pixel_size_angstrom == pytest.approx(3.54 * 100 / 40)
    expected = fourier_downsample_volume(torch.from_numpy(betagal.astype(np.float64)), 40).numpy()
    np.testing.assert_allclose(vol.volume, expected, atol=1e-5 * np.abs(expected).max())


def test_pixel_only_keeps_field_of_view():
    vol = load_volume(BETAGAL, pixel_size_angstrom=7.08)
    assert vol.volume.shape == (50, 50, 50)
    assert vol.pixel_size_angstrom == pytest.approx(7.08)


def test_same_pixel_crops_and_pads_around_origin(betagal):
    small = load_volume(BETAGAL, box_size=60, pixel_size_angstrom=3.54).volume
    np.testing.assert_array_equal(small, betagal[20:80, 20:80, 20:80])
    big = crop_or_pad_volume(betagal, 111)
    assert big[55, 55, 55] == betagal[50, 50, 50] and big[0].sum() == 0


def test_non_integer_ratio_matches_fourier_crop(betagal):
    """The Fourier-series resampling (non-integer ratio) agrees with Fourier cropping."""
    exact = load_volume(BETAGAL, box_size=48).volume  # 100 → 48 px: integer ratio
    apix = 3.54 * 100 / 48 * (1 + 2e-3)  # 47.9 px over the field of view: non-integer
    approx = resample_volume(betagal, 3.54, apix, 48)
    assert _ncc(exact, approx) > 0.999


def test_non_integer_ratio_keeps_constants_and_zero_pads():
    const = np.ones((20, 20, 20), dtype=np.float32)
    down = resample_volume(const, 1.0, 1.3, 16)
    np.testing.assert_allclose(down, 1.0, atol=1e-6)  # 16 × 1.3 Å = 20.8 Å > 20 Å, but inside at 8 ± 7.5
    up = resample_volume(const, 1.0, 0.7, 40)
    assert up[20, 20, 20] == pytest.approx(1.0, abs=1e-6) and up[0, 0, 0] == 0.0


def test_zero_header_pixel_size_needs_explicit_value(tmp_path, betagal):
    path = tmp_path / "nopix.mrc"
    with mrcfile.new(path) as m:
        m.set_data(betagal[::4, ::4, ::4].copy())
        m.voxel_size = 0.0
    with pytest.raises(PixelSizeError):
        load_volume(path, box_size=20)
    vol = load_volume(path, input_pixel_size_angstrom=14.16, box_size=20)
    assert vol.pixel_size_angstrom == pytest.approx(14.16 * 25 / 20)


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError):
        load_volume(BETAGAL, box_size=0)
    bad = tmp_path / "map.txt"
    bad.write_text("x")
    with pytest.raises(InputFileError):
        load_volume(bad)


@pytest.fixture(scope="module")
def model_density():
    return model_to_density(PDB, box_size=40, pixel_size_angstrom=3.0)


def test_model_density_centre_of_mass_at_origin(model_density):
    vol = model_density.volume
    assert vol.shape == (40, 40, 40) and model_density.pixel_size_angstrom == 3.0
    assert vol.min() >= 0 and vol.max() > 0
    z, y, x = np.indices(vol.shape)
    w = vol / vol.sum()
    com = np.array([(w * x).sum(), (w * y).sum(), (w * z).sum()])
    np.testing.assert_allclose(com, 20.0, atol=0.25)  # n // 2; density- vs mass-weighted centre differ a little


def test_model_density_units_are_scattering_factor_per_volume(model_density):
    """∫ρ dV equals the sum of the atoms' electron scattering factors f_e(0) (Å) within 1 %."""
    import gemmi

    st = gemmi.read_structure(str(PDB))
    st.remove_waters()
    total = sum(sum(a.element.c4322.a) for ch in st[0] for res in ch for a in res)
    integral = model_density.volume.sum() * model_density.pixel_size_angstrom**3
    assert integral == pytest.approx(total, rel=0.01)


def test_chain_selection_keeps_one_copy_of_the_dimer():
    """4AKE holds two adenylate kinase chains: chain A alone carries about half the scattering of
    the file, centred on its own centre of mass; an unknown chain and chains of a map are errors."""
    both = model_to_density(PDB, box_size=40, pixel_size_angstrom=3.0)
    one = model_to_density(PDB, box_size=40, pixel_size_angstrom=3.0, chains=["A"])
    ratio = one.volume.sum() / both.volume.sum()
    assert 0.4 < ratio < 0.6
    z, y, x = np.indices(one.volume.shape)
    w = one.volume / one.volume.sum()
    np.testing.assert_allclose([(w * x).sum(), (w * y).sum(), (w * z).sum()], 20.0, atol=0.25)
    assert _ncc(one.volume, both.volume) < 0.9  # not the dimer
    with pytest.raises(InputFileError, match="chain.*Z.*not in the model"):
        model_to_density(PDB, box_size=40, pixel_size_angstrom=3.0, chains=["Z"])
    with pytest.raises(UserError, match="not in a map"):
        load_volume(BETAGAL, box_size=32, chains=["A"])


def test_model_density_is_not_axis_permuted(tmp_path):
    """A model elongated along x gives a map elongated along the last (x) axis."""
    pdb = tmp_path / "line.pdb"
    lines = [f"ATOM  {i + 1:5d}  CA  ALA A{i + 1:4d}    {x:8.3f}{0.0:8.3f}{5.0:8.3f}  1.00 20.00           C"
             for i, x in enumerate(np.arange(-15.0, 15.1, 3.0))]
    pdb.write_text("\n".join(lines) + "\nEND\n")
    vol = model_to_density(pdb, box_size=32, pixel_size_angstrom=1.5).volume
    spread = [np.count_nonzero(vol.sum(axis=tuple(a for a in range(3) if a != ax)) > 1e-3 * vol.sum())
              for ax in range(3)]
    assert spread[2] > spread[0] + 10 and spread[2] > spread[1] + 10


def test_model_default_grid_fits_with_margin():
    vol = load_volume(PDB)
    n, apix = vol.volume.shape[-1], vol.pixel_size_angstrom
    assert n >= 128 and apix >= 1.0
    edge = vol.volume[[0, -1]].sum() + vol.volume[:, [0, -1]].sum() + vol.volume[..., [0, -1]].sum()
    assert edge < 1e-3 * vol.volume.sum()  # nothing reaches the box edge


def test_model_too_big_for_box_is_an_error():
    with pytest.raises(UserError, match="does not fit"):
        model_to_density(PDB, box_size=16, pixel_size_angstrom=2.0)
