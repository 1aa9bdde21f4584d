"""The task command line: ``emdenoise TASK --name=value ...`` (also ``python -m emdenoise``).

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

from emdenoise import __version__, lock
from emdenoise.config import params as params_mod
from emdenoise.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUNTIME,
    EmdError,
    InputError,
    RuntimeFailure,
)
from emdenoise.io import budget
from emdenoise.log import setup as setup_logging
from emdenoise.outputs import check_output
from emdenoise.tasks import denoise_flags
from emdenoise.tasks.context import TaskContext


# Each task's module is imported only when that task runs (together they import torch, scipy, matplotlib ...).
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


@dataclass(frozen=True)
class TaskSpec:
    run: Callable[[TaskContext], None]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    help: str
    # this task's own default for a path, where it differs from DEFAULT_PATHS (e.g. denoise's output_dir)
    defaults: dict[str, str] = field(default_factory=dict)

    def default_path(self, arg: str) -> str:
        """Where ``arg`` lives under the workspace when not given on the command line."""
        return self.defaults.get(arg, DEFAULT_PATHS[arg])


# The dispatch table: each task's entry point and path arguments, in the order mlcube.yaml declares them
# (inputs, then outputs).
TASKS: dict[str, TaskSpec] = {
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
        _train, ("data_dir", "parameters_file"), ("model_dir", "output_dir", "log_dir"), "train one or more denoisers"
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
    ),
    "study": TaskSpec(
        _study,
        ("data_dir", "parameters_file"),
        ("output_dir", "log_dir"),
        "fidelity, speed and training-data needs of every model vs the classical baselines",
        defaults={"output_dir": "study"},
    ),
}

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
    sub = parser.add_subparsers(dest="task", metavar="TASK")
    for name, spec in TASKS.items():
        p = sub.add_parser(name, help=spec.help, description=spec.help)
        for arg in spec.inputs + spec.outputs:
            flags = [f"--{arg}"] + ([f"--{arg.replace('_', '-')}"] if "_" in arg else [])
            p.add_argument(
                *flags, dest=arg, default=None, metavar="PATH", help=f"default: WORKSPACE/{spec.default_path(arg)}"
            )
        p.add_argument(
            "--workspace",
            default="workspace",
            metavar="DIR",
            help="folder holding the default paths (default: ./workspace)",
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one parameter, e.g. --set train.epochs=5 (repeatable)",
        )
        p.add_argument("--debug", action="store_true", help="show tracebacks and debug messages")
        if name == "denoise":
            denoise_flags.add_arguments(p)
    sub.add_parser("params", help="print the parameters reference (markdown)")
    sub.add_parser("zoo", add_help=False, help="list the pretrained models (emdenoise denoise --model zoo:NAME)")
    sub.add_parser(
        "bench",
        add_help=False,
        help="training and inference speed vs the original loop (options: emdenoise bench --help)",
    )
    sub.add_parser(
        "export",
        add_help=False,
        help="a trained model as an ONNX or TorchScript file (options: emdenoise export --help)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["bench"]:  # a utility with options of its own
        from emdenoise.bench import run as bench

        return bench.main((sys.argv[1:] if argv is None else argv)[1:])
    if (sys.argv[1:] if argv is None else argv)[:1] == ["export"]:  # another one
        from emdenoise.inference import export

        return export.main((sys.argv[1:] if argv is None else argv)[1:])
    if (sys.argv[1:] if argv is None else argv)[:1] == ["zoo"]:  # and the list of pretrained models
        from emdenoise import zoo

        return zoo.main((sys.argv[1:] if argv is None else argv)[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    if args.task == "params":
        print(params_mod.reference_markdown())
        return 0
    spec = TASKS[args.task]
    workspace = Path(args.workspace)
    paths = {
        name: Path(getattr(args, name) or workspace / spec.default_path(name)) for name in spec.inputs + spec.outputs
    }
    if args.parameters_file is None and not paths["parameters_file"].is_file():
        del paths["parameters_file"]  # no parameters file given and none in the workspace: the built-in defaults
    if args.log_dir is None and not workspace.is_dir():
        del paths["log_dir"]  # run outside a workspace: the log goes to the terminal only, no folder is created
    overrides = list(args.overrides)
    if args.task == "denoise":
        overrides = denoise_flags.overrides(args) + overrides
        denoise_flags.beside_inputs(args, paths)
    try:
        log = setup_logging(args.task, paths.get("log_dir"), verbose=args.debug)
    except OSError as exc:
        log = setup_logging(args.task, None, verbose=args.debug)
        log.error(
            "error: %s: log_dir: expected a folder the log can be written into (%s)",
            paths.get("log_dir"),
            exc.strerror or exc,
        )
        return EXIT_BAD_INPUT
    # under torchrun (train with several processes) only rank 0 logs, takes the output locks and writes files
    rank_zero = os.environ.get("RANK", "0").strip() in ("", "0")
    if not rank_zero:
        log.setLevel(logging.WARNING)
    restore_sigterm = _sigterm_interrupts()
    restore_hook = _unraisable_to_log(log)
    try:
        params = params_mod.load(paths.get("parameters_file"), overrides)
        for name in spec.outputs:  # every output folder usable before any work (nothing created here)
            if name in paths:  # (no log_dir outside a workspace)
                check_output(paths[name], name)
        limit_gb = getattr(getattr(params, args.task, None), "memory_limit_gb", None)
        if limit_gb is not None:  # the readers' memory budget (emdenoise.io.budget)
            budget.configure(limit_gb, f"{args.task}.memory_limit_gb")
        # one run at a time per output folder (log_dir aside: appending to a log is harmless)
        with lock.hold({name: paths[name] for name in spec.outputs if name != "log_dir" and rank_zero}, args.task, log):
            log.info(
                "emdenoise %s: %s (parameters: %s)",
                __version__,
                args.task,
                paths.get("parameters_file", "built-in defaults"),
            )
            spec.run(TaskContext(args.task, params, paths, log, args.debug))
    except EmdError as exc:
        if args.debug:
            log.error("%s", traceback.format_exc().rstrip())
        log.error("error: %s", exc.message)
        return _leave(exc.exit_code, argv)
    except KeyboardInterrupt as exc:
        log.error("error: interrupted%s", " (SIGTERM)" if isinstance(exc, _Terminated) else "")
        return _leave(EXIT_INTERRUPTED, argv)
    except Exception as exc:  # a bug, or a failure we did not foresee: still one line unless --debug
        if args.debug:
            log.error("%s", traceback.format_exc().rstrip())
        known = file_system_error(exc)
        if known is not None:
            log.error("error: %s", known.message)
            return _leave(known.exit_code, argv)
        log.error(
            "error: unexpected %s: %s (run again with --debug for the traceback)",
            exc.__class__.__name__,
            " ".join(str(exc).split()),
        )
        return _leave(EXIT_RUNTIME, argv)
    finally:
        restore_sigterm()
        restore_hook()
        budget.reset()
    log.info("%s: done", args.task)
    return 0


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


def _sigterm_interrupts():
    """Turn SIGTERM into :class:`_Terminated` until the returned function is called."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


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
