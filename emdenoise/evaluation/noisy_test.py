"""The ``test`` task on noisy-only data (dataset card ``has_clean: false``): every method scored without clean truth
(:mod:`emdenoise.evaluation.without_truth`).

The test tiles are grouped by their stack number (tiles at the same place of the frames of one image stack,
drift-aligned by preprocess: :mod:`emdenoise.data.prepare.noisy_only`). A group of two frames or more is a movie:
its interleaved halves give one pair. A single frame is split binomially (``p`` = :data:`P`, seeded), its counts
the values times the card's ``count_scale`` (whole-number data) or, without one, its ``count_scale_estimate``.
The baselines run with their default settings (no clean pairs to tune them on), the networks as they are.
Each method's outputs of the first :data:`FIGURE_FRAMES` pairs go through the consistency check, whose local
maps are drawn (:mod:`emdenoise.report.local_maps`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emdenoise.data.splits import Split
from emdenoise.evaluation import consistency
from emdenoise.evaluation import without_truth as wt
from emdenoise.method import Context, Method

P = 0.5
SEED = 0
FIGURE_FRAMES = 3
LOCAL_MAPS = "local_maps.png"


def card_scale(card: Mapping[str, Any]) -> float | None:
    """Counts per stored unit from the dataset card: ``count_scale``, else ``count_scale_estimate``, else None."""
    for key in ("count_scale", "count_scale_estimate"):
        value = card.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            return float(value)
    return None


def pairs(
    split: Split, scale: float | None, seed: int = SEED, to_counts: wt.CountsFn | None = None
) -> dict[str, list[wt.Pair]]:
    """``{"movie": [...], "split": [...]}``: one movie pair per stack of two frames or more (frames in order),
    one binomial split per single frame (kinds without a pair are left out). ``to_counts``: the counts of a
    frame's values (a detector model's; default values x ``scale``)."""
    stack = split.stack if split.stack is not None else np.arange(len(split))
    frame = split.frame if split.frame is not None else np.zeros(len(split), np.int64)
    out: dict[str, list[wt.Pair]] = {"movie": [], "split": []}
    rng = np.random.default_rng(seed)
    for number in np.unique(stack):
        rows = np.flatnonzero(stack == number)
        rows = rows[np.argsort(frame[rows], kind="stable")]
        if len(rows) >= 2:
            out["movie"].append(wt.movie_pair(split.noisy[rows], "auto", scale))
        else:
            out["split"].append(wt.split_pair(split.noisy[rows[0]], rng, P, scale, to_counts))
    return {kind: found for kind, found in out.items() if found}


@dataclass
class Scored:
    """Every method's scores per kind of pair, and the figure's frames and local maps."""

    scores: dict[str, list[wt.Score]] = field(default_factory=dict)
    margins: dict[str, dict[str, Any]] = field(default_factory=dict)  # per kind: uMSE above the best, paired
    checks: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # per kind: wt.identity_check
    inputs: list[np.ndarray] = field(default_factory=list)
    maps: dict[str, list[np.ndarray]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The ``without_truth`` section of ``test_metrics.json``: per kind of pair, the ranked scores."""
        return {kind: wt.summary(v, self.margins.get(kind), self.checks.get(kind)) for kind, v in self.scores.items()}


def score_all(
    methods: Sequence[Method],
    found: Mapping[str, list[wt.Pair]],
    data_range: float,
    pixel_size: float | None,
    batch_size: int,
    max_deviation: float,
) -> Scored:
    """Run every method on every pair's input and score it; the local maps of the first pairs."""
    out = Scored()
    outputs_of: dict[str, dict[str, list[np.ndarray]]] = {kind: {} for kind in found}
    context = Context(pixel_size=pixel_size)
    shown = [pair for kind_pairs in found.values() for pair in kind_pairs][:FIGURE_FRAMES]
    out.inputs = [pair.input for pair in shown]
    for method in methods:

        def run(batch: np.ndarray, method: Method = method) -> np.ndarray:
            return np.asarray(method(batch, context))

        maps: list[np.ndarray] = []
        for kind, kind_pairs in found.items():
            score, outputs = wt.score_method(method.name, run, kind_pairs, data_range, batch_size)
            out.scores.setdefault(kind, []).append(score)
            outputs_of[kind][method.name] = outputs
            for pair, output in zip(kind_pairs, outputs):
                if len(maps) < len(shown):
                    maps.append(consistency.check(pair.input, output, None, max_deviation).local_deviation)
        out.maps[method.name] = maps
        first = out.scores[next(iter(found))][-1]
        out.titles[method.name] = "uPSNR -" if first.upsnr is None else f"uPSNR {first.upsnr:.2f} dB"
    out.margins = {kind: wt.margins(outputs_of[kind], found[kind], out.scores[kind]) for kind in found}
    out.checks = {kind: wt.identity_check(found[kind], out.scores[kind]) for kind in found}
    return out


def figure(scored: Scored, max_deviation: float) -> Any:
    """The local maps figure of :class:`Scored`."""
    from emdenoise.report.local_maps import local_maps_figure

    return local_maps_figure(scored.inputs, scored.maps, max_deviation, None, scored.titles)
