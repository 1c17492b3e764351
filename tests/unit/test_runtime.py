"""The runtime layer: devices, generators, precision, streaming reads and batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.data.dataset import ParticleDataset
from cryopose.data.streaming import choose_streaming, dataset_source, iter_batches
from cryopose.errors import UserError
from cryopose.io.metadata import ParticleMetadata
from cryopose.io.mrc import write_stack
from cryopose.io.particles import ParticleStack
from cryopose.runtime import Runtime, autocast_context, resolve_device
from cryopose.training.config import TrainingConfig, config_from_dict


def test_resolve_device_names_and_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("gpu7")
    with pytest.raises(UserError, match="unsupported device type"):
        resolve_device("meta")
    # GPU 99 exists nowhere: without CUDA the message says so, with CUDA it names the GPUs present
    with pytest.raises(UserError, match="no CUDA GPU is available" if not torch.cuda.is_available()
                       else "GPU 99 does not exist"):
        resolve_device("cuda:99")


def test_runtime_validates_and_seeds_without_global_state():
    for bad in ({"threads": 0}, {"precision": "8"}, {"precision": "16"}, {"seed": 1.5}, {"workers": -1}):
        with pytest.raises(UserError):
            Runtime(**bad)
    rt = Runtime(seed=5)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = torch.rand(4, generator=rt.generator(1))
    b = torch.rand(4, generator=rt.generator(1))
    c = torch.rand(4, generator=rt.generator(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), before)
    Runtime(precision="bf16").check_training_precision("abinitio")  # bf16 training is allowed
    half = Runtime()
    object.__setattr__(half, "precision", "16")  # float16 exists on CUDA only: forced here
    with pytest.raises(UserError, match="inference only"):
        half.check_training_precision("abinitio")
    assert Runtime().describe()["device"] == "cpu"


def test_bf16_autocast_runs_the_network_in_bf16_and_32_does_not():
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with autocast_context("cpu", "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with autocast_context("cpu", "32"):
        assert lin(x).dtype == torch.float32


def test_old_configs_with_num_threads_still_load():
    doc = {"training": {"epochs": 3, "num_threads": 4}, "model": {}}
    cfg = config_from_dict(doc)
    assert cfg.training == TrainingConfig(epochs=3)


def _stacks(tmp_path, n_files=7, per_file=5, box=12):
    g = np.random.default_rng(0)
    paths, idx, images = [], [], []
    for f in range(n_files):
        data = g.standard_normal((per_file, box, box)).astype(np.float32)
        p = tmp_path / f"s{f}.mrcs"
        write_stack(p, data, 2.0)
        images.append(data)
        paths += [str(p)] * per_file
        idx += list(range(per_file))
    return ParticleStack(paths, idx, box, 2.0), np.concatenate(images)


def test_streamed_stack_reads_the_same_images_with_bounded_open_files(tmp_path):
    stack, images = _stacks(tmp_path)
    streamed = stack.streamed(max_open_files=3)
    order = np.random.default_rng(1).permutation(len(stack))
    assert np.array_equal(streamed.read(order), images[order])
    assert np.array_equal(streamed.read(slice(3, 20)), stack.read(slice(3, 20)))
    assert streamed.is_streamed and not stack.is_streamed
    assert streamed._reader.open_files <= 3
    bad = ParticleStack([stack.image_paths[0]], [9], 12, 2.0, source="x.star")
    with pytest.raises(UserError, match="out of range"):
        bad.streamed().read([0])


def test_choose_streaming_by_size_and_override():
    assert choose_streaming(10, 64, available_bytes=10 ** 9) is False
    assert choose_streaming(10 ** 6, 128, available_bytes=16 * 2 ** 30) is True  # 64 GB of images
    assert choose_streaming(10, 64, requested=True) is True
    assert choose_streaming(10 ** 6, 128, requested=False) is False


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_the_cached_ones(tmp_path, workers):
    stack, _ = _stacks(tmp_path)
    meta = ParticleMetadata(pixel_size_angstrom=2.0, box_size=12, shifts_angstrom=torch.zeros(len(stack), 2))
    cached = ParticleDataset(stack, meta, box_size=8)
    src, limit = dataset_source(stack, 8, Runtime(stream=True))
    streamed = ParticleDataset(src, meta, box_size=8, normalization=cached.normalization, cache_limit_mb=limit)
    assert cached.is_cached and not streamed.is_cached and src.is_streamed
    chunks = [np.arange(s, min(s + 6, len(stack))) for s in range(0, len(stack), 6)][::-1]
    got = list(iter_batches(streamed, chunks, Runtime(stream=True, workers=workers)))
    want = list(iter_batches(cached, chunks, Runtime()))
    assert len(got) == len(chunks)
    for a, b, c in zip(got, want, chunks):
        assert torch.equal(a.indices, torch.from_numpy(c))
        assert torch.allclose(a.images, b.images, atol=1e-5)
