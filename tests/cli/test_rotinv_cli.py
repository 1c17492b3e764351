"""``cryopose rotinv train`` / ``rotinv predict`` on a tiny simulated set in a temporary folder."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryopose.cli.main import main
from cryopose.io.star import read_star

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BETAGAL = DATA / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def particles(tmp_path_factory):
    sim = tmp_path_factory.mktemp("rotinv") / "p"
    assert main(["simulate", "--volume", str(BETAGAL), "--box-size", "24", "-n", "96", "-o", str(sim),
                 "--no-ctf", "--snr", "1", "--seed", "4", "--no-progress"]) == 0
    return sim.with_suffix(".star")


@pytest.mark.parametrize("model", ["rotinv", "spatial-vae"])
def test_train_and_predict(particles, tmp_path, model, capsys, relion, monkeypatch):
    monkeypatch.chdir(particles.parent)  # the user's folder, which holds the stacks
    run = tmp_path / model
    extra = ["--hidden", "32"] if model == "spatial-vae" else ["--channels", "4", "--content-dim", "4"]
    assert main(["rotinv", "train", str(particles), "-o", str(run), "--model", model, "--epochs", "2",
                 "--batch-size", "32", "--box", "16", "--no-progress", *extra]) == 0
    for name in ("checkpoint.pt", "history.json", "config.yaml"):
        assert (run / name).is_file(), name
    assert len(json.loads((run / "history.json").read_text())) == 2
    assert main(["rotinv", "predict", str(run), "--psi-reference", "10"]) == 0
    assert "predicted 96 in-plane angles" in capsys.readouterr().out
    meta = read_star(run / "rotinv_particles.star")
    t = meta.table
    assert len(meta) == 96 and {"rlnCryoposeRotInvTheta", "rlnCryoposeInputAnglePsi"} <= set(t.columns)
    # rlnAnglePsi = reference − θ̂ (modulo 360)
    d = (t["rlnAnglePsi"].to_numpy() - (10.0 - t["rlnCryoposeRotInvTheta"].to_numpy()) + 180.0) % 360.0 - 180.0
    assert np.abs(d).max() < 1e-3
    with mrcfile.open(run / "canonical.mrcs") as m:
        assert m.data.shape == (96, 16, 16)
        assert float(m.voxel_size.x) == pytest.approx(3.54 * 100 / 24 * 24 / 16, rel=1e-4)
    # RELION 3.1 reads the written STAR: the same psi in every row
    res = subprocess.run([relion("relion_star_printtable"), str(run / "rotinv_particles.star"), "data_particles",
                          "rlnAnglePsi"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    psi = [float(v) for v in res.stdout.split()]
    assert len(psi) == 96 and np.allclose(psi, t["rlnAnglePsi"].to_numpy(), atol=1e-4)


def test_errors_are_one_line(particles, tmp_path, capsys):
    assert main(["rotinv", "train", str(particles), "-o", str(tmp_path / "a"), "--box", "20"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "divisible by 8" in err
    assert main(["rotinv", "train", str(particles), "-o", str(tmp_path / "b"), "--lambda-angle", "0",
                 "--lambda-vector", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lambda_angle and lambda_vector are both 0" in err
    assert main(["rotinv", "predict", str(tmp_path / "none")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
