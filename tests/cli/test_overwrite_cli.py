"""No command replaces existing outputs silently: ``simulate``, ``reconstruct``, ``search`` and
``predict`` refuse with one line naming the file unless ``--force``; ``reconstruct
--no-half-maps --force`` removes the earlier run's half maps and FSC instead of leaving them
beside the new map."""

from __future__ import annotations

import pytest

from cryopose.cli.main import main


@pytest.fixture
def simulated(tmp_path, shared_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["simulate", "-i", str(shared_data / "pdb" / "4ake_mdanalysis.pdb"), "--box-size", "16", "-n", "24",
            "-o", "sim/p", "--snr", "2", "--seed", "1", "--no-progress"]
    assert main(args) == 0
    return args, tmp_path / "sim" / "p.star"


def _one_line(capsys, *words):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and all(w in err[0] for w in words), err


def test_simulate_refuses_to_replace_a_stack_unless_forced(simulated, capsys):
    args, star = simulated
    before = star.with_suffix(".mrcs").stat().st_size
    assert main([*args[:6], "8", *args[7:]]) == 2  # -n 8 into the same name
    _one_line(capsys, "p.star", "--force")
    assert star.with_suffix(".mrcs").stat().st_size == before
    assert main([*args[:6], "8", *args[7:], "--force"]) == 0
    assert star.with_suffix(".mrcs").stat().st_size < before


def test_reconstruct_refuses_and_force_removes_stale_half_maps(simulated, capsys):
    _, star = simulated
    out = star.parent / "m.mrc"
    base = ["reconstruct", str(star), "-o", str(out), "--threads", "1", "--no-progress"]
    assert main(base) == 0
    assert (star.parent / "m_half1.mrc").exists() and (star.parent / "m_fsc.json").exists()
    assert main(base) == 2
    _one_line(capsys, "m.mrc", "--force")
    assert main([*base, "--no-half-maps"]) == 2  # the stale half maps count as outputs too
    assert main([*base, "--no-half-maps", "--force"]) == 0
    assert out.exists() and not (star.parent / "m_half1.mrc").exists()
    assert not (star.parent / "m_fsc.json").exists()


def test_search_and_predict_refuse_existing_outputs(simulated, shared_data, capsys):
    _, star = simulated
    pdb = str(shared_data / "pdb" / "4ake_mdanalysis.pdb")
    search = ["search", str(star), "--reference", pdb, "-o", "poses.star", "--step", "30", "--final-step", "15",
              "--threads", "1"]
    assert main(search) == 0
    assert main(search) == 2
    _one_line(capsys, "poses.star", "--force")
    assert main([*search, "--force"]) == 0
    run = ["abinitio", str(star), "-o", "run", "--box-size", "16", "--epochs", "1", "--batch-size", "8",
           "--hypotheses", "1", "--threads", "1", "--no-progress", "--no-report", "--no-reconstruct"]
    assert main(run) == 0
    capsys.readouterr()
    pred = ["predict", "run/encoder.pt", str(star), "-o", "poses.star", "--no-progress"]
    assert main(pred) == 2
    _one_line(capsys, "poses.star", "--force")
    assert main([*pred, "--force"]) == 0
