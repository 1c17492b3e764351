"""Heterogeneity on tiny data sets: ``simulate`` mixtures and morphs, ``heterogeneity train`` /
``analyze`` in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryopose.cli.main import main
from cryopose.io.star import read_star

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MAP_D = DATA / "maps" / "10076_classD_32.mrc"
MAP_E = DATA / "maps" / "10076_classE_32.mrc"
OTHER = DATA / "maps" / "EMD-3197.map"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_simulate_discrete_mixture(tmp_path, capsys):
    out = tmp_path / "mix"
    rc = main(["simulate", "--map", str(MAP_D), "--map", str(MAP_E), "--map-pixel-size", "13.1",
               "--class-fractions", "0.7,0.3", "-n", "40", "--snr", "0.5", "-o", str(out), "--no-progress"])
    assert rc == 0
    meta = read_star(out.with_suffix(".star"))
    assert len(meta) == 40 and meta.box_size == 32
    assert np.bincount(meta.table["rlnCryoposeTrueClass"].to_numpy()).tolist() == [0, 28, 12]
    assert "rlnClassNumber" not in meta.table


def test_simulate_morph_records_t(tmp_path):
    out = tmp_path / "morph"
    rc = main(["simulate", "--morph", str(MAP_D), str(MAP_E), "--map-pixel-size", "13.1", "-n", "30",
               "-o", str(out), "--no-ctf"])
    assert rc == 0
    t = read_star(out.with_suffix(".star")).table["rlnCryoposeTrueMorph"].to_numpy()
    assert t.shape == (30,) and t.min() >= 0 and t.max() <= 1 and t.std() > 0.1


@pytest.mark.parametrize("extra, message", [
    (["--map", str(MAP_D), "--map", str(OTHER)],
     "must share one frame: .*10076_classD_32.mrc is 32 px.*EMD-3197.map is 20 px"),
    (["--map", str(MAP_D), "--map", str(MAP_E), "--class-fractions", "0.5,0.3,0.2"], "3 fractions for 2 structure"),
    (["--morph", str(MAP_D), str(MAP_E), "--class-fractions", "0.5,0.5"], "--class-fractions is for a discrete"),
])
def test_simulate_mixture_bad_input(tmp_path, capsys, extra, message):
    import re

    rc = main(["simulate", *extra, "--map-pixel-size", "13.1", "-n", "10", "-o", str(tmp_path / "bad")])
    assert rc == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "bad.star").exists()


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """150 particles of two EMPIAR-10076 states (60/40) at SNR 2, 32 px."""
    out = tmp_path_factory.mktemp("het") / "mix"
    rc = main(["simulate", "--map", str(MAP_D), "--map", str(MAP_E), "--map-pixel-size", "13.1",
               "--class-fractions", "0.6,0.4", "-n", "150", "--snr", "2", "-o", str(out), "--seed", "4"])
    assert rc == 0
    return out.with_suffix(".star")


def _train(star, outdir, *extra):
    return main(["heterogeneity", "train", str(star), "-o", str(outdir), "--zdim", "2", "--no-progress",
                 "--threads", "1", *extra])


def test_train_and_analyze(mixture, tmp_path, capsys):
    import json

    run = tmp_path / "run"
    assert _train(mixture, run, "--epochs", "4") == 0
    info = json.loads((run / "heterogeneity.json").read_text())
    assert info["variant"] == "pose-aware" and info["zdim"] == 2 and info["n_particles"] == 150
    assert info["particles"] == str(mixture)
    latents = np.load(run / "latents.npy")
    assert latents.shape == (150, 2) and latents.dtype == np.float32
    import torch

    state = torch.load(run / "model.pt", weights_only=True)
    assert state["model"]["basis"].shape == (2, 32, 32, 32)
    assert (run / "config.yaml").is_file() and (run / "checkpoint.pt").is_file()
    rc = main(["heterogeneity", "analyze", str(run), "--true-map", str(MAP_D), "--true-map", str(MAP_E),
               "--true-map-pixel-size", "13.1", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    assert summary["n_classes"] >= 1 and f"{summary['n_classes']} class(es)" in out
    assert summary["scores"]["all"]["nmi"] > 0.5
    assert len(summary["fsc_vs_true_maps"]) >= 1
    original = read_star(mixture).table.set_index("rlnImageName")
    for k in range(summary["n_classes"]):
        sub = read_star(run / "analysis" / f"class_{k + 1:03d}.star", datadir=mixture.parent)
        assert (sub.table["rlnClassNumber"] == k + 1).all()
        rows = original.loc[sub.table["rlnImageName"].to_numpy()]
        assert np.allclose(rows["rlnDefocusU"].to_numpy(), sub.table["rlnDefocusU"].to_numpy())
        assert np.allclose(rows["rlnAngleRot"].to_numpy(), sub.table["rlnAngleRot"].to_numpy(), atol=1e-4)
        assert (run / "analysis" / f"class_{k + 1:03d}_half2.mrc").is_file()
    assert sum(summary["class_sizes"]) + summary["n_noise"] == 150
    assert (run / "analysis" / "consensus.mrc").is_file() and (run / "analysis" / "report.html").is_file()
    assert main(["heterogeneity", "analyze", str(run)]) == 2  # no overwrite without --force
    assert "--force" in capsys.readouterr().err


def test_resume_continues_and_refuses_overwrite(mixture, tmp_path, capsys):
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    assert _train(mixture, straight, "--epochs", "3") == 0
    assert _train(mixture, parts, "--epochs", "2") == 0
    assert _train(mixture, parts, "--epochs", "3") == 2
    assert "--resume" in capsys.readouterr().err
    assert _train(mixture, parts, "--epochs", "3", "--zdim", "3", "--resume") == 2
    assert "zdim" in capsys.readouterr().err
    assert _train(mixture, parts, "--epochs", "3", "--resume") == 0
    assert np.allclose(np.load(parts / "latents.npy"), np.load(straight / "latents.npy"), atol=1e-4)


def test_invariant_variant_missing_is_one_clear_line(mixture, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cryopose.training.hetero_vaegan", None)
    assert _train(mixture, tmp_path / "inv", "--variant", "invariant") == 2
    err = capsys.readouterr().err
    assert "invariant VAE-GAN variant is not in this build" in err and "Traceback" not in err


def test_pose_aware_needs_poses(mixture, tmp_path, capsys):
    from cryopose.io.star import write_star

    meta = read_star(mixture)
    bare = mixture.parent / "noposes.star"
    write_star(bare, meta.replace(rotmats=None))
    assert _train(bare, tmp_path / "x", "--variant", "pose-aware") == 2
    assert "have no poses" in capsys.readouterr().err


def test_analyze_bad_inputs_and_one_class(mixture, tmp_path, capsys):
    import json

    run = tmp_path / "fake"
    run.mkdir()
    rng = np.random.default_rng(0)
    np.save(run / "latents.npy", rng.normal(size=(150, 2)).astype(np.float32))  # one blob: one class
    (run / "heterogeneity.json").write_text(json.dumps({"variant": "invariant", "zdim": 2, "particles": str(mixture),
                                                        "n_particles": 150}))
    other = tmp_path / "other"
    assert main(["simulate", str(MAP_D), "--map-pixel-size", "13.1", "-n", "20", "-o", str(other)]) == 0
    assert main(["heterogeneity", "analyze", str(run), "--particles", str(other.with_suffix(".star"))]) == 2
    assert "not the particles this run was trained on" in capsys.readouterr().err
    assert main(["heterogeneity", "analyze", str(run), "--true-map", str(OTHER)]) == 2
    assert "EMD-3197.map is 20 px" in capsys.readouterr().err
    assert main(["heterogeneity", "analyze", str(run), "--min-class-fraction", "0.2", "--no-report"]) == 0
    captured = capsys.readouterr()
    assert "found one class" in captured.err
    assert (run / "analysis" / "consensus.mrc").is_file() and (run / "analysis" / "class_001.star").is_file()


def test_invariant_variant_trains_and_analyzes_through_the_cli(mixture, tmp_path, capsys):
    """``--variant invariant`` reaches the VAE-GAN trainer with the options given, and its run
    folder is one that ``analyze`` reads (the contract between the two variants)."""
    import json

    run = tmp_path / "inv"
    assert _train(mixture, run, "--variant", "invariant", "--epochs", "1", "--zdim", "3", "--box-size", "16") == 0
    info = json.loads((run / "heterogeneity.json").read_text())
    assert info["variant"] == "invariant" and info["zdim"] == 3 and info["n_particles"] == 150
    assert np.load(run / "latents.npy").shape == (150, 3)
    assert main(["heterogeneity", "analyze", str(run), "--min-class-fraction", "0.2", "--no-report"]) == 0
    assert (run / "analysis" / "consensus.mrc").is_file()
