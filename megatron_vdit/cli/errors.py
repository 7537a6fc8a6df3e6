"""The bad-input convention every command line shares (see docs/errors.md).

Bad input (a flag, a file, data, a law) is one line ``<prog>: error: <what>`` on stderr
and exit status 2, with no traceback; ``--debug`` or ``VDIT_DEBUG=1`` re-raises so
developers see where it came from. Library code signals bad input by raising
``ValueError`` (or an ``OSError`` naming a user path that cannot be opened or written);
anything else is a crash (exit 1, traceback).

Pure standard library: ``scaling_laws`` imports it and must stay free of torch.

Typical use::

    def main(argv=None) -> int:
        return run_cli(_main, argv, prog="vdit-plan")

where ``_main(argv)`` builds an argparse parser (with :func:`add_debug_flag`), parses
``argv`` and returns an exit status.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, NoReturn, Sequence

EXIT_OK = 0
EXIT_FAILED = 1
"""An unexpected crash, or (for a sweep) runs that failed."""
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
DEBUG_ENV = "VDIT_DEBUG"

# OSErrors that name a path the user gave: bad input, not a crash. A full disk or an
# I/O error stays a crash.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                NotADirectoryError)


def finite_number(test: Callable[[float], bool], need: str) -> Callable[[str], float]:
    """An argparse ``type``: a finite float passing ``test``; argparse then names the flag
    (``argument --window: 0 must be a finite number > 0``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not test(value):
            raise argparse.ArgumentTypeError(f"{text} must be a finite number {need}")
        return value
    return parse


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value
    return parse


def check_output_file(path, flag: str) -> None:
    """ValueError unless ``path`` can be written as a file: it is not a directory and its
    nearest existing ancestor is one (missing directories are created by the writer)."""
    from pathlib import Path
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give the file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is not a directory")
            return


def output_file(text: str) -> str:
    """An argparse ``type`` for a file to write: `check_output_file`, flag named by argparse."""
    try:
        check_output_file(text, "path")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


POSITIVE = finite_number(lambda x: x > 0, "> 0")
NON_NEGATIVE = finite_number(lambda x: x >= 0, ">= 0")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an input error (also: {DEBUG_ENV}=1)")


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def error_line(err: BaseException) -> str:
    """One line for an input error: an OSError names its file, newlines are folded."""
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def fail(prog: str, message: str) -> NoReturn:
    """Print ``<prog>: error: message`` and exit 2 (for checks made in the CLI itself)."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def run_cli(main: Callable[[list[str] | None], int], argv: Sequence[str] | None = None,
            prog: str | None = None) -> int:
    """``main(argv)``, with ValueError / path OSErrors turned into the one-line exit 2."""
    prog = prog or os.path.basename(sys.argv[0])
    argv_list = None if argv is None else list(argv)
    try:
        return main(argv_list)
    except (ValueError, *_PATH_ERRORS) as err:
        if debug_requested(argv_list):
            raise
        print(f"{prog}: error: {error_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
