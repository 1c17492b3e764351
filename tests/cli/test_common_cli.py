"""Shared command set-up: thread count, subnormal floats, and bad --threads values."""

from __future__ import annotations

import pytest
import torch

from cryopose.cli.common import configure_torch
from cryopose.cli.main import main
from cryopose.errors import UserError

SUBNORMAL = 1e-39  # float32 subnormal (below 1.18e-38)


@pytest.fixture
def restore_torch():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def test_configure_torch_sets_threads_and_flushes_subnormals(restore_torch):
    torch.set_flush_denormal(False)
    x = torch.tensor([SUBNORMAL], dtype=torch.float32)
    assert (x * 1.0).item() != 0.0  # kept as a subnormal
    configure_torch(1)
    assert torch.get_num_threads() == 1
    if torch.set_flush_denormal(True):  # the CPU supports flushing (x86 with SSE3)
        assert (x * 1.0).item() == 0.0
    configure_torch(None)  # keeps the thread count
    assert torch.get_num_threads() == 1


def test_configure_torch_rejects_bad_threads(restore_torch):
    with pytest.raises(UserError, match="--threads must be >= 1, got 0"):
        configure_torch(0)


@pytest.mark.parametrize("command", [["search", "p.star", "--reference", "m.mrc", "-o", "o.star"],
                                     ["predict", "m.pt", "p.star", "-o", "o.star"],
                                     ["simulate", "-i", "m.mrc", "-o", "out"]])
def test_commands_report_bad_threads_in_one_line(command, tmp_path, capsys, monkeypatch, restore_torch):
    monkeypatch.chdir(tmp_path)
    rc = main(command + ["--threads", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--threads must be >= 1, got 0" in err[0]
