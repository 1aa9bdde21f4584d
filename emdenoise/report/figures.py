"""Shared matplotlib helpers of the reports: a bare Agg figure (no pyplot, no display, no global backend
switch), the colours of the row kinds, and writing a figure as PNG.

When matplotlib's configuration folder is not writable (a container running as an arbitrary user, a read-only
home), ``MPLCONFIGDIR`` is pointed at a fresh temporary folder before matplotlib is first imported, so it
neither fails nor warns.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from emdenoise.outputs import atomic_path

KIND_COLOURS = {
    "input": "#9e9e9e",
    "classical": "#4c72b0",
    "deep": "#dd8452",
    "pretrained": "#55a868",
    "external": "#8172b3",
}
# how a kind reads in tables and legends (else the kind itself)
KIND_LABELS = {"pretrained": "pretrained (zoo)", "external": "external (peer)"}


def kind_label(kind: str) -> str:
    """A row kind as the reports show it: ``pretrained (zoo)`` for the zoo's models, ``external (peer)`` for the
    peer restorer (:mod:`emdenoise.inference.peer`), else the kind."""
    return KIND_LABELS.get(kind, kind)


def _config_dir_writable() -> bool:
    """Whether matplotlib's default configuration folder exists or can be made, and is writable."""
    try:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib"
        base.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):
        return False
    return os.access(base, os.W_OK | os.X_OK)


def _configure() -> None:
    """Give matplotlib a writable configuration folder before it is first imported (call before any import)."""
    if "matplotlib" not in sys.modules and not os.environ.get("MPLCONFIGDIR") and not _config_dir_writable():
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="emdenoise-matplotlib-")


def figure(width: float, height: float) -> Any:
    """A new Agg-backed :class:`matplotlib.figure.Figure`, making sure matplotlib has a writable
    configuration folder first."""
    _configure()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def legend_line(**style: Any) -> Any:
    """A :class:`matplotlib.lines.Line2D` with no data, for a legend entry (``label=``, ``color=`` ...)."""
    _configure()
    from matplotlib.lines import Line2D

    return Line2D([], [], **style)


def legend_patch(**style: Any) -> Any:
    """A :class:`matplotlib.patches.Patch`, for a legend entry (``label=``, ``color=``)."""
    _configure()
    from matplotlib.patches import Patch

    return Patch(**style)


def write_png(fig: Any, path: str | os.PathLike[str]) -> None:
    """Render ``fig`` as PNG into ``path`` as it is (a temporary or staged path the caller commits)."""
    fig.savefig(path, format="png")


def save(fig: Any, dest: str | os.PathLike[str]) -> None:
    """Render ``fig`` as PNG into ``dest``, atomically."""
    with atomic_path(dest) as tmp:
        write_png(fig, tmp)
