"""What the supervised checkpoints of ``train-supervised`` and ``refine`` record for
``cryopose predict``: the network's input pixel size (with ``--network-box``) and
``--invert-contrast``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.cli.main import main
from cryopose.io.particles import load_particles
from cryopose.models.supervised import load_pose_model


pytestmark = pytest.mark.usefixtures("one_thread")


_NET = ["--width", "4", "--batch-size", "8", "--threads", "1"]


def _simulate(tmp_path, pdb, n, box=16):
    """``n`` simulated ``box`` px particles (seconds); returns their STAR path."""
    sim = tmp_path / "sim" / "p"
    assert main(["simulate", "-i", str(pdb), "--box-size", str(box), "-n", str(n), "-o", str(sim), "--snr", "2",
                 "--seed", "2", "--no-progress"]) == 0
    return sim.with_suffix(".star")


def _images(star) -> torch.Tensor:
    """``(N, n, n)`` float32 images of a STAR file, as stored."""
    stack, _ = load_particles(star)
    return torch.as_tensor(stack[np.arange(len(stack))]).float()


def _predict(model, star, out, *flags) -> torch.Tensor:
    """``cryopose predict`` → its ``(N, 3, 3)`` rotation matrices."""
    assert main(["predict", str(model), str(star), "-o", str(out), "--threads", "1", *flags]) == 0
    return load_particles(out)[1].rotmats.float()


def test_refine_network_box_checkpoint_predicts_the_same_particles(tmp_path, shared_data):
    pdb = shared_data / "pdb" / "4ake_mdanalysis.pdb"
    star = _simulate(tmp_path, pdb, 20)
    apix = float(load_particles(star)[1].pixel_size_angstrom)
    out = tmp_path / "refine"
    assert main(["refine", str(star), "--reference", str(pdb), "-o", str(out), "--network-box", "8",
                 "--invert-contrast", "--labeled-fraction", "0.5", "--iterations", "2", "--step", "30",
                 "--final-step", "15", *_NET]) == 0
    model = out / "model.pt"
    ckpt = torch.load(model, weights_only=False)
    assert ckpt["model_config"]["box_size"] == 8
    # 8 px over the 16 px particles' field of view
    assert ckpt["pixel_size_angstrom"] == pytest.approx(apix * 16 / 8)
    assert ckpt["extra"]["invert_contrast"] is True
    # predict accepts the very particles refine trained on, and negates them by itself
    est = _predict(model, star, tmp_path / "pred.star")
    assert est.shape == (20, 3, 3)
    direct, _ = load_pose_model(model)(-_images(star))
    torch.testing.assert_close(est, direct, atol=1e-5, rtol=0)


def test_predict_applies_the_recorded_invert_contrast(tmp_path, shared_data, capsys):
    pdb = shared_data / "pdb" / "4ake_mdanalysis.pdb"
    star = _simulate(tmp_path, pdb, 12)
    out = tmp_path / "train"
    assert main(["train-supervised", str(star), "--poses", str(star), "--reference", str(pdb), "-o", str(out),
                 "--invert-contrast", "--iterations", "2", "--lr-schedule", "cosine", *_NET]) == 0
    model = out / "model.pt"
    ckpt = torch.load(model, weights_only=False)
    assert ckpt["extra"]["invert_contrast"] is True
    assert ckpt["train_config"]["lr_schedule"] == "cosine"
    assert ckpt["pixel_size_angstrom"] == pytest.approx(float(load_particles(star)[1].pixel_size_angstrom))
    images = _images(star)
    predictor = load_pose_model(model)
    inverted, _ = predictor(-images)
    plain, _ = predictor(images)
    assert not torch.allclose(inverted, plain, atol=1e-3)  # the setting matters to this network

    # recorded: applied without the flag; the agreeing flag changes nothing
    torch.testing.assert_close(_predict(model, star, tmp_path / "a.star"), inverted, atol=1e-5, rtol=0)
    torch.testing.assert_close(_predict(model, star, tmp_path / "b.star", "--invert-contrast"), inverted,
                               atol=1e-5, rtol=0)

    # a checkpoint recorded as trained without it refuses a conflicting flag, naming the file
    plain_model = tmp_path / "plain.pt"
    torch.save({**ckpt, "extra": {**ckpt["extra"], "invert_contrast": False}}, plain_model)
    torch.testing.assert_close(_predict(plain_model, star, tmp_path / "c.star"), plain, atol=1e-5, rtol=0)
    capsys.readouterr()
    rc = main(["predict", str(plain_model), str(star), "-o", str(tmp_path / "d.star"), "--invert-contrast"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "plain.pt" in err[0] and "--invert-contrast" in err[0]
    assert not (tmp_path / "d.star").exists()

    # an older checkpoint without the record: the flag is the only way to say it
    old_model = tmp_path / "old.pt"
    torch.save({**ckpt, "extra": {k: v for k, v in ckpt["extra"].items() if k != "invert_contrast"}}, old_model)
    torch.testing.assert_close(_predict(old_model, star, tmp_path / "e.star"), plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(_predict(old_model, star, tmp_path / "f.star", "--invert-contrast"), inverted,
                               atol=1e-5, rtol=0)
