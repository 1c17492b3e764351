"""Helpers shared by command modules: run configs and output folders (no maths here)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
from pathlib import Path
from typing import Any

import yaml

from .. import __version__

__all__ = ["write_run_config", "prepare_output_dir", "add_datadir_argument"]


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

    Subnormal float32 values (``|x| < 1.2e-38``), which tiny weights, Adam moments and gradients
    reach in long trainings, are treated as zero (``torch.set_flush_denormal(True)``, where the
    CPU supports it): x86 CPUs process them many times slower (``python
    benchmarks/denormals.py``), and values that small change no result.

    Args:
        threads: ``torch.set_num_threads`` value (the command's ``--threads``), or ``None`` to
            keep torch's default.

    Raises:
        cryopose.errors.UserError: ``threads`` < 1.
    """
    import torch

    from ..errors import UserError

    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


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
