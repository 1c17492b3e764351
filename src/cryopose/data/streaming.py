"""Streamed or cached particle batches: a PyTorch ``DataLoader`` over the stacks, or memory.

A :class:`~cryopose.data.dataset.ParticleDataset` either holds its preprocessed working-box
images in memory (computed once; the fastest when they fit) or reads every batch from the
stacks. :func:`choose_streaming` decides between the two from the expected size of that cache
and the memory available (the ``--stream`` / ``--in-memory`` options override it), and
:func:`dataset_source` gives the stack and cache limit a data set is built with: streamed data
sets read through positional reads with a bounded number of open files
(:meth:`cryopose.io.particles.ParticleStack.streamed`), so the memory of a run does not grow
with the number of particles.

:func:`iter_batches` yields the batches of a list of index chunks on the runtime's device:
from the cache directly, or, when streaming, through a ``torch.utils.data.DataLoader`` whose
``workers`` processes read, preprocess (Fourier crop, normalisation, whitening, CTF) and
prefetch the next batches while the current one is computed, into page-locked memory when the
device is a GPU (so the copy to it overlaps the compute).
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import torch

from ..runtime import Runtime
from .dataset import ParticleBatch, ParticleDataset

__all__ = ["available_memory_bytes", "cache_bytes", "choose_streaming", "dataset_source", "iter_batches",
           "BatchReader", "MEMORY_FRACTION"]

#: The in-memory cache is used when it takes at most this fraction of the available memory.
MEMORY_FRACTION = 0.25


def available_memory_bytes() -> int:
    """Memory available to new allocations, bytes (``MemAvailable`` of ``/proc/meminfo``, else
    free pages × page size from ``os.sysconf``; 0 when neither can be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def cache_bytes(n_particles: int, box_size: int) -> int:
    """Bytes of the in-memory cache of ``n_particles`` float32 working-box images."""
    return int(n_particles) * int(box_size) ** 2 * 4


def choose_streaming(n_particles: int, box_size: int, *, requested: bool | None = None,
                     available_bytes: int | None = None, fraction: float = MEMORY_FRACTION) -> bool:
    """Whether to stream: ``requested`` when given, else when the cache would take more than
    ``fraction`` of the available memory.

    Args:
        n_particles: Particles in the data set.
        box_size: Working box in pixels.
        requested: ``--stream`` (``True``) / ``--in-memory`` (``False``), or ``None``.
        available_bytes: The memory available (default :func:`available_memory_bytes`).
        fraction: Share of the available memory the cache may take.
    """
    if requested is not None:
        return bool(requested)
    avail = available_memory_bytes() if available_bytes is None else int(available_bytes)
    return cache_bytes(n_particles, box_size) > fraction * avail


def dataset_source(stack, box_size: int, runtime: Runtime | None = None) -> tuple[object, float]:
    """The image source and ``cache_limit_mb`` a :class:`ParticleDataset` is built with.

    Args:
        stack: A :class:`cryopose.io.particles.ParticleStack` (or any image source; only a
            ``ParticleStack`` can be streamed by positional reads, others are read as they are).
        box_size: Working box in pixels.
        runtime: Its ``stream`` (``None``: :func:`choose_streaming`).

    Returns:
        ``(source, cache_limit_mb)``: the streamed stack and 0 when streaming (every batch read
        from the stacks), else the stack and an unbounded limit (the whole set cached).
    """
    stream = choose_streaming(len(stack), box_size, requested=None if runtime is None else runtime.stream)
    if not stream:
        return stack, float("inf")
    if hasattr(stack, "streamed"):
        stack = stack.streamed()
    return stack, 0.0


class BatchReader(torch.utils.data.Dataset):
    """The batches of a data set as a map-style dataset: item ``i`` is ``dataset.batch(chunks[i])``.

    Used with ``DataLoader(batch_size=None)`` so that each worker reads and preprocesses whole
    batches (one grouped read per stack file) rather than single images.
    """

    def __init__(self, dataset: ParticleDataset, chunks: Sequence[np.ndarray]):
        self.dataset = dataset
        self.chunks = [np.asarray(c, dtype=np.int64) for c in chunks]

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> ParticleBatch:
        return self.dataset.batch(self.chunks[i])


def iter_batches(dataset: ParticleDataset, chunks: Sequence[np.ndarray], runtime: Runtime | None = None, *,
                 prefetch: int = 4) -> Iterator[ParticleBatch]:
    """Yield ``dataset.batch(chunk)`` for every chunk, in order, on ``runtime.device``.

    A cached data set is sliced directly. Otherwise a ``DataLoader`` reads the batches with
    ``runtime.workers`` processes (0: in this process), ``prefetch`` batches ahead per worker,
    into pinned memory when the device is a GPU (copied with ``non_blocking``).

    Args:
        dataset: The particles.
        chunks: Index arrays, one per batch.
        runtime: Device and workers (default: the CPU, no workers).
        prefetch: Batches read ahead per worker.
    """
    runtime = Runtime() if runtime is None else runtime
    dev = runtime.device
    if dataset.is_cached:
        for c in chunks:
            yield dataset.batch(c).to(dev)
        return
    workers = int(runtime.workers)
    loader = torch.utils.data.DataLoader(
        BatchReader(dataset, chunks), batch_size=None, shuffle=False, num_workers=workers,
        pin_memory=dev.type == "cuda", prefetch_factor=prefetch if workers > 0 else None,
        persistent_workers=False)
    for batch in loader:
        yield batch.to(dev, non_blocking=dev.type == "cuda")
