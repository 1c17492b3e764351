"""MRC maps and stacks: real files from shared/data, round trips, atomicity, bad files."""

from __future__ import annotations

import os

import mrcfile
import numpy as np
import pytest
import torch

from cryopose.errors import InputFileError, PixelSizeError
from cryopose.io import atomic_write, atomic_write_text, load_particles
from cryopose.io.mrc import StackWriter, open_stack, read_header_info, read_map, stack_array, write_map, write_stack


# ------------------------------------------------------------------------------------ real maps

@pytest.mark.parametrize("name, shape, header_px", [
    ("relion_tutorial_betagal_100px_3.54A.mrc", (100, 100, 100), 3.54),
    ("10076_classD_32.mrc", (32, 32, 32), 1.0),   # header says 1.0; the real pixel is 13.1 Å
    ("10076_classE_32.mrc", (32, 32, 32), 1.0),
    ("EMD-3197.map", (20, 20, 20), 11.4),
])
def test_real_maps_load(shared_data, name, shape, header_px):
    m = read_map(shared_data / "maps" / name)
    assert m.volume.shape == shape and m.volume.dtype == np.float32
    assert m.pixel_size_angstrom == pytest.approx(header_px, rel=1e-6)
    assert np.isfinite(m.volume).all() and m.volume.std() > 0


def test_explicit_pixel_size_overrides_wrong_header(shared_data):
    m = read_map(shared_data / "maps" / "10076_classD_32.mrc", pixel_size_angstrom=13.1)
    assert m.pixel_size_angstrom == 13.1 and m.voxel_size_angstrom == (13.1, 13.1, 13.1)


def test_emd3001_axis_order_is_resolved(shared_data):
    """EMD-3001 is stored 25 sections × 43 rows × 73 columns with mapc=3 (columns along z),
    mapr=1, maps=2: as (z, y, x) it is 73 × 25 × 43 and keeps the same voxels."""
    path = shared_data / "maps" / "EMD-3001.map"
    m = read_map(path)
    assert m.volume.shape == (73, 25, 43)
    raw = mrcfile.read(path)  # (sections=y, rows=x, columns=z)
    assert raw.shape == (25, 43, 73)
    np.testing.assert_array_equal(m.volume, np.transpose(raw, (2, 0, 1)))
    vx, vy, vz = m.voxel_size_angstrom  # cella / (mx, my, mz) = 17.93/40, 4.71/12, 33.03/72
    assert (vx, vy, vz) == pytest.approx((17.93 / 40, 4.71 / 12, 33.03 / 72), rel=1e-5)
    with pytest.raises(InputFileError, match=r"EMD-3001\.map: map is 43×25×73 voxels.*cubic"):
        read_map(path, require_cubic=True)


def test_require_cubic_accepts_cubic_maps(shared_data):
    m = read_map(shared_data / "maps" / "EMD-3197.map", require_cubic=True)
    assert m.volume.shape == (20, 20, 20)


def test_zero_header_pixel_size_needs_explicit_value(tmp_path):
    path = tmp_path / "zero.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((4, 4, 4), np.float32))
        mrc.voxel_size = 0.0
    with pytest.raises(PixelSizeError, match=r"zero\.mrc.*--pixel-size"):
        read_map(path)
    assert read_map(path, pixel_size_angstrom=2.0).pixel_size_angstrom == 2.0


# ------------------------------------------------------------------------------------ writing

def test_write_map_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(6, 7, 8))
    path = tmp_path / "v.mrc"
    write_map(path, torch.from_numpy(vol), 1.5)
    m = read_map(path)
    np.testing.assert_array_equal(m.volume, vol.astype(np.float32))
    assert m.pixel_size_angstrom == pytest.approx(1.5)
    with mrcfile.open(path) as mrc:  # strict mrcfile accepts what we write
        assert mrc.data.dtype == np.float32 and tuple(mrc.header.origin.tolist()) == (0.0, 0.0, 0.0)
        assert mrc.header.dmax == pytest.approx(vol.max(), rel=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mrc"]  # no temporary file left


def test_write_stack_and_stack_writer_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(5, 8, 8)).astype(np.float32)
    write_stack(tmp_path / "a.mrcs", imgs, 2.0)
    with StackWriter(tmp_path / "b.mrcs", 5, 8, 2.0) as w:
        w.write(3, imgs[3:])
        assert not (tmp_path / "b.mrcs").exists()  # appears only when complete
        w.write(0, imgs[:3])
    for name in ("a.mrcs", "b.mrcs"):
        with mrcfile.open(tmp_path / name) as mrc:
            np.testing.assert_array_equal(mrc.data, imgs)
            assert mrc.header.ispg == 0 and mrc.voxel_size.x == pytest.approx(2.0)
            assert mrc.header.dmean == pytest.approx(imgs.mean(), abs=1e-5)
            assert mrc.header.rms == pytest.approx(imgs.std(), rel=1e-4)


def test_stack_writer_discards_incomplete_file(tmp_path):
    w = StackWriter(tmp_path / "c.mrcs", 4, 8, 1.0)
    w.write(0, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="2 of 4 images were never written"):
        w.close()
    with pytest.raises(RuntimeError):
        with StackWriter(tmp_path / "d.mrcs", 2, 8, 1.0) as w2:
            w2.write(0, np.zeros((2, 8, 8)))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty stack"):
        write_stack(tmp_path / "e.mrcs", np.zeros((0, 4, 4)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        write_map(tmp_path / "n.mrc", np.full((2, 2, 2), np.nan), 1.0)
    with pytest.raises(PixelSizeError):
        write_map(tmp_path / "p.mrc", np.zeros((2, 2, 2)), 0.0)


def test_atomic_write_keeps_old_content_on_error(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    with pytest.raises(KeyError):
        with atomic_write(path, "w") as f:
            f.write("new")
            raise KeyError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------------------------ stacks

def test_real_stacks_open(shared_data):
    """Headers here are imperfect: relion31.mrcs has no MAP id and a zero machine stamp."""
    for rel, shape in [("particles/relion31_5ptcl/relion31.mrcs", (5, 256, 256)),
                       ("particles/aspire_sample17/sample.mrcs", (17, 200, 200)),
                       ("particles/empiar10076_7ptcl/empiar_10076_7.mrc", (7, 320, 320))]:
        arr = stack_array(open_stack(shared_data / rel))
        assert arr.shape == shape and not arr.flags.writeable
        assert np.isfinite(arr[0]).all()


def test_open_stack_is_cached_and_reopens_rewritten_files(tmp_path):
    path = tmp_path / "s.mrcs"
    write_stack(path, np.zeros((2, 4, 4)), 1.0)
    first = open_stack(path)
    assert open_stack(path) is first
    write_stack(path, np.ones((3, 4, 4)), 1.0)
    second = open_stack(path)
    assert second is not first and stack_array(second).shape == (3, 4, 4)
    second.close()  # a handle closed by a careless caller is reopened
    assert stack_array(open_stack(path)).shape == (3, 4, 4)


def test_single_image_file_is_a_stack_of_one(tmp_path):
    path = tmp_path / "one.mrcs"
    write_stack(path, np.ones((1, 4, 4)), 1.0)
    assert stack_array(open_stack(path)).shape == (1, 4, 4)


def test_truncated_stack_names_file_and_sizes(tmp_path):
    path = tmp_path / "trunc.mrcs"
    write_stack(path, np.zeros((10, 16, 16)), 1.0)
    data = path.read_bytes()
    path.write_bytes(data[: 1024 + 3 * 16 * 16 * 4 + 100])
    with pytest.raises(InputFileError, match=r"trunc\.mrcs: truncated: header says 10 images of 16×16 .*"
                                             r"holds only 4196 bytes, 11264 expected"):
        open_stack(path)
    path.write_bytes(data[:200])
    with pytest.raises(InputFileError, match=r"trunc\.mrcs: truncated: .*1024-byte header"):
        read_header_info(path)


def test_empty_stack_is_an_error(tmp_path):
    path = tmp_path / "empty.mrcs"
    write_stack(path, np.zeros((1, 8, 8)), 1.0)
    raw = bytearray(path.read_bytes()[:1024])
    raw[8:12] = np.int32(0).tobytes()  # nz = 0
    path.write_bytes(bytes(raw))
    with pytest.raises(InputFileError, match=r"empty\.mrcs: empty stack: header says 0 images of 8×8"):
        open_stack(path)
    with pytest.raises(InputFileError, match=r"empty\.mrcs: empty stack: header says 0 images of 8×8"):
        load_particles(path, pixel_size_angstrom=1.0)


def test_not_an_mrc_file(tmp_path):
    path = tmp_path / "junk.mrcs"
    path.write_bytes(b"this is not an MRC file" * 100)
    with pytest.raises(InputFileError, match=r"junk\.mrcs: not a readable MRC file"):
        open_stack(path)
    with pytest.raises(InputFileError, match=r"missing\.mrcs: no such file"):
        open_stack(tmp_path / "missing.mrcs")
