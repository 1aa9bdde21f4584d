"""What every task receives: :class:`TaskContext` (the validated parameters, the task's paths, its logger)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from emdenoise.config.params import Params


@dataclass(frozen=True)
class TaskContext:
    """The input of a task's ``run(ctx)``: ``paths`` maps each input and output of the task (as named in
    ``mlcube.yaml``: ``data_dir``, ``model_dir``, ...) to its path; ``params`` are the validated parameters,
    one typed section per task (``ctx.params.train.epochs``)."""

    task: str
    params: Params
    paths: dict[str, Path]
    log: logging.Logger
    debug: bool = False

    @property
    def where(self) -> str:
        """The parameters file, for messages that name it."""
        return str(self.paths.get("parameters_file", self.params.where))
