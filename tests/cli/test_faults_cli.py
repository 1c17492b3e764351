"""Faults through the command line: a full disk, a read-only file system, a folder where a file
is expected end in one line naming the user's path, exit status 2, and nothing left behind."""

from __future__ import annotations

import pytest

import cryopose.io.outputs as outputs
from cryopose.cli.main import main


def _sim(shared_data, out, n=600, *extra):
    return ["simulate", "-i", str(shared_data / "pdb" / "4ake_mdanalysis.pdb"), "--box-size", "32", "-n", str(n),
            "-o", str(out), "--snr", "1", "--seed", "2", "--no-progress", "--threads", "1", *extra]


def _one_line(capsys, *words):
    captured = capsys.readouterr()
    err = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert "Traceback" not in captured.err
    return err[0]


def test_simulate_on_a_2mb_tmpfs_refuses_before_work(tmpfs, shared_data, capsys):
    disk = tmpfs("2m")
    assert main(_sim(shared_data, disk / "p")) == 2  # 600 × 32² float32 = 2.5 MB
    line = _one_line(capsys, str(disk / "p.mrcs"), "needs about", "free")
    assert line.startswith("cryopose simulate: error:")
    assert list(disk.iterdir()) == []


def test_simulate_when_the_disk_fills_during_the_write(tmpfs, shared_data, capsys, monkeypatch):
    disk = tmpfs("2m")
    monkeypatch.setattr(outputs, "free_bytes", lambda folder: 1 << 40)  # the check believes there is room
    assert main(_sim(shared_data, disk / "p")) == 2
    _one_line(capsys, str(disk / "p.mrcs"), "no space left on the device")
    assert list(disk.iterdir()) == []  # no temp file keeps the disk full, no STAR without its stack


def test_simulate_on_a_read_only_file_system(tmpfs, shared_data, capsys):
    disk = tmpfs("2m", read_only=True)
    assert main(_sim(shared_data, disk / "p", 10)) == 2
    _one_line(capsys, "p.star", "read-only")
    assert list(disk.iterdir()) == []


def test_output_paths_blocked_by_folders_and_files(tmp_path, shared_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.star").mkdir()
    assert main(_sim(shared_data, tmp_path / "p", 10)) == 2
    _one_line(capsys, "p.star", "is a folder")
    (tmp_path / "afile").write_text("x")
    assert main(_sim(shared_data, tmp_path / "afile" / "p", 10)) == 2
    _one_line(capsys, "is a file, not a folder")
    assert main(_sim(shared_data, tmp_path / "ok", 10)) == 0
    capsys.readouterr()
    assert main(["reconstruct", "ok.star", "-o", "afile/m.mrc", "--threads", "1", "--no-progress"]) == 2
    _one_line(capsys, "afile")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "ok.mrcs", "ok.star", "ok_config.yaml", "p.star"]


@pytest.mark.parametrize("command", ["reconstruct", "fsc"])
def test_map_outputs_on_a_full_disk(tmpfs, tmp_path, shared_data, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    assert main(_sim(shared_data, tmp_path / "s", 40)) == 0
    assert main(["reconstruct", "s.star", "-o", "m.mrc", "--threads", "1", "--no-progress"]) == 0
    capsys.readouterr()
    disk = tmpfs("64k")
    (disk / "filler").write_bytes(b"\0" * (60 << 10))
    monkeypatch.setattr(outputs, "free_bytes", lambda folder: 1 << 40)
    if command == "reconstruct":
        args = ["reconstruct", "s.star", "-o", str(disk / "m.mrc"), "--threads", "1", "--no-progress"]
    else:
        args = ["fsc", "m_half1.mrc", "m_half2.mrc", "--plot", str(disk / "fsc.png")]
    assert main(args) == 2
    _one_line(capsys, str(disk), "no space left on the device")
    assert [p.name for p in disk.iterdir()] == ["filler"]


def test_refine_refuses_a_reference_on_another_scale_unless_forced(tmp_path, shared_data, capsys, monkeypatch):
    from cryopose.io.mrc import write_map
    from cryopose.simulate import load_volume

    monkeypatch.chdir(tmp_path)
    assert main(_sim(shared_data, tmp_path / "s", 40)) == 0
    vol = load_volume(shared_data / "pdb" / "4ake_mdanalysis.pdb", box_size=32)
    write_map(tmp_path / "wrong.mrc", vol.volume, vol.pixel_size_angstrom * 1.05)  # header 5 % off
    capsys.readouterr()
    assert main(["refine", "s.star", "--reference", "wrong.mrc", "-o", "r", "--threads", "1"]) == 2
    _one_line(capsys, "wrong.mrc", "differs from the particles' pixel size", "by 5%", "--force")
    assert not (tmp_path / "r" / "particles.star").exists()


def test_every_command_that_reads_particles_has_optics_group():
    from cryopose.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    readers = ["abinitio", "search", "refine", "predict", "reconstruct", "train-supervised"]
    for name in readers:
        assert "--optics-group" in sub.choices[name].format_help(), name
    for name in ("latent", "rotinv"):
        helps = [p.format_help() for p in sub.choices[name]._subparsers._group_actions[0].choices.values()]
        assert any("--optics-group" in h for h in helps), name


def test_reconstruct_with_an_optics_group_of_a_mixed_file(tmp_path, capsys, monkeypatch):
    import numpy as np

    from cryopose.io.mrc import write_stack

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    write_stack(tmp_path / "a.mrcs", rng.normal(size=(6, 16, 16)), 2.0)
    write_stack(tmp_path / "b.mrcs", rng.normal(size=(4, 16, 16)), 1.0)
    rows = "".join(f"{i}@a.mrcs 1 {10 * i} {5 * i} {3 * i}\n" for i in range(1, 7))
    rows += "".join(f"{i}@b.mrcs 2 {10 * i} {5 * i} {3 * i}\n" for i in range(1, 5))
    (tmp_path / "mixed.star").write_text(
        "data_optics\n\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnImagePixelSize\n_rlnImageSize\n"
        "1 coarse 2.0 16\n2 fine 1.0 16\n\ndata_particles\n\nloop_\n_rlnImageName\n_rlnOpticsGroup\n"
        "_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n" + rows)
    base = ["reconstruct", "mixed.star", "-o", "m.mrc", "--no-half-maps", "--threads", "1", "--no-progress"]
    assert main(base) == 2
    _one_line(capsys, "mixed.star", "--optics-group")
    assert main([*base, "--optics-group", "coarse"]) == 0
    assert "reconstructed 6 particles" in capsys.readouterr().out
    import mrcfile

    with mrcfile.open(tmp_path / "m.mrc") as m:
        assert float(m.voxel_size.x) == 2.0


def test_reconstruct_refuses_zero_threads_and_states_a_missing_ctf(tmp_path, shared_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*_sim(shared_data, tmp_path / "s", 12), "--no-ctf"]) == 0
    capsys.readouterr()
    base = ["reconstruct", "s.star", "-o", "m.mrc", "--no-half-maps", "--no-progress"]
    assert main([*base, "--threads", "0"]) == 2  # 0 used to mean "all threads"
    _one_line(capsys, "--threads must be >= 1, got 0")
    assert not (tmp_path / "m.mrc").exists()
    assert main([*base, "--threads", "1"]) == 0
    assert "s.star has no CTF parameters; reconstructing without CTF correction" in capsys.readouterr().err


def test_an_os_error_anywhere_is_one_line_naming_the_file(capsys, monkeypatch):
    import errno

    import cryopose.cli.fsc as fsc_cli

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/maps/a.mrc")
    monkeypatch.setattr(fsc_cli, "run", denied)
    assert main(["fsc", "a.mrc", "b.mrc"]) == 2
    assert _one_line(capsys, "cryopose fsc: error: /data/maps/a.mrc: permission denied")
