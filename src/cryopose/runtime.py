"""The run-time settings of a command: device, threads, seed, precision, progress, data streaming.

Every command that computes takes the same options (``cryopose.cli.common.add_runtime_arguments``)
and turns them into one :class:`Runtime` here; the library functions receive the device, the
generators, the autocast context and the progress flag from it, and no library module sets
global state. Runtime settings describe *how* a run computes, not *what* it computes: they are
never part of a saved model config or a resume fingerprint, so a run may be resumed with another
thread count or on another device (only the numerical round-off changes).

Conventions:

* ``--device auto`` (default) is the first CUDA GPU when PyTorch sees one, else the CPU;
  ``cuda`` / ``cuda:N`` without CUDA, or with fewer GPUs, is a :class:`~cryopose.errors.UserError`.
* Random generators are seeded from ``seed`` plus a fixed offset per purpose
  (:meth:`Runtime.generator`); they live on the CPU unless asked for on the device, so that the
  same seed draws the same batch orders, initialisations and half-set splits on every device.
  The global RNG (``torch.manual_seed``) is never touched.
* ``--precision``: ``32`` (default) runs in float32; ``bf16`` runs the networks' forward passes
  under :func:`torch.autocast` in bfloat16 (8 exponent bits: no loss scaling needed; on CPUs and
  on Ampere-or-newer GPUs), ``16`` in float16 (CUDA only, inference only: training in float16
  needs loss scaling, which cryopose does not do). The physics (FFTs, Fourier-slice projector,
  CTF, scores) always runs in float32: autocast is entered around the networks only
  (:meth:`Runtime.autocast`).
* ``--threads``: ``torch.set_num_threads`` for the run (``None``: the command's default, see
  :func:`cryopose.training.trainer.idle_cores`); applied once by :meth:`Runtime.apply`, which
  the command (not the library) calls.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from .errors import UserError

__all__ = ["PRECISIONS", "Runtime", "resolve_device", "autocast_dtype", "autocast_context"]

#: ``--precision`` choices and the autocast dtype each stands for (``None``: float32, no autocast).
PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """The :class:`torch.device` a ``--device`` value names.

    Args:
        spec: ``"auto"`` (or ``None``: the first CUDA GPU when present, else the CPU), ``"cpu"``,
            ``"cuda"`` (GPU 0) or ``"cuda:N"``; a ``torch.device`` is checked the same way.

    Returns:
        The device (``cuda`` is returned with its index, ``cuda:0``).

    Raises:
        UserError: An unknown name, CUDA asked for when this PyTorch sees no CUDA GPU (the message
            names the PyTorch build), or a GPU index beyond the GPUs present.
    """
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {spec}: unknown device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise UserError(f"--device {spec}: unsupported device type {dev.type!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise UserError(f"--device {spec}: no CUDA GPU is available (PyTorch {torch.__version__}, {build}); "
                        "use --device cpu, or install a CUDA build of PyTorch on a machine with a GPU")
    index = 0 if dev.index is None else int(dev.index)
    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"--device {spec}: GPU {index} does not exist ({count} GPU(s): cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a ``--precision`` value (``None`` for ``"32"``).

    Raises:
        UserError: An unknown value.
    """
    if str(precision) not in PRECISIONS:
        raise UserError(f"--precision {precision}: one of {', '.join(PRECISIONS)}")
    return PRECISIONS[str(precision)]


def autocast_context(device: torch.device | str, precision: str = "32"):
    """A context manager running the networks' forward passes at ``precision`` on ``device``.

    ``"32"`` gives a no-op context; ``"bf16"``/``"16"`` give ``torch.autocast(device.type,
    dtype)``: convolutions and matrix products in the lower precision, reductions in float32.
    Outputs of the autocast region may be bfloat16/float16: cast them to float32 before the
    physics (:func:`cryopose.training.trainer.candidate_poses` does).
    """
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Runtime:
    """How a command computes (never what): see the module docstring.

    Attributes:
        device: Where tensors, models and the physics live.
        threads: ``torch.set_num_threads`` value, or ``None`` for the command's default.
        seed: Seed of every generator of the run (:meth:`generator`).
        precision: ``"32"``, ``"bf16"`` or ``"16"`` (:data:`PRECISIONS`).
        progress: Show progress bars.
        stream: Read particles through the streaming ``DataLoader`` (``True``), keep them in
            memory (``False``), or decide from their size and the free memory (``None``;
            :func:`cryopose.data.streaming.choose_streaming`).
        workers: ``DataLoader`` worker processes when streaming (0: read in the main process).
        rank, world_size: This process's rank and the number of processes under ``torchrun``
            (:mod:`cryopose.distributed`; 0 and 1 otherwise).

    Raises:
        UserError: Bad values (threads < 1, unknown precision, float16 on the CPU, a
            non-integer seed, negative workers).
    """

    device: torch.device = torch.device("cpu")
    threads: int | None = None
    seed: int = 0
    precision: str = "32"
    progress: bool = True
    stream: bool | None = None
    workers: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        object.__setattr__(self, "device", torch.device(self.device))
        object.__setattr__(self, "precision", str(self.precision))
        autocast_dtype(self.precision)
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UserError(f"--seed must be an integer, got {self.seed!r}")
        if self.precision == "16" and self.device.type != "cuda":
            raise UserError("--precision 16 (float16) runs on CUDA GPUs only; use --precision bf16 on the CPU")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise UserError(f"--workers must be an integer >= 0, got {self.workers}")

    @classmethod
    def create(cls, *, device: str | torch.device | None = "auto", **kw) -> "Runtime":
        """A runtime for a ``--device`` string (:func:`resolve_device`) and the other fields."""
        return cls(device=resolve_device(device), **kw)

    def generator(self, offset: int = 0, *, on_device: bool = False) -> torch.Generator:
        """A fresh ``torch.Generator`` seeded with ``seed + offset`` (global RNG untouched).

        Args:
            offset: Distinguishes the purposes of one run (batch order, search, half sets).
            on_device: Make it on :attr:`device` (for sampling large tensors there); by default
                on the CPU, so the same seed draws the same numbers on every device.
        """
        dev = self.device if on_device else torch.device("cpu")
        return torch.Generator(device=dev).manual_seed(int(self.seed) + int(offset))

    def autocast(self):
        """The autocast context of the networks' forward passes (:func:`autocast_context`)."""
        return autocast_context(self.device, self.precision)

    def check_training_precision(self, command: str) -> None:
        """Refuse float16 training (it needs loss scaling).

        Raises:
            UserError: ``precision == "16"``, naming ``command``.
        """
        if self.precision == "16":
            raise UserError(f"cryopose {command}: --precision 16 is for inference only (float16 training needs "
                            "loss scaling); train with --precision bf16 or 32")

    def apply(self) -> None:
        """Set this process's torch threads (``threads``, when given) and flush subnormal floats.

        The one place global torch settings are made; called by the command, never by the
        library. Subnormal float32 values (``|x| < 1.2e-38``) are treated as zero
        (``torch.set_flush_denormal``): x86 CPUs process them many times slower
        (``python benchmarks/denormals.py``), and values that small change no result.
        """
        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        torch.set_flush_denormal(True)

    def describe(self) -> dict:
        """JSON-friendly record for a run's ``config.yaml`` (kept apart from the model config)."""
        return {"device": str(self.device), "threads": self.threads, "seed": self.seed,
                "precision": self.precision, "stream": self.stream, "workers": self.workers,
                "world_size": self.world_size}
