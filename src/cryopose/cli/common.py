"""Helpers shared by command modules: run configs and output folders (no maths here)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
from pathlib import Path
from typing import Any

import yaml

from .. import __version__

__all__ = ["write_run_config", "prepare_output_dir", "add_datadir_argument", "add_runtime_arguments",
           "runtime_from_args", "configure_torch"]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_run_config(path, *, command_line: str, config: Any = None, extra: dict | None = None) -> Path:
    """Write ``config.yaml`` for a run: cryopose version, command line, date, host, and the config.

    Args:
        path: Output file (usually ``OUTDIR/config.yaml``); written atomically.
        command_line: The shell-quoted command line (``args.command_line`` set by ``cli.main``).
        config: A frozen config dataclass (or dict) of the run.
        extra: More key/values to record.

    Returns:
        The path written.
    """
    from ..io.atomic import atomic_write_text

    doc = {
        "cryopose_version": __version__,
        "command_line": command_line,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }
    if config is not None:
        doc["config"] = _plain(config)
    if extra:
        doc.update(_plain(extra))
    path = Path(path)
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
    return path


DATADIR_HELP = ("folder of the particle stacks, besides the STAR file's folder and the current folder: "
                "relative STAR image names are also tried against it, and stacks are read only inside these "
                "folders (pass it for stacks outside them, e.g. absolute names or ../ paths); for a .cs file, "
                "the folder cryoSPARC's blob/path is relative to")


def add_datadir_argument(parser) -> None:
    """Add ``--datadir DIR`` (``args.datadir``, default ``None``) and ``--optics-group GROUP``
    (``args.optics_group``) to a command that reads particles.

    Passed on by :func:`particle_options` as ``load_particles(..., datadir=, optics_group=)``:
    ``datadir``, for a STAR file, is one more folder stacks may be read from and relative
    ``N@stack`` names are tried against (after the current folder and the STAR file's folder);
    for a ``.cs`` file, the folder cryoSPARC's ``blob/path`` is relative to. ``optics_group``
    keeps the particles of one optics group (its ``rlnOpticsGroup`` number or
    ``rlnOpticsGroupName``), for files whose groups differ in pixel or box size.
    """
    parser.add_argument("--datadir", metavar="DIR", help=DATADIR_HELP)
    parser.add_argument("--optics-group", metavar="GROUP",
                        help="use only the particles of this optics group: its rlnOpticsGroup number or "
                             "rlnOpticsGroupName (for files whose optics groups differ in pixel or box size; "
                             "a .cs file numbers them ctf/exp_group_id + 1)")


def particle_options(args) -> dict:
    """``load_particles`` keywords from the options of :func:`add_datadir_argument`."""
    return {"datadir": getattr(args, "datadir", None), "optics_group": getattr(args, "optics_group", None)}


def add_contrast_arguments(parser) -> None:
    """Add ``--invert-contrast`` / ``--no-invert-contrast`` (exclusive; neither = detect it)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--invert-contrast", action="store_true",
                       help="particles are dark: negate them first (default: detected from the images and reported)")
    group.add_argument("--no-invert-contrast", action="store_true",
                       help="particles are bright as given (skip the contrast detection)")


def add_shift_estimation_arguments(parser, what: str) -> None:
    """Add ``--estimate-shifts`` / ``--no-estimate-shifts`` (exclusive; neither = when the
    input has no origins); ``what`` says how the command estimates them."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--estimate-shifts", action="store_true",
                       help=f"estimate origins ({what}) even if the input has them; default: when it has none")
    group.add_argument("--no-estimate-shifts", action="store_true",
                       help="keep the input's origins (zero when it has none)")


def add_force_argument(parser, also: str | None = None) -> None:
    """Add ``--force``: replace existing outputs (refused otherwise, as RELION's job folders and
    cryoDRGN's ``-o`` guard do); ``also`` names what else it allows (e.g. a reference map whose
    voxel size disagrees with the particles')."""
    parser.add_argument("--force", action="store_true",
                        help="replace existing output files (default: refuse, never overwrite silently)"
                             + (f"; also {also}" if also else ""))


def refuse_overwrite(paths, *, force: bool, stale=(), expected_bytes: int | None = None) -> None:
    """Check output files before any work (:func:`cryopose.io.outputs.check_outputs`): none may
    exist unless ``force``, none may be a folder, their folder must be writable, and the disk
    must have room for ``expected_bytes`` when given.

    With ``force``, the ``stale`` files (outputs of an earlier run that this run will not write,
    e.g. half maps when ``--no-half-maps``) are removed, so no output of another run is left
    beside the new one.

    Raises:
        cryopose.errors.OutputError: An output exists (naming it) without ``force``, a path
            names a folder, the folder is not writable, or the disk lacks room.
    """
    from ..io.outputs import check_outputs

    check_outputs(paths, force=force, stale=stale, expected_bytes=expected_bytes)


def check_reference_scale(command: str, reference_path, reference, particle_box: int, particle_pixel_angstrom: float,
                          *, force: bool) -> None:
    """Refuse a reference map whose voxel size disagrees with the particles' pixel size by more than
    1 % (and that is no binned copy of their box; :func:`cryopose.search.run.reference_scale_problem`),
    unless ``force``: then the problem is printed on stderr as a warning and the run goes on.

    Raises:
        cryopose.errors.UserError: The scales disagree and ``force`` is false (naming the map,
            both sizes, and ``--map-pixel-size`` / ``--force``).
    """
    import sys

    from ..errors import UserError
    from ..search.run import reference_scale_problem

    problem = reference_scale_problem(reference, particle_box, particle_pixel_angstrom)
    if problem is None:
        return
    if not force:
        raise UserError(f"{reference_path}: {problem} Set the map's voxel size with --map-pixel-size A, or pass "
                        "--force to use the map as it is")
    print(f"cryopose {command}: warning: {reference_path}: {problem} (used as it is: --force)", file=sys.stderr)


def tri_state(args, name: str) -> bool | None:
    """``True`` for ``--NAME``, ``False`` for ``--no-NAME``, ``None`` (automatic) for neither."""
    if getattr(args, name):
        return True
    return False if getattr(args, "no_" + name) else None


def configure_torch(threads: int | None) -> None:
    """Set up torch for a command: its thread count, and subnormal floats flushed to zero.

    The same as ``Runtime(threads=threads).apply()`` (:meth:`cryopose.runtime.Runtime.apply`),
    for the commands that take no runtime group (``simulate``, ``demo``).

    Args:
        threads: ``torch.set_num_threads`` value (the command's ``--threads``), or ``None`` to
            keep torch's default.

    Raises:
        cryopose.errors.UserError: ``threads`` < 1.
    """
    from ..runtime import Runtime

    Runtime(threads=threads).apply()


RUNTIME_GROUP = "runtime (how the run computes; never saved in model configs, so --resume may change them)"


def add_runtime_arguments(parser, *, seed: str | None = "random seed (default 0)", precision: bool = False,
                          streaming: bool = False, progress: bool = True,
                          threads_help: str = "torch CPU threads (default: torch's choice)") -> None:
    """Add the shared runtime options of a command that computes (one group, same names everywhere).

    ``--device {auto,cpu,cuda,cuda:N}`` (default ``auto``: the first CUDA GPU when present),
    ``--threads N``, and as asked: ``--seed N`` (default 0), ``--precision {32,bf16,16}``,
    ``--no-progress``, ``--stream`` / ``--in-memory`` and ``--workers N``. Read them back with
    :func:`runtime_from_args`.

    Args:
        parser: The command's parser.
        seed: Help of ``--seed``, or ``None`` when the command defines its own (or draws nothing).
        precision: Offer ``--precision`` (commands that run networks under autocast).
        streaming: Offer ``--stream`` / ``--in-memory`` / ``--workers`` (commands that read
            particles through :mod:`cryopose.data.streaming`).
        progress: Offer ``--no-progress``.
        threads_help: Help of ``--threads``.
    """
    from ..runtime import PRECISIONS

    g = parser.add_argument_group(RUNTIME_GROUP)
    g.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                   help="where to compute (default auto: the first CUDA GPU when present, else the CPU)")
    g.add_argument("--threads", type=int, default=None, help=threads_help)
    if seed is not None:
        g.add_argument("--seed", type=int, default=0, help=seed)
    if precision:
        g.add_argument("--precision", choices=tuple(PRECISIONS), default="32",
                       help="network arithmetic: 32 (float32, default), bf16 (bfloat16 autocast of the networks; "
                            "the physics stays float32), 16 (float16, CUDA inference only)")
    if progress:
        g.add_argument("--no-progress", action="store_true", help="no progress bar")
    if streaming:
        s = g.add_mutually_exclusive_group()
        s.add_argument("--stream", dest="stream", action="store_const", const=True, default=None,
                       help="read the particles batch by batch from their memory-mapped stacks (a DataLoader); "
                            "memory does not grow with the number of particles (default: when the preprocessed "
                            "images would not fit in a quarter of the available memory)")
        s.add_argument("--in-memory", dest="stream", action="store_const", const=False,
                       help="keep the preprocessed particles in memory (fastest when they fit)")
        g.add_argument("--workers", type=int, default=0, metavar="N",
                       help="DataLoader worker processes when streaming (default 0: read in the main process)")


def runtime_from_args(args, *, command: str, gpu: bool = True, training: bool = False,
                      distributed: bool = False):
    """The :class:`cryopose.runtime.Runtime` of parsed options (:func:`add_runtime_arguments`).

    Args:
        args: The parsed namespace (missing options take their defaults).
        command: The command's name, for messages.
        gpu: The command can run on a GPU. Otherwise ``--device auto`` means the CPU and an
            explicit GPU is refused.
        training: The command trains (``--precision 16`` is refused).
        distributed: The command runs sharded under ``torchrun`` (:mod:`cryopose.distributed`:
            the process group is joined here); others refuse ``WORLD_SIZE > 1``.

    Raises:
        cryopose.errors.UserError: Bad values, a GPU asked for without CUDA (or for a
            CPU-only command), float16 training, torchrun for a command that does not shard.
    """
    from ..distributed import init_distributed, world_from_env
    import torch

    from ..errors import UserError
    from ..runtime import Runtime, resolve_device

    spec = getattr(args, "device", "auto")
    if not gpu and str(spec).lower() == "auto":
        spec = "cpu"
    device = resolve_device(spec)
    if not gpu and device.type != "cpu":
        raise UserError(f"cryopose {command}: --device {spec}: this command runs on the CPU only; use --device cpu")
    rank, world = 0, 1
    if world_from_env()[1] > 1:
        if not distributed:
            raise UserError(f"cryopose {command} does not run under torchrun (WORLD_SIZE {world_from_env()[1]}); "
                            "run it as one process (`cryopose predict` and `cryopose abinitio` do run under it)")
        rank, world, device = init_distributed(device, device_was_auto=str(spec).lower() == "auto")
    rt = Runtime(device=device, rank=rank, world_size=world, threads=getattr(args, "threads", None),
                 seed=int(getattr(args, "seed", 0) or 0),
                 precision=getattr(args, "precision", "32"), progress=not getattr(args, "no_progress", False),
                 stream=getattr(args, "stream", None), workers=getattr(args, "workers", 0))
    if training:
        rt.check_training_precision(command)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rt


def prepare_output_dir(path, *, allow_existing: bool = True, names=(), force: bool = False) -> Path:
    """Check an output folder before any work and create it (parents too); return it as a ``Path``
    (:func:`cryopose.io.outputs.check_output_folder`).

    Args:
        path: The folder.
        allow_existing: Accept a folder that holds files already.
        names: Files the command writes in it: refused when present unless ``force``.
        force: The command's ``--force``.

    Raises:
        cryopose.errors.UserError: If ``path`` exists and is a file, cannot be created or
            written, holds one of ``names`` without ``force``, or is not empty while
            ``allow_existing`` is false.
    """
    from ..errors import UserError
    from ..io.outputs import check_output_folder

    p = Path(path)
    if p.is_dir() and not allow_existing and any(p.iterdir()):
        raise UserError(f"output folder {p} is not empty (use --resume or another -o)")
    return check_output_folder(p, names=names, force=force)
