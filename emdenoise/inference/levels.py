"""Frames brought to the level a model was trained at, and its output brought back to the frames' units.

A model trained on the physics generator's pairs (the zoo's, or any trained on data that records a dose per image,
as em_graphene_sim does) saw noisy frames of **counts / dose**: each frame's electron counts divided by its
beam-centre dose, a level of about 1, and learned to return the clean, flat-illuminated image at level 1. A
microscope's frame is in counts (hundreds per pixel) or in detector values on an offset (thousands to millions):
fed as it is, such a model sees numbers thousands of standard deviations outside anything it was trained on and
returns nonsense. Its model file says ``input_units: counts / dose`` (:data:`COUNTS_PER_DOSE`); then
:class:`Level` takes each whole frame to that level and the output back::

    level = Level.of(frame)                    # the frame's counts and their beam-centre level
    out = level.back(model(level.into(frame)))

- the counts: the frame itself, or, for detector values on a significant offset, the counts above it by the
  frame's own photon-transfer fit (:func:`emdenoise.classical.detector.as_counts`, as the beam-aware filters do);
- the dose: the mean over the frame of counts / beam, the beam the Gaussian the beam-aware filters fit to the
  frame's smoothed counts (:func:`emdenoise.classical.flatfield.fit_beam`, peak 1 inside the frame), so a frame at
  the beam's centre and one at its edge both come out at level about 1 where the specimen is;
- back: the output times the dose under which it, seen through the fitted beam, holds the frame's own total
  counts (the Poisson maximum-likelihood dose given the output: the model returns level 1 whatever level it is
  fed, so the level must come from the counts), through the detector's gain and offset: the restored image in the
  input's units, flat-illuminated at the beam-centre level (the beam profile is part of what the model removes).

A STEM model (the zoo's HAADF and ABF models) was trained on flat-illuminated frames of **counts / mean**: each
frame's counts over its mean counts per pixel (``download.stem_units: mean``), a level of exactly 1; its file says
``input_units: counts / mean`` (:data:`COUNTS_PER_MEAN`) and :class:`Level` fits no beam (a flat one): the dose is
the frame's mean counts, and back the output times the dose that gives it the frame's total counts.

The level is scale-free: a frame and the same frame times any factor go in as the same numbers. A frame that is
already counts / dose (the generator's files) comes out within about 1 % of what it gave as it was, but the
test task scores such files as they are (``frame_level: as_is``): its clean truth is at level 1, and a 1 % level
error alone would cost dB there. Frames with no positive level (empty, all zero) go as they are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emdenoise.errors import InputError

COUNTS_PER_DOSE = "counts / dose"  # a model file's input_units when its training frames were counts / dose
COUNTS_PER_MEAN = "counts / mean"  # ... when they were flat-illuminated counts / the frame's mean counts (STEM)
INPUT_UNITS = (COUNTS_PER_DOSE, COUNTS_PER_MEAN)
FRAME_LEVELS = ("auto", "as_is")  # denoise.frame_level


def wanted(meta: Mapping[str, Any], frame_level: str) -> str | None:
    """The units (one of :data:`INPUT_UNITS`) that frames are brought to by :class:`Level` for a model of ``meta``
    under ``denoise.frame_level`` (one of :data:`FRAME_LEVELS`, else an :class:`InputError`); None: as they are."""
    if frame_level not in FRAME_LEVELS:
        raise InputError.at("denoise", "frame_level", f"expected one of {', '.join(FRAME_LEVELS)}, got {frame_level!r}")
    units = meta.get("input_units")
    return units if frame_level == "auto" and units in INPUT_UNITS else None


@dataclass(frozen=True)
class Level:
    """One frame's map into a counts / dose model's units (:meth:`into`) and back (:meth:`back`)."""

    dose: float  # counts per unit of the model's input
    offset: float = 0.0  # detector values = offset + gain x counts
    gain: float = 1.0
    counts: float = 0.0  # the frame's total counts (0: unknown, back uses dose)
    # the fitted beam (peak 1; 0 at non-finite pixels), or for a flat level the finite pixels (True)
    beam: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, frame: np.ndarray, units: str = COUNTS_PER_DOSE) -> Level:
        """``frame``'s map for a model of ``units``: counts / dose (a beam fitted), counts / mean (flat)."""
        from emdenoise.classical import detector, flatfield

        counts = detector.as_counts(frame, None)
        values = counts.values
        finite = np.isfinite(values)
        if not finite.any():
            return cls(1.0)
        values = np.where(finite, values, 0.0)
        beam = None if units == COUNTS_PER_MEAN else flatfield.fit_beam(values, finite & (values > 0))
        level = float(np.mean((values if beam is None else values / np.maximum(beam, 1e-3))[finite]))
        if not level > 0:
            return cls(1.0, counts.offset, counts.gain)
        seen = finite if beam is None else np.where(finite, beam, 0.0)
        return cls(level, counts.offset, counts.gain, float(values[finite].sum()), seen)

    def into(self, frame: np.ndarray) -> np.ndarray:
        """``frame`` in the model's units: (frame - offset) / gain / dose, float32."""
        return ((np.asarray(frame, np.float64) - self.offset) / (self.gain * self.dose)).astype(np.float32)

    def back(self, output: np.ndarray) -> np.ndarray:
        """A model output for :meth:`into`'s frame, in the frame's units, float32: times the dose under which the
        output, seen through the beam, has the frame's total counts (the Poisson maximum-likelihood dose given the
        output; the entry level where that is undefined)."""
        output = np.asarray(output, np.float64)
        seen = float((output * self.beam).sum()) if self.beam is not None and self.beam.shape == output.shape else 0
        dose = self.counts / seen if self.counts > 0 and seen > 0 else self.dose
        return (self.offset + self.gain * dose * output).astype(np.float32)


def stream(
    frames: Iterable[np.ndarray], run: Callable[[Iterable[np.ndarray]], Iterator[np.ndarray]], units: str
) -> Iterator:
    """``run`` (a stream of frames to outputs, in order, reading ahead as it likes) on each frame brought to the
    level of a model of ``units``, each output brought back by its own frame's :class:`Level`."""
    pending: deque[Level] = deque()

    def leveled() -> Iterator[np.ndarray]:
        for frame in frames:
            level = Level.of(frame, units)
            pending.append(level)
            yield level.into(frame)

    for output in run(leveled()):
        yield pending.popleft().back(output)
