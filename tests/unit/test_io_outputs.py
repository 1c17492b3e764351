"""The output layer (cryopose.io.outputs, cryopose.io.atomic): checks before any work, atomic
writes that leave nothing behind on error, OS errors as one line naming the user's path."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import mrcfile
import numpy as np
import pytest

from cryopose.errors import OutputError, UserError
from cryopose.io.atomic import atomic_path, atomic_write_text
from cryopose.io.mrc import StackWriter, write_map, write_stack
from cryopose.io.outputs import (all_or_nothing, check_free_space, check_output_folder, check_outputs,
                                 remove_stale_temps)


def test_check_outputs_refuses_existing_unless_forced_and_removes_stale(tmp_path):
    out, stale = tmp_path / "m.mrc", tmp_path / "m_half1.mrc"
    out.write_text("old")
    with pytest.raises(OutputError, match=r"m\.mrc: exists; pass --force"):
        check_outputs([out], force=False)
    stale.write_text("old half")
    with pytest.raises(OutputError, match="m.mrc"):
        check_outputs([tmp_path / "new.mrc"], force=False, stale=[out])
    check_outputs([out], force=True, stale=[stale])
    assert out.exists() and not stale.exists()


def test_check_outputs_folder_and_file_in_the_way(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match=r"d: is a folder; give a file name"):
        check_outputs([tmp_path / "d"], force=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"is a file, not a folder") as err:
        check_outputs([tmp_path / "f" / "sub" / "out.star"])
    assert str(tmp_path / "f" / "sub" / "out.star") in str(err.value)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "f")


def test_check_output_folder_names_and_creation(tmp_path):
    folder = check_output_folder(tmp_path / "a" / "b", names=("model.pt",))
    assert folder.is_dir()
    (folder / "model.pt").write_bytes(b"x")
    with pytest.raises(OutputError, match=r"model\.pt: exists"):
        check_output_folder(folder, names=("model.pt",))
    assert check_output_folder(folder, names=("model.pt",), force=True) == folder


def test_check_free_space_refuses_more_than_the_disk_holds(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(OutputError, match=r"out\.mrcs: cannot write: needs about .*, and .* has .* free"):
        check_free_space(tmp_path / "out.mrcs", free * 2)
    check_free_space(tmp_path / "out.mrcs", 1000)
    check_free_space(tmp_path / "out.mrcs", None)


def test_atomic_path_names_the_target_and_removes_the_temp_file(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(OutputError) as err:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert str(err.value).startswith(f"{target}: cannot write: no space left on the device")
    assert ".tmp" not in str(err.value) and err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_into_a_missing_folder_is_one_user_error(tmp_path):
    with pytest.raises(UserError, match=r"nope/x\.txt: cannot write: its folder does not exist"):
        atomic_write_text(tmp_path / "nope" / "x.txt", "x")


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    target = tmp_path / "checkpoint.pt"
    old = tmp_path / f".checkpoint.pt.{dead_pid}.abcd1234.tmp"
    live = tmp_path / f".checkpoint.pt.{os.getppid()}.abcd1234.tmp"
    old.write_bytes(b"")
    live.write_bytes(b"")
    assert remove_stale_temps(target) == [old]
    assert not old.exists() and live.exists()
    old.write_bytes(b"")
    atomic_write_text(target, "new")  # every atomic write cleans its target's leftovers
    assert not old.exists() and target.read_text() == "new"


def test_all_or_nothing_removes_only_what_the_failed_block_wrote(tmp_path):
    kept, new = tmp_path / "kept.star", tmp_path / "new.mrcs"
    kept.write_text("earlier run")
    with pytest.raises(RuntimeError):
        with all_or_nothing([kept, new]):
            new.write_text("this run")
            raise RuntimeError("fails after the first file")
    assert kept.read_text() == "earlier run" and not new.exists()


def test_stack_writer_writes_a_valid_stack_without_a_memory_map(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(7, 16, 16)).astype(np.float32)
    path = tmp_path / "s.mrcs"
    with StackWriter(path, 7, 16, 2.5) as w:
        w.write(4, images[4:])
        w.write(0, images[:4])
    with mrcfile.open(path, permissive=False) as m:
        np.testing.assert_array_equal(m.data, images)
        assert m.header.ispg == 0 and m.voxel_size.x == pytest.approx(2.5)
        assert float(m.header.dmax) == pytest.approx(float(images.max()))
        assert float(m.header.rms) == pytest.approx(float(images.std()), rel=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mrcs"]


def test_stack_writer_on_a_full_disk_raises_one_error_and_leaves_nothing(tmpfs):
    disk = tmpfs("1m")
    path = disk / "big.mrcs"
    with pytest.raises(OutputError, match=r"big\.mrcs: cannot write: no space left on the device"):
        write_stack(path, np.ones((80, 64, 64), np.float32), 1.0)  # 1.3 MB on a 1 MB disk
    assert list(disk.iterdir()) == []


def test_write_map_on_a_read_only_file_system(tmpfs):
    disk = tmpfs("1m", read_only=True)
    with pytest.raises(OutputError, match=r"m\.mrc: cannot write: the file system is read-only"):
        write_map(disk / "m.mrc", np.zeros((8, 8, 8), np.float32), 1.0)
    with pytest.raises(OutputError, match="read-only"):
        check_outputs([disk / "m.mrc"])
    assert list(disk.iterdir()) == []
