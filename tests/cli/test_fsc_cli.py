"""``cryopose fsc`` on small maps in a temporary folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryopose.cli.main import main
from cryopose.io.mrc import write_map


def _maps(tmp_path, n=16, apix=2.5):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n, n)).astype(np.float32)
    b = (a + 0.5 * rng.standard_normal((n, n, n))).astype(np.float32)
    write_map(tmp_path / "a.mrc", a, apix)
    write_map(tmp_path / "b.mrc", b, apix)
    return tmp_path / "a.mrc", tmp_path / "b.mrc"


def test_fsc_json(tmp_path, capsys):
    a, b = _maps(tmp_path)
    assert main(["fsc", str(a), str(b), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object
    rep = json.loads(out)
    assert rep["pixel_size_angstrom"] == pytest.approx(2.5) and rep["nyquist_angstrom"] == pytest.approx(5.0)
    assert len(rep["fsc_curve"]) == 9 and rep["fsc_curve"][0]["frequency_per_angstrom"] == 0.0
    assert rep["fsc_curve"][3]["fsc"] == pytest.approx(0.8, abs=0.1)  # 1 / sqrt(1.25)
    # white signal + 0.5 white noise: FSC ~0.89 everywhere, never crosses 0.5
    assert rep["fsc0p5_crossed"] is False and rep["resolution_fsc0p5_angstrom"] == pytest.approx(5.0)


def test_fsc_summary_plot_and_mask(tmp_path, capsys):
    a, b = _maps(tmp_path)
    mask = np.zeros((16, 16, 16), dtype=np.float32)
    mask[4:12, 4:12, 4:12] = 1
    write_map(tmp_path / "mask.mrc", mask, 2.5)
    plot = tmp_path / "fsc.png"
    assert main(["fsc", str(a), str(b), "--mask", str(tmp_path / "mask.mrc"), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "FSC = 0.5" in out and "FSC = 0.143" in out and "Nyquist" in out and "mask" in out
    assert plot.is_file() and plot.stat().st_size > 1000
    assert main(["fsc", str(a), str(a), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert all(p["fsc"] == pytest.approx(1.0) for p in rep["fsc_curve"])


def test_fsc_of_maps_that_differ_names_both_files(tmp_path, capsys):
    a, _ = _maps(tmp_path)
    rng = np.random.default_rng(1)  # not constant: a constant map is refused on its own
    write_map(tmp_path / "big.mrc", rng.standard_normal((20, 20, 20)).astype(np.float32), 2.5)
    write_map(tmp_path / "other_pixel.mrc", rng.standard_normal((16, 16, 16)).astype(np.float32), 3.0)
    for other, what in (("big.mrc", "size"), ("other_pixel.mrc", "pixel size")):
        assert main(["fsc", str(a), str(tmp_path / other)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and what in err
        assert str(a) in err and other in err
    # an explicit pixel size overrides disagreeing headers
    assert main(["fsc", str(a), str(tmp_path / "other_pixel.mrc"), "--pixel-size", "2.5", "--json"]) == 0


def test_fsc_of_a_constant_map_is_refused(tmp_path, capsys):
    """An all-zero map has no FSC (it printed "inf Å" and exited 0): one clear line, exit 2."""
    rng = np.random.default_rng(0)
    write_map(tmp_path / "a.mrc", rng.standard_normal((16, 16, 16)).astype(np.float32), 2.0)
    write_map(tmp_path / "zero.mrc", np.zeros((16, 16, 16), np.float32), 2.0)
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "zero.mrc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zero.mrc" in err[0] and "constant" in err[0]
