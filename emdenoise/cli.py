"""The task command line: ``emdenoise TASK --name=value ...`` (also ``python -m emdenoise``).

The MLCube calls exactly this, passing each input and output of ``mlcube.yaml`` as ``--name=/mlcube_ioN/...``.
Folder and file arguments default to the layout under ``--workspace`` (default ``./workspace``), the same
layout the MLCube uses, so a native run and a container run write to the same places.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emdenoise import __version__, params as params_mod
from emdenoise.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_RUNTIME, EmdError, InputError
from emdenoise.log import setup as setup_logging


@dataclass(frozen=True)
class TaskSpec:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    help: str
    # this task's own default for a path, where it differs from DEFAULT_PATHS (e.g. denoise's output_dir)
    defaults: dict[str, str] = field(default_factory=dict)

    def default_path(self, arg: str) -> str:
        """Where ``arg`` lives under the workspace when not given on the command line."""
        return self.defaults.get(arg, DEFAULT_PATHS[arg])


# Path arguments of each task, in the order mlcube.yaml declares them (inputs, then outputs).
TASKS: dict[str, TaskSpec] = {
    "download": TaskSpec(("parameters_file",), ("raw_data_dir", "log_dir"),
                         "fetch em_graphene_sim, or generate the synthetic set"),
    "preprocess": TaskSpec(("raw_data_dir", "parameters_file"), ("data_dir", "log_dir"),
                           "validate the raw data and split it into train/val/test"),
    "train": TaskSpec(("data_dir", "parameters_file"), ("model_dir", "output_dir", "log_dir"),
                      "train one or more denoisers"),
    "test": TaskSpec(("data_dir", "model_dir", "parameters_file"), ("output_dir", "log_dir"),
                     "evaluate the trained denoisers against the noisy input and classical filters"),
    "denoise": TaskSpec(("input_dir", "model_dir", "parameters_file"), ("output_dir", "log_dir"),
                        "apply a trained model to micrographs", defaults={"output_dir": "denoise/output"}),
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


@dataclass
class TaskContext:
    """What a task's ``run`` receives."""

    task: str
    params: dict[str, dict[str, Any]]
    paths: dict[str, Path]
    log: logging.Logger
    debug: bool = False

    @property
    def section(self) -> dict[str, Any]:
        """This task's own section of the parameters."""
        return self.params.get(self.task, {})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emdenoise", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"emdenoise {__version__}")
    sub = parser.add_subparsers(dest="task", metavar="TASK")
    for name, spec in TASKS.items():
        p = sub.add_parser(name, help=spec.help, description=spec.help)
        for arg in spec.inputs + spec.outputs:
            flags = [f"--{arg}"] + ([f"--{arg.replace('_', '-')}"] if "_" in arg else [])
            p.add_argument(*flags, dest=arg, default=None, metavar="PATH",
                           help=f"default: WORKSPACE/{spec.default_path(arg)}")
        p.add_argument("--workspace", default="workspace", metavar="DIR",
                       help="folder holding the default paths (default: ./workspace)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one parameter, e.g. --set train.epochs=5 (repeatable)")
        p.add_argument("--debug", action="store_true", help="show tracebacks and debug messages")
    sub.add_parser("params", help="print the parameters reference (markdown)")
    return parser


def main(argv: list[str] | None = None) -> int:
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
    paths = {name: Path(getattr(args, name) or workspace / spec.default_path(name))
             for name in spec.inputs + spec.outputs}
    log = setup_logging(args.task, paths.get("log_dir"), verbose=args.debug)
    try:
        params = params_mod.load(paths.get("parameters_file"), args.overrides)
        module = importlib.import_module(f"emdenoise.tasks.{args.task}")
        log.info("emdenoise %s: %s (parameters: %s)", __version__, args.task, paths.get("parameters_file"))
        module.run(TaskContext(args.task, params, paths, log, args.debug))
    except EmdError as exc:
        if args.debug:
            log.error("%s", traceback.format_exc().rstrip())
        log.error("error: %s", exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("error: interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug, or a failure we did not foresee: still one line unless --debug
        if args.debug:
            log.error("%s", traceback.format_exc().rstrip())
        log.error("error: unexpected %s: %s (run again with --debug for the traceback)",
                  exc.__class__.__name__, exc)
        return EXIT_RUNTIME
    log.info("%s: done", args.task)
    return 0
