"""``cryopose simulate`` on tiny data sets in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import yaml

from cryopose.cli.main import main
from cryopose.io.star import read_star

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BETAGAL = DATA / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"
PDB = DATA / "pdb" / "4ake_mdanalysis.pdb"


def test_simulate_tiny_map(tmp_path, capsys):
    out = tmp_path / "sim" / "particles"
    rc = main(["simulate", "--volume", str(BETAGAL), "--box-size", "24", "-n", "50", "-o", str(out),
               "--snr-db", "-10", "--shift-max-angstrom", "10", "--junk-fraction", "0.2", "--seed", "3",
               "--invert-contrast", "--defocus-range", "8000", "20000", "--astigmatism-angstrom", "300"])
    assert rc == 0
    assert "50 particles of 24 px" in capsys.readouterr().out
    star, stack, cfg = (out.with_name(f"particles{s}") for s in (".star", ".mrcs", "_config.yaml"))
    assert star.is_file() and stack.is_file() and cfg.is_file()
    with mrcfile.open(stack) as m:
        assert m.data.shape == (50, 24, 24)
        assert float(m.voxel_size.x) == pytest.approx(3.54 * 100 / 24, rel=1e-5)
    meta = read_star(star)
    assert len(meta) == 50 and meta.box_size == 24
    assert meta.table["rlnCryoposeIsOutlier"].sum() == 10
    assert (meta.table["rlnCryoposeInvertedContrast"] == 1).all()
    df = ((meta.ctf.defocus_u_angstrom + meta.ctf.defocus_v_angstrom) / 2).numpy()
    assert df.min() >= 8000 - 0.01 and df.max() <= 20000 + 0.01
    doc = yaml.safe_load(cfg.read_text())
    assert doc["command_line"].startswith("cryopose simulate") and doc["config"]["snr"] == pytest.approx(0.1)
    assert doc["result"]["noise_sigma"] > 0


def test_simulate_in_plane_defocus_values_from_model(tmp_path):
    out = tmp_path / "inplane"
    rc = main(["simulate", "-i", str(PDB), "--box-size", "24", "-n", "30", "-o", str(out), "--in-plane-only",
               "--view-rot-tilt", "10", "80", "--defocus-values", "1.0", "2.0", "3.0", "--no-progress",
               "--chains", "A"])
    assert rc == 0
    meta = read_star(out.with_suffix(".star"))
    values, counts = np.unique(np.round(meta.ctf.defocus_u_angstrom.numpy()), return_counts=True)
    np.testing.assert_array_equal(values, [10000, 20000, 30000])
    np.testing.assert_array_equal(counts, [10, 10, 10])
    d = meta.rotmats[:, 2, :].double()
    assert (d - d[0]).abs().max() < 1e-5
    with mrcfile.open(out.with_suffix(".mrcs")) as m:
        assert m.data.shape == (30, 24, 24) and np.abs(m.data).max() > 0


@pytest.mark.parametrize("extra, message", [
    (["--snr", "0.1", "--snr-db", "-10"], "either --snr or --snr-db"),
    (["--defocus-range", "20000", "10000"], "larger than its maximum"),
    (["--box-size", "0"], "--box-size"),
    (["--no-ctf", "--defocus-range", "1", "2"], "--no-ctf"),
    (["--junk-fraction", "0.2", "--junk-types", "other"], "--junk-structure"),
    (["--junk-fraction", "1.5"], "junk fraction"),
    (["--junk-fraction", "0.1", "--junk-types", "dust"], "unknown junk type"),
    (["--view-rot-tilt", "0", "90"], "--in-plane-only"),
    (["--chains", "A"], "not in a map"),
])
def test_bad_options_give_one_line_error(tmp_path, capsys, extra, message):
    rc = main(["simulate", "-i", str(BETAGAL), "-n", "5", "-o", str(tmp_path / "x")] + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("cryopose simulate: error:") and message in err
    assert not list(tmp_path.glob("x*"))


def test_missing_volume_is_a_one_line_error(tmp_path, capsys):
    rc = main(["simulate", "-i", str(tmp_path / "nothere.mrc"), "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "nothere.mrc" in err
