"""Logging to stderr and to ``log_dir/<task>.log``, and tqdm progress bars that behave in containers."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

LOGGER_NAME = "emdenoise"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class BarSafeHandler(logging.StreamHandler):
    """A stream handler that writes through :meth:`tqdm.write`: while a progress bar is drawn on the same
    stream the bar is cleared, the message printed on its own line and the bar redrawn below it (a plain
    write would land in the middle of the bar's line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # the line and its newline in one write: processes sharing stderr (torchrun) cannot splice their lines
            tqdm.write(self.format(record) + "\n", file=self.stream, end="")
            self.flush()
        except Exception:  # as logging.StreamHandler does: never let a log line end the run
            self.handleError(record)


def setup(task: str, log_dir: Path | None, verbose: bool = False) -> logging.Logger:
    """Send the package's log records to stderr and, when ``log_dir`` is given, append them to its task log."""
    logger = get_logger()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    console = BarSafeHandler(sys.stderr)
    console.setFormatter(logging.Formatter(f"[{task}] %(message)s"))
    logger.addHandler(console)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        fileh = logging.FileHandler(log_dir / f"{task}.log", encoding="utf-8")
        fileh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(fileh)
    return logger


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr. Set EMDENOISE_PROGRESS=0 to hide the bars; off a terminal they refresh slowly."""
    if os.environ.get("EMDENOISE_PROGRESS", "1") == "0":
        kwargs["disable"] = True
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 10.0)
    return tqdm(iterable, **kwargs)
