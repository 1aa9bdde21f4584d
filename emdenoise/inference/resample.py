"""Pixel-size awareness for inference: bring each frame to the model's sampling, and the result back.

A model learns structure at the sampling of its training data (A/px, the model file's meta key ``pixel_size``);
a frame at another sampling shows it a lattice at the wrong scale, and it invents structure. So for each image
of an input file :func:`plan` compares the input's pixel size (``denoise.pixel_size`` when set, else the
file's calibration) with the model's:

- within ``denoise.scale_tolerance`` (relative): the frames go to the model as they are (``matched``);
- otherwise, with ``denoise.rescale: auto``: each frame is resampled to ``round(side * input / model)``
  pixels (cubic spline; a Gaussian anti-aliasing filter first when shrinking, sigma ``(1/factor - 1) / 2``
  pixels), denoised, and resampled back to its own grid (cubic spline), so the output has the input's size and
  calibration (``resampled``); with ``denoise.rescale: never`` the file is refused in one line;
- when either pixel size is unknown, the frames go as they are, with a warning naming the file and the
  statement ``unknown`` in the provenance.

The resampled frame must stay within the frame limits (16 pixels a side, ``layout.MAX_FRAME_PIXELS``), the
rescale within :data:`MAX_FACTOR` either way (a pixel size further from the model's is a wrong calibration or a
``denoise.pixel_size`` typo far more often than real data), and the resampled frame (float64, with its spline
coefficients: :data:`RESAMPLE_BYTES_PER_PIXEL`) within the memory budget (:mod:`emdenoise.io.budget`,
``denoise.memory_limit_gb``); otherwise the file is refused in one line naming both pixel sizes and the size,
before any pixel is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emdenoise.errors import InputError
from emdenoise.io import budget
from emdenoise.layout import check_frame_pixels

MIN_SIDE = 16
MAX_FACTOR = 8.0  # the largest rescale, either way: a calibration further from the model's is most likely wrong
RESAMPLE_BYTES_PER_PIXEL = 16  # of the larger grid: the frame in float64 and its filtered or spline copy


@dataclass(frozen=True)
class Sampling:
    """How one image is brought to the model's sampling. ``shape`` is the frame shape the model sees."""

    status: str  # matched | resampled | unknown
    input_pixel_size: float | None
    input_calibration: str
    model_pixel_size: float | None
    frame_shape: tuple[int, int]
    shape: tuple[int, int]
    statement: str

    @property
    def factor(self) -> float:
        if self.status != "resampled" or not self.input_pixel_size or not self.model_pixel_size:
            return 1.0
        return self.input_pixel_size / self.model_pixel_size

    def record(self) -> dict[str, Any]:
        """For the provenance."""
        return {
            "status": self.status,
            "input_pixel_size": self.input_pixel_size,
            "input_calibration": self.input_calibration,
            "model_pixel_size": self.model_pixel_size,
            "factor": round(self.factor, 6),
            "model_frame_shape": list(self.shape),
            "statement": self.statement,
        }

    def down(self, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The frames at the model's sampling."""
        for frame in frames:
            yield resample(frame, self.shape) if self.status == "resampled" else frame

    def up(self, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The denoised frames back on the input's grid."""
        for frame in frames:
            yield resample(frame, self.frame_shape) if self.status == "resampled" else frame


def resample(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``frame`` on a ``shape`` grid covering the same field of view (pixel centres aligned as in
    ``skimage.transform.resize``): cubic spline, Gaussian anti-aliasing when shrinking; float32."""
    from skimage.transform import resize

    shrink = shape[0] < frame.shape[0] or shape[1] < frame.shape[1]
    out = resize(
        np.asarray(frame, np.float64), shape, order=3, mode="reflect", anti_aliasing=shrink, preserve_range=True
    )
    return np.asarray(out, np.float32)


def _check_bounds(
    where: str | Path,
    frame_shape: tuple[int, int],
    shape: tuple[int, int],
    pixel: float,
    source: str,
    model_pixel_size: float,
) -> None:
    """Refuse a rescale by more than :data:`MAX_FACTOR` either way, to a frame beyond the frame limit, or to a
    frame (float64, as it is resampled) over the memory budget: one line naming both pixel sizes and the size."""
    ratio = pixel / model_pixel_size
    what = (
        f"{pixel:g} A/px ({source}) to the model's {model_pixel_size:g} A/px turns {frame_shape[0]}x"
        f"{frame_shape[1]} into {shape[0]}x{shape[1]}"
    )
    if max(ratio, 1 / ratio) > MAX_FACTOR:
        raise InputError.at(
            where,
            "denoise.pixel_size",
            f"expected a rescale by at most {MAX_FACTOR:g}x either way, got {ratio:.4g}x: {what}; a calibration "
            "this far from the model's is most likely wrong: set denoise.pixel_size to the frames' true A/px "
            "(or use a model trained at this sampling)",
        )
    check_frame_pixels(where, "denoise.pixel_size", *shape)
    nbytes = max(shape[0] * shape[1], frame_shape[0] * frame_shape[1]) * RESAMPLE_BYTES_PER_PIXEL
    limit, budget_source = budget.limit()
    if nbytes > limit:
        raise InputError.at(
            where,
            "denoise.pixel_size",
            f"expected a resampled frame within the memory budget of {budget.human(limit)} ({budget_source}), "
            f"got {budget.human(nbytes)}: {what}; set denoise.pixel_size if the calibration is wrong, else raise "
            f"denoise.memory_limit_gb",
        )


def plan(
    where: str | Path,
    frame_shape: tuple[int, int],
    file_pixel_size: float | None,
    calibration: str,
    model_pixel_size: float | None,
    given: float,
    rescale: str,
    tolerance: float,
    log: logging.Logger | None = None,
    model_range: Sequence[float] | None = None,
) -> Sampling:
    """The :class:`Sampling` of one image (``where`` names it in messages); ``given`` is ``denoise.pixel_size``
    (0: the file's calibration). A model trained over a range of pixel sizes (``model_range``, [min, max] A/px)
    takes a frame inside it (within ``tolerance``) as it is, and one outside it resampled to the nearer end.
    Raises InputError for ``rescale: never`` with scales apart, or a resampled frame outside the frame limits."""
    pixel = given if given > 0 else file_pixel_size
    source = "denoise.pixel_size" if given > 0 else calibration
    if given > 0 and file_pixel_size and abs(file_pixel_size / given - 1) > tolerance:
        source = f"denoise.pixel_size; the file's {calibration}: {file_pixel_size:g} A/px"
        if log:
            log.info("%s: denoise.pixel_size %g A/px overrides the file's %g A/px", where, given, file_pixel_size)
    if model_range is not None and pixel is not None:
        low, high = model_range
        if low * (1 - tolerance) <= pixel <= high * (1 + tolerance):
            statement = f"input {pixel:g} A/px ({source}) inside the model's trained range {low:g}-{high:g} A/px"
            return Sampling("matched", pixel, source, pixel, frame_shape, frame_shape, statement)
        model_pixel_size = low if pixel < low else high
    if pixel is None or model_pixel_size is None:
        missing = "the input's" if pixel is None else "the model's"
        detail = f"input: {source}" if pixel is None else "the model file records none (its training data had none)"
        statement = (
            f"pixel size unknown ({missing}; {detail}): denoised at the file's own sampling, not checked against "
            "the model's; set denoise.pixel_size (A/px) for files without calibration"
        )
        if log:
            log.warning("%s: %s", where, statement)
        return Sampling("unknown", pixel, source, model_pixel_size, frame_shape, frame_shape, statement)
    ratio = pixel / model_pixel_size
    if abs(ratio - 1) <= tolerance:
        statement = f"input {pixel:g} A/px ({source}) matches the model's {model_pixel_size:g} A/px"
        return Sampling("matched", pixel, source, model_pixel_size, frame_shape, frame_shape, statement)
    if rescale == "never":
        raise InputError.at(
            where,
            "denoise.rescale",
            f"expected the model's sampling {model_pixel_size:g} A/px within {tolerance:.0%}, got {pixel:g} A/px "
            f"({source}); set denoise.rescale: auto to resample, or denoise.pixel_size if the calibration is wrong",
        )
    shape = (max(1, round(frame_shape[0] * ratio)), max(1, round(frame_shape[1] * ratio)))
    if min(shape) < MIN_SIDE:
        raise InputError.at(
            where,
            "denoise.pixel_size",
            f"expected a frame of at least {MIN_SIDE}x{MIN_SIDE} pixels at the model's sampling "
            f"({model_pixel_size:g} A/px), got {shape[0]}x{shape[1]} from {pixel:g} A/px ({source})",
        )
    _check_bounds(where, frame_shape, shape, pixel, source, model_pixel_size)
    statement = (
        f"input {pixel:g} A/px ({source}) resampled by {ratio:.4g} to the model's {model_pixel_size:g} A/px "
        f"({frame_shape[0]}x{frame_shape[1]} -> {shape[0]}x{shape[1]}), denoised, resampled back"
    )
    return Sampling("resampled", pixel, source, model_pixel_size, frame_shape, shape, statement)
