"""Mixtures and morphs in the simulator (:mod:`cryopose.simulate.mixture`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.ctf import compute_ctf
from cryopose.errors import UserError
from cryopose.projection import project
from cryopose.simulate import SimulationConfig, simulate_in_memory
from cryopose.simulate.mixture import (MixtureSpec, check_same_grid, exact_class_counts, parse_class_fractions,
                                       sample_mixture_weights)

pytestmark = pytest.mark.usefixtures("one_thread")


def _volumes(k: int, n: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, n, n, generator=g) for _ in range(k)]


def test_exact_class_counts_sum_and_proportions():
    assert exact_class_counts(2000, (0.5, 0.3, 0.2)).tolist() == [1000, 600, 400]
    counts = exact_class_counts(7, (0.5, 0.3, 0.2))
    assert counts.sum() == 7 and counts.tolist() == [4, 2, 1]


def test_spec_rejects_bad_fractions():
    with pytest.raises(UserError, match="sum to 1"):
        MixtureSpec(class_fractions=(0.6, 0.5))
    with pytest.raises(UserError, match="positive"):
        MixtureSpec(class_fractions=(1.2, -0.2))
    with pytest.raises(UserError, match="at least two"):
        MixtureSpec(class_fractions=(1.0,))
    with pytest.raises(UserError, match="not a number"):
        parse_class_fractions("0.5,x")


def test_weights_one_hot_and_seeded():
    spec = MixtureSpec(class_fractions=(0.5, 0.3, 0.2))
    w1, c1, t1 = sample_mixture_weights(100, spec, generator=torch.Generator().manual_seed(4))
    w2, c2, _ = sample_mixture_weights(100, spec, generator=torch.Generator().manual_seed(4))
    assert t1 is None and np.array_equal(c1, c2)
    assert np.bincount(c1).tolist() == [50, 30, 20]
    assert np.array_equal(w1.argmax(1), c1) and np.allclose(w1.sum(1), 1)
    assert not np.array_equal(c1[:50], np.zeros(50))  # shuffled, not in blocks


def test_discrete_mixture_images_come_from_their_class():
    vols = _volumes(3)
    cfg = SimulationConfig(class_fractions=(0.5, 0.3, 0.2), shift_max_angstrom=4.0)
    images, meta = simulate_in_memory(vols, pixel_size_angstrom=3.0, n_particles=30, config=cfg, generator=2)
    truth = meta.table["rlnCryoposeTrueClass"].to_numpy()
    assert np.bincount(truth).tolist() == [0, 15, 9, 6]
    for i in (0, 7, 21):
        ctf = compute_ctf(meta.ctf[i:i + 1], 16, 3.0)
        expected = [project(v, meta.rotmats[i:i + 1], shifts_px=meta.shifts_angstrom[i:i + 1] / 3.0, ctf=ctf)[0]
                    for v in vols]
        errors = [float((e - images[i]).abs().max() / e.abs().max()) for e in expected]
        assert np.argmin(errors) == truth[i] - 1 and min(errors) < 1e-4 and max(errors) > 0.05


def test_morph_images_are_projections_of_the_morphed_map():
    a, b = _volumes(2, seed=1)
    cfg = SimulationConfig(morph=True, shift_max_angstrom=3.0)
    images, meta = simulate_in_memory([a, b], pixel_size_angstrom=2.0, n_particles=6, config=cfg, generator=1)
    t = meta.table["rlnCryoposeTrueMorph"].to_numpy()
    assert ((t >= 0) & (t <= 1)).all() and t.std() > 0.1
    for i in range(6):
        vol = (1 - float(t[i])) * a + float(t[i]) * b
        ref = project(vol, meta.rotmats[i:i + 1], shifts_px=meta.shifts_angstrom[i:i + 1] / 2.0,
                      ctf=compute_ctf(meta.ctf[i:i + 1], 16, 2.0))[0]
        assert float((ref - images[i]).abs().max() / ref.abs().max()) < 1e-4


def test_one_volume_data_set_unchanged_by_the_mixture_code():
    vol = _volumes(1)[0]
    cfg = SimulationConfig(shift_max_angstrom=2.0, junk_fraction=0.2)
    _, meta1, clean1 = simulate_in_memory(vol, pixel_size_angstrom=2.0, n_particles=20, config=cfg, generator=5,
                                          return_clean=True)
    mix = SimulationConfig(shift_max_angstrom=2.0, junk_fraction=0.2, class_fractions=(0.5, 0.5))
    _, meta2, clean2 = simulate_in_memory([vol, vol], pixel_size_angstrom=2.0, n_particles=20, config=mix,
                                          generator=5, return_clean=True)
    # the same poses, CTFs and junk labels (the class permutation is drawn after them); the
    # blob shapes and the noise come later from the generator and differ
    assert torch.equal(meta1.rotmats, meta2.rotmats)
    structure = torch.from_numpy(meta1.table["rlnCryoposeJunkType"].isin(["none", "offcentre"]).to_numpy().copy())
    assert torch.allclose(clean1[structure], clean2[structure], atol=1e-5 * float(clean1.abs().max()))
    assert "rlnCryoposeTrueClass" not in meta1.table
    junk = meta2.table["rlnCryoposeJunkType"].isin(["noise", "blob"]).to_numpy()
    assert (meta2.table["rlnCryoposeTrueClass"].to_numpy()[junk] == 0).all()


def test_wrong_number_of_structures_and_boxes():
    with pytest.raises(UserError, match="needs 3 structures"):
        simulate_in_memory(_volumes(2), pixel_size_angstrom=2.0, n_particles=4,
                           config=SimulationConfig(class_fractions=(0.5, 0.3, 0.2)))
    with pytest.raises(UserError, match="differ in box"):
        simulate_in_memory([_volumes(1)[0], _volumes(1, n=18)[0]], pixel_size_angstrom=2.0, n_particles=4,
                           config=SimulationConfig(morph=True))


def test_check_same_grid_names_both_files(tmp_path):
    from cryopose.io.mrc import write_map

    write_map(tmp_path / "a.mrc", np.zeros((16, 16, 16), np.float32), 2.0)
    write_map(tmp_path / "b.mrc", np.zeros((16, 16, 16), np.float32), 2.5)
    write_map(tmp_path / "c.mrc", np.zeros((16, 16, 16), np.float32), 2.0)
    check_same_grid([tmp_path / "a.mrc", tmp_path / "c.mrc"])
    with pytest.raises(UserError, match=r"a\.mrc is 16 px at 2 Å.*b\.mrc is 16 px at 2\.5 Å"):
        check_same_grid([tmp_path / "a.mrc", tmp_path / "b.mrc"])
