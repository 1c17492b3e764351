"""ParticleStack (lazy image reads), ParticleMetadata and load_particles."""

from __future__ import annotations

import pickle
import warnings

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch

from cryopose.errors import InputFileError, PixelSizeError
from cryopose.io import ParticleMetadata, ParticleStack, load_particles, read_star, write_stack


def _raw(shared_data, rel):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # relion31.mrcs lacks the MAP id
        with mrcfile.open(shared_data / "particles" / rel, permissive=True) as m:
            return np.array(m.data)


def _write_star(path, names, box=None, pixel=1.0):
    labels = ["rlnImageName", "rlnOpticsGroup"]
    optics = "data_optics\n\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n" + ("_rlnImageSize\n" if box else "")
    optics += f"1 {pixel}" + (f" {box}" if box else "") + "\n\n"
    body = "data_particles\n\nloop_\n" + "".join(f"_{lab}\n" for lab in labels) + "".join(f"{n} 1\n" for n in names)
    path.write_text(optics + body)
    return path


def test_stack_indexing_matches_the_file(shared_data):
    stack, meta = load_particles(shared_data / "particles" / "aspire_sample17" / "sample_particles_relion31.star")
    raw = _raw(shared_data, "aspire_sample17/sample.mrcs")
    assert len(stack) == len(meta) == 17 and stack.box_size == 200 and stack.pixel_size_angstrom == 1.4
    assert stack[3].shape == (1, 200, 200) and stack[3].dtype == torch.float32
    np.testing.assert_array_equal(stack[-1].numpy()[0], raw[16])
    np.testing.assert_array_equal(stack[2:5].numpy(), raw[2:5])
    np.testing.assert_array_equal(stack[[5, 0, 5]].numpy(), raw[[5, 0, 5]])
    np.testing.assert_array_equal(stack[torch.tensor([1, 2])].numpy(), raw[1:3])
    mask = np.zeros(17, bool)
    mask[[0, 16]] = True
    np.testing.assert_array_equal(stack[mask].numpy(), raw[[0, 16]])
    assert stack[np.array([], dtype=np.int64)].shape == (0, 200, 200)
    with pytest.raises(IndexError):
        stack[17]
    chunks = list(stack.iter_chunks(5))
    assert [c[0].tolist() for c in chunks][-1] == [15, 16] and len(chunks) == 4
    np.testing.assert_array_equal(torch.cat([c[1] for c in chunks]).numpy(), raw)
    clone = pickle.loads(pickle.dumps(stack))  # DataLoader workers get a copy
    assert torch.equal(clone[7], stack[7])
    sub = stack.subset([16, 2])
    np.testing.assert_array_equal(sub[:].numpy(), raw[[16, 2]])


def test_reads_are_grouped_across_files(shared_data, tmp_path):
    a = _raw(shared_data, "relion31_5ptcl/relion31.mrcs")
    write_stack(tmp_path / "x.mrcs", a[::-1].copy(), 2.806)
    paths = [str(shared_data / "particles" / "relion31_5ptcl" / "relion31.mrcs"), str(tmp_path / "x.mrcs")] * 5
    idx = np.repeat(np.arange(5), 2)
    stack = ParticleStack(paths, idx, 256, 2.806)
    got = stack[[9, 0, 1, 4]].numpy()
    np.testing.assert_array_equal(got, np.stack([a[0], a[0], a[4], a[2]]))


def test_index_out_of_range_names_star_row_stack_and_range(shared_data, tmp_path):
    src = shared_data / "particles" / "empiar10076_7ptcl" / "empiar_10076_7.mrc"
    star = _write_star(tmp_path / "p.star", [f"1@{src}", f"7@{src}", f"9@{src}"], pixel=1.31)
    with pytest.raises(InputFileError, match=r"p\.star, row 3: image 9@.*empiar_10076_7\.mrc is out of range: "
                                             r"the stack holds 7 images \(valid 1\.\.7\)"):
        load_particles(star, datadir=src.parent)
    meta = read_star(star, datadir=src.parent)
    stack = ParticleStack(meta.image_paths, meta.image_indices, 320, 1.31, source=str(star))
    assert stack[:2].shape == (2, 320, 320)  # reading good rows works; the bad one fails on read
    with pytest.raises(InputFileError, match=r"p\.star, row 3: image 9@"):
        stack[2]
    sub = meta.subset([2])  # rows keep naming the source file's row after subsetting
    with pytest.raises(InputFileError, match=r"p\.star, row 3: image 9@"):
        ParticleStack(sub.image_paths, sub.image_indices, 320, 1.31, source=str(star),
                      rows=sub.table.index.to_numpy() + 1)[0]


def test_nan_pixels_name_the_image(tmp_path):
    imgs = np.zeros((3, 8, 8), np.float32)
    imgs[1, 4, 4] = np.nan
    with warnings.catch_warnings(), mrcfile.new(tmp_path / "nan.mrcs") as m:
        warnings.simplefilter("ignore")  # mrcfile warns about the NaN we want
        m.set_data(imgs)
        m.voxel_size = 1.0
    star = _write_star(tmp_path / "n.star", ["1@nan.mrcs", "2@nan.mrcs", "3@nan.mrcs"])
    stack, _ = load_particles(star)  # the header check does not read pixels
    assert stack[[0, 2]].shape == (2, 8, 8)
    with pytest.raises(InputFileError, match=r"n\.star, row 2: image 2@.*nan\.mrcs has NaN or infinite pixels"):
        stack[:]


def test_wrong_box_size(shared_data, tmp_path):
    src = shared_data / "particles" / "empiar10076_7ptcl" / "empiar_10076_7.mrc"
    star = _write_star(tmp_path / "b.star", [f"1@{src}"], box=64, pixel=1.31)
    with pytest.raises(InputFileError, match=r"b\.star, row 1: images in .*empiar_10076_7\.mrc are 320×320 pixels "
                                             r"but the box size is 64"):
        load_particles(star, datadir=src.parent)


def test_missing_and_truncated_stacks(tmp_path):
    star = _write_star(tmp_path / "m.star", ["1@a.mrcs", "1@gone.mrcs"])
    write_stack(tmp_path / "a.mrcs", np.zeros((2, 8, 8)), 1.0)
    with pytest.raises(InputFileError, match=r"m\.star, row 2: stack file not found: .*gone\.mrcs; image names are "
                                             r"resolved relative to the current folder \(as RELION does\), then the STAR "
                                             r"file's folder; pass --datadir"):
        load_particles(star)
    data = (tmp_path / "a.mrcs").read_bytes()
    (tmp_path / "a.mrcs").write_bytes(data[:-10])
    star = _write_star(tmp_path / "t.star", ["2@a.mrcs"])
    with pytest.raises(InputFileError, match=r"t\.star, row 1: cannot read stack .*a\.mrcs: truncated: header says "
                                             r"2 images of 8×8"):
        load_particles(star)


def test_bare_stack(shared_data, tmp_path):
    mrcs = shared_data / "particles" / "aspire_sample17" / "sample.mrcs"
    with pytest.raises(PixelSizeError, match=r"sample\.mrcs: the MRC header has no pixel size.*--pixel-size"):
        load_particles(mrcs)  # header voxel is 0
    stack, meta = load_particles(mrcs, pixel_size_angstrom=1.338)
    assert len(stack) == 17 and meta.rotmats is None and meta.ctf is None and meta.box_size == 200
    np.testing.assert_array_equal(stack[0].numpy()[0], _raw(shared_data, "aspire_sample17/sample.mrcs")[0])
    # the rows of a CTF STAR supply poses and CTF, one per image in stack order
    ctf_star = shared_data / "particles" / "aspire_sample17" / "sample_particles_relion30.star"
    stack, meta = load_particles(mrcs, ctf_star=ctf_star)
    assert meta.pixel_size_angstrom == pytest.approx(1.338) and meta.rotmats.shape == (17, 3, 3)
    assert meta.ctf.defocus_u_angstrom[0].item() == pytest.approx(21186.804688)
    assert meta.image_paths == [str(mrcs)] * 17
    other = shared_data / "particles" / "relion31_5ptcl" / "relion31.mrcs"
    with pytest.raises(InputFileError, match=r"sample_particles_relion30\.star: has 17 particle rows but .*relion31\.mrcs "
                                             r"holds 5 images"):
        load_particles(other, ctf_star=ctf_star)
    with pytest.raises(InputFileError, match="unknown particle file type"):
        load_particles(tmp_path / "x.txt")


def test_star_pixel_size_wins_over_a_wrong_header(shared_data):
    """relion31.mrcs says 1.0 Å in its header; the STAR's 2.806 Å is the real one."""
    stack, meta = load_particles(shared_data / "particles" / "relion31_5ptcl" / "relion31.star")
    assert stack.pixel_size_angstrom == meta.pixel_size_angstrom == 2.806


def test_metadata_validation_and_subset():
    rot = torch.eye(3).expand(4, 3, 3)
    m = ParticleMetadata(pixel_size_angstrom=1.5, box_size=32, rotmats=rot, shifts_angstrom=torch.zeros(4, 2),
                         image_paths=["/a.mrcs"] * 4, image_indices=[0, 1, 2, 3])
    assert len(m) == 4 and isinstance(m.table, pd.DataFrame) and m.image_indices.dtype == np.int64
    s = m.subset(np.array([True, False, True, False]))
    assert len(s) == 2 and s.image_indices.tolist() == [0, 2] and s.table.index.tolist() == [0, 2]
    assert m.replace(box_size=64).box_size == 64
    with pytest.raises(ValueError, match="different lengths"):
        m.replace(shifts_angstrom=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"rotmats must be \(N, 3, 3\)"):
        m.replace(rotmats=torch.zeros(4, 3))
    with pytest.raises(PixelSizeError):
        m.replace(pixel_size_angstrom=0.0)


def test_duplicate_image_names_are_refused_naming_the_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path / "d.mrcs", np.random.default_rng(0).normal(size=(4, 8, 8)), 1.0)
    ok = _write_star(tmp_path / "ok.star", ["1@d.mrcs", "2@d.mrcs", "3@d.mrcs", "4@d.mrcs"])
    assert len(load_particles(ok)[1]) == 4
    dup = _write_star(tmp_path / "dup.star", ["1@d.mrcs", "2@d.mrcs", "3@d.mrcs", "2@./d.mrcs", "2@d.mrcs"])
    with pytest.raises(InputFileError, match=r"dup\.star: rows 2, 4, 5 name the same image '2@d\.mrcs' "
                                             r"\(2 repeated rows in all\)"):
        load_particles(dup)
    assert len(read_star(dup)) == 5  # reading the metadata alone (no images) accepts them


def _two_optics_groups(tmp_path):
    """Particles 1–3 in group 1 (2 Å, 8 px), 4–5 in group 2 ('fine', 1 Å, 8 px): mixed pixel sizes."""
    rng = np.random.default_rng(1)
    write_stack(tmp_path / "g1.mrcs", rng.normal(size=(3, 8, 8)), 2.0)
    write_stack(tmp_path / "g2.mrcs", rng.normal(size=(2, 8, 8)), 1.0)
    text = ("data_optics\n\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnImagePixelSize\n_rlnImageSize\n"
            "1 coarse 2.0 8\n2 fine 1.0 8\n\ndata_particles\n\nloop_\n_rlnImageName\n_rlnOpticsGroup\n"
            "1@g1.mrcs 1\n1@g2.mrcs 2\n2@g1.mrcs 1\n2@g2.mrcs 2\n3@g1.mrcs 1\n")
    (tmp_path / "mixed.star").write_text(text)
    return tmp_path / "mixed.star"


def test_optics_group_selects_one_group_by_number_or_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = _two_optics_groups(tmp_path)
    with pytest.raises(InputFileError, match=r"optics groups have different pixel.*--optics-group N or NAME"):
        load_particles(star)
    stack, meta = load_particles(star, optics_group="fine")
    assert len(meta) == 2 and meta.pixel_size_angstrom == 1.0 and (meta.optics_group == 2).all()
    assert meta.table["rlnImageName"].tolist() == ["1@g2.mrcs", "2@g2.mrcs"] and stack[:].shape == (2, 8, 8)
    _, meta1 = load_particles(star, optics_group=1)
    assert len(meta1) == 3 and meta1.pixel_size_angstrom == 2.0
    assert len(load_particles(star, optics_group="1")[1]) == 3
    with pytest.raises(InputFileError, match=r"no optics group 'other' in data_optics \(groups: 1 \(coarse\), "
                                             r"2 \(fine\)\)"):
        load_particles(star, optics_group="other")
    with pytest.raises(InputFileError, match="bare stack has no optics groups"):
        load_particles(tmp_path / "g1.mrcs", optics_group=1)
