"""The errors a task may raise on purpose. The CLI turns each into one line and an exit code.

Exit codes (also in the README):
  0  success
  1  runtime failure (network down, server error, disk full, a run that did not converge ...)
  2  bad input (parameters file, command line, data or model files that are missing or malformed)
  3  busy (another run holds the lock on the same output folder)
  130 interrupted (Ctrl-C)
  141 the reader of the output went away (``emdenoise params | head``), as for a program ended by SIGPIPE
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
EXIT_BUSY = 3
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141  # 128 + SIGPIPE


class EmdError(Exception):
    """Base class: a failure we can explain in one line."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InputError(EmdError):
    """Something the user gave us is wrong: say which file, which field, and what was expected."""

    exit_code = EXIT_BAD_INPUT

    @classmethod
    def at(cls, where, field: str | None, expected: str) -> InputError:
        """``InputError.at("params.yaml", "train.epochs", "an integer >= 1, got 'two'")``."""
        parts = [str(where)]
        if field:
            parts.append(str(field))
        parts.append(expected)
        return cls(": ".join(parts))


class RuntimeFailure(EmdError):
    """The input was fine but the run could not complete (network, server, disk ...)."""

    exit_code = EXIT_RUNTIME


class BusyError(EmdError):
    """Another run is writing into the same output folder."""

    exit_code = EXIT_BUSY


class OutputClosed(EmdError):
    """The reader of stdout went away (``emdenoise params | head``): the command ends quietly."""

    exit_code = EXIT_PIPE


def script(work: Callable[[], str]) -> int:
    """The end of a ``python -m emdenoise...`` script: ``work()`` run and its summary printed, exit 0; an
    :class:`EmdError` printed as one line (``error: ...``) on stderr, exit with its code."""
    try:
        summary = work()
    except EmdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        write_stdout(summary)
    except OutputClosed:
        return stdout_gone()
    return EXIT_OK


def stdout_gone() -> int:
    """End quietly, as a program killed by SIGPIPE would (``emdenoise params | head``): stdout pointed at
    /dev/null so that Python's own flush at exit does not print a second BrokenPipeError; exit code EXIT_PIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a file descriptor (an in-process caller): nothing to flush
        pass
    return EXIT_PIPE


def write_stdout(text: str) -> None:
    """Print ``text`` on stdout; a reader that went away raises :class:`OutputClosed` (not a traceback)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise OutputClosed("stdout closed by its reader") from None
