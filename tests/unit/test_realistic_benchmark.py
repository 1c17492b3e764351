"""The data generator of ``benchmarks/realistic.py`` (``benchmarks/realistic_data.py``) on a tiny
case: relion_project makes the images, the method's STAR has no origins, and the shifts, views,
SNR and noise spectrum are the requested ones."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

N, BOX, SNR = 48, 32, 0.1


@pytest.fixture(scope="module")
def rd():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("realistic_data")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def made(rd, tmp_path_factory, request):
    relion = request.getfixturevalue("relion")
    request.getfixturevalue("shared_data")
    relion("relion_project")
    work = tmp_path_factory.mktemp("realistic")
    st = rd.STRUCTURES["betagal"]
    out = {row: rd.make_dataset(st, row, SNR, N, BOX, 0, work, log=lambda *_: None) for row in ("all", "ideal")}
    return work, st, out


def _labels(star: Path) -> set[str]:
    return {ln.split()[0][1:] for ln in star.read_text().splitlines() if ln.startswith("_rln")}


def test_method_star_has_no_poses_or_origins(made):
    from cryopose.io.star import read_star

    _, _, out = made
    d = Path(out["all"]["dir"])
    labels = _labels(d / "particles.star")
    assert not labels & {"rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginX", "rlnOriginY", "rlnAngleRot"}
    meta = read_star(d / "particles.star")
    assert meta.shifts_angstrom is None and meta.rotmats is None and meta.ctf is not None
    assert meta.pixel_size_angstrom == pytest.approx(3.54 * 128 / BOX) and meta.box_size == BOX
    truth = read_star(d / "truth.star")
    assert truth.shifts_angstrom is not None and truth.rotmats is not None
    assert float(truth.shifts_angstrom.abs().max()) > 0
    ideal = read_star(Path(out["ideal"]["dir"]) / "particles.star")  # centred, zero origins given
    assert ideal.shifts_angstrom is not None and float(ideal.shifts_angstrom.abs().max()) == 0


def test_images_are_relion_project_output(made, relion, tmp_path):
    work, st, out = made
    d = Path(out["all"]["dir"])
    geom = Path(out["all"]["relion_project_input"])
    clean = Path(out["all"]["clean_stack"])
    assert json.loads(clean.with_suffix(".done").read_text())["command"][0] == "relion_project"
    subprocess.run([relion("relion_project"), "--i", out["all"]["truth_map"], "--o", str(tmp_path / "again"),
                    "--ang", str(geom), "--ctf"], check=True, capture_output=True)
    np.testing.assert_allclose(mrcfile.read(tmp_path / "again.mrcs"), mrcfile.read(clean), rtol=0, atol=1e-6)
    with mrcfile.open(d / "particles.mrcs") as m:
        assert m.data.shape == (N, BOX, BOX)
        assert float(m.voxel_size.x) == pytest.approx(out["all"]["pixel_size_angstrom"], rel=1e-5)


def test_snr_and_noise_spectrum(made, rd):
    _, _, out = made
    for row, coloured in (("all", True), ("ideal", False)):
        m = out[row]
        d = Path(m["dir"])
        sigma = m["noise_sigma"]
        clean = mrcfile.read(m["clean_stack"]).astype(np.float64)
        noise = mrcfile.read(d / "particles.mrcs").astype(np.float64) * sigma - clean
        snr = clean.reshape(N, -1).var(axis=1).mean() / noise.var()
        assert snr == pytest.approx(SNR, rel=0.05) and m["snr_measured"] == pytest.approx(snr, rel=1e-3)
        apix = m["pixel_size_angstrom"]
        edges = np.linspace(0, 0.5 / apix, 6)
        got = rd.radial_power(noise / sigma, apix, edges)
        want = rd.radial_power_of_filter(rd.noise_power_spectrum(BOX, apix, rd.DataSpec(), coloured, rfft=False),
                                         apix, edges)
        np.testing.assert_allclose(got, want, rtol=0.15)
        if coloured:  # P(k) ∝ 1 + 3 exp(-(k/k0)^2): 4x at k = 0, 1x at high k
            p = rd.noise_power_spectrum(BOX, apix, rd.DataSpec(), True, rfft=False)
            k_corner = math.sqrt(2) * 0.5 / apix  # cycles/Å
            expected = 4.0 / (1 + 3 * math.exp(-((k_corner / rd.DataSpec().noise_k0_per_angstrom) ** 2)))
            assert p[0, 0] / p[BOX // 2, BOX // 2] == pytest.approx(expected, rel=1e-9)
            assert got[0] / got[-1] == pytest.approx(want[0] / want[-1], rel=0.2) and got[0] / got[-1] > 2


def test_shifts_and_views_are_as_requested(rd):
    st = rd.STRUCTURES["betagal"]
    spec = rd.DataSpec()
    geo = rd.draw_geometry(st, 20000, 128, 0, spec)
    assert geo["shifts_px"].std(axis=0) == pytest.approx([4.0, 4.0], rel=0.03)
    assert geo["preferred"].mean() == pytest.approx(0.4, abs=1e-4)
    tilt = geo["euler_preferred"][:, 1]
    assert tilt[geo["preferred"]].max() <= 10.0 + 1e-6
    uniform_in_cap = (1 - math.cos(math.radians(10))) / 2
    assert (tilt <= 10).mean() == pytest.approx(0.4 + 0.6 * uniform_in_cap, abs=0.01)
    # the uniform set: cos(tilt) uniform in [-1, 1], psi uniform
    cos_t = np.cos(np.radians(geo["euler_uniform"][:, 1]))
    assert abs(cos_t.mean()) < 0.02 and cos_t.var() == pytest.approx(1 / 3, rel=0.03)
    assert np.array_equal(geo["euler_preferred"][~geo["preferred"]], geo["euler_uniform"][~geo["preferred"]])


def test_scoring_fits_the_map_translation_in_the_methods_frame():
    """``realistic._fit_translation``: an off-centre map of a D2 particle, seen through poses that
    are random symmetry mates of the truth, is one translation in the method's frame (residual
    zero) and not one in the truth's frame."""
    import torch

    sys.path.insert(0, str(BENCH))
    try:
        realistic = importlib.import_module("realistic")
    finally:
        sys.path.remove(str(BENCH))
    from cryopose.rotations import random_rotations
    from cryopose.symmetry import symmetry_operators

    g = torch.Generator().manual_seed(0)
    r_true = random_rotations(300, generator=g).double()
    ops = symmetry_operators("D2", dtype=torch.float64)
    r_est = r_true @ ops[torch.randint(len(ops), (300,), generator=g)]  # the same images (D2 map)
    t = np.array([1.5, -8.0, 2.5])
    d = r_est.numpy()[:, :2, :] @ t
    fit, resid = realistic._fit_translation(r_est.numpy(), d)
    assert np.allclose(fit, t) and resid.max() < 1e-9
    _, resid_truth_frame = realistic._fit_translation(r_true.numpy(), d)
    assert np.median(resid_truth_frame) > 2.0
