"""``.mrc`` particle stacks (cryoSPARC's) are written ``N@stack.mrc:mrcs`` — RELION refuses
``N@stack.mrc`` ("``.mrc`` extensions are reserved for 3D maps") and reads ``:mrcs`` as a stack —
and cryopose reads such names back to the same images."""

from __future__ import annotations

import shutil

import numpy as np
import starfile

from cryopose.io.particles import load_particles
from cryopose.io.star import write_star


def test_cs_input_is_written_with_the_mrcs_suffix_and_reads_back(shared_data, tmp_path, monkeypatch):
    src = shared_data / "particles" / "empiar10076_7ptcl"
    (tmp_path / "J42").mkdir()
    shutil.copy(src / "empiar_10076_7.cs", tmp_path / "J42" / "J42_particles.cs")
    shutil.copy(src / "empiar_10076_7.mrc", tmp_path / "empiar_10076_7.mrc")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    stack, meta = load_particles("J42/J42_particles.cs")
    write_star("out/particles.star", meta)
    names = starfile.read("out/particles.star")["particles"]["rlnImageName"].tolist()
    assert names == [f"{i:06d}@empiar_10076_7.mrc:mrcs" for i in range(1, 8)]
    stack2, meta2 = load_particles("out/particles.star")
    assert meta2.image_paths == meta.image_paths
    np.testing.assert_array_equal(meta2.image_indices, meta.image_indices)
    np.testing.assert_array_equal(np.asarray(stack2[np.arange(7)]), np.asarray(stack[np.arange(7)]))
    # written again from the file that has the suffix, the names stay as they were
    write_star("out/again.star", meta2)
    assert starfile.read("out/again.star")["particles"]["rlnImageName"].tolist() == names
