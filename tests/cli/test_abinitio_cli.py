"""``cryopose abinitio`` and ``cryopose predict`` on a tiny simulated data set (16 px, ~100 particles)."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cryopose import __version__
from cryopose.cli.main import main
from cryopose.fourier import fourier_downsample_volume
from cryopose.io.mrc import read_map
from cryopose.io.particles import load_particles
from cryopose.pipelines.demo import BETAGAL_MAP, BETAGAL_PIXEL_SIZE, bundled_path
from cryopose.simulate.simulator import SimulationConfig, simulate_particles

BOX = 16
APIX = BETAGAL_PIXEL_SIZE * 64 / BOX


def _simulate(folder: Path, n: int, seed: int, name: str = "particles") -> Path:
    vol = torch.from_numpy(read_map(bundled_path(BETAGAL_MAP), pixel_size_angstrom=BETAGAL_PIXEL_SIZE).volume.copy())
    small = fourier_downsample_volume(vol.double(), BOX).float()
    cfg = SimulationConfig(snr=1.0, shift_max_angstrom=10.0, defocus_range_angstrom=(15000.0, 25000.0))
    res = simulate_particles(small, pixel_size_angstrom=APIX, n_particles=n, config=cfg, generator=seed,
                             output=folder / name)
    return res.star_path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One finished 1-epoch run (shared by the tests that only read its outputs)."""
    folder = tmp_path_factory.mktemp("abinitio")
    star = _simulate(folder, 96, seed=0)
    out = folder / "run"
    rc = main(["abinitio", str(star), "-o", str(out), "--box-size", str(BOX), "--epochs", "1",
               "--batch-size", "32", "--hypotheses", "2", "--threads", "1", "--no-progress"])
    assert rc == 0
    return folder, star, out


def test_abinitio_writes_every_output(run_dir):
    folder, star, out = run_dir
    for name in ("poses.star", "poses_encoder.star", "map.mrc", "map_half1.mrc", "map_half2.mrc", "fsc.json",
                 "encoder.pt",
                 "checkpoint.pt", "config.yaml", "summary.json", "report.html", "loss.png", "fsc.png",
                 "angles.png", "slices.png", "projections.png", "noise.png"):
        assert (out / name).is_file(), name
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["cryopose_version"] == __version__
    assert cfg["command_line"].startswith("cryopose abinitio ")
    assert cfg["config"]["model"]["pose_param"] == "s2s2"
    html = (out / "report.html").read_text()
    assert "loss.png" in html and "projections.png" in html
    # the report says which additions to the paper were on, and that the poses were polished
    assert "search warm-up" in html and "symmetrised loss" in html and "refined locally" in html
    summary = json.loads((out / "summary.json").read_text())
    assert summary["polish_rounds"] == 2 and summary["polish_median_change_deg"] >= 0
    # the polishing started with the subset iterations (each a moved fraction in [0, 1]), then its rounds
    from cryopose.pipelines.polish_subset import CONVERGED_MOVED_FRACTION, _stalled

    moved = summary["polish_subset_moved"]
    assert moved[0] > 0.0  # one epoch's encoder poses move in the first iteration
    done = [v < CONVERGED_MOVED_FRACTION or _stalled(moved[:k + 1]) for k, v in enumerate(moved)]
    assert not any(done[:-1]) and (done[-1] or len(moved) == 20)  # stopped at the first stop condition
    assert set(summary["polish_stage_seconds"]) >= {"subset", "global", "local", "reconstruct"}
    assert 0 < summary["view_coverage"]["covered_fraction"] <= 1 and isinstance(summary["warnings"], list)
    assert "noise power spectrum" in html and "asymmetric unit" in html
    m = read_map(out / "map.mrc")
    assert m.volume.shape == (BOX,) * 3 and m.pixel_size_angstrom == pytest.approx(APIX, rel=1e-4)


def test_poses_star_keeps_order_pixel_size_and_has_confidence(run_dir, monkeypatch):
    folder, star, out = run_dir
    monkeypatch.chdir(folder)  # the user's folder: the stacks are read only inside it (or the STAR's, or --datadir)
    _, truth = load_particles(star)
    _, est = load_particles(out / "poses.star")
    assert len(est) == len(truth)
    assert est.pixel_size_angstrom == pytest.approx(truth.pixel_size_angstrom)
    assert [Path(p).name for p in est.image_paths] == [Path(p).name for p in truth.image_paths]
    assert np.array_equal(est.image_indices, truth.image_indices)
    assert est.rotmats is not None and torch.isfinite(est.rotmats).all()
    assert torch.allclose(est.shifts_angstrom, truth.shifts_angstrom, atol=1e-3)  # origins from the STAR
    conf = est.table["rlnCryoposeConfidence"].to_numpy(dtype=float)
    assert conf.shape == (len(est),) and ((conf > 0) & (conf <= 1 + 1e-6)).all()
    res = est.table["rlnCryoposeResidual"].to_numpy(dtype=float)
    assert res.shape == (len(est),) and np.isfinite(res).all() and (res > 0).all()
    # the amortized poses are kept beside the polished ones, same particles and order
    _, enc = load_particles(out / "poses_encoder.star")
    assert len(enc) == len(est) and np.array_equal(enc.image_indices, est.image_indices)
    assert "rlnAngleRot" in est.table.columns and "rlnOriginXAngst" in est.table.columns


def test_predict_on_unseen_particles(run_dir, tmp_path):
    folder, _, out = run_dir
    new = _simulate(tmp_path, 20, seed=5, name="unseen")
    rc = main(["predict", str(out / "encoder.pt"), str(new), "-o", str(tmp_path / "pred.star"), "--no-progress"])
    assert rc == 0
    _, meta = load_particles(tmp_path / "pred.star")
    assert len(meta) == 20 and meta.rotmats.shape == (20, 3, 3)
    assert "rlnCryoposeConfidence" in meta.table.columns


def test_predict_int8_encoder_stays_close_to_the_float_encoder(run_dir, tmp_path, capsys):
    """--int8 quantizes the encoder (calibrated on the first particles): on the training
    particles its poses agree with the float encoder's for most particles; --test-time-turns is
    refused for a CryoPoseNet encoder."""
    from cryopose.data.dataset import ParticleDataset
    from cryopose.metrics.pose_error import symmetry_aware_errors
    from cryopose.pipelines import predict as predict_mod
    from cryopose.pipelines.abinitio import load_encoder
    from cryopose.rotations import geodesic_distance_deg
    from cryopose.training.trainer import candidate_poses

    folder, star, out = run_dir
    args = ["predict", str(out / "encoder.pt"), str(star), "--no-progress", "--threads", "1"]
    assert main([*args, "-o", str(tmp_path / "f.star")]) == 0
    seen = []
    orig = predict_mod.infer_poses

    def spy(model, *a, **k):
        seen.append(model.encoder.is_int8)
        return orig(model, *a, **k)

    predict_mod.infer_poses = spy
    try:
        assert main([*args, "-o", str(tmp_path / "q.star"), "--int8"]) == 0
    finally:
        predict_mod.infer_poses = orig
    assert seen == [True]
    _, f = load_particles(tmp_path / "f.star", datadir=folder)  # the stack is in the run's data folder
    _, q = load_particles(tmp_path / "q.star", datadir=folder)
    diff = symmetry_aware_errors(q.rotmats.double(), f.rotmats.double(), symmetry="C1")
    assert float(diff.median()) < 3.0
    # Quantization perturbs the hypotheses slightly; where the float encoder's candidates score
    # almost alike (a barely trained 16-px encoder), that can change which one wins, and which
    # ones flip depends on the CPU's int8 kernels (0.896 within 10° on an AMD EPYC, > 0.9 on
    # Intel). What int8 must not do is invent poses: each int8 pose lies near one of the float
    # encoder's own candidates for that particle.
    _, model, info = load_encoder(out / "encoder.pt")
    stack, meta = load_particles(star)
    ds = ParticleDataset(stack, meta, box_size=info["working_box_size"], normalization=info["normalization"])
    with torch.no_grad():
        cand, _ = candidate_poses(model, ds.images(np.arange(len(ds))), symmetric=True)
    near = geodesic_distance_deg(cand.double(), q.rotmats.double()[:, None]).min(dim=1).values
    assert float((near < 10).float().mean()) > 0.97, float((near < 10).float().mean())
    assert "rlnCryoposeConfidence" in q.table.columns
    assert main([*args, "-o", str(tmp_path / "t.star"), "--test-time-turns"]) == 2
    assert "--test-time-turns is for supervised models" in capsys.readouterr().err


def test_predict_rejects_a_different_physical_box(run_dir, tmp_path, capsys):
    _, star, out = run_dir
    rc = main(["predict", str(out / "encoder.pt"), str(star), "-o", str(tmp_path / "p.star"),
               "--pixel-size", str(APIX * 2), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0]


def test_interrupt_then_resume_finishes_the_same_run(tmp_path, monkeypatch, capsys):
    from cryopose.training import trainer as trainer_mod

    star = _simulate(tmp_path, 64, seed=1)
    out = tmp_path / "run"
    args = ["abinitio", str(star), "-o", str(out), "--box-size", str(BOX), "--epochs", "2", "--batch-size", "32",
            "--threads", "1", "--no-progress", "--no-report", "--no-reconstruct"]
    orig = trainer_mod.Trainer.train_step
    calls = {"n": 0}

    def stop_after_three(self, idx):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return orig(self, idx)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", stop_after_three)
    assert main(args) == 130
    assert (out / "checkpoint.pt").is_file() and (out / "encoder.pt").is_file()
    assert not (out / "poses.star").exists()
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", orig)
    assert main(args) == 2  # an existing run needs --resume
    record = (out / "config.yaml").read_text()
    # a resume on other particles, or with fewer epochs than done, is refused and keeps the record
    other = _simulate(tmp_path, 48, seed=2, name="other")
    assert main(["abinitio", str(other), *args[2:], "--resume"]) == 2
    assert "not the interrupted run's" in capsys.readouterr().err
    (out / "checkpoint.pt").replace(tmp_path / "ck.pt")
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    state["epoch"] = 2
    torch.save(state, out / "checkpoint.pt")
    assert main([*args[:7], "1", *args[8:], "--resume"]) == 2
    assert "already done 2 epochs" in capsys.readouterr().err
    (tmp_path / "ck.pt").replace(out / "checkpoint.pt")
    assert (out / "config.yaml").read_text() == record
    assert main(args + ["--resume"]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 2 and state["step"] == 4
    assert (out / "poses.star").is_file()
    # the finished run polished again with other finishing options (no training), not with other training ones
    finish = [a for a in args if a != "--no-reconstruct"] + ["--polish-rounds", "1", "--no-rescue", "--resume"]
    assert main(finish) == 0 and (out / "map.mrc").is_file()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
    assert main(finish + ["--hypotheses", "3"]) == 2
    assert "n_hypotheses" in capsys.readouterr().err


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    assert main(["abinitio", str(tmp_path / "missing.star"), "-o", str(tmp_path / "o")]) == 2
    assert main(["abinitio", str(tmp_path / "x.star"), "-o", str(tmp_path / "o"), "--epochs", "0"]) == 2
    assert main(["abinitio", str(tmp_path / "x.star"), "-o", str(tmp_path / "o2"), "--resume"]) == 2
    star = _simulate(tmp_path, 8, seed=3, name="small")  # 16-px images: an explicit 32-px box is refused
    assert main(["abinitio", str(star), "-o", str(tmp_path / "o3"), "--box-size", "32"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 4 and all(ln.startswith("cryopose abinitio: error:") for ln in lines)
    assert "larger than the images" in lines[-1]


def test_abinitio_on_picked_particles_detects_contrast_and_estimates_origins(tmp_path, monkeypatch):
    """Particles as a picker gives them: dark, off-centre, no origins in the STAR. The defaults
    detect the contrast, centre the particles and write estimated origins (closer to the truth
    than none), and the summary reports the contrast and the noise spectrum."""
    import starfile

    monkeypatch.chdir(tmp_path)  # the user's project folder, as RELION expects
    vol = torch.from_numpy(read_map(bundled_path(BETAGAL_MAP), pixel_size_angstrom=BETAGAL_PIXEL_SIZE).volume.copy())
    small = fourier_downsample_volume(vol.double(), 32).float()
    apix = BETAGAL_PIXEL_SIZE * 2
    cfg = SimulationConfig(snr=1.0, shift_max_angstrom=5 * apix, invert_contrast=True,
                           defocus_range_angstrom=(10000.0, 20000.0))
    res = simulate_particles(small, pixel_size_angstrom=apix, n_particles=128, config=cfg, generator=1,
                             output=tmp_path / "truth")
    blocks = starfile.read(res.star_path, always_dict=True)
    blocks["particles"] = blocks["particles"].drop(columns=["rlnOriginXAngst", "rlnOriginYAngst"])
    starfile.write(blocks, tmp_path / "picked.star")
    out = tmp_path / "run"
    rc = main(["abinitio", str(tmp_path / "picked.star"), "-o", str(out), "--box-size", "16", "--epochs", "1",
               "--batch-size", "32", "--hypotheses", "2", "--threads", "1", "--no-progress", "--no-report"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["contrast_inverted"] is True and summary["contrast_detected"] is True
    assert summary["shifts_estimated"] is True
    spec = summary["noise_spectrum"]
    assert len(spec["power"]) == 16 // 2 + 1 and all(p > 0 for p in spec["power"])
    _, truth = load_particles(res.star_path)
    _, est = load_particles(out / "poses.star")
    assert est.shifts_angstrom is not None
    before = truth.shifts_angstrom.norm(dim=1).median()
    after = (est.shifts_angstrom - truth.shifts_angstrom).norm(dim=1).median()
    assert float(after) < 0.5 * float(before), (float(after), float(before))
    # the map has the particles' density sign (bright), not the raw images' (dark)
    m = read_map(out / "map.mrc").volume
    assert float(m.max()) > -float(m.min())
    # predict centres new picked particles the same way (and inverts them, as recorded)
    assert main(["predict", str(out / "encoder.pt"), str(tmp_path / "picked.star"), "-o",
                 str(tmp_path / "pred.star"), "--no-progress", "--threads", "1"]) == 0
    _, pred = load_particles(tmp_path / "pred.star")
    err = (pred.shifts_angstrom - truth.shifts_angstrom).norm(dim=1).median()
    assert float(err) < 0.5 * float(before), (float(err), float(before))


@pytest.mark.parametrize("where", ["mid-epoch", "epoch boundary", "after training"])
def test_resume_is_exact_at_any_interruption_point(tmp_path, monkeypatch, where):
    """Interrupted (Ctrl-C) in an epoch, at the first step of the next one (it used to draw a new
    batch order on resume: 37.7° apart) or after training, then resumed: the same weights and
    poses as the uninterrupted run with the same seed."""
    from cryopose.pipelines import abinitio as abinitio_mod
    from cryopose.training import trainer as trainer_mod

    star = _simulate(tmp_path, 64, seed=1)
    base = ["abinitio", str(star), "--box-size", str(BOX), "--epochs", "2", "--batch-size", "32", "--threads", "1",
            "--no-progress", "--no-report", "--no-reconstruct"]
    assert main([*base, "-o", str(tmp_path / "a")]) == 0
    if where == "after training":
        orig = abinitio_mod.infer_poses

        def stop(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr(abinitio_mod, "infer_poses", stop)
    else:
        orig = trainer_mod.Trainer.train_step
        calls = {"n": 0}
        stop_at = 1 if where == "mid-epoch" else 2  # 2 steps per epoch

        def stop(self, idx):
            if calls["n"] == stop_at:
                raise KeyboardInterrupt
            calls["n"] += 1
            return orig(self, idx)

        monkeypatch.setattr(trainer_mod.Trainer, "train_step", stop)
    assert main([*base, "-o", str(tmp_path / "b")]) == 130
    monkeypatch.undo()
    assert main([*base, "-o", str(tmp_path / "b"), "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, pa = load_particles(tmp_path / "a" / "poses.star", datadir=tmp_path)
    _, pb = load_particles(tmp_path / "b" / "poses.star", datadir=tmp_path)
    assert torch.equal(pa.rotmats, pb.rotmats)


def test_abinitio_symmetry_trains_in_c1_then_imposes_the_group_in_its_frame(tmp_path, monkeypatch):
    """``--symmetry D2``: the C1 map's axes are found, the poses turned into RELION's D2 frame
    and the polishing and final map impose D2; ``predict`` with the run's encoder.pt gives
    poses in the same frame as poses_encoder.star."""
    from cryopose.metrics.pose_error import symmetry_aware_errors
    from cryopose.reconstruction.symmetry_axes import symmetry_score

    monkeypatch.chdir(tmp_path)
    star = _simulate(tmp_path, 96, seed=3)
    out = tmp_path / "run"
    rc = main(["abinitio", str(star), "-o", str(out), "--box-size", str(BOX), "--epochs", "1", "--batch-size", "32",
               "--hypotheses", "2", "--threads", "1", "--no-progress", "--polish-rounds", "2",
               "--global-rounds", "1", "--symmetry", "D2"])
    assert rc == 0
    assert "D2 symmetry axes" in (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    axes = summary["symmetry_axes"]
    assert summary["symmetry"] == "D2" and axes["symmetry"] == "D2" and -1.0 <= axes["score"] <= 1.0
    assert len(summary["polish_rescued"]) == 1  # one global, one local round: one rescue (searched, replaced)
    r = torch.tensor(axes["rotation"], dtype=torch.float64)
    assert r.shape == (3, 3) and torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-6)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["config"]["symmetry"] == "D2" and cfg["config"]["model"]["symmetry"] == "C1"
    m = torch.from_numpy(np.array(read_map(out / "map.mrc").volume, dtype=np.float64))
    assert symmetry_score(m, "D2") > 0.95  # the final map is D2 in RELION's frame
    assert main(["predict", str(out / "encoder.pt"), str(star), "-o", str(tmp_path / "pred.star"), "--no-progress",
                 "--threads", "1"]) == 0
    _, pred = load_particles(tmp_path / "pred.star")
    _, enc = load_particles(out / "poses_encoder.star")
    diff = symmetry_aware_errors(pred.rotmats.double(), enc.rotmats.double(), symmetry="C1")
    assert float(diff.median()) < 1.0, float(diff.median())


def test_abinitio_refuses_two_different_symmetries(tmp_path, capsys):
    star = _simulate(tmp_path, 8, seed=4)
    rc = main(["abinitio", str(star), "-o", str(tmp_path / "run"), "--symmetry", "D2", "--train-symmetry", "C2",
               "--no-progress"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "--train-symmetry C2" in err and "--symmetry D2" in err
