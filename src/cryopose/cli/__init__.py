"""Command-line interface: one module per ``cryopose`` command; nothing imports ``cli``.

Each command module defines ``COMMAND`` (its name), ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. :mod:`cryopose.cli.main` discovers them, so adding a command is adding
a module.
"""
