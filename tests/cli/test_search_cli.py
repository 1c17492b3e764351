"""``cryopose search`` on tiny simulated sets and on every real particle fixture."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import torch
import yaml

from cryopose.cli.main import main
from cryopose.fourier import centered_fft3, centered_ifft3
from cryopose.io.mrc import read_map
from cryopose.io.star import read_star
from cryopose.metrics.pose_error import symmetry_aware_errors


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_map(path, volume, pixel):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(volume, dtype=np.float32))
        m.voxel_size = pixel


def test_search_simulated_recovers_poses_and_shifts(tmp_path, shared_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the user's folder, which holds the stacks
    pdb = shared_data / "pdb" / "4ake_mdanalysis.pdb"
    sim = tmp_path / "sim" / "p"
    assert main(["simulate", "-i", str(pdb), "--box-size", "24", "-n", "12", "-o", str(sim), "--seed", "1",
                 "--shift-max-angstrom", "8", "--no-progress"]) == 0
    out = tmp_path / "out" / "poses.star"
    rc = main(["search", str(sim.with_suffix(".star")), "--reference", str(pdb), "-o", str(out),
               "--shift-range", "10", "--threads", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "12 particles on a 24 px grid" in text and "4608 global rotations" in text
    est, truth = read_star(out), read_star(sim.with_suffix(".star"))
    assert len(est) == 12
    err = symmetry_aware_errors(est.rotmats, truth.rotmats)
    assert err.max() < 3.5, err  # final step 1.875°
    assert (est.shifts_angstrom - truth.shifts_angstrom).norm(dim=-1).max() < 2.5
    scores = est.table["rlnCryoposeSearchScore"].to_numpy(dtype=float)
    assert scores.min() > 0.9 and (scores <= 1.0 + 1e-6).all()
    info = json.loads((out.parent / "poses_search.json").read_text())
    assert info["grid"]["steps_deg"] == [15.0, 7.5, 3.75, 1.875] and info["working_box"] == 24
    cfg = yaml.safe_load((out.parent / "poses_config.yaml").read_text())
    assert cfg["command_line"].startswith("cryopose search") and cfg["config"]["shift_range_angstrom"] == 10


def test_search_cli_rejects_bad_output(tmp_path, shared_data):
    pdb = shared_data / "pdb" / "4ake_mdanalysis.pdb"
    star = shared_data / "particles" / "relion31_5ptcl" / "relion31.star"
    assert main(["search", str(star), "--reference", str(pdb), "-o", str(tmp_path / "x.txt")]) == 2


def _empiar_scores(tmp_path, shared_data, ref_path, tag, particles="empiar_10076_7.star"):
    out = tmp_path / f"{tag}.star"
    rc = main(["search", str(shared_data / "particles" / "empiar10076_7ptcl" / particles), "--reference",
               str(ref_path), "--map-pixel-size", "13.1", "-o", str(out), "--invert-contrast",
               "--shift-range", "40", "--threads", "1"])
    assert rc == 0
    return read_star(out, datadir=shared_data).table["rlnCryoposeSearchScore"].to_numpy(dtype=float)


def test_real_empiar10076_true_map_beats_shuffled_maps(tmp_path, shared_data):
    """7 real particles (320 px, 1.31 Å → 32 px, 13.1 Å) against the real class-D map.

    The true map must score higher, particle by particle, than the same map with its voxels
    shuffled or its Fourier phases randomised (same power spectrum). The mirrored map is a
    different case: projections cannot tell the hands apart (every projection of ``V(Jx)``
    is a projection of ``V``), so its scores must *equal* the true map's within the grid's
    discretisation; a score that separated them would be a bug.
    """
    ref_path = shared_data / "maps" / "10076_classD_32.mrc"
    vol = read_map(ref_path, pixel_size_angstrom=13.1).volume
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(vol.ravel()).reshape(vol.shape)
    ft = centered_fft3(torch.tensor(vol, dtype=torch.float64))
    noise = centered_fft3(torch.tensor(rng.standard_normal(vol.shape)))
    phase_random = centered_ifft3(ft.abs() * noise / noise.abs()).real.numpy()
    maps = {"shuffled": shuffled, "phases": phase_random, "mirror": vol[::-1]}
    for name, v in maps.items():
        _write_map(tmp_path / f"{name}.mrc", v, 13.1)
    true = _empiar_scores(tmp_path, shared_data, ref_path, "true")
    assert true.shape == (7,)
    for name in ("shuffled", "phases"):
        other = _empiar_scores(tmp_path, shared_data, tmp_path / f"{name}.mrc", name)
        assert (true > other).all(), (name, true, other)
        assert true.mean() > other.mean() + 0.08
    mirror = _empiar_scores(tmp_path, shared_data, tmp_path / "mirror.mrc", "mirror")
    assert abs(true.mean() - mirror.mean()) < 0.03
    # the .cs export of the same particles gives the same answer
    cs = _empiar_scores(tmp_path, shared_data, ref_path, "cs", particles="empiar_10076_7.cs")
    np.testing.assert_allclose(cs, true, atol=0.02)


@pytest.mark.parametrize("fixture", [
    ("relion31_5ptcl", "relion31.star", []),
    ("relion31_5ptcl", "relion31.v2.star", []),
    ("aspire_sample17", "sample_particles_relion30.star", []),
    ("aspire_sample17", "sample_particles_relion31.star", []),
    ("aspire_sample17", "sample_relion_data.star", []),
    ("empiar10076_7ptcl", "empiar_10076_7.mrc", ["--pixel-size", "1.31", "--no-ctf"]),
])
def test_every_real_fixture_passes_through_search(tmp_path, shared_data, fixture):
    folder, name, extra = fixture
    # a map of another particle, on another scale: --force (reading every format is what is tested)
    ref = shared_data / "maps" / "relion_tutorial_betagal_100px_3.54A.mrc"
    out = tmp_path / "poses.star"
    rc = main(["search", str(shared_data / "particles" / folder / name), "--reference", str(ref), "-o", str(out),
               "--box-size", "32", "--step", "30", "--final-step", "15", "--shift-range", "20", "--threads", "1",
               "--force", *extra])
    assert rc == 0
    meta = read_star(out, datadir=shared_data)  # absolute names of the shared stacks
    assert meta.rotmats is not None and np.isfinite(meta.rotmats.numpy()).all()
    assert np.isfinite(meta.table["rlnCryoposeSearchScore"].to_numpy(dtype=float)).all()


def test_real_empiar10076_contrast_is_detected(tmp_path, shared_data):
    """The 7 real EMPIAR-10076 particles are dark (raw extraction): how we know is that against
    the real class-D map the search scores with the particles negated beat those as given,
    particle by particle. Detection from the images alone must say the same, in `search` (no
    contrast flag) and in abinitio's preprocessing."""
    import json

    from cryopose.data.dataset import ParticleDataset
    from cryopose.data.preprocess import centre_particles
    from cryopose.io.particles import load_particles
    from cryopose.search.run import ResampledImages

    ref = shared_data / "maps" / "10076_classD_32.mrc"
    star = shared_data / "particles" / "empiar10076_7ptcl" / "empiar_10076_7.star"
    scores = {}
    for tag, flag in (("inverted", ["--invert-contrast"]), ("as_given", ["--no-invert-contrast"]), ("auto", [])):
        out = tmp_path / f"{tag}.star"
        assert main(["search", str(star), "--reference", str(ref), "--map-pixel-size", "13.1", "-o", str(out),
                     "--shift-range", "40", "--threads", "1", *flag]) == 0
        scores[tag] = read_star(out, datadir=shared_data).table["rlnCryoposeSearchScore"].to_numpy(dtype=float)
        info = json.loads((tmp_path / f"{tag}_search.json").read_text())
        if tag == "auto":
            assert info["invert_contrast"] is True and info["contrast_detected"] is True
            assert info["contrast_fraction_bright"] < 0.3
    assert (scores["inverted"] > scores["as_given"]).all(), scores
    np.testing.assert_allclose(scores["auto"], scores["inverted"])
    # abinitio's preprocessing (its working box, whitening, RELION normalisation) agrees
    stack, meta = load_particles(star)
    ds = ParticleDataset(ResampledImages(stack, 64), meta.replace(box_size=64, pixel_size_angstrom=1.31 * 5),
                         use_shifts=False, per_image=True, whiten=True)
    assert centre_particles(ds, iterations=1).contrast_sign == -1


def test_search_refuses_a_map_pixel_size_that_disagrees_unless_forced(tmp_path, shared_data, capsys):
    """A reference whose voxel size is off (1 Å instead of 13.1 Å) covers another field of view and
    is no binned copy of the particles' box: refused in one line naming --map-pixel-size and
    --force; with --force the warnings reach stderr, not only the JSON. The real 13.1 Å map of
    the 1.31 Å particles (binned 10×, same field of view) is accepted
    (test_real_empiar10076_contrast_is_detected)."""
    star = shared_data / "particles" / "empiar10076_7ptcl" / "empiar_10076_7.star"
    args = ["search", str(star), "--reference", str(shared_data / "maps" / "10076_classD_32.mrc"),
            "--map-pixel-size", "1.0", "--box-size", "32", "--step", "30", "--final-step", "15",
            "-o", str(tmp_path / "p.star"), "--threads", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "voxel size (1 Å) differs from the particles' pixel size (1.31 Å)" in err[0]
    assert "--map-pixel-size" in err[0] and "--force" in err[0] and not (tmp_path / "p.star").exists()
    assert main([*args, "--force"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "field of view" in err and "--map-pixel-size" in err
