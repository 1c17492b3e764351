"""Several processes under ``torchrun``: process group, data shards, results gathered in order.

A command started by ``torchrun --nproc_per_node K cryopose <command> …`` finds ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment (:func:`world_from_env`);
:func:`init_distributed` then joins the process group (NCCL between GPUs, Gloo between CPU
processes) and picks the device of its rank (``cuda:LOCAL_RANK`` for ``--device auto`` on a GPU
machine). Each rank works on one contiguous block of the particles (:func:`shard`), and
:func:`gather_in_order` concatenates the ranks' results in rank order, which is the particles'
original order, on every rank; rank 0 alone writes the outputs (:func:`is_main`).

Multi-node runs use torchrun's rendezvous, e.g. under SLURM with one task per node::

    srun torchrun --nnodes $SLURM_NNODES --nproc_per_node 4 \\
        --rdzv_backend c10d --rdzv_endpoint $(hostname):29500 --rdzv_id $SLURM_JOB_ID \\
        -m cryopose.cli.main predict encoder.pt particles.star -o poses.star

``cryopose predict`` (CryoPoseNet encoders) and ``cryopose abinitio`` run this way (ab initio:
data-parallel training, each rank taking its share of every batch and the gradients averaged,
:func:`average_gradients`; the poses inferred in shards; rank 0 alone reconstructs, polishes
and writes); the other commands refuse to run with ``WORLD_SIZE > 1`` rather than let every
rank write the same files.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .errors import UserError

__all__ = ["world_from_env", "init_distributed", "shard", "gather_in_order", "is_main", "average_gradients",
           "weighted_sum"]


def world_from_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` outside it).

    Raises:
        UserError: Malformed values.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return rank, world, local


def init_distributed(device: torch.device, *, device_was_auto: bool) -> tuple[int, int, torch.device]:
    """Join the process group when running under torchrun; returns ``(rank, world_size, device)``.

    Args:
        device: The device the options resolved to.
        device_was_auto: ``--device auto``: on a GPU machine each rank takes ``cuda:LOCAL_RANK``.

    Returns:
        ``(0, 1, device)`` outside torchrun; otherwise the rank, the world size and the rank's
        device, the default process group initialised (NCCL for CUDA, Gloo for the CPU).
    """
    rank, world, local = world_from_env()
    if world == 1:
        return 0, 1, device
    if device.type == "cuda" and device_was_auto:
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def shard(n: int, rank: int, world_size: int) -> np.ndarray:
    """The particle positions of ``rank``: block ``rank`` of ``np.array_split(arange(n), world_size)``."""
    return np.array_split(np.arange(int(n), dtype=np.int64), int(world_size))[int(rank)]


def gather_in_order(values: list, world_size: int) -> list:
    """Every rank's ``values`` (a list of CPU tensors or ``None``), concatenated in rank order.

    Uses ``torch.distributed.all_gather_object`` (works on Gloo and NCCL); a ``None`` entry stays
    ``None`` when it is ``None`` on every rank. With ``world_size == 1`` returns ``values``.
    """
    if world_size == 1:
        return values
    parts: list = [None] * world_size
    torch.distributed.all_gather_object(parts, [None if v is None else v.cpu() for v in values])
    out = []
    for k in range(len(values)):
        got = [p[k] for p in parts]
        out.append(None if all(g is None for g in got) else torch.cat([g for g in got if g is not None]))
    return out


def is_main(rank: int = 0) -> bool:
    """Rank 0 (the process that writes the outputs and prints)."""
    return int(rank) == 0


def average_gradients(parameters, share: float, world_size: int) -> None:
    """Data-parallel gradient averaging: ``g ← Σ_ranks share_r · g_r`` on every rank.

    Each rank computed the gradient of the mean loss over its ``share`` (fraction) of the global
    batch, so the weighted sum is the gradient of the mean over the whole batch, as one process
    would compute it; after it the ranks take the same optimiser step and their parameters stay
    equal. This is :class:`torch.nn.parallel.DistributedDataParallel`'s averaging (one flat
    ``all_reduce`` instead of DDP's overlapped buckets): CryoPoseNet's step runs the encoder
    twice and the map outside any ``forward``, which DDP's wrapper does not follow.

    Args:
        parameters: The model's parameters (a missing gradient counts as zero).
        share: This rank's fraction of the global batch.
        world_size: Processes; 1 returns at once.
    """
    if world_size == 1:
        return
    params = list(parameters)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]) * float(share)
    torch.distributed.all_reduce(flat)
    start = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[start:start + n].view_as(p).clone()
        start += n


def weighted_sum(value: float, share: float, world_size: int, device=None) -> float:
    """``Σ_ranks share_r · value_r`` (e.g. the global batch's mean loss); ``value`` with one rank."""
    if world_size == 1:
        return float(value)
    t = torch.tensor([float(value) * float(share)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item())
