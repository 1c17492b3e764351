"""Shared pytest fixtures.

``shared_data``: the real cryo-EM files in ``../shared/data`` beside the repository root
(``CRYOPOSE_SHARED_DATA`` overrides the location). A missing folder is an error, never a
skip: the tests that use it check real values and must not pass by not running.

``tmpfs``: mounts a small tmpfs (full-disk and read-only cases); skips only where mounting is
impossible, saying why.

``relion``: resolves a RELION 3.1 program on PATH (``apt-get install -y relion``) and fails
the test with the install line when it is missing, never skips.

``chromium``: the path of headless Chromium (``apt-get install -y chromium``), which renders the
HTML reports; missing, it fails the test with the install line, never skips.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

_REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``shared/data`` (the folder beside the repository root)."""
    env = os.environ.get("CRYOPOSE_SHARED_DATA")
    path = Path(env) if env else _REPO_ROOT.parent / "shared" / "data"
    if not (path / "README.md").is_file():
        pytest.fail(f"shared test data not found at {path}: the tests need ../shared/data beside the "
                    "repository root (or CRYOPOSE_SHARED_DATA pointing at it)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def relion():
    """Return a function ``relion(name) -> str`` giving the full path of a RELION program."""

    def find(name: str) -> str:
        exe = shutil.which(name)
        if exe is None:
            pytest.fail(f"RELION program {name} not found on PATH; RELION 3.1 is a required test tool "
                        "(install it with: apt-get install -y relion)", pytrace=False)
        return exe

    return find


@pytest.fixture(scope="session")
def chromium() -> str:
    """Full path of the Chromium browser (Debian's ``chromium``; ``chromium-browser`` elsewhere)."""
    for name in ("chromium", "chromium-browser"):
        exe = shutil.which(name)
        if exe is not None:
            return exe
    pytest.fail("Chromium not found on PATH; it is a required test tool for the HTML reports "
                "(install it with: apt-get install -y chromium)", pytrace=False)


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test: tiny networks run fastest so, results are
    reproducible, and the 2-core machine is shared (modules opt in with ``usefixtures``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tmpfs(tmp_path):
    """A function ``tmpfs(size="2m", read_only=False) -> Path``: a fresh tmpfs of that size mounted
    in the test's folder (unmounted afterwards), for full-disk and read-only cases. Where tmpfs
    cannot be mounted (not root, or no mount permission in a container) the test **fails** with
    the reason, as a missing RELION does: no test may pass by not running. On this project's
    machines the tests run as root and the mount works."""
    mounted = []

    def make(size: str = "2m", read_only: bool = False) -> Path:
        import subprocess

        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs here (needs root and mount permission): "
                        f"{(res.stderr or res.stdout).strip()}")
        mounted.append(where)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where

    yield make
    import subprocess

    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
