"""Learning curves: validation PSNR and lattice-band PSNR against optimiser steps and against wall time, one line
per model, from the ``train_metrics.json`` files ``emdenoise train`` writes.

    python -m emdenoise.report.learning_curves FIGURE.png [LABEL=]train_metrics.json[+train_metrics.json ...] ...

Every model of every file is a line (labelled ``LABEL: model`` when a label is given). Wall time is the sum of
the epochs' ``seconds`` (validation included). Files joined by ``+`` are the legs of one training (a run
continued from the model of the one before, ``train.init_from``): each model's later legs go on from where its
earlier ones ended, in steps and in wall time. Records written before ``steps`` and ``val_band_psnr`` existed
show what they have. The figure is written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emdenoise.errors import InputError, script
from emdenoise.report.figures import figure, save

PANELS = (("val_psnr", "val PSNR (dB)"), ("val_band_psnr", "val band PSNR (dB)"))


@dataclass(frozen=True)
class Curve:
    """One model's validation measures by epoch: ``steps`` (None where the record has none), ``hours`` (wall time
    at the end of each epoch), ``values`` per measure of :data:`PANELS`."""

    label: str
    steps: list[int | None]
    hours: list[float]
    values: dict[str, list[float | None]]


def curves(path: Path, label: str = "") -> list[Curve]:
    """The curves of every model in the ``train_metrics.json`` at ``path``; a file that is not one is refused in
    one line."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError.at(path, None, f"expected a train_metrics.json ({exc})") from None
    records: Any = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(records, dict) or not records:
        raise InputError.at(path, "models", "expected the train task's records of one or more models")
    out = []
    for name, record in records.items():
        rows = record.get("epochs") or [] if isinstance(record, dict) else []
        hours, total = [], 0.0
        for row in rows:
            total += float(row.get("seconds") or 0.0)
            hours.append(total / 3600)
        out.append(
            Curve(
                f"{label}: {name}" if label else name,
                [row.get("steps") for row in rows],
                hours,
                {key: [row.get(key) for row in rows] for key, _ in PANELS},
            )
        )
    return out


def joined(legs: list[list[Curve]]) -> list[Curve]:
    """The curves of trainings run in legs (each leg's curves as :func:`curves` reads them): every model of the
    first leg with the epochs of the same model in the later legs appended, their steps and hours counted on
    from the end of the leg before."""
    out = []
    for first in legs[0]:
        steps, hours, values = list(first.steps), list(first.hours), {k: list(v) for k, v in first.values.items()}
        for leg in legs[1:]:
            for curve in (c for c in leg if c.label == first.label):
                step0 = next((s for s in reversed(steps) if s is not None), None)
                hour0 = hours[-1] if hours else 0.0
                steps += [None if s is None or step0 is None else step0 + s for s in curve.steps]
                hours += [hour0 + h for h in curve.hours]
                for key in values:
                    values[key] += curve.values[key]
        out.append(Curve(first.label, steps, hours, values))
    return out


def draw(all_curves: list[Curve], dest: Path) -> None:
    """Two rows (the measures of :data:`PANELS`) by two columns (steps, wall time) into ``dest``."""
    fig = figure(10, 7)
    for r, (key, title) in enumerate(PANELS):
        for c, axis in enumerate(("optimiser steps", "wall time (h)")):
            ax = fig.add_subplot(2, 2, 2 * r + c + 1)
            for curve in all_curves:
                xs = curve.steps if c == 0 else curve.hours
                points = [(x, y) for x, y in zip(xs, curve.values[key]) if x is not None and y is not None]
                if points:
                    ax.plot(*zip(*points), marker=".", label=curve.label)
            ax.set_xlabel(axis)
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
    fig.axes[1].legend(fontsize=8)  # the wall-time panel: every record has its seconds, not all their steps
    fig.tight_layout()
    save(fig, dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emdenoise.report.learning_curves", description=__doc__.splitlines()[0])
    ap.add_argument("figure", type=Path)
    ap.add_argument("metrics", nargs="+", help="[LABEL=]train_metrics.json[+train_metrics.json ...]")
    args = ap.parse_args(argv)

    def work() -> str:
        found = []
        for item in args.metrics:
            label, _, paths = item.rpartition("=")
            found += joined([curves(Path(path), label) for path in paths.split("+")])
        draw(found, args.figure)
        return f"learning curves ({len(found)} models): {args.figure}"

    return script(work)


if __name__ == "__main__":
    sys.exit(main())
