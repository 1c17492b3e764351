"""Where STAR image names (``N@stack`` in rlnImageName) point: reading and writing.

RELION resolves a relative name from the folder the program runs in (the project folder), so
written STAR files name their stacks so that they resolve from the current folder, keeping the
input's own names where those did. Reading resolves relative names against the current folder,
then the STAR file's folder, then ``datadir``, and reads stacks only inside those folders
(real paths: ``..`` and symlinks cannot lead out of them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryopose.cli.main import main
from cryopose.errors import InputFileError
from cryopose.io import ParticleMetadata, load_particles, read_star, write_stack, write_star

BOX = 8


def _stack(path: Path, k: int = 3, seed: int = 0) -> np.ndarray:
    """Write a ``k``-image stack of distinct images; return them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(seed).normal(size=(k, BOX, BOX)).astype(np.float32)
    write_stack(path, images, 2.0)
    return images


def _star(path: Path, names: list[str], poses: bool = False) -> Path:
    """A RELION 3.1 STAR naming ``names`` (with ``poses``: angles, zero origins and a CTF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = ["rlnImageName", "rlnOpticsGroup"] + (["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                                                     "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV",
                                                     "rlnDefocusAngle"] if poses else [])
    text = ("data_optics\n\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnImageSize\n_rlnVoltage\n"
            f"_rlnSphericalAberration\n_rlnAmplitudeContrast\n1 2.0 {BOX} 300 2.7 0.1\n\n"
            "data_particles\n\nloop_\n" + "".join(f"_{lab}\n" for lab in labels))
    for i, n in enumerate(names):
        text += f"{n} 1" + (f" {10 * i} {7 * i} {3 * i} 0 0 10000 9000 30" if poses else "") + "\n"
    path.write_text(text)
    return path


def _written(path: Path) -> list[str]:
    """The stack part of every rlnImageName of a STAR written by cryopose (as written)."""
    return [str(v).partition("@")[2] for v in starfile.read(path)["particles"]["rlnImageName"]]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """``proj/`` (the current folder) with ``Extract/a.mrcs``, and ``outside/b.mrcs`` beside it."""
    proj = tmp_path / "proj"
    a = _stack(proj / "Extract" / "a.mrcs", seed=1)
    b = _stack(tmp_path / "outside" / "b.mrcs", seed=2)
    (proj / "out").mkdir()
    monkeypatch.chdir(proj)
    return proj, a, b


# ------------------------------------------------------------------------------------ writing

def test_names_that_resolve_from_the_current_folder_are_kept(project):
    """A RELION project's STAR (names relative to the project folder) keeps its names, wherever
    the output goes: ``relion_reconstruct --i out/x.star`` run in the project reads them."""
    proj, a, b = project
    src = _star(proj / "Select" / "job1" / "particles.star",
                ["2@Extract/a.mrcs", "000001@./Extract/a.mrcs", "3@../outside/b.mrcs"])
    with pytest.raises(InputFileError, match=r"row 3: rlnImageName '3@\.\./outside/b\.mrcs' resolves to "):
        load_particles(src)  # ../outside is outside the allowed folders ...
    stack, meta = load_particles(src, datadir=proj.parent / "outside")  # ... unless named with datadir
    np.testing.assert_array_equal(stack[:].numpy(), np.stack([a[1], a[0], b[2]]))
    for out in (proj / "out" / "deep" / "poses.star", proj / "poses.star", proj.parent / "elsewhere" / "p.star"):
        out.parent.mkdir(parents=True, exist_ok=True)
        write_star(out, meta)
        assert _written(out) == ["Extract/a.mrcs", "Extract/a.mrcs", "../outside/b.mrcs"]
        again, _ = load_particles(out, datadir=proj.parent / "outside")
        np.testing.assert_array_equal(again[:].numpy(), stack[:].numpy())


def test_names_that_resolved_beside_the_star_are_rewritten_from_the_current_folder(project, tmp_path):
    proj, _, _ = project
    inside = _stack(proj / "data" / "c.mrcs", seed=3)
    away = _stack(tmp_path / "away" / "d.mrcs", seed=4)
    m_in = read_star(_star(proj / "data" / "in.star", ["1@c.mrcs", "2@c.mrcs"]))
    m_away = read_star(_star(tmp_path / "away" / "in.star", ["3@d.mrcs"]))
    write_star(proj / "out" / "in.star", m_in)
    write_star(proj / "out" / "away.star", m_away)
    assert _written(proj / "out" / "in.star") == ["data/c.mrcs"] * 2  # inside the current folder: relative
    assert _written(proj / "out" / "away.star") == [str(tmp_path / "away" / "d.mrcs")]  # outside: absolute
    s, _ = load_particles(proj / "out" / "in.star")
    np.testing.assert_array_equal(s[:].numpy(), inside[:2])
    s, _ = load_particles(proj / "out" / "away.star", datadir=tmp_path / "away")
    np.testing.assert_array_equal(s[:].numpy(), away[2:])


def test_absolute_names_stay_absolute(project):
    proj, a, _ = project
    name = str(proj / "Extract" / "a.mrcs")
    stack, meta = load_particles(_star(proj / "in.star", [f"2@{name}"]))  # absolute, inside the current folder
    np.testing.assert_array_equal(stack[:].numpy(), a[1:2])
    write_star(proj / "out" / "p.star", meta)
    assert _written(proj / "out" / "p.star") == [name]


def test_new_stacks_and_relative_to(project, tmp_path):
    """Metadata without source names (a .cs file, a new stack): relative to the current folder when
    inside it, else absolute; ``relative_to`` names another folder programs will run in."""
    proj, _, _ = project
    paths = [str(proj / "Extract" / "a.mrcs"), str(tmp_path / "outside" / "b.mrcs")]
    meta = ParticleMetadata(pixel_size_angstrom=2.0, box_size=BOX, image_paths=paths, image_indices=[0, 2])
    write_star(proj / "out" / "p.star", meta)
    assert starfile.read(proj / "out" / "p.star")["particles"]["rlnImageName"].tolist() == [
        "000001@Extract/a.mrcs", f"000003@{tmp_path / 'outside' / 'b.mrcs'}"]
    write_star(proj / "out" / "q.star", meta, relative_to=tmp_path)
    assert _written(proj / "out" / "q.star") == ["proj/Extract/a.mrcs", "outside/b.mrcs"]


# ------------------------------------------------------------------------------------ reading

def test_dot_dot_to_etc_passwd_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = _star(tmp_path / "data" / "evil.star", ["1@a.mrcs", "1@../../../../../../../../etc/passwd"])
    _stack(tmp_path / "data" / "a.mrcs")
    for call in (read_star, load_particles):
        with pytest.raises(InputFileError) as err:
            call(star)
        msg = str(err.value)
        assert msg.startswith(f"{star}, row 2: rlnImageName '1@../../../../../../../../etc/passwd' resolves to "
                              "/etc/passwd, outside the folders images are read from")
        assert "pass --datadir" in msg and "\n" not in msg


def test_a_valid_stack_reached_through_dot_dot_needs_datadir(tmp_path, monkeypatch):
    """A real MRC outside the data folder and the current folder is not read through ``..``."""
    secret = _stack(tmp_path / "secret" / "s.mrcs", seed=5)
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    star = _star(tmp_path / "proj" / "data" / "p.star", ["2@../../secret/s.mrcs"])
    with pytest.raises(InputFileError, match=r"p\.star, row 1: rlnImageName '2@\.\./\.\./secret/s\.mrcs' resolves "
                                             r"to .*/secret/s\.mrcs, outside the folders .*; pass --datadir"):
        load_particles(star)
    stack, _ = load_particles(star, datadir=tmp_path / "secret")
    np.testing.assert_array_equal(stack[:].numpy(), secret[1:2])


def test_absolute_names_outside_the_folders_are_refused(tmp_path, monkeypatch):
    b = _stack(tmp_path / "outside" / "b.mrcs", seed=2)
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    star = _star(tmp_path / "proj" / "p.star", [f"1@{tmp_path / 'outside' / 'b.mrcs'}"])
    with pytest.raises(InputFileError, match=r"row 1: .*outside the folders images are read from"):
        load_particles(star)
    stack, _ = load_particles(star, datadir=tmp_path / "outside")
    np.testing.assert_array_equal(stack[:].numpy(), b[:1])
    # a folder above the stack also allows it; a sibling folder does not
    assert len(load_particles(star, datadir=tmp_path)[0]) == 1
    (tmp_path / "sibling").mkdir()
    with pytest.raises(InputFileError, match=r"outside the folders"):
        load_particles(star, datadir=tmp_path / "sibling")


def test_symlinks_are_followed_before_the_check(tmp_path, monkeypatch):
    """A link inside the data folder to a file outside it is refused (real paths are checked)."""
    b = _stack(tmp_path / "outside" / "b.mrcs", seed=2)
    (tmp_path / "proj" / "data").mkdir(parents=True)
    (tmp_path / "proj" / "data" / "link.mrcs").symlink_to(tmp_path / "outside" / "b.mrcs")
    (tmp_path / "proj" / "data" / "pw").symlink_to("/etc/passwd")
    monkeypatch.chdir(tmp_path / "proj")
    star = _star(tmp_path / "proj" / "data" / "p.star", ["3@link.mrcs"])
    with pytest.raises(InputFileError, match=r"rlnImageName '3@link\.mrcs' resolves to .*/outside/b\.mrcs, outside"):
        load_particles(star)
    with pytest.raises(InputFileError, match=r"'1@data/pw' resolves to /etc/passwd, outside"):
        load_particles(_star(tmp_path / "proj" / "q.star", ["1@data/pw"]))
    stack, meta = load_particles(star, datadir=tmp_path / "outside")
    np.testing.assert_array_equal(stack[:].numpy(), b[2:])
    assert meta.image_paths == [str(tmp_path / "proj" / "data" / "link.mrcs")]  # the name keeps the link


def test_metadata_only_reads_do_not_check_the_folders(tmp_path, monkeypatch):
    """Poses and CTF (evaluate-poses, train-supervised labels, --ctf STAR) need no images."""
    monkeypatch.chdir(tmp_path)
    star = _star(tmp_path / "p.star", ["1@/somewhere/else/x.mrcs", "1@../../etc/passwd"], poses=True)
    m = read_star(star, require_image_names=False)
    assert len(m) == 2 and m.rotmats is not None and m.box_size == BOX


def test_datadir_must_be_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _stack(tmp_path / "a.mrcs")
    star = _star(tmp_path / "p.star", ["1@a.mrcs"])
    with pytest.raises(InputFileError, match=r"--datadir .*nothere is not a folder"):
        load_particles(star, datadir=tmp_path / "nothere")


def test_real_fixtures_still_load_from_anywhere(shared_data, tmp_path, monkeypatch):
    """Names relative to the STAR file's folder (the shared fixtures) load from any current folder."""
    monkeypatch.chdir(tmp_path)
    for rel in ("relion31_5ptcl/relion31.star", "aspire_sample17/sample_particles_relion31.star",
                "empiar10076_7ptcl/empiar_10076_7.star"):
        stack, meta = load_particles(shared_data / "particles" / rel)
        assert len(stack) == len(meta) > 0
        assert all(Path(p).parent == (shared_data / "particles" / rel).parent for p in meta.image_paths)


# ------------------------------------------------------------------------------------ command line

def test_cli_refuses_in_one_line_and_datadir_allows(tmp_path, monkeypatch, capsys):
    _stack(tmp_path / "outside" / "b.mrcs", seed=2)
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    star = _star(tmp_path / "proj" / "p.star", ["1@../outside/b.mrcs", "2@../outside/b.mrcs",
                                                "3@../outside/b.mrcs"], poses=True)
    args = ["reconstruct", str(star), "-o", "map.mrc", "--no-half-maps", "--no-ctf", "--threads", "1", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cryopose reconstruct: error: {star}, row 1: rlnImageName "
                                               "'1@../outside/b.mrcs' resolves to ")
    assert "pass --datadir" in err[0]
    assert main(args + ["--datadir", str(tmp_path / "outside")]) == 0
    assert (tmp_path / "proj" / "map.mrc").is_file()
    assert os.path.isfile("map.mrc")
