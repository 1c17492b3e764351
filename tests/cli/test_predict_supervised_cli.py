"""``cryopose predict`` with a supervised regressor checkpoint (Lian et al. 2022; issue 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.cli.main import main
from cryopose.fourier import fourier_downsample_images
from cryopose.io.particles import load_particles
from cryopose.io.star import write_star
from cryopose.metrics.pose_error import symmetry_aware_errors
from cryopose.models.supervised import load_pose_model


pytestmark = pytest.mark.usefixtures("one_thread")


def test_predict_with_supervised_model_matches_the_predictor(tmp_path, shared_data, capsys):
    pdb = shared_data / "pdb" / "4ake_mdanalysis.pdb"
    sim = tmp_path / "sim" / "p"
    assert main(["simulate", "-i", str(pdb), "--box-size", "32", "-n", "20", "-o", str(sim), "--snr", "2",
                 "--seed", "3", "--no-progress"]) == 0
    star = sim.with_suffix(".star")
    # network input 16 px: predict must Fourier-crop the 32 px particles as training did
    assert main(["train-supervised", str(star), "--poses", str(star), "--reference", str(pdb), "-o",
                 str(tmp_path / "train"), "--box-size", "16", "--iterations", "2", "--width", "4",
                 "--batch-size", "8", "--threads", "1", "--augment", "quarter"]) == 0
    model = tmp_path / "train" / "model.pt"
    assert torch.load(model, weights_only=False)["train_config"]["augment_inplane"] == "quarter"
    capsys.readouterr()
    out = tmp_path / "pred.star"
    assert main(["predict", str(model), str(star), "-o", str(out), "--threads", "1"]) == 0
    assert "20 particles (supervised regressor)" in capsys.readouterr().out

    stack, truth = load_particles(star)
    _, est = load_particles(out)
    assert len(est) == len(truth) == 20
    assert [Path(p).name for p in est.image_paths] == [Path(p).name for p in truth.image_paths]
    assert np.array_equal(est.image_indices, truth.image_indices)
    assert est.pixel_size_angstrom == pytest.approx(truth.pixel_size_angstrom)
    assert torch.allclose(est.shifts_angstrom, truth.shifts_angstrom, atol=1e-3)  # origins from the input
    angles = est.table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=float)
    assert angles.shape == (20, 3) and np.isfinite(angles).all()
    direct, shifts = load_pose_model(model)(torch.as_tensor(stack[np.arange(len(stack))]))
    assert shifts is None
    torch.testing.assert_close(est.rotmats.float(), direct, atol=1e-5, rtol=0)

    # --test-time-turns: the mean over the four quarter turns, as the library computes it
    out_t = tmp_path / "pred_turns.star"
    assert main(["predict", str(model), str(star), "-o", str(out_t), "--threads", "1", "--test-time-turns"]) == 0
    net = load_pose_model(model).model
    images16 = fourier_downsample_images(torch.as_tensor(stack[np.arange(len(stack))]).float(), 16)
    with torch.no_grad():
        turned = net.predict_rotmat(images16, test_time_turns=True)
    # the barely trained network's four turned predictions disagree widely, and their chordal mean
    # amplifies float rounding (thread counts, FFT paths) to ~1e-4: compare at 1e-3
    torch.testing.assert_close(load_particles(out_t)[1].rotmats.float(), turned, atol=1e-3, rtol=0)
    assert not torch.allclose(turned, direct, atol=1e-2)

    # --int8: the library's int8 copy calibrated on the first particles; close to the float poses
    out_q = tmp_path / "pred_int8.star"
    assert main(["predict", str(model), str(star), "-o", str(out_q), "--threads", "1", "--int8"]) == 0
    q = net.quantized_for_inference(images16)
    with torch.no_grad():
        expected = q.predict_rotmat(images16)
    pred_q = load_particles(out_q)[1].rotmats.float()
    torch.testing.assert_close(pred_q, expected, atol=1e-4, rtol=0)
    diff = symmetry_aware_errors(pred_q.double(), direct.double(), symmetry="C1")
    assert float(diff.median()) < 3.0

    # a different box in Å is refused, naming the model
    coarse = sim.parent / "coarse.star"
    write_star(coarse, truth.replace(pixel_size_angstrom=2 * truth.pixel_size_angstrom))
    rc = main(["predict", str(model), str(coarse), "-o", str(tmp_path / "p2.star")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "model.pt" in err[0] and "same box in Å" in err[0]


def test_predict_rejects_unknown_model_kind(tmp_path, capsys):
    bad = tmp_path / "other.pt"
    torch.save({"model_kind": "rotinv", "state_dict": {}}, bad)
    rc = main(["predict", str(bad), str(tmp_path / "particles.star"), "-o", str(tmp_path / "p.star")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "other.pt" in err[0] and "'rotinv'" in err[0] and "supervised" in err[0] and "CryoPoseNet" in err[0]
    torch.save([1, 2, 3], bad)  # not even a dict
    assert main(["predict", str(bad), str(tmp_path / "particles.star"), "-o", str(tmp_path / "p.star")]) == 2
    assert "other.pt" in capsys.readouterr().err
