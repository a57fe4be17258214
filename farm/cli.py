"""The ``farm`` command: ``farm measure``, ``farm render``, ``farm presets``, ``farm demo``.

Structured as httpie's CLI is: :func:`main` parses the arguments and wraps
:func:`program`, which has no error handling of its own; ``main`` turns
exceptions into an :class:`ExitStatus` and a one-line message, or re-raises
them with ``--traceback``. Each subcommand lives in its own module (a thin
layer over the Python API) that provides ``add_parser(subparsers, parents)``
and sets ``handler`` (a function ``args -> ExitStatus``) on its parser;
adding a command is one entry in :data:`COMMANDS`.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from enum import IntEnum

# Subcommand modules, in the order ``farm --help`` lists them. Each module
# defines ``add_parser(subparsers, parents)``; keep heavy imports (dask, ...)
# inside its handler so ``farm --help`` stays fast.
COMMANDS = (
    "farm.cmd_render",
    "farm.demo",
    "farm.cmd_presets",
    "farm.measure",
)


class ExitStatus(IntEnum):
    """Process exit codes of ``farm``."""

    SUCCESS = 0
    ERROR = 1  # an unexpected error (a bug or the environment): rerun with --traceback
    USAGE = 2  # a bad command line or option (argparse uses 2 as well)
    INPUT_ERROR = 3  # at least one input file could not be read or processed; the rest were
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


def _common_options(subcommand: bool) -> argparse.ArgumentParser:
    """Options every command takes, before or after the subcommand name."""
    p = argparse.ArgumentParser(add_help=False)
    # In subcommands the default is SUPPRESS so ``farm --traceback measure`` is
    # not reset to False by the subparser's own default.
    p.add_argument("--traceback", action="store_true",
                   default=argparse.SUPPRESS if subcommand else False,
                   help="on an unexpected error, show the Python traceback instead of a one-line message")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="farm", parents=[_common_options(subcommand=False)],
        description="Batch mastering farm: BS.1770-4 loudness, true-peak limiting, EQ and reverb "
                    "on NumPy or CuPy, sharded with Dask.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = [_common_options(subcommand=True)]
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub, parents)
    return parser


def program(args: argparse.Namespace) -> ExitStatus:
    """Run the parsed command (no error handling here: :func:`main` does it)."""
    return ExitStatus(args.handler(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``farm`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (argparse printed it; 2)
        return ExitStatus.SUCCESS if not e.code else ExitStatus.USAGE
    try:
        return int(program(args))
    except BrokenPipeError:  # `farm presets | head`: the reader left; not an error of ours
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitStatus.SUCCESS)
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print("\nfarm: interrupted", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    except Exception as e:  # the one place that turns an unexpected error into a message
        if args.traceback:
            raise
        print(f"farm {args.command}: error: {type(e).__name__}: {e} "
              f"(run again with --traceback for the details)", file=sys.stderr)
        return int(ExitStatus.ERROR)


if __name__ == "__main__":  # pragma: no cover - `python -m farm.cli`
    sys.exit(main())
