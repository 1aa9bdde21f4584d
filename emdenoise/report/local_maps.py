"""The consistency check's local maps as a figure: for a few frames, the input and, per method, the local
deviation in blocks (:mod:`emdenoise.evaluation.consistency`: the relative error of the output that the Poisson
deviance of the counts implies, block by block), on one colour scale from 0 to twice the threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emdenoise.report.figures import figure


def local_maps_figure(
    inputs: Sequence[np.ndarray],
    maps: Mapping[str, Sequence[np.ndarray]],
    max_deviation: float,
    labels: Sequence[str] | None = None,
    titles: Mapping[str, str] | None = None,
) -> Any:
    """A grid, returned: one row per frame of ``inputs``; columns the input (its own 0.5 to 99.5 percentile grey
    scale) and every method's local deviation map (``maps[method][row]``, blocks stretched over the frame), on
    one scale 0 .. 2 x ``max_deviation``; blocks above ``max_deviation`` are where the output disagrees with the
    counts. ``titles`` adds a line under a method's name (e.g. its score)."""
    names = list(maps)
    rows, cols = len(inputs), 1 + len(names)
    fig = figure(2.0 * cols + 0.8, 2.0 * rows + 0.5)
    image = None
    for r, frame in enumerate(inputs):
        h, w = frame.shape
        lo, hi = np.percentile(frame, [0.5, 99.5])
        ax = fig.add_subplot(rows, cols, r * cols + 1)
        ax.imshow(frame, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-9), interpolation="nearest")
        ax.set_title("input" if r == 0 else "", fontsize=8)
        ax.set_ylabel(labels[r] if labels else f"#{r}", fontsize=8)
        for c, name in enumerate(names, 2):
            ax2 = fig.add_subplot(rows, cols, r * cols + c)
            local = np.asarray(maps[name][r], dtype=np.float64)
            if local.size:
                scale = {"vmin": 0.0, "vmax": 2.0 * max_deviation, "extent": (0, w, h, 0)}
                image = ax2.imshow(local, cmap="magma", interpolation="nearest", **scale)
            else:  # the check is undefined (values that are not counts)
                ax2.text(0.5, 0.5, "no map:\nnot counts", ha="center", va="center", fontsize=7, transform=ax2.transAxes)
            if r == 0:
                extra = (titles or {}).get(name)
                ax2.set_title(name + (f"\n{extra}" if extra else ""), fontsize=8)
            ax2.set_xticks([])
            ax2.set_yticks([])
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        bar = fig.colorbar(image, ax=fig.axes, shrink=0.8)
        bar.set_label(f"local deviation (flag above {max_deviation:g})", fontsize=8)
    return fig
