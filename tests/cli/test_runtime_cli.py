"""The shared runtime options on real commands: device errors, bf16, streaming, resume with other settings."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from cryopose.cli.main import main
from cryopose.fourier import fourier_downsample_volume
from cryopose.io.mrc import read_map
from cryopose.io.star import read_star
from cryopose.pipelines.demo import BETAGAL_MAP, BETAGAL_PIXEL_SIZE, bundled_path
from cryopose.rotations import geodesic_distance_deg
from cryopose.simulate.simulator import SimulationConfig, simulate_particles

BOX = 16
APIX = BETAGAL_PIXEL_SIZE * 64 / BOX


def _simulate(folder, n: int, seed: int, name: str = "particles"):
    vol = torch.from_numpy(read_map(bundled_path(BETAGAL_MAP), pixel_size_angstrom=BETAGAL_PIXEL_SIZE).volume.copy())
    small = fourier_downsample_volume(vol.double(), BOX).float()
    cfg = SimulationConfig(snr=1.0, shift_max_angstrom=10.0, defocus_range_angstrom=(15000.0, 25000.0))
    return simulate_particles(small, pixel_size_angstrom=APIX, n_particles=n, config=cfg, generator=seed,
                              output=folder / name).star_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch run without reconstruction (its encoder.pt and checkpoint.pt) and 64 new particles."""
    folder = tmp_path_factory.mktemp("runtime")
    star = _simulate(folder, 96, seed=0)
    new = _simulate(folder, 64, seed=5, name="new")
    out = folder / "run"
    rc = main(["abinitio", str(star), "-o", str(out), "--box-size", str(BOX), "--epochs", "1", "--batch-size", "32",
               "--hypotheses", "2", "--threads", "1", "--no-progress", "--no-report", "--no-reconstruct"])
    assert rc == 0
    return folder, star, new, out


def _predict(out, particles, target, *extra):
    rc = main(["predict", str(out / "encoder.pt"), str(particles), "-o", str(target), "--no-progress",
               "--threads", "1", "--device", "cpu", *extra])
    assert rc == 0
    return read_star(target, datadir=particles.parent)


def test_gpu_request_without_the_gpu_is_a_one_line_error(trained, tmp_path, capsys):
    folder, star, new, out = trained
    # cuda:99 exists nowhere: "no CUDA GPU" without CUDA (as here), the GPUs present with it
    want = "no CUDA GPU is available" if not torch.cuda.is_available() else "GPU 99 does not exist"
    for cmd in (["predict", str(out / "encoder.pt"), str(new), "-o", str(tmp_path / "p.star")],
                ["abinitio", str(star), "-o", str(tmp_path / "a")],
                ["reconstruct", str(star), "-o", str(tmp_path / "m.mrc")]):
        capsys.readouterr()
        assert main([*cmd, "--device", "cuda:99", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and want in err[0] and err[0].startswith(f"cryopose {cmd[0]}: error: --device cuda:99")
    if not torch.cuda.is_available():
        assert main(["predict", str(out / "encoder.pt"), str(new), "-o", str(tmp_path / "p.star"),
                     "--device", "cuda"]) == 2
        assert "no CUDA GPU is available" in capsys.readouterr().err
    assert main(["search", str(star), "-r", str(folder / "none.mrc"), "-o", str(tmp_path / "s.star"),
                 "--device", "cuda:99"]) == 2  # CPU-only commands refuse a GPU too
    assert not (tmp_path / "p.star").exists() and not (tmp_path / "a").exists()


def test_predict_bf16_poses_stay_close_to_float32(trained, tmp_path):
    """bf16 autocast of the encoder (the scoring stays float32): poses within 2° of float32's for at
    least 95% of the particles and a median difference below 0.5° (measured here: median 0.10°,
    largest 0.32° over the 64 particles; a wrong choice among the candidates would move a pose by
    tens of degrees)."""
    _, _, new, out = trained
    f32 = _predict(out, new, tmp_path / "f32.star")
    b16 = _predict(out, new, tmp_path / "bf16.star", "--precision", "bf16")
    d = geodesic_distance_deg(f32.rotmats.double(), b16.rotmats.double())
    assert (d < 2.0).float().mean() >= 0.95 and float(d.median()) < 0.5, d
    assert not torch.equal(f32.rotmats, b16.rotmats)  # bf16 did run: the poses moved a little


def test_predict_streamed_equals_in_memory(trained, tmp_path):
    _, _, new, out = trained
    mem = _predict(out, new, tmp_path / "mem.star", "--in-memory")
    for extra in (["--stream"], ["--stream", "--workers", "2"]):
        st = _predict(out, new, tmp_path / "st.star", *extra, "--batch-size", "24")
        d = geodesic_distance_deg(mem.rotmats.double(), st.rotmats.double())
        assert float(d.max()) < 1e-2, extra
        assert torch.allclose(mem.shifts_angstrom, st.shifts_angstrom, atol=1e-3)
        (tmp_path / "st.star").unlink()


def test_resume_with_other_threads_device_and_streaming(trained, tmp_path):
    """Runtime options are no part of the run's config: a resume may change them."""
    _, star, _, out = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    rc = main(["abinitio", str(star), "-o", str(run), "--box-size", str(BOX), "--epochs", "2", "--batch-size", "32",
               "--hypotheses", "2", "--threads", "2", "--device", "cpu", "--stream", "--workers", "1",
               "--no-progress", "--no-report", "--no-reconstruct", "--resume"])
    assert rc == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["runtime"]["threads"] == 2 and cfg["runtime"]["stream"] is True
    assert "num_threads" not in cfg["config"]["training"]
    # what the run computes may not change
    assert main(["abinitio", str(star), "-o", str(run), "--box-size", str(BOX), "--epochs", "3", "--batch-size",
                 "16", "--hypotheses", "2", "--no-progress", "--no-report", "--no-reconstruct", "--resume"]) == 2


def test_predict_under_torchrun_two_gloo_processes_matches_one(trained, tmp_path):
    """2 Gloo processes (torchrun) write one STAR in the particles' order with the poses of one
    process: angles within 1e-3°, confidences within 1e-5 (the batches differ: round-off only)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _, _, new, out = trained
    one = _predict(out, new, tmp_path / "one.star", "--batch-size", "24")
    two = tmp_path / "two.star"
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "cryopose.cli.main", "predict", str(out / "encoder.pt"), str(new), "-o", str(two),
                           "--no-progress", "--threads", "1", "--device", "cpu", "--batch-size", "24"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("predicted poses of 64 particles in 2 processes") == 1  # rank 0 alone reports
    got = read_star(two, datadir=new.parent)
    assert list(got.table["rlnImageName"]) == list(one.table["rlnImageName"])
    d = geodesic_distance_deg(one.rotmats.double(), got.rotmats.double())
    assert float(d.max()) < 1e-3
    conf = [torch.tensor(t["rlnCryoposeConfidence"].to_numpy(dtype=float)) for t in (one.table, got.table)]
    assert torch.allclose(conf[0], conf[1], atol=1e-5)
    # the other commands refuse torchrun rather than let every rank write the same files
    env1 = {**env, "WORLD_SIZE": "2", "RANK": "1"}
    bad = subprocess.run([sys.executable, "-m", "cryopose.cli.main", "reconstruct", str(new), "-o",
                          str(tmp_path / "m.mrc")], capture_output=True, text=True, env=env1, timeout=300)
    assert bad.returncode == 2 and "does not run under torchrun" in bad.stderr


_DDP_SCRIPT = """
import sys, torch
from pathlib import Path
from cryopose.distributed import init_distributed
from cryopose.pipelines.abinitio import run_abinitio
from cryopose.runtime import Runtime
from cryopose.training.config import AbinitioConfig, ModelConfig, TrainingConfig

rank, world, _ = init_distributed(torch.device("cpu"), device_was_auto=False)
cfg = AbinitioConfig(box_size=16, model=ModelConfig(n_hypotheses=2, batch_norm=False),
                     training=TrainingConfig(epochs=1, batch_size=32), reconstruct=False)
run_abinitio(sys.argv[1], Path(sys.argv[2]), config=cfg, progress=False, report=False,
             runtime=Runtime(threads=1, rank=rank, world_size=world))
if world > 1:
    torch.distributed.destroy_process_group()
"""


def test_abinitio_under_torchrun_two_gloo_processes_trains_the_same_model(trained, tmp_path):
    """Data-parallel ab initio, 2 Gloo processes against one (an encoder without batch norm, whose
    per-rank statistics would differ by design): the same files, poses within 1e-3° and weights
    within 1e-4 (measured: 5e-5° and 1.6e-5; round-off of the split batches), the loss history
    equal to 1e-5. The command itself runs under torchrun too and writes its outputs once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from cryopose.training.checkpoint import load_checkpoint

    _, star, _, _ = trained
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    for cmd in ([sys.executable, str(script), str(star), str(tmp_path / "one")],
                [*run, "2", str(script), str(star), str(tmp_path / "two")]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    a, b = (read_star(d / "poses.star", datadir=star.parent) for d in (one, two))
    assert list(a.table["rlnImageName"]) == list(b.table["rlnImageName"])
    assert float(geodesic_distance_deg(a.rotmats.double(), b.rotmats.double()).max()) < 1e-3
    ca, cb = (load_checkpoint(d / "checkpoint.pt") for d in (one, two))
    assert max(float((ca["model"][k].float() - cb["model"][k].float()).abs().max()) for k in ca["model"]) < 1e-4
    assert ca["step"] == cb["step"] == 3 and abs(ca["epoch_losses"][0] - cb["epoch_losses"][0]) < 1e-5
    out = tmp_path / "cli"
    proc = subprocess.run([*run, "2", "-m", "cryopose.cli.main", "abinitio", str(star), "-o", str(out), "--box-size",
                           "16", "--epochs", "1", "--batch-size", "32", "--hypotheses", "2", "--threads", "1",
                           "--device", "cpu", "--no-progress", "--no-report", "--no-reconstruct"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("inferred poses of 96 particles") == 1
    written = {p.name for p in out.iterdir()}
    assert {"poses.star", "encoder.pt", "checkpoint.pt", "config.yaml", "summary.json"} <= written
    assert yaml.safe_load((out / "config.yaml").read_text())["runtime"]["world_size"] == 2
