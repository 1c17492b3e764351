"""``cryopose reconstruct`` on a tiny data set written in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryopose.cli.main import main
from cryopose.ctf import CTFParams, compute_ctf
from cryopose.fourier import fourier_downsample_volume
from cryopose.io.mrc import write_stack
from cryopose.io.particles import ParticleMetadata
from cryopose.io.star import write_star
from cryopose.metrics.fsc import fourier_shell_correlation
from cryopose.projection import project
from cryopose.rotations import random_rotations

BETAGAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"
N = 24
APIX = 3.54 * 100 / N


def _truth() -> torch.Tensor:
    vol = torch.from_numpy(mrcfile.read(BETAGAL).astype(np.float64).copy())
    return fourier_downsample_volume(vol, N)


def _write_particles(folder: Path, k: int = 80, seed: int = 0) -> tuple[Path, torch.Tensor]:
    """A RELION 3.1 STAR + MRCS of noise-free CTF-modulated, shifted projections."""
    vol = _truth()
    g = torch.Generator().manual_seed(seed)
    rot = random_rotations(k, generator=g)
    shifts_a = (torch.rand(k, 2, generator=g, dtype=torch.float64) - 0.5) * 4 * APIX
    du = 9000 + 10000 * torch.rand(k, generator=g)
    ctf = CTFParams.create(defocus_u_angstrom=du, defocus_v_angstrom=du - 300, defocus_angle_deg=30.0)
    images = project(vol, rot, shifts_px=shifts_a / APIX, ctf=compute_ctf(ctf, N, APIX).double())
    stack = folder / "particles.mrcs"
    write_stack(stack, images.float(), APIX)
    meta = ParticleMetadata(pixel_size_angstrom=APIX, box_size=N, rotmats=rot.float(),
                            shifts_angstrom=shifts_a.float(), ctf=ctf, image_paths=[str(stack)] * k,
                            image_indices=np.arange(k))
    star = folder / "particles.star"
    write_star(star, meta)
    return star, vol


def test_reconstruct_round_trip(tmp_path, capsys):
    star, truth = _write_particles(tmp_path)
    out = tmp_path / "out" / "map.mrc"
    out.parent.mkdir()
    rc = main(["reconstruct", str(star), "-o", str(out), "--seed", "3", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "reconstructed 80 particles (C1)" in printed and "FSC 0.143" in printed
    files = {p.name for p in out.parent.iterdir()}
    assert files == {"map.mrc", "map_half1.mrc", "map_half2.mrc", "map_fsc.json"}
    with mrcfile.open(out) as m:
        vol = torch.from_numpy(m.data.astype(np.float64).copy())
        assert vol.shape == (N, N, N)
        assert float(m.voxel_size.x) == pytest.approx(APIX, rel=1e-5)
    _, fsc = fourier_shell_correlation(vol, truth)
    assert fsc[1:N // 2 - 1].min() > 0.9, fsc
    report = json.loads((out.parent / "map_fsc.json").read_text())
    for key in ("resolution_fsc0p5_angstrom", "resolution_fsc0p143_angstrom", "fsc_curve", "nyquist_angstrom",
                "pixel_size_angstrom", "command_line", "cryopose_version"):
        assert key in report
    assert report["command_line"].startswith("cryopose reconstruct")
    assert report["n_particles_per_half"] == [40, 40] and report["ctf_applied"] is True
    assert len(report["fsc_curve"]) == N // 2 + 1
    # same seed, same half sets, same maps
    out2 = tmp_path / "again.mrc"
    assert main(["reconstruct", str(star), "-o", str(out2), "--seed", "3", "--no-progress"]) == 0
    assert np.array_equal(mrcfile.read(out), mrcfile.read(out2))


def test_reconstruct_no_half_maps_symmetry_and_threads(tmp_path):
    star, _ = _write_particles(tmp_path, k=30, seed=1)
    out = tmp_path / "single.mrc"
    rc = main(["reconstruct", str(star), "-o", str(out), "--no-half-maps", "--symmetry", "d2", "--threads", "1",
               "--pixel-size", f"{APIX}", "--no-progress"])
    assert rc == 0
    assert out.is_file() and not (tmp_path / "single_half1.mrc").exists()
    assert not (tmp_path / "single_fsc.json").exists()


@pytest.mark.parametrize("args, message", [
    (["-o", "{tmp}/map.txt"], "must end in .mrc"),
    (["-o", "{tmp}/missing/map.mrc"], "does not exist"),
    (["-o", "{tmp}/map.mrc", "--symmetry", "Q5"], "unknown symmetry"),
    (["-o", "{tmp}/map.mrc", "--pixel-size", "2.0"], "pixel size"),
])
def test_reconstruct_errors_are_one_line(tmp_path, capsys, args, message):
    star, _ = _write_particles(tmp_path, k=10, seed=2)
    rc = main(["reconstruct", str(star)] + [a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("cryopose reconstruct: error:") and message in err and err.count("\n") == 1
