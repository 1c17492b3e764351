"""``cryopose train-supervised`` and ``cryopose refine`` on tiny simulated sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from cryopose.cli.main import main
from cryopose.io.mrc import read_map
from cryopose.io.star import read_star
from cryopose.metrics.diagnostics import sampling_compensation_factor
from cryopose.models.supervised import load_pose_model
from cryopose.symmetry import symmetry_order


pytestmark = pytest.mark.usefixtures("one_thread")


def _simulate(tmp_path, shared_data, n, box=16):
    sim = tmp_path / "sim" / "p"
    assert main(["simulate", "-i", str(shared_data / "pdb" / "4ake_mdanalysis.pdb"), "--box-size", str(box),
                 "-n", str(n), "-o", str(sim), "--snr", "2", "--seed", "2", "--no-progress"]) == 0
    return sim.with_suffix(".star")


_NET = ["--width", "4", "--batch-size", "8", "--threads", "1"]


def test_train_supervised_writes_model_report_and_config(tmp_path, shared_data, capsys):
    star = _simulate(tmp_path, shared_data, 40)
    out = tmp_path / "train"
    rc = main(["train-supervised", str(star), "--poses", str(star), "--reference",
               str(shared_data / "pdb" / "4ake_mdanalysis.pdb"), "-o", str(out), "--iterations", "4",
               "--cv-w", "--cv-iterations", "1", "--cv-max-particles", "10", *_NET])
    assert rc == 0
    assert "w = " in capsys.readouterr().out
    report = json.loads((out / "train_report.json").read_text())
    assert report["n_train"] == 32 and report["n_test"] == 8
    assert report["cv"]["w_values"] == [round(0.1 * i, 1) for i in range(11)]
    assert len(report["cv"]["scores"]) == 11 and len(report["cv"]["scores"][0]) == 5
    assert report["w"] == report["cv"]["best_w"]
    assert {"median_error_deg", "mean_error_deg", "reprojection_rmse"} <= set(report["test_metrics"])
    assert len(report["loss_curve"]["loss"]) == 4
    ckpt = torch.load(out / "model.pt", weights_only=False)
    assert ckpt["model_kind"] == "supervised" and ckpt["extra"]["w"] == report["w"]
    rot, shifts = load_pose_model(out / "model.pt")(torch.randn(3, 16, 16))
    assert rot.shape == (3, 3, 3) and shifts is None
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["command_line"].startswith("cryopose train-supervised")


def test_train_supervised_rejects_labels_without_poses(tmp_path, shared_data):
    star = shared_data / "particles" / "empiar10076_7ptcl" / "empiar_10076_7.star"
    rc = main(["train-supervised", str(star), "--poses", str(star), "--reference",
               str(shared_data / "maps" / "10076_classD_32.mrc"), "--map-pixel-size", "13.1",
               "-o", str(tmp_path / "t"), "--iterations", "1"])
    assert rc == 2


def test_refine_writes_poses_map_model_and_report(tmp_path, shared_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the user's folder, which holds the stacks
    star = _simulate(tmp_path, shared_data, 40)
    out = tmp_path / "refine"
    rc = main(["refine", str(star), "--reference", str(shared_data / "pdb" / "4ake_mdanalysis.pdb"), "-o", str(out),
               "--labeled-fraction", "0.5", "--iterations", "3", "--step", "30", "--final-step", "7.5",
               "--local-refine", "--local-step", "7.5", "--test-time-turns", *_NET])
    assert rc == 0
    assert "20 searched + 20 inferred" in capsys.readouterr().out
    meta = read_star(out / "particles.star")
    src = meta.table["rlnCryoposePoseSource"].to_numpy(dtype=int)
    assert (src == 0).sum() == 20 and (src == 2).sum() == 20
    assert meta.rotmats is not None and np.isfinite(meta.rotmats.numpy()).all()
    assert meta.box_size == 16 and meta.pixel_size_angstrom == read_star(star).pixel_size_angstrom
    for name in ("map.mrc", "half1.mrc", "half2.mrc", "map_network_only.mrc"):
        assert read_map(out / name).volume.shape == (16, 16, 16)
    report = json.loads((out / "report.json").read_text())
    for key in ("resolution_fsc0p143_angstrom", "known_pose_resolution_fsc0p143_angstrom", "resolution_ratio_fsc0p143",
                "per_particle_seconds", "pose_errors_vs_input", "test_metrics_vs_search_labels",
                "vs_reference_fsc0p5_angstrom", "network_only_resolution_fsc0p143_angstrom",
                "known_pose_vs_reference_fsc0p5_angstrom"):
        assert key in report
    assert report["pose_errors_vs_input"]["search"]["n"] == 20 and report["test_time_turns"] is True
    assert report["pose_errors_vs_input"]["network+local"]["n"] == 20
    # the coverage diagnostics describe the poses written (the polished ones)
    assert report["view_coverage"]["n_directions"] == 40 * symmetry_order(report["symmetry"])
    assert report["view_coverage"]["scf"] == pytest.approx(
        sampling_compensation_factor(meta.rotmats, report["symmetry"]), rel=0.02)
    assert isinstance(report["warnings"], list)
    assert (out / "fsc.png").is_file() and (out / "config.yaml").is_file()
    assert torch.load(out / "model.pt", weights_only=False)["model_kind"] == "supervised"


def test_refine_with_int8_inference(tmp_path, shared_data, monkeypatch):
    """--int8 infers the unlabelled particles with the int8 copy of the network."""
    monkeypatch.chdir(tmp_path)
    star = _simulate(tmp_path, shared_data, 40)
    out = tmp_path / "refine"
    rc = main(["refine", str(star), "--reference", str(shared_data / "pdb" / "4ake_mdanalysis.pdb"), "-o", str(out),
               "--labeled-fraction", "0.5", "--iterations", "3", "--step", "30", "--final-step", "7.5",
               "--int8", *_NET])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["int8_inference"] is True
    meta = read_star(out / "particles.star")
    # network + local search (the default local refinement) for the 20 unlabelled particles
    assert (meta.table["rlnCryoposePoseSource"].to_numpy(dtype=int) == 2).sum() == 20
    assert np.isfinite(meta.rotmats.numpy()).all()


def test_refine_on_picked_particles_detects_contrast_and_estimates_origins(tmp_path, shared_data, monkeypatch):
    """Dark, off-centre particles without origins: refine's defaults detect the contrast,
    centre the particles, search ±2 px around that, refine locally, and write origins closer
    to the truth than none."""
    import starfile

    from cryopose.io.particles import load_particles

    monkeypatch.chdir(tmp_path)
    sim = tmp_path / "sim" / "p"
    assert main(["simulate", "-i", str(shared_data / "pdb" / "4ake_mdanalysis.pdb"), "--box-size", "24",
                 "-n", "40", "-o", str(sim), "--snr", "2", "--seed", "3", "--shift-max-angstrom", "40",
                 "--invert-contrast", "--no-progress"]) == 0
    blocks = starfile.read(sim.with_suffix(".star"), always_dict=True)
    blocks["particles"] = blocks["particles"].drop(columns=["rlnOriginXAngst", "rlnOriginYAngst"])
    starfile.write(blocks, tmp_path / "sim" / "picked.star")
    out = tmp_path / "refine"
    rc = main(["refine", str(tmp_path / "sim" / "picked.star"), "--reference",
               str(shared_data / "pdb" / "4ake_mdanalysis.pdb"), "-o", str(out), "--labeled-fraction", "0.5",
               "--iterations", "3", "--step", "30", "--final-step", "7.5", *_NET])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["contrast_inverted"] is True and report["shifts_estimated"] is True
    assert report["contrast_fraction_bright"] < 0.3
    _, truth = load_particles(sim.with_suffix(".star"))
    _, est = load_particles(out / "particles.star")
    before = float(truth.shifts_angstrom.norm(dim=1).median())
    after = float((est.shifts_angstrom - truth.shifts_angstrom).norm(dim=1).median())
    assert after < 0.6 * before, (after, before)


def test_refine_uses_the_input_origins_and_polishes_every_pose(tmp_path, shared_data, monkeypatch):
    """Off-centre particles whose STAR has their origins: the search, the local refinement and
    the polishing start from those origins (and keep them: cryopose does not estimate them), and
    the polishing rounds end with a map at the particles' box."""
    from cryopose.io.particles import load_particles

    monkeypatch.chdir(tmp_path)
    sim = tmp_path / "sim" / "p"
    assert main(["simulate", "-i", str(shared_data / "pdb" / "4ake_mdanalysis.pdb"), "--box-size", "24",
                 "-n", "60", "-o", str(sim), "--snr", "5", "--seed", "4", "--shift-max-angstrom", "25",
                 "--no-progress"]) == 0
    out = tmp_path / "refine"
    rc = main(["refine", str(sim.with_suffix(".star")), "--reference", str(shared_data / "pdb" / "4ake_mdanalysis.pdb"),
               "-o", str(out), "--labeled-fraction", "0.5", "--iterations", "3", "--step", "30",
               "--final-step", "7.5", "--polish-rounds", "1", *_NET])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["shifts_estimated"] is False and report["polish_rounds"] == 1
    assert report["map_box"] == 24 and read_map(out / "map.mrc").volume.shape == (24, 24, 24)
    _, truth = load_particles(sim.with_suffix(".star"))
    _, est = load_particles(out / "particles.star")
    torch.testing.assert_close(est.shifts_angstrom.float(), truth.shifts_angstrom.float(), atol=1e-3, rtol=0)
    errors = report["pose_errors_vs_input"]
    assert errors["search"]["median_error_deg"] < 10.0, errors  # 3.9° here; ~40° from the box centre instead
    assert errors["before_polishing"]["n"] == errors["all"]["n"] == 60  # (a 3-step network: no accuracy asked)


def test_refine_working_grid_follows_the_field_of_view():
    """``refine`` searches and trains at pixels of about 10 Å (abinitio's rule), keeps a binned
    reference's grid, and takes an explicit box as given."""
    from cryopose.errors import UserError
    from cryopose.pipelines.refine import refine_working_grid

    box, apix = refine_working_grid(128, 3.54, 3.54)
    assert box == 46 and apix == pytest.approx(128 * 3.54 / 46)
    assert refine_working_grid(128, 3.54, 7.08) == (64, pytest.approx(7.08))  # a map binned by 2
    assert refine_working_grid(128, 3.54, 3.54, 96) == (96, pytest.approx(128 * 3.54 / 96))
    assert refine_working_grid(24, 5.0, 5.0) == (24, pytest.approx(5.0))  # small boxes stay whole
    with pytest.raises(UserError, match="--box-size"):
        refine_working_grid(64, 3.54, 3.54, 128)
