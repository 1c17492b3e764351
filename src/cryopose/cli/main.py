"""Entry point of the ``cryopose`` command (``cryopose <command> [options]``).

Commands are discovered from the modules of :mod:`cryopose.cli` that define ``COMMAND``.
Errors that a user can fix (bad files, bad parameters, outputs that cannot be written: any
``OSError``) are printed as one line
``cryopose <command>: error: ...`` and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import shlex
import sys

from .. import __version__
from ..errors import UserError

__all__ = ["main", "build_parser", "command_line"]


def _command_modules():
    import cryopose.cli as pkg

    mods = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in ("main", "common"):
            continue
        mod = importlib.import_module(f"cryopose.cli.{info.name}")
        if hasattr(mod, "COMMAND"):
            mods.append(mod)
    return mods


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with one sub-parser per discovered command."""
    parser = argparse.ArgumentParser(prog="cryopose", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cryopose {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for mod in _command_modules():
        p = sub.add_parser(mod.COMMAND, help=mod.HELP, description=(mod.__doc__ or mod.HELP).strip())
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def command_line(argv=None) -> str:
    """The command line as a shell-quoted string, recorded in each run's config."""
    argv = sys.argv[1:] if argv is None else argv
    return "cryopose " + " ".join(shlex.quote(a) for a in argv)


def main(argv=None) -> int:
    """Run the ``cryopose`` command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    args.command_line = command_line(argv)
    try:
        return int(args._run(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as exc:
        if args.debug:
            raise
        print(f"cryopose {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # one not caught where it happened: a line naming the file, not a traceback
        if args.debug:
            raise
        from ..io.outputs import os_error_reason

        where = f"{exc.filename}: " if exc.filename else ""
        print(f"cryopose {args.command}: error: {where}{os_error_reason(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryopose {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Leave a ``torchrun`` process group the command joined (:mod:`cryopose.distributed`)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
