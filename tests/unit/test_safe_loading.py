"""No code runs from a model file or a CTF table.

Each loader gets a crafted file whose unpickling would create a marker file (a ``__reduce__``
that calls ``Path.touch``). The loader must refuse it with one line naming the file (exit
status 2 through the CLI) and the marker must not appear. A control check first shows that
an unsafe load (``weights_only=False``, ``pickle.load``, ``allow_pickle=True``) of the same file
does create the marker, so the files are truly malicious.
"""

from __future__ import annotations

import pathlib
import pickle

import numpy as np
import pytest
import torch

from cryopose.cli.main import main
from cryopose.errors import InputFileError, UserError
from cryopose.io.mrc import write_map, write_stack
from cryopose.models.supervised import load_pose_model
from cryopose.simulate.ctf_table import load_ctf_table
from cryopose.training.checkpoint import load_checkpoint, save_checkpoint, to_plain
from cryopose.training.latent import load_latent_checkpoint
from cryopose.training.rotinv import load_rotinv_checkpoint


class _Touch:
    """Unpickles as ``Path.touch(marker)``: the stand-in for arbitrary code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "MARKER"


def _evil_torch(path: pathlib.Path, marker: pathlib.Path, **payload) -> pathlib.Path:
    """A torch file shaped like a real checkpoint, with a code-running object inside."""
    torch.save({**payload, "payload": _Touch(marker)}, path)
    torch.load(path, weights_only=False)  # control: an unsafe load runs the code
    assert marker.exists()
    marker.unlink()
    return path


def _one_error_line(capsys, command: str, path: pathlib.Path) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cryopose {command}: error: {path}")
    return lines[0]


def _tiny_stack(tmp_path) -> pathlib.Path:
    path = tmp_path / "p.mrcs"
    write_stack(path, np.random.default_rng(0).normal(size=(4, 16, 16)).astype(np.float32), 2.0)
    return path


def test_abinitio_resume_refuses_a_code_running_checkpoint(tmp_path, marker, capsys):
    out = tmp_path / "run"
    out.mkdir()
    ck = _evil_torch(out / "checkpoint.pt", marker, format="cryopose-cryoposenet-1")
    assert main(["abinitio", str(_tiny_stack(tmp_path)), "-o", str(out), "--resume", "--no-progress"]) == 2
    assert "refused" in _one_error_line(capsys, "abinitio", ck)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["encoder", "supervised"])
def test_predict_refuses_a_code_running_model_file(tmp_path, marker, capsys, kind):
    extra = {"model_kind": "supervised"} if kind == "supervised" else {"format": "cryopose-cryoposenet-1"}
    model = _evil_torch(tmp_path / "model.pt", marker, **extra)
    assert main(["predict", str(model), str(_tiny_stack(tmp_path)), "-o", str(tmp_path / "poses.star")]) == 2
    assert "refused" in _one_error_line(capsys, "predict", model)
    assert not marker.exists() and not (tmp_path / "poses.star").exists()


def test_load_pose_model_refuses_a_code_running_file(tmp_path, marker):
    model = _evil_torch(tmp_path / "model.pt", marker, model_kind="supervised")
    with pytest.raises(InputFileError, match="refused") as err:
        load_pose_model(model)
    assert str(model) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_latent_analyze_refuses_a_code_running_checkpoint(tmp_path, marker, capsys):
    out = tmp_path / "latent"
    out.mkdir()
    ck = _evil_torch(out / "checkpoint.pt", marker, format="cryopose-vaegan-1")
    assert main(["latent", "analyze", str(out), "--particles", str(_tiny_stack(tmp_path)), "--no-figures"]) == 2
    assert "refused" in _one_error_line(capsys, "latent", ck)
    with pytest.raises(UserError, match="refused"):
        load_latent_checkpoint(ck)
    assert not marker.exists()


def test_rotinv_predict_refuses_a_code_running_checkpoint(tmp_path, marker, capsys):
    out = tmp_path / "rotinv"
    out.mkdir()
    ck = _evil_torch(out / "checkpoint.pt", marker, format="cryopose-rotinv-1")
    assert main(["rotinv", "predict", str(out), "--particles", str(_tiny_stack(tmp_path))]) == 2
    assert "refused" in _one_error_line(capsys, "rotinv", ck)
    with pytest.raises(UserError, match="refused"):
        load_rotinv_checkpoint(ck)
    assert not marker.exists()


def test_a_raw_pickle_with_a_pt_name_is_refused(tmp_path, marker):
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "cryopose-cryoposenet-1", "x": _Touch(marker)}, f)
    with pytest.raises(InputFileError, match="checkpoint.pt"):
        load_checkpoint(path)
    assert not marker.exists()


def _tiny_map(tmp_path) -> pathlib.Path:
    path = tmp_path / "vol.mrc"
    write_map(path, np.random.default_rng(1).random((16, 16, 16)).astype(np.float32), 3.0)
    return path


def _simulate(tmp_path, table) -> int:
    return main(["simulate", str(_tiny_map(tmp_path)), "-o", str(tmp_path / "sim.star"), "-n", "2",
                 "--ctf-table", str(table), "--no-progress"])


def test_simulate_refuses_a_pickled_ctf_table(tmp_path, marker, capsys):
    table = tmp_path / "ctf.pkl"
    with open(table, "wb") as f:
        pickle.dump(_Touch(marker), f)
    assert _simulate(tmp_path, table) == 2
    line = _one_error_line(capsys, "simulate", table)
    assert ".npy" in line and ".star" in line and ".csv" in line and "numpy.save('ctf.npy'" in line
    assert not marker.exists() and not (tmp_path / "sim.star").exists()


def test_simulate_refuses_an_object_array_npy(tmp_path, marker, capsys):
    table = tmp_path / "ctf.npy"
    np.save(table, np.array([_Touch(marker)], dtype=object), allow_pickle=True)
    np.load(table, allow_pickle=True)  # control: an unsafe load runs the code
    assert marker.exists()
    marker.unlink()
    assert _simulate(tmp_path, table) == 2
    assert "refused" in _one_error_line(capsys, "simulate", table)
    assert not marker.exists()


_STAR = """
data_optics
loop_
_rlnOpticsGroup
_rlnVoltage
_rlnSphericalAberration
_rlnAmplitudeContrast
_rlnImagePixelSize
1 300 2.7 0.07 1.5

data_particles
loop_
_rlnDefocusU
_rlnDefocusV
_rlnDefocusAngle
_rlnOpticsGroup
20000 19000 30 1
15000 15500 10 1
"""

_STAR30_NO_PIXEL = """
data_
loop_
_rlnDefocusU
_rlnDefocusV
_rlnDefocusAngle
_rlnVoltage
_rlnSphericalAberration
_rlnAmplitudeContrast
20000 19000 30 300 2.7 0.07
15000 15500 10 300 2.7 0.07
"""


def test_safe_ctf_table_formats_agree(tmp_path):
    expect = np.array([[0, 1.5, 20000, 19000, 30, 300, 2.7, 0.07, 0],
                       [0, 1.5, 15000, 15500, 10, 300, 2.7, 0.07, 0]], dtype=np.float64)
    (tmp_path / "t.star").write_text(_STAR)
    np.testing.assert_allclose(load_ctf_table(tmp_path / "t.star"), expect)
    (tmp_path / "t30.star").write_text(_STAR30_NO_PIXEL)
    np.testing.assert_allclose(load_ctf_table(tmp_path / "t30.star")[:, 2:], expect[:, 2:])
    rows = "\n".join(",".join(f"{v:g}" for v in r) for r in expect)
    (tmp_path / "t.csv").write_text("box,apix,dfu,dfv,dfang,kv,cs,w,phase\n" + rows + "\n")
    np.testing.assert_allclose(load_ctf_table(tmp_path / "t.csv"), expect)
    np.save(tmp_path / "t.npy", expect.astype(np.float32))
    np.testing.assert_allclose(load_ctf_table(tmp_path / "t.npy"), expect, rtol=1e-6)
    (tmp_path / "t.txt").write_text(rows)
    with pytest.raises(InputFileError, match=r"\.npy .*\.star .*\.csv"):
        load_ctf_table(tmp_path / "t.txt")


def test_saved_checkpoints_are_plain_and_round_trip(tmp_path):
    import dataclasses

    @dataclasses.dataclass
    class Cfg:
        betas: tuple = (0.5, 0.9)
        name: str = "x"

    state = {"cfg": Cfg(), "idx": np.arange(3), "w": np.float64(0.5), "where": tmp_path,
             "sd": torch.nn.BatchNorm1d(2).state_dict(), "gen": torch.Generator().manual_seed(1).get_state()}
    path = save_checkpoint(tmp_path / "c.pt", state)
    back = torch.load(path, weights_only=True)  # what load_checkpoint does
    assert back["cfg"] == {"betas": (0.5, 0.9), "name": "x"} and back["w"] == 0.5 and type(back["w"]) is float
    assert torch.equal(back["idx"], torch.arange(3)) and back["where"] == str(tmp_path)
    assert back["sd"]._metadata == state["sd"]._metadata
    assert load_checkpoint(path)["format"] == "cryopose-cryoposenet-1"
    with pytest.raises(TypeError, match="slice"):
        to_plain({"bad": slice(1, 2)})
    with pytest.raises(InputFileError, match="supervised model"):
        load_checkpoint(path, ("cryopose-supervised-1",))


def test_an_older_trusted_file_converts_with_the_documented_line(tmp_path):
    """Files of earlier versions held NumPy scalars (refused now); the line the refusal
    message gives converts a trusted one, and its legacy ``model_kind`` tag still reads."""
    from cryopose.models.supervised import OrientationRegressor, SupervisedModelConfig
    from cryopose.training.supervised import save_checkpoint as save_supervised

    torch.manual_seed(0)
    net = OrientationRegressor(SupervisedModelConfig(box_size=16, width=4, n_blocks=2, head_channels=16, hidden=32))
    path = save_supervised(tmp_path / "model.pt", net.eval(), pixel_size_angstrom=2.0)
    old = torch.load(path, weights_only=True)
    del old["format"]
    old["extra"] = {"w": np.float64(0.3), "train_indices": np.arange(4)}
    torch.save(old, path)  # as an earlier cryopose wrote it
    with pytest.raises(InputFileError, match="convert it once with") as err:
        load_pose_model(path)
    assert "NEW.pt" in str(err.value)
    torch.save(to_plain(torch.load(path, weights_only=False)), path)  # the line, run on a trusted file
    images = torch.randn(2, 16, 16)
    with torch.no_grad():
        expected = net.to_rotmat(net(images))
    torch.testing.assert_close(load_pose_model(path)(images)[0], expected)


def test_random_bytes_are_not_a_pytorch_file(tmp_path):
    import os

    from cryopose.training.checkpoint import read_torch_file

    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x13" + os.urandom(999))
    with pytest.raises(InputFileError, match=r"garbage\.pt: not a readable model file: not a PyTorch file \(damaged"):
        read_torch_file(bad, "model file")


def test_heterogeneity_files_refuse_code_running_pickles(tmp_path, marker):
    """The heterogeneity runs' checkpoints and model files (pose-aware resume, VAE-GAN resume and
    its generator) go through the same weights-only loader."""
    from cryopose.training.checkpoint import HETERO_VAEGAN_FORMAT, HETEROGENEITY_FORMAT
    from cryopose.training.hetero_vaegan import load_generator

    run = tmp_path / "inv"
    run.mkdir()
    _evil_torch(run / "model.pt", marker, format=HETERO_VAEGAN_FORMAT)
    with pytest.raises(InputFileError, match="refused"):
        load_generator(run)
    for fmt in (HETERO_VAEGAN_FORMAT, HETEROGENEITY_FORMAT):
        ck = _evil_torch(tmp_path / f"{fmt}.pt", marker, format=fmt)
        with pytest.raises(InputFileError, match="refused"):
            load_checkpoint(ck, formats=(fmt,))
    assert not marker.exists()
