"""Model files and training checkpoints: plain payloads, written atomically, read without code.

Every ``.pt`` file cryopose writes (``abinitio``'s ``checkpoint.pt`` and ``encoder.pt``,
``train-supervised`` / ``refine``'s ``model.pt``, the ``latent`` and ``rotinv`` checkpoints, the
heterogeneity VAE-GAN's ``checkpoint.pt`` and ``model.pt``) is one
``torch.save`` dict made by :func:`save_checkpoint`: state dicts, tensors and plain metadata
(``dict``/``list``/``tuple``/``str``/``int``/``float``/``bool``/``None``) only, with a ``format``
tag naming what it is (:data:`FORMATS`). Dataclasses are stored as dicts, NumPy arrays as
tensors and NumPy scalars as Python numbers (:func:`to_plain`); the loaders rebuild them.

Every file is read by :func:`read_torch_file` with ``torch.load(weights_only=True)``, which
cannot run code: a file that needs more (a pickled class, a function, a NumPy object) is
refused with one line naming it (:class:`~cryopose.errors.InputFileError`). Writes go to a
temporary file beside the target, then a rename (:func:`cryopose.io.atomic.atomic_write`), so an
interrupted write never leaves a truncated checkpoint.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import re
import warnings
from pathlib import Path, PurePath
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import InputFileError
from ..io.atomic import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "SUPERVISED_FORMAT", "VAEGAN_FORMAT", "ROTINV_FORMAT", "SPATIAL_VAE_FORMAT",
           "HETERO_VAEGAN_FORMAT", "HETEROGENEITY_FORMAT", "FORMATS", "to_plain", "save_checkpoint",
           "load_checkpoint", "read_torch_file", "checkpoint_format", "dataset_fingerprint"]

#: Format tag of ``abinitio``'s ``checkpoint.pt`` and ``encoder.pt`` (CryoPoseNet).
CHECKPOINT_FORMAT = "cryopose-cryoposenet-1"
#: Format tag of a supervised regressor's ``model.pt`` (``train-supervised``, ``refine``).
SUPERVISED_FORMAT = "cryopose-supervised-1"
#: Format tag of a ``latent train`` (VAE-GAN) checkpoint.
VAEGAN_FORMAT = "cryopose-vaegan-1"
#: Format tags of ``rotinv train`` checkpoints (rotation-invariant autoencoder, spatial-VAE).
ROTINV_FORMAT = "cryopose-rotinv-1"
SPATIAL_VAE_FORMAT = "cryopose-spatial-vae-1"
#: Format tag of the invariant heterogeneity VAE-GAN's ``checkpoint.pt`` and ``model.pt``.
HETERO_VAEGAN_FORMAT = "cryopose-hetero-vaegan-1"
#: Format tag of ``heterogeneity train --variant pose-aware`` checkpoints and model files.
HETEROGENEITY_FORMAT = "cryopose-heterogeneity-linear-1"
#: Every format tag, and what the files are called in messages.
FORMATS = {CHECKPOINT_FORMAT: "CryoPoseNet checkpoint", SUPERVISED_FORMAT: "supervised model",
           VAEGAN_FORMAT: "VAE-GAN checkpoint", ROTINV_FORMAT: "rotinv checkpoint",
           SPATIAL_VAE_FORMAT: "spatial-VAE checkpoint", HETERO_VAEGAN_FORMAT: "heterogeneity VAE-GAN file",
           HETEROGENEITY_FORMAT: "pose-aware heterogeneity checkpoint"}
# files written before every file carried ``format``: (key, value) -> tag
_LEGACY_TAGS = {("model_kind", "supervised"): SUPERVISED_FORMAT, ("kind", "cryopose.vaegan"): VAEGAN_FORMAT,
                ("kind", "cryopose.rotinv"): ROTINV_FORMAT, ("kind", "cryopose.spatial_vae"): SPATIAL_VAE_FORMAT}
_SCALARS = (str, int, float, bool, type(None))
_CONVERT_HINT = ("python -c \"import torch; from cryopose.training.checkpoint import to_plain; "
                 "torch.save(to_plain(torch.load('OLD.pt', weights_only=False)), 'NEW.pt')\"")


def to_plain(value: Any, *, where: str = "checkpoint") -> Any:
    """A copy of ``value`` that ``torch.load(weights_only=True)`` reads back.

    Tensors, ``torch.Size``, ``str``/``int``/``float``/``bool``/``None`` pass unchanged; dicts
    (``OrderedDict`` state dicts keep their type and ``_metadata``), lists and tuples are
    converted item by item; dataclass instances become dicts (:func:`dataclasses.asdict`),
    NumPy arrays tensors (same dtype and shape), NumPy scalars Python numbers, paths strings.

    Args:
        value: The payload.
        where: Where ``value`` sits, for the error message.

    Returns:
        The converted payload (tensors are shared, not copied).

    Raises:
        TypeError: Anything else (a programming error: checkpoints hold plain values only).
    """
    if isinstance(value, np.generic):  # before the scalars: np.float64 is a float
        return value.item()
    if isinstance(value, (torch.Tensor, torch.Size)) or isinstance(value, _SCALARS):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"{where}: object arrays cannot be stored in a checkpoint")
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_plain(dataclasses.asdict(value), where=where)
    if isinstance(value, dict):
        out = collections.OrderedDict() if isinstance(value, collections.OrderedDict) else {}
        for k, v in value.items():
            out[to_plain(k, where=where)] = to_plain(v, where=f"{where}[{k!r}]")
        if isinstance(out, collections.OrderedDict) and hasattr(value, "_metadata"):
            out._metadata = value._metadata  # module state dicts: per-module versions
        return out
    if isinstance(value, (list, tuple)):
        items = [to_plain(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"{where}: a {type(value).__name__} cannot be stored in a checkpoint "
                    "(only tensors, dicts, lists, tuples, str, int, float, bool and None)")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], *, format: str = CHECKPOINT_FORMAT) -> Path:
    """Write ``state`` (made plain by :func:`to_plain`, plus ``format``) to ``path`` atomically.

    Args:
        path: Target file; its folder must exist.
        state: Tensors, state dicts, dataclasses, NumPy values and plain Python values.
        format: The format tag, one of :data:`FORMATS`; stored as ``state["format"]``.

    Returns:
        The path written.

    Raises:
        TypeError: ``state`` holds something :func:`to_plain` does not convert.
        ValueError: Unknown ``format``.
        cryopose.errors.OutputError: The file cannot be written (full disk, read-only file
            system), naming ``path``; no temporary file is left.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; one of {sorted(FORMATS)}")
    path = Path(path)
    payload = to_plain(dict(state))
    payload["format"] = format
    buffer = io.BytesIO()  # torch.save to a file turns a full disk into a RuntimeError; this gives an OSError
    torch.save(payload, buffer)
    with atomic_write(path) as f:
        f.write(buffer.getbuffer())
    return path


def _refusal_reason(message: str) -> str:
    """What torch's weights-only error says was refused (e.g. ``unsupported GLOBAL posix.system``)."""
    m = re.search(r"unsupported\s+(?:global:\s+)?(GLOBAL\s+\S+|operand\s+\S+)", message, flags=re.IGNORECASE)
    return f"unsupported {m.group(1)}" if m else "objects other than tensors and plain values"


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Read a torch file on the CPU with ``torch.load(weights_only=True)``: no code runs.

    Args:
        path: The file.
        what: What the file should be, for the messages ("checkpoint", "model file").

    Returns:
        The payload (dicts, lists, tuples, tensors and plain values).

    Raises:
        InputFileError: The file is missing, unreadable, or holds anything that
            ``weights_only`` loading refuses (pickled classes or functions, NumPy objects: a
            file that could run code when loaded); one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, f"no such {what}")
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as err:
        raise InputFileError(path, f"cannot read the {what} ({err.strerror})") from None
    if head[:2] != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle
        raise InputFileError(path, f"not a readable {what}: not a PyTorch file (damaged, or another format)")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise InputFileError(path, f"not a readable {what} (UnpicklingError: {err})") from None
        raise InputFileError(path, f"refused to load this {what}: it holds Python objects other than tensors and "
                                   f"plain values ({_refusal_reason(str(err))}), and loading those could run code. "
                                   "cryopose writes only plain files; if the file is an older cryopose file you "
                                   f"trust, convert it once with {_CONVERT_HINT}") from None
    except Exception as err:  # noqa: BLE001 - any other failure means "not a readable file"
        raise InputFileError(path, f"not a readable {what} ({type(err).__name__}: {err})") from None


def checkpoint_format(state: Any) -> str | None:
    """The format tag of a loaded file: ``state["format"]``, or that implied by the ``kind`` /
    ``model_kind`` entry of files written before every file carried one; ``None`` if neither."""
    if not isinstance(state, dict):
        return None
    tag = state.get("format")
    if isinstance(tag, str) and tag in FORMATS:
        return tag
    for (key, value), tag in _LEGACY_TAGS.items():
        if state.get(key) == value:
            return tag
    return None


def load_checkpoint(path: str | os.PathLike, formats: Iterable[str] = (CHECKPOINT_FORMAT,)) -> dict[str, Any]:
    """Read a file written by :func:`save_checkpoint` (on the CPU, without running code).

    Args:
        path: The file.
        formats: The format tags accepted (default: a CryoPoseNet checkpoint or encoder).

    Returns:
        The payload dict (tensors on the CPU); ``"format"`` holds its tag.

    Raises:
        InputFileError: The file is missing, unreadable, refused by ``weights_only`` loading
            (see :func:`read_torch_file`), or of another format.
    """
    formats = tuple(formats)
    names = " or ".join(FORMATS[f] for f in formats)
    state = read_torch_file(path, "checkpoint file")
    tag = checkpoint_format(state)
    if tag not in formats:
        found = f"; it is a {FORMATS[tag]}" if tag is not None else ""
        raise InputFileError(path, f"not a cryopose {names} (expected format {' or '.join(formats)}{found})")
    state = dict(state)
    state["format"] = tag
    return state


def dataset_fingerprint(stack, metadata) -> dict:
    """What identifies a data set for ``--resume`` (every trainer's checkpoint stores it).

    Args:
        stack: The particle images (``box_size`` in px).
        metadata: Their :class:`~cryopose.io.metadata.ParticleMetadata`.

    Returns:
        ``{"n_particles", "box_size", "pixel_size_angstrom" (rounded to 1e-6 Å),
        "image_names_sha256"}``: the hash is over ``N@name`` of every image (the stack's file
        name without its folder, so that a moved project still matches), in order.
    """
    import hashlib
    from pathlib import Path

    names = metadata.image_paths or []
    idx = metadata.image_indices if metadata.image_indices is not None else range(len(names))
    h = hashlib.sha256()
    for i, p in zip(idx, names):
        h.update(f"{int(i)}@{Path(p).name}\n".encode())
    return {"n_particles": int(len(metadata)), "box_size": int(stack.box_size),
            "pixel_size_angstrom": round(float(metadata.pixel_size_angstrom), 6), "image_names_sha256": h.hexdigest()}
