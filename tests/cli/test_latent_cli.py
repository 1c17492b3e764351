"""``cryopose latent train`` / ``latent analyze`` on a tiny simulated in-plane set in a temporary folder."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from cryopose.cli.main import main
from cryopose.io.star import read_star

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BETAGAL = DATA / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    sim = root / "sim" / "p"
    assert main(["simulate", "--volume", str(BETAGAL), "--box-size", "24", "-n", "128", "-o", str(sim),
                 "--in-plane-only", "--view-rot-tilt", "30", "60", "--defocus-values", "1.0", "2.0",
                 "--junk-fraction", "0.25", "--junk-types", "noise,blob", "--seed", "2", "--no-progress"]) == 0
    run = root / "run"
    assert main(["latent", "train", str(sim.with_suffix(".star")), "-o", str(run), "--epochs", "2",
                 "--train-box", "0", "--lambda-gan", "0.05", "--no-progress"]) == 0
    return sim.with_suffix(".star"), run


def test_train_writes_checkpoint_history_config(trained):
    star, run = trained
    for name in ("checkpoint.pt", "history.json", "config.yaml"):
        assert (run / name).is_file(), name
    hist = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and all(np.isfinite(h["loss"]) for h in hist)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["command_line"].startswith("cryopose latent train") and cfg["config"]["batch_size"] == 16
    assert Path(cfg["particles"]) == star.absolute()
    # a second train into the same folder needs --resume; --resume with more epochs continues
    assert main(["latent", "train", str(star), "-o", str(run), "--epochs", "2", "--train-box", "0"]) == 2
    assert main(["latent", "train", str(star), "-o", str(run), "--epochs", "3", "--train-box", "0",
                 "--lambda-gan", "0.05", "--resume", "--no-progress"]) == 0
    assert len(json.loads((run / "history.json").read_text())) == 3


def test_analyze_writes_star_metrics_and_figures(trained, capsys, monkeypatch):
    star, run = trained
    monkeypatch.chdir(run.parent)  # the user's folder, which holds the stacks
    assert main(["latent", "analyze", str(run), "--outlier-features", "posterior+rec", "--contamination", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "weighted angle rMSE" in out and "outlier AUC" in out
    meta = read_star(run / "latent_particles.star")
    t = meta.table
    assert len(meta) == 128
    for col in ("rlnCryoposeOutlierScore", "rlnCryoposeOutlierScoreIsolationForest", "rlnCryoposeLatentRadius",
                "rlnCryoposeInputAnglePsi", "rlnCryoposeLatentDefocusAngst", "rlnCryoposeIsOutlier"):
        assert col in t.columns, col
    # the estimated defocus is one of the known values and went into rlnDefocusU/V
    assert set(np.round(t["rlnCryoposeLatentDefocusAngst"].unique())) <= {10000.0, 20000.0}
    assert np.allclose(meta.ctf.defocus_u_angstrom.numpy(), t["rlnCryoposeLatentDefocusAngst"].to_numpy(), atol=0.1)
    assert set(np.round(t["rlnCryoposeInputDefocusU"].unique())) == {10000.0, 20000.0}
    doc = json.loads((run / "analysis.json").read_text())
    m = doc["metrics"]
    assert {"angle_rmse_weighted_deg", "defocus_rmse_um", "outlier_auc"} <= set(m)
    assert m["angle_source"] == "equivariant planes" and m["angle_branch_from"] in ("first plane", "images")
    assert 0.0 <= min(m["outlier_auc"].values()) <= 1.0
    for png in ("latent_pca.png", "roc.png", "angle_hexbin.png", "defocus_hexbin.png"):
        p = run / png
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_analyze_without_reference_and_errors(trained, tmp_path, capsys, monkeypatch):
    star, run = trained
    monkeypatch.chdir(run.parent)
    out_star = tmp_path / "est.star"
    assert main(["latent", "analyze", str(run), "--particles", str(star), "--no-reference", "--no-figures",
                 "--defocus-range", "0.5", "3.0", "-o", str(out_star), "--symmetry-order", "2"]) == 0
    meta = read_star(out_star)
    psi = meta.table["rlnAnglePsi"].to_numpy() % 360
    assert np.all(psi < 180.0 + 1e-6)  # modulo 360/k
    capsys.readouterr()
    assert main(["latent", "analyze", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint.pt not found" in err
    assert main(["latent", "train", str(star), "-o", str(tmp_path / "x"), "--latent-dim", "2"]) == 2
    assert main(["latent", "train", str(star), "-o", str(tmp_path / "y"), "--latent-dim", "3",
                 "--equivariance-order-2", "2"]) == 2  # a second plane needs L >= 5
    assert main(["latent", "analyze", str(run), "--particles", str(star), "--no-figures", "--angle-from", "pca",
                 "-o", str(tmp_path / "pca.star")]) == 0
    assert json.loads((run / "analysis.json").read_text())["metrics"]["angle_source"] == "pca"


@pytest.mark.relion
def test_relion_reads_the_output_star(trained, monkeypatch):
    star, run = trained
    monkeypatch.chdir(run.parent)
    out = run / "latent_particles.star"
    if not out.is_file():
        assert main(["latent", "analyze", str(run), "--no-figures"]) == 0
    exe = shutil.which("relion_star_printtable")
    assert exe, "relion_star_printtable not on PATH (apt-get install -y relion)"
    res = subprocess.run([exe, str(out), "data_particles", "rlnAnglePsi", "rlnDefocusU", "rlnCryoposeOutlierScore"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = [r.split() for r in res.stdout.strip().splitlines()]
    assert len(rows) == 128 and all(len(r) == 3 for r in rows)
    ours = read_star(out).table
    assert np.allclose([float(r[0]) for r in rows], ours["rlnAnglePsi"].to_numpy(), atol=1e-4)


def test_train_with_hyperparameter_search(trained, tmp_path):
    pytest.importorskip("optuna", reason="Optuna is the optional extra cryopose[hpo]")
    star, _ = trained
    run = tmp_path / "hpo"
    assert main(["latent", "train", str(star), "-o", str(run), "--epochs", "1", "--train-box", "0",
                 "--hpo-trials", "2", "--hpo-epochs", "1", "--no-progress"]) == 0
    trials = json.loads((run / "hpo_trials.json").read_text())
    assert len(trials) == 2 and {"learning_rate", "lambda_reg", "lambda_gan", "extra_decoder_depth"} <= set(trials[0])
    assert (run / "checkpoint.pt").is_file()

