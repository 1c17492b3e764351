"""``benchmarks/scale.py`` on tiny sizes: its fast particle generator writes what cryopose reads,
its memory probe measures a child process, and its GPU section runs (here on the CPU)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def scale():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("scale")
    finally:
        sys.path.remove(str(BENCH))


def test_generated_particles_load_with_poses_ctf_and_noise(scale, tmp_path):
    from cryopose.io.particles import load_particles

    star = scale.generate(tmp_path, 1500, snr=0.1)
    stack, meta = load_particles(star)
    assert len(stack) == 1500 and stack.box_size == 64 and len(set(stack.image_paths)) == 2
    assert meta.rotmats is not None and meta.ctf is not None
    images = stack.read(np.arange(0, 1500, 7))
    clean, _, _, _ = scale._bank(0)
    # each image is a bank projection plus white noise of variance clean.var() / SNR
    assert abs(float(images.std()) / (float(clean.std()) * np.sqrt(1 + 1 / 0.1)) - 1) < 0.05


def test_memory_probe_reads_the_child_peak(scale):
    rss_small, _ = scale.measure([sys.executable, "-c", "x = bytearray(10 * 2**20)"], 1)
    touch = "x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096])"
    rss_big, _ = scale.measure([sys.executable, "-c", touch], 1)
    assert rss_big - rss_small > 150


def test_gpu_section_runs_on_the_cpu(scale, one_thread):
    out = scale.gpu_section(on_cpu=True)
    assert out["predict_16px_32_img_per_s"] > 0 and out["abinitio_16px_steps_per_s"] > 0
    assert out["reconstruct_s"] > 0 and torch.get_num_threads() >= 1
