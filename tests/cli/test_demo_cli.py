"""``cryopose demo`` in a tiny configuration (64 particles, 1 epoch, 16-px working box)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryopose.cli.main import main
from cryopose.io.mrc import read_map
from cryopose.pipelines.demo import BETAGAL_MAP, BETAGAL_PIXEL_SIZE, CTF_TABLE, bundled_path


def test_bundled_data_are_present_and_documented():
    m = read_map(bundled_path(BETAGAL_MAP))
    assert m.volume.shape == (64, 64, 64)
    assert m.pixel_size_angstrom == pytest.approx(BETAGAL_PIXEL_SIZE, rel=1e-4)
    table = np.load(bundled_path(CTF_TABLE))
    assert table.shape == (20000, 9) and table.dtype == np.float32
    assert (table[:, 2] > 5000).all() and (table[:, 5] == 300).all()
    source = bundled_path("SOURCE.md").read_text()
    assert "MIT" in source and "CC0" in source and BETAGAL_MAP in source and CTF_TABLE in source


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "-o", str(out), "--n-particles", "64", "--epochs", "1", "--box-size", "16",
               "--threads", "1", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "median" in text and "known poses" in text and "FSC=0.143" in text
    summary = json.loads((out / "demo_summary.json").read_text())
    for key in ("median_pose_error_deg", "mean_pose_error_deg", "abinitio_fsc0p143_angstrom",
                "known_pose_fsc0p143_angstrom", "seconds"):
        assert key in summary
    assert 0 <= summary["median_pose_error_deg"] <= 180
    assert summary["known_pose_fsc0p143_angstrom"] < 60  # known poses: a real map even from 64 images
    for name in ("particles.star", "particles.mrcs", "map_aligned.mrc", "map_known_poses.mrc",
                 "fsc_vs_truth.png", "config.yaml", "abinitio/poses.star", "abinitio/map.mrc",
                 "abinitio/encoder.pt", "abinitio/report.html"):
        assert (out / name).is_file(), name
    assert main(["demo", "-o", str(out), "--n-particles", "64", "--epochs", "1"]) == 2  # refuses to overwrite


def test_demo_rejects_bad_sizes(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "d"), "--n-particles", "3"]) == 2
    assert main(["demo", "-o", str(tmp_path / "d"), "--box-size", "128"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 2 and all(ln.startswith("cryopose demo: error:") for ln in err)
