"""The command line: ``emdenoise COMMAND --name=value ...`` (also ``python -m emdenoise``).

One table, :data:`COMMANDS`, holds every command: the MLCube's tasks (:data:`TASKS`) and the utilities
(``params``, ``bench``, ``export``); each gets the same ``--help``, ``--debug`` and one-line errors with an exit
code (:mod:`emdenoise.errors`). Nothing heavy is imported before a command runs.

The MLCube calls exactly this, passing each input and output of ``mlcube.yaml`` as ``--name=/mlcube_ioN/...``.
Folder and file arguments default to the layout under ``--workspace`` (default ``./workspace``), the same
layout the MLCube uses, so a native run and a container run write to the same places.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from emdenoise import __version__, lock
from emdenoise.bench.options import add_options as bench_options
from emdenoise.config import params as params_mod
from emdenoise.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUNTIME,
    EmdError,
    InputError,
    OutputClosed,
    RuntimeFailure,
    stdout_gone,
    write_stdout,
)
from emdenoise.io import budget
from emdenoise.log import setup as setup_logging
from emdenoise.outputs import check_output
from emdenoise.runtime.task import TaskContext
from emdenoise.tasks import denoise_flags


# Each task's module is imported only when that task runs (together they import torch, scipy, matplotlib ...):
# explicit imports, so that tests/test_layout.py sees them.
def _download(ctx: TaskContext) -> None:
    from emdenoise.tasks import download

    download.run(ctx)


def _preprocess(ctx: TaskContext) -> None:
    from emdenoise.tasks import preprocess

    preprocess.run(ctx)


def _train(ctx: TaskContext) -> None:
    from emdenoise.tasks import train

    train.run(ctx)


def _test(ctx: TaskContext) -> None:
    from emdenoise.tasks import test

    test.run(ctx)


def _denoise(ctx: TaskContext) -> None:
    from emdenoise.tasks import denoise

    denoise.run(ctx)


def _study(ctx: TaskContext) -> None:
    from emdenoise.tasks import study

    study.run(ctx)


class _Flags(Protocol):
    """A task's own options (:mod:`emdenoise.tasks.denoise_flags`): added to its parser, turned into ``--set``
    overrides, and the paths they change."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def overrides(self, args: argparse.Namespace) -> list[str]: ...

    def beside_inputs(self, args: argparse.Namespace, paths: dict) -> None: ...


@dataclass(frozen=True)
class TaskSpec:
    """A task of the MLCube: its entry point and its path arguments."""

    run: Callable[[TaskContext], None]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    help: str
    # this task's own default for a path, where it differs from DEFAULT_PATHS (e.g. denoise's output_dir)
    defaults: dict[str, str] = field(default_factory=dict)
    # options of its own beyond the paths (denoise's --input, --model, ...: emdenoise.tasks.denoise_flags)
    flags: _Flags | None = None

    def default_path(self, arg: str) -> str:
        """Where ``arg`` lives under the workspace when not given on the command line."""
        return self.defaults.get(arg, DEFAULT_PATHS[arg])

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        for arg in self.inputs + self.outputs:
            flags = [f"--{arg}"] + ([f"--{arg.replace('_', '-')}"] if "_" in arg else [])
            parser.add_argument(
                *flags, dest=arg, default=None, metavar="PATH", help=f"default: WORKSPACE/{self.default_path(arg)}"
            )
        parser.add_argument(
            "--workspace",
            default="workspace",
            metavar="DIR",
            help="folder holding the default paths (default: ./workspace)",
        )
        parser.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one parameter, e.g. --set train.epochs=5 (repeatable)",
        )
        if self.flags is not None:
            self.flags.add_arguments(parser)

    def paths(self, args: argparse.Namespace) -> dict[str, Path]:
        """Every path of the task: given, or under the workspace (a parameters file or log folder that is not
        there and was not given: none, see below), as the task's own flags may change them."""
        workspace = Path(args.workspace)
        paths = {
            name: Path(getattr(args, name) or workspace / self.default_path(name))
            for name in self.inputs + self.outputs
        }
        if args.parameters_file is None and not paths["parameters_file"].is_file():
            del paths["parameters_file"]  # no parameters file given and none in the workspace: the built-in defaults
        if args.log_dir is None and not workspace.is_dir():
            del paths["log_dir"]  # run outside a workspace: the log goes to the terminal only, no folder is created
        if self.flags is not None:
            self.flags.beside_inputs(args, paths)
        return paths

    def overrides(self, args: argparse.Namespace) -> list[str]:
        """The ``--set`` overrides: those the task's flags stand for first, the user's own after (they win)."""
        return (self.flags.overrides(args) if self.flags is not None else []) + list(args.overrides)

    def logger(self, name: str, args: argparse.Namespace) -> tuple[logging.Logger, EmdError | None]:
        """The log on stderr and in ``log_dir/<task>.log`` (a log_dir that cannot be written: the problem)."""
        log_dir = self.paths(args).get("log_dir")
        try:
            log = setup_logging(name, log_dir, verbose=args.debug)
        except OSError as exc:
            problem = InputError.at(
                log_dir, "log_dir", f"expected a folder the log can be written into ({exc.strerror or exc})"
            )
            return setup_logging(name, None, verbose=args.debug), problem
        if not _rank_zero():  # under torchrun (train with several processes) only rank 0 logs
            log.setLevel(logging.WARNING)
        return log, None

    def execute(self, name: str, args: argparse.Namespace, log: logging.Logger) -> int:
        """Read the parameters, take the output folders' locks (rank 0), run the task."""
        paths = self.paths(args)
        params = params_mod.load(paths.get("parameters_file"), self.overrides(args))
        outputs = [out for out in self.outputs if out in paths]  # (no log_dir outside a workspace)
        for out in outputs:  # every output folder usable before any work (nothing created here)
            check_output(paths[out], out)
        limit_gb = getattr(getattr(params, name, None), "memory_limit_gb", None)
        if limit_gb is not None:  # the readers' memory budget (emdenoise.io.budget)
            budget.configure(limit_gb, f"{name}.memory_limit_gb")
        # one run at a time per output folder (log_dir aside: appending to a log is harmless)
        locked = {out: paths[out] for out in outputs if out != "log_dir" and _rank_zero()}
        with lock.hold(locked, name, log):
            parameters = paths.get("parameters_file", "built-in defaults")
            log.info("emdenoise %s: %s (parameters: %s)", __version__, name, parameters)
            self.run(TaskContext(name, params, paths, log, args.debug))
        log.info("%s: done", name)
        return EXIT_OK


@dataclass(frozen=True)
class Utility:
    """A command with options of its own that is no MLCube task (``params``, ``bench``, ``export``)."""

    run: Callable[[argparse.Namespace, logging.Logger], int]
    add_options: Callable[[argparse.ArgumentParser], None]
    help: str

    def logger(self, name: str, args: argparse.Namespace) -> tuple[logging.Logger, EmdError | None]:
        return setup_logging(name, None, verbose=args.debug), None

    def execute(self, name: str, args: argparse.Namespace, log: logging.Logger) -> int:
        return self.run(args, log)


def _rank_zero() -> bool:
    return os.environ.get("RANK", "0").strip() in ("", "0")


# -- the utilities: options here (no torch), the work imported when it runs ---------------------------------------
def _params(args: argparse.Namespace, log: logging.Logger) -> int:
    write_stdout(params_mod.reference_markdown())
    return EXIT_OK


def _zoo(args: argparse.Namespace, log: logging.Logger) -> int:
    from emdenoise import zoo

    cards = [f"zoo:{name}: card {model.card_file}" for name, model in zoo.models().items()]
    write_stdout("\n".join([zoo.table(), *cards]))
    return EXIT_OK


def _bench(args: argparse.Namespace, log: logging.Logger) -> int:
    from emdenoise.bench import run

    return run.command(args, log)


def _export(args: argparse.Namespace, log: logging.Logger) -> int:
    from emdenoise.inference import export

    return export.command(args, log)


def _no_options(parser: argparse.ArgumentParser) -> None:
    pass


def _export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model_dir",
        "--model-dir",
        default="workspace/models",
        metavar="DIR",
        help="folder of trained models, as the train task writes it (default: workspace/models)",
    )
    parser.add_argument(
        "--model", default="auto", metavar="NAME", help="which model in model_dir (default: auto, the only one there)"
    )
    parser.add_argument("--format", required=True, metavar="FORMAT", help="onnx or torchscript")
    parser.add_argument("--output", required=True, metavar="FILE", help="the file to write")


# The one command table: the tasks, in the order mlcube.yaml declares them (each with its path arguments:
# inputs, then outputs), then the utilities.
COMMANDS: dict[str, TaskSpec | Utility] = {
    "download": TaskSpec(
        _download,
        ("parameters_file",),
        ("raw_data_dir", "log_dir"),
        "fetch em_graphene_sim, or generate the synthetic set",
    ),
    "preprocess": TaskSpec(
        _preprocess,
        ("raw_data_dir", "parameters_file"),
        ("data_dir", "log_dir"),
        "validate the raw data and split it into train/val/test",
    ),
    "train": TaskSpec(
        _train,
        ("data_dir", "parameters_file"),
        ("model_dir", "output_dir", "log_dir"),
        "train one or more denoisers",
    ),
    "test": TaskSpec(
        _test,
        ("data_dir", "model_dir", "parameters_file"),
        ("output_dir", "log_dir"),
        "evaluate the trained denoisers against the noisy input and classical filters",
    ),
    "denoise": TaskSpec(
        _denoise,
        ("input_dir", "model_dir", "parameters_file"),
        ("output_dir", "log_dir"),
        "apply a trained model to micrographs",
        defaults={"output_dir": "denoise/output"},
        flags=denoise_flags,
    ),
    "study": TaskSpec(
        _study,
        ("data_dir", "parameters_file"),
        ("output_dir", "log_dir"),
        "fidelity, speed and training-data needs of every model vs the classical baselines",
        defaults={"output_dir": "study"},
    ),
    "params": Utility(_params, _no_options, "print the parameters reference (markdown)"),
    "zoo": Utility(_zoo, _no_options, "list the pretrained models (emdenoise denoise --model zoo:NAME)"),
    "bench": Utility(_bench, bench_options, "training and inference speed vs the original loop"),
    "export": Utility(_export, _export_options, "a trained model as an ONNX or TorchScript file"),
}
# The MLCube's tasks: the rows with path arguments.
TASKS: dict[str, TaskSpec] = {name: row for name, row in COMMANDS.items() if isinstance(row, TaskSpec)}

# Where each path lives under the workspace when not given on the command line.
DEFAULT_PATHS = {
    "parameters_file": "parameters/default.parameters.yaml",
    "raw_data_dir": "data/raw",
    "data_dir": "data/processed",
    "model_dir": "models",
    "output_dir": "output",
    "log_dir": "logs",
    "input_dir": "denoise/input",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emdenoise", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"emdenoise {__version__}")
    sub = parser.add_subparsers(dest="task", metavar="COMMAND")
    for name, row in COMMANDS.items():
        p = sub.add_parser(name, help=row.help, description=row.help)
        row.add_options(p)
        p.add_argument("--debug", action="store_true", help="show tracebacks and debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``emdenoise COMMAND ...``: the command's exit code (0 done, 1 runtime failure, 2 bad input, 3 busy,
    130 interrupted, 141 the reader of the output went away)."""
    try:
        return _main(argv)
    except (BrokenPipeError, OutputClosed):  # argparse's help, or a command's output, cut short
        return stdout_gone()


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    row = COMMANDS[args.task]
    log, problem = row.logger(args.task, args)
    if problem is not None:
        log.error("error: %s", problem.message)
        return problem.exit_code
    signals = _Signals()
    restore_hook = _unraisable_to_log(log)
    try:
        return row.execute(args.task, args, log)
    except OutputClosed:
        raise
    except EmdError as exc:
        if args.debug:
            log.error("%s", traceback.format_exc().rstrip())
        log.error("error: %s", exc.message)
        return _leave(exc.exit_code, argv)
    except KeyboardInterrupt as exc:
        log.error("error: interrupted%s", " (SIGTERM)" if isinstance(exc, _Terminated) else "")
        return _leave(EXIT_INTERRUPTED, argv)
    except Exception as exc:  # a bug, or a failure we did not foresee: still one line unless --debug
        if signals.received is not None:  # the interrupt was raised inside a library that turned it into another error
            log.debug("interrupt surfaced as %s: %s", exc.__class__.__name__, exc)
            log.error("error: interrupted%s", " (SIGTERM)" if signals.received == signal.SIGTERM else "")
            return _leave(EXIT_INTERRUPTED, argv)
        return _leave(_unexpected(exc, log, args.debug), argv)
    finally:
        signals.restore()
        restore_hook()
        budget.reset()


def _unexpected(exc: Exception, log: logging.Logger, debug: bool) -> int:
    """Log an exception nobody raised on purpose in one line (the traceback too with ``--debug``): its exit code."""
    if debug:
        log.error("%s", traceback.format_exc().rstrip())
    known = file_system_error(exc)
    if known is not None:
        log.error("error: %s", known.message)
        return known.exit_code
    log.error(
        "error: unexpected %s: %s (run again with --debug for the traceback)",
        exc.__class__.__name__,
        " ".join(str(exc).split()),
    )
    return EXIT_RUNTIME


# -- failures of the machine rather than of the input -------------------------------------------------------------
_H5_FILENAME = re.compile(r"filename = '([^']*)'")


def file_system_error(exc: BaseException) -> EmdError | None:
    """A one-line error for a full disk or an unwritable path met while writing (None for anything else).

    Full disk or quota: :class:`RuntimeFailure` (exit 1). Read-only file system or no permission:
    :class:`InputError` (exit 2: a path given cannot be used). h5py's messages name the file inside the text.
    """
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    found = _H5_FILENAME.search(str(exc))
    where = exc.filename or (found.group(1) if found else "an output file")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RuntimeFailure(
            f"{where}: no space left on the device (or disk quota exceeded); files written "
            f"before this run are left as they were: free some space and run again"
        )
    if exc.errno == errno.EROFS:
        return InputError(
            f"{where}: cannot be written (read-only file system): expected output folders on a writable file system"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return InputError(
            f"{where}: permission denied: expected inputs this user can read and output folders it can write"
        )
    return None


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler stopping the job): unwound like Ctrl-C, so temporary files are removed."""


class _Signals:
    """Turn SIGTERM into :class:`_Terminated` and Ctrl-C into KeyboardInterrupt until :meth:`restore`, and
    remember which arrived: a library that catches the exception inside its own code (h5py converting a
    datatype) re-raises it as some other error, which must still end the run as interrupted."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signum == signal.SIGINT and signal.getsignal(signum) is not signal.default_int_handler:
                continue  # Ctrl-C ignored or handled by the caller: leave it so
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum
        raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]


def _unraisable_to_log(log: logging.Logger):
    """Send exceptions raised where Python cannot raise them (object finalisers: h5py closing a file on a
    full disk) to the debug log instead of stderr, until the returned function is called: the run's own
    one-line error says what went wrong. Cython finalisers print through ``sys.excepthook`` first, then
    ``sys.unraisablehook``: both are redirected."""
    previous = sys.unraisablehook, sys.excepthook

    def report(kind, value, where=None) -> None:
        log.debug(
            "ignored while cleaning up%s: %s: %s",
            f" {where!r}" if where is not None else "",
            getattr(kind, "__name__", kind),
            " ".join(str(value).split()),
        )
        if isinstance(kind, type) and issubclass(kind, KeyboardInterrupt):
            # Ctrl-C or SIGTERM arrived while a finaliser ran, which cannot unwind the run: deliver it again
            # in a moment, when the main thread runs ordinary code
            signum = signal.SIGTERM if issubclass(kind, _Terminated) else signal.SIGINT
            timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()

    sys.unraisablehook = lambda u: report(u.exc_type, u.exc_value, u.object)
    sys.excepthook = lambda kind, value, tb: report(kind, value)

    def restore() -> None:
        sys.unraisablehook, sys.excepthook = previous

    return restore


def _leave(code: int, argv: list[str] | None) -> int:
    """Return ``code``; from the command line, skip HDF5's exit handler when it would crash.

    HDF5 2.0 dies with SIGSEGV at exit when it still holds a file it could not flush (a write failed: disk
    full). After the one-line error is out, a failed command-line run with such a file open ends with
    ``os._exit`` instead. In-process callers (``argv`` given, e.g. tests) just get the code.
    """
    h5py = sys.modules.get("h5py")
    if argv is not None or code == EXIT_OK or h5py is None:
        return code
    try:
        stuck = h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)
    except Exception:  # an h5py without this call: nothing we can check
        return code
    if stuck:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
