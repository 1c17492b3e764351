"""Training checkpoints: written atomically, read back for ``--resume`` and ``predict``.

A checkpoint is one ``torch.save`` file (a dict) holding the model and optimiser states, the
epoch and step counters, the random generator state, the loss history and the run's
configuration (as plain dicts), so that a resumed run continues the same sequence of batches
and updates. The file is first written beside its target and then renamed
(:func:`cryopose.io.atomic.atomic_path`), so an interrupted write never leaves a truncated
checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputFileError
from ..io.atomic import atomic_path

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "read_torch_file"]

#: Version tag stored in every checkpoint; bumped when the layout changes.
CHECKPOINT_FORMAT = "cryopose-cryoposenet-1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format tag) to ``path`` atomically.

    Args:
        path: Target file; its folder must exist.
        state: Picklable dict (tensors, state dicts, plain Python values).

    Returns:
        The path written.
    """
    path = Path(path)
    payload = dict(state)
    payload["format"] = CHECKPOINT_FORMAT
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Unpickle a torch file on the CPU, with a clear error naming it.

    Args:
        path: The file.
        what: What the file should be, for the messages ("checkpoint", "model file").

    Raises:
        InputFileError: If the file is missing or cannot be unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, f"no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a readable file"
        raise InputFileError(path, f"not a readable {what} ({type(err).__name__}: {err})") from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU).

    Raises:
        InputFileError: If the file is missing, unreadable, or not a cryopose checkpoint.
    """
    state = read_torch_file(path, "checkpoint file")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputFileError(path, f"not a cryopose CryoPoseNet checkpoint (expected format {CHECKPOINT_FORMAT})")
    return state
