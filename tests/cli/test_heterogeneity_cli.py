"""Heterogeneity on tiny data sets: ``simulate`` mixtures and morphs, ``heterogeneity train`` /
``analyze`` in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryopose.cli.main import main
from cryopose.io.star import read_star

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MAP_D = DATA / "maps" / "10076_classD_32.mrc"
MAP_E = DATA / "maps" / "10076_classE_32.mrc"
OTHER = DATA / "maps" / "EMD-3197.map"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_simulate_discrete_mixture(tmp_path, capsys):
    out = tmp_path / "mix"
    rc = main(["simulate", "--map", str(MAP_D), "--map", str(MAP_E), "--map-pixel-size", "13.1",
               "--class-fractions", "0.7,0.3", "-n", "40", "--snr", "0.5", "-o", str(out), "--no-progress"])
    assert rc == 0
    meta = read_star(out.with_suffix(".star"))
    assert len(meta) == 40 and meta.box_size == 32
    assert np.bincount(meta.table["rlnCryoposeTrueClass"].to_numpy()).tolist() == [0, 28, 12]
    assert "rlnClassNumber" not in meta.table


def test_simulate_morph_records_t(tmp_path):
    out = tmp_path / "morph"
    rc = main(["simulate", "--morph", str(MAP_D), str(MAP_E), "--map-pixel-size", "13.1", "-n", "30",
               "-o", str(out), "--no-ctf"])
    assert rc == 0
    t = read_star(out.with_suffix(".star")).table["rlnCryoposeTrueMorph"].to_numpy()
    assert t.shape == (30,) and t.min() >= 0 and t.max() <= 1 and t.std() > 0.1


@pytest.mark.parametrize("extra, message", [
    (["--map", str(MAP_D), "--map", str(OTHER)], "must share one frame: .*10076_classD_32.mrc is 32 px.*EMD-3197.map is 20 px"),
    (["--map", str(MAP_D), "--map", str(MAP_E), "--class-fractions", "0.5,0.3,0.2"], "3 fractions for 2 structure"),
    (["--morph", str(MAP_D), str(MAP_E), "--class-fractions", "0.5,0.5"], "--class-fractions is for a discrete"),
])
def test_simulate_mixture_bad_input(tmp_path, capsys, extra, message):
    import re

    rc = main(["simulate", *extra, "--map-pixel-size", "13.1", "-n", "10", "-o", str(tmp_path / "bad")])
    assert rc == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "bad.star").exists()
