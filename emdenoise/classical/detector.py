"""Counts from detector values: the photon-transfer estimate of a frame's offset and gain (NumPy, SciPy).

A STEM or CCD frame stores detector values, not electrons: ``value = offset + gain x counts + read noise``,
``counts ~ Poisson(lambda)``, read noise Gaussian with standard deviation ``r`` (all in detector units; ``gain``
in detector units per electron). The mean and variance of a pixel then lie on one line,

    ``var = gain x (mean - offset) + r^2 = a x mean + b``,  with ``a = gain``, ``b = r^2 - gain x offset``,

the photon-transfer relation. :func:`estimate_detector` measures it on the frame itself:

- **Noise, blind to structure**: the finest diagonal Haar detail ``d = (p00 - p01 - p10 + p11) / 2`` of every
  whole 2x2 block cancels any locally linear signal; for independent pixels ``E[d^2]`` is the mean of the four
  pixels' variances, i.e. ``a x (block's true mean) + b`` exactly (no Gaussian assumption: unbiased at a few
  counts per pixel too). Signal curvature that the detail does not cancel (a lattice) is removed by
  subtracting the detail the 8 neighbouring blocks predict (exact for a quadratic field of details); the
  residual's noise is :data:`NOISE_FACTOR` times the detail's, which the fit divides out (:func:`_blocks`).
- **Levels, without regression dilution**: the blocks are binned (equal-count bins, :data:`BINS`) by the mean
  of their 8 neighbouring blocks, whose noise is independent of the block's own; in each bin the mean level
  estimates the true level and the mean squared residual the variance at it. Binning by a block's own mean
  would correlate the two through the read noise.
- **Fit**: weighted least squares of the bins' mean squared residual on their mean level (weights from each
  bin's own scatter, times :data:`CORRELATED_SE`), the parameters' covariance scaled up by the reduced
  chi-square when that exceeds 1. Outlying blocks (residual above :data:`CLIP_SIGMAS` x the bin's RMS: dead,
  hot pixels) and blocks next to a saturated pixel are dropped first.

**Offset and read noise are one unknown here.** From mean and variance alone only ``b = r^2 - gain x offset``
is identifiable. The model therefore reports the **effective offset** ``offset = -b / a``: the level at which
the variance extrapolates to zero. ``(value - offset) / gain`` then has a variance equal to its mean (read
noise counted as ``r^2 / gain^2`` extra Poisson counts, the shift of the generalised Anscombe transform),
which is what the count-based modes (``poisson_split``, the deviance check, the beam-aware filters) need. It
equals the true offset when the read noise is small against the shot noise, and lies ``r^2 / gain`` below it
otherwise. Given a dark level measured elsewhere (``dark=``, e.g. a frame with the beam blanked), the read noise
is reported too: ``r = sqrt(b + gain x dark)``.

**Where it fails** (and :class:`NotDetector` refuses): a flat frame (no spread of levels: the slope is not
determined), variance not rising with the mean (Gaussian or already-denoised data, a negative gain), a poor
linear fit (R^2 below :data:`MIN_R2`), a slope known to worse than :data:`MAX_RELATIVE_ERROR`, an effective
offset above most of the data. It is biased, without refusing, by noise correlated between neighbouring pixels
(a CCD's scintillator spread, STEM scan noise: the Haar detail sees less noise, the gain comes out low), by
structure that varies on the scale of one pixel (sharp columns at coarse sampling add to ``d^2`` where the
signal is high: the gain comes out high), and by a non-linear detector. Only noise independent between pixels
and a level-dependent variance give a trustworthy gain.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BINS = 24  # equal-count bins of level
MIN_BLOCKS = 64  # fewest 2x2 blocks a bin may hold
MIN_BINS = 4  # fewest bins the line is fitted through
CLIP_SIGMAS = 10.0  # |d| above this many RMS details of its bin: an outlier block (dead, hot, saturated pixel)
MIN_R2 = 0.8  # weighted R^2 of the line below which the data are refused
MAX_RELATIVE_ERROR = 0.25  # standard error of the gain / gain above which the data are refused
# Neighbouring residuals share details (correlation -2/3 side by side, +4/9 corner to corner for equal
# variances), so a bin's blocks are not independent: summing the squared correlations over the stencil's
# overlaps gives about 3.8 times the variance of an independent mean, hence this factor on the standard errors.
CORRELATED_SE = 2.0


class NotDetector(ValueError):
    """Values whose mean and variance do not follow ``offset + gain x Poisson counts`` (the message says why)."""


@dataclass(frozen=True)
class DetectorModel:
    """A detector's affine response: ``value = offset + gain x counts`` (+ read noise), in detector units.

    ``offset``: the effective offset (detector value of zero counts, read noise absorbed: see the module notes);
    ``gain``: detector units per electron; ``read_noise``: detector units, None when not identifiable (no dark
    level given); ``source``: how the model was obtained. ``offset_error`` and ``gain_error`` are standard
    errors, ``r2`` the weighted R^2 of the fitted line, ``levels`` the number of level bins, ``counts_median``
    the median counts per pixel of the frames it was fitted on."""

    offset: float
    gain: float
    read_noise: float | None
    source: str
    offset_error: float = 0.0
    gain_error: float = 0.0
    r2: float = 1.0
    levels: int = 0
    counts_median: float | None = None

    @property
    def count_scale(self) -> float:
        """Counts per detector unit (the project's ``count_scale`` of data whose offset is removed)."""
        return 1.0 / self.gain

    def to_json(self) -> dict[str, Any]:
        """The model as plain JSON numbers (rounded to 6 significant digits; NaN written as null)."""
        return {k: _json_number(v) for k, v in asdict(self).items()}

    def card_fields(self) -> dict[str, Any]:
        """The dataset card's ``detector_*`` fields (:func:`from_card` reads them back)."""
        doc = self.to_json()
        return {f"detector_{key}": doc[key] for key in CARD_KEYS}


CARD_KEYS = ("offset", "gain", "read_noise", "source", "offset_error", "gain_error", "r2", "counts_median")


def _json_number(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def from_card(card: dict[str, Any]) -> DetectorModel | None:
    """The model a dataset card records (``detector_offset``, ``detector_gain``, ...), None when it records none
    (cards written before these fields, whole-number counts, frames the estimate refused)."""
    if not (_finite(card, "offset") and _finite(card, "gain")) or card["detector_gain"] <= 0:
        return None

    def number(key: str, default: float) -> float:
        return float(card[f"detector_{key}"]) if _finite(card, key) else default

    return DetectorModel(
        number("offset", 0.0),
        number("gain", 1.0),
        number("read_noise", 0.0) if _finite(card, "read_noise") else None,
        str(card.get("detector_source") or "dataset card"),
        offset_error=number("offset_error", 0.0),
        gain_error=number("gain_error", 0.0),
        r2=number("r2", 1.0),
    )


def _finite(card: dict[str, Any], key: str) -> bool:
    value = card.get(f"detector_{key}")
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def to_counts(values: np.ndarray, model: DetectorModel) -> np.ndarray:
    """Electron counts of detector ``values`` (float64, not rounded, clipped at 0): ``(values - offset) / gain``."""
    return np.clip((np.asarray(values, dtype=np.float64) - model.offset) / model.gain, 0.0, None)


# ------------------------------------------------------------------------------------------------ the estimate


CROSS_WEIGHT, DIAGONAL_WEIGHT = 0.5, -0.25  # per side / corner neighbour: 2 x side mean - corner mean
NOISE_FACTOR = 1.0 + 4 * CROSS_WEIGHT**2 + 4 * DIAGONAL_WEIGHT**2  # 2.25: noise of d - prediction / noise of d


def _neighbours(field: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_j weights_j field_(k+j)`` over a 3x3 stencil, for the blocks that have all 8 neighbours."""
    from scipy import ndimage

    return ndimage.correlate(field, weights, mode="nearest")[1:-1, 1:-1]


_CROSS = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.float64)
_DIAGONAL = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]], np.float64)
_PREDICT = CROSS_WEIGHT * _CROSS + DIAGONAL_WEIGHT * _DIAGONAL  # the weights w_j of the prediction
_LEVEL = CROSS_WEIGHT**2 * _CROSS + DIAGONAL_WEIGHT**2 * _DIAGONAL  # w_j^2
_RING = (_CROSS + _DIAGONAL) / 8.0  # the mean of the 8 neighbours


def _blocks(frame: np.ndarray, saturated: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(residual detail, its level, the 8 neighbours' mean level) of the 2x2 blocks of one frame, flattened.

    ``residual = d_k - sum_j w_j d_j``: the block's diagonal Haar detail minus the one its 8 neighbouring blocks
    predict (weight :data:`CROSS_WEIGHT` on each of the 4 side neighbours, :data:`DIAGONAL_WEIGHT` on each
    corner: twice the side mean minus the corner mean, which reproduces any quadratic field of details, so
    smooth structure cancels). With the
    neighbours' noise independent, ``E[residual^2] = a x level + NOISE_FACTOR x b`` where ``level = m_k +
    sum_j w_j^2 m_j`` (block means ``m``). The bins are made on the mean of the 8 neighbours' means, whose noise
    is independent of the block's own (a neighbour's mean and detail are uncorrelated, and for Poisson counts
    its ``E[d_j^2 | m_j]`` is linear in the observed ``m_j`` itself: no regression dilution). Blocks near a
    pixel at ``saturated`` are left out."""
    from scipy import ndimage

    h, w = (frame.shape[0] // 2) * 2, (frame.shape[1] // 2) * 2
    x = frame[:h, :w]
    p00, p01, p10, p11 = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
    detail = (p00 - p01 - p10 + p11) / 2.0
    mean = (p00 + p01 + p10 + p11) / 4.0
    residual = detail[1:-1, 1:-1] - _neighbours(detail, _PREDICT)
    level = mean[1:-1, 1:-1] + _neighbours(mean, _LEVEL)
    ring = _neighbours(mean, _RING)
    keep = np.ones(residual.shape, bool)
    if saturated is not None:
        hit = np.maximum(np.maximum(p00, p01), np.maximum(p10, p11)) >= saturated
        keep &= ~ndimage.binary_dilation(hit, np.ones((3, 3), bool))[1:-1, 1:-1]
    return residual[keep], level[keep], ring[keep]


@dataclass(frozen=True)
class _Bins:
    level: np.ndarray  # mean block value per bin
    variance: np.ndarray  # mean d^2 per bin
    error: np.ndarray  # standard error of variance
    count: np.ndarray  # blocks per bin


def _binned(detail: np.ndarray, mean: np.ndarray, ring: np.ndarray, bins: int) -> _Bins:
    """Equal-count bins of ``ring`` (the level predicted from afar): each bin's mean ``mean`` (level) and mean
    ``detail^2`` (variance); outlying details (|d| > CLIP_SIGMAS x RMS) dropped per bin."""
    nb = max(1, min(bins, len(ring) // MIN_BLOCKS))
    edges = np.quantile(ring, np.linspace(0.0, 1.0, nb + 1))
    which = np.clip(np.searchsorted(edges, ring, side="right") - 1, 0, nb - 1)
    rows: list[tuple[float, float, float, int]] = []
    for k in range(nb):
        d, m = detail[which == k], mean[which == k]
        for _ in range(3):  # dead or hot pixels would dominate the bin's mean square
            ok = np.abs(d) <= CLIP_SIGMAS * math.sqrt(float(np.mean(d * d))) if len(d) else np.zeros(0, bool)
            if ok.all():
                break
            d, m = d[ok], m[ok]
        if len(d) < MIN_BLOCKS:
            continue
        sq = d * d
        rows.append((float(m.mean()), float(sq.mean()), CORRELATED_SE * float(sq.std() / math.sqrt(len(sq))), len(sq)))
    if not rows:
        return _Bins(*(np.zeros(0) for _ in range(4)))
    level, variance, error, count = (np.asarray(c, np.float64) for c in zip(*rows))
    return _Bins(level, variance, np.maximum(error, 1e-300), count)


@dataclass(frozen=True)
class _Line:
    slope: float
    intercept: float
    cov: np.ndarray  # 2x2 covariance of (slope, intercept)
    r2: float


def _fit(bins: _Bins) -> _Line:
    """Weighted least squares ``variance = slope x level + intercept``, solved about the weighted mean level
    (levels of 3e4 +- 100 would make the plain normal equations singular) and transformed back."""
    w = 1.0 / bins.error**2
    centre = float(np.sum(w * bins.level) / np.sum(w))
    x = bins.level - centre
    sxx, mean_y = float(np.sum(w * x * x)), float(np.sum(w * bins.variance) / np.sum(w))
    if sxx <= 0:
        return _Line(0.0, mean_y, np.zeros((2, 2)), 0.0)
    slope = float(np.sum(w * x * bins.variance) / sxx)
    residual = bins.variance - (mean_y + slope * x)
    chi2 = float(np.sum(w * residual**2))
    inflate = max(chi2 / max(len(x) - 2, 1), 1.0)
    var_slope, var_mean = inflate / sxx, inflate / float(np.sum(w))  # independent about the centre
    intercept = mean_y - slope * centre
    cov = np.array(
        [[var_slope, -centre * var_slope], [-centre * var_slope, var_mean + centre**2 * var_slope]], np.float64
    )
    total = float(np.sum(w * (bins.variance - mean_y) ** 2))
    r2 = 1.0 - chi2 / total if total > 0 else 0.0
    return _Line(slope, intercept, cov, r2)


def _frames(frames: Any) -> tuple[np.ndarray, float | None]:
    """(N, H, W) float64 frames and the saturation value of an integer type (None for floats)."""
    array = np.asarray(frames)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape[1:]) < 10:
        raise NotDetector(f"expected frames of at least 10x10 pixels, got an array of shape {array.shape}")
    saturated = float(np.iinfo(array.dtype).max) if array.dtype.kind in "iu" else None
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise NotDetector("expected finite detector values, found NaN or infinity")
    return values, saturated


def _refusal(bins: _Bins, line: _Line) -> str | None:
    """Why the fitted line is no photon-transfer relation (one line), None when it is one."""
    if len(bins.level) < MIN_BINS:
        return f"expected at least {MIN_BINS} distinct signal levels of {MIN_BLOCKS}+ blocks, got {len(bins.level)}"
    slope_error = math.sqrt(max(float(line.cov[0, 0]), 0.0))
    if line.slope <= 0:
        return f"expected the noise variance to rise with the signal (gain > 0), got a gain of {line.slope:.4g}"
    if slope_error > MAX_RELATIVE_ERROR * line.slope:
        return (
            f"expected a gain known to {MAX_RELATIVE_ERROR:.0%}, got {line.slope:.4g} +- {slope_error:.2g} "
            "(too little spread of signal levels for the noise to show its slope)"
        )
    if line.r2 < MIN_R2:
        return f"expected the variance to be linear in the mean (R^2 >= {MIN_R2}), got R^2 = {line.r2:.3f}"
    return None


def estimate_detector(frames: Any, dark: float | None = None, bins: int = BINS) -> DetectorModel:
    """The :class:`DetectorModel` of one frame (H, W) or a stack of frames (N, H, W) of the same detector,
    from their own mean-variance relation (see the module notes); ``dark``: the detector value of zero
    electrons when known (a blanked-beam frame), then the read noise is reported too. Raises
    :class:`NotDetector` with a one-line reason when the data follow no such model."""
    values, saturated = _frames(frames)
    if np.ptp(values) == 0:
        raise NotDetector("expected varying values, every pixel is the same")
    parts = [_blocks(frame, saturated) for frame in values]
    residual, level, ring = (np.concatenate([p[i] for p in parts]) for i in range(3))
    found = _binned(residual, level, ring, bins)
    line = _fit(found) if len(found.level) >= 2 else _Line(0.0, 0.0, np.zeros((2, 2)), 0.0)
    problem = _refusal(found, line)
    if problem:
        raise NotDetector(problem)
    gain, b = line.slope, line.intercept / NOISE_FACTOR
    offset = -b / gain
    var_a = float(line.cov[0, 0])
    var_b, cov_ab = float(line.cov[1, 1]) / NOISE_FACTOR**2, float(line.cov[0, 1]) / NOISE_FACTOR
    offset_error = math.sqrt(max(var_b + offset**2 * var_a + 2.0 * offset * cov_ab, 0.0)) / gain
    counts_median = float(np.median(values - offset)) / gain
    if counts_median <= 0:
        raise NotDetector(
            f"expected most values above the offset, the variance extrapolates to zero at {offset:.6g}, above "
            "the median value"
        )
    read = None if dark is None else math.sqrt(max(b + gain * float(dark), 0.0))
    how = "photon transfer (mean-variance line of the frames' 2x2 Haar details), effective offset"
    return DetectorModel(
        offset=offset,
        gain=gain,
        read_noise=read,
        source=how if dark is None else f"{how}; read noise from the dark level {dark:g}",
        offset_error=offset_error,
        gain_error=math.sqrt(max(var_a, 0.0)),
        r2=line.r2,
        levels=len(found.level),
        counts_median=counts_median,
    )


def counts_of(frame: np.ndarray, model: DetectorModel | None = None) -> tuple[np.ndarray, DetectorModel]:
    """(counts, model) of one frame for a count-based check: ``model`` when given, else the frame's own
    photon-transfer estimate, else (the estimate refused, the values >= 0) offset 0 and the count scale of
    :func:`emdenoise.classical.noise.estimate_count_scale`. Values that are no counts under any of these
    (negative with no model) raise :class:`emdenoise.classical.noise.NotCounts`. Map an estimate of the same
    frame to counts with the returned model (:func:`to_counts`) so both are on one scale."""
    from emdenoise.classical.noise import estimate_count_scale

    if model is None:
        try:
            model = estimate_detector(frame)
        except NotDetector as exc:
            scale = estimate_count_scale(frame)  # raises NotCounts for negative or non-finite values
            model = DetectorModel(0.0, 1.0 / scale, None, f"count scale of the frame, offset 0 (not fitted: {exc})")
    return to_counts(frame, model), model


def counts_pair(
    noisy: np.ndarray, estimate: np.ndarray, model: DetectorModel | None = None
) -> tuple[np.ndarray, np.ndarray, DetectorModel]:
    """(counts of ``noisy`` rounded, ``estimate`` in counts (not rounded), the model) for a Poisson check of an
    estimate against the frame it came from: both through one model (:func:`counts_of`: given, else fitted to
    ``noisy``, else its count scale), so the offset leaves the estimate as it leaves the counts."""
    counts, model = counts_of(noisy, model)
    return np.rint(counts), to_counts(estimate, model), model


def describe(frames: Any, dark: float | None = None) -> dict[str, Any]:
    """The model of ``frames`` as a provenance record: :meth:`DetectorModel.to_json`, or ``{"refused": reason}``
    when the frames follow no such model (never raises for that)."""
    try:
        return estimate_detector(frames, dark).to_json()
    except NotDetector as exc:
        return {"refused": str(exc)}


def combine(models: list[DetectorModel]) -> DetectorModel:
    """One model for frames from several files: the error-weighted mean offset and gain when the files agree
    (each within 3 standard errors of the mean), else :class:`NotDetector` (their detectors or settings
    differ: one dataset-wide model would misplace some of them)."""
    if not models:
        raise NotDetector("expected at least one fitted detector model, got none")
    if len(models) == 1:
        return models[0]
    mean: dict[str, float] = {}
    for key in ("gain", "offset"):
        values = np.array([getattr(m, key) for m in models])
        errors = np.array([max(getattr(m, f"{key}_error"), 1e-12) for m in models])
        weights = 1.0 / errors**2
        mean[key] = float(np.sum(weights * values) / np.sum(weights))
        worst = int(np.argmax(np.abs(values - mean[key]) / errors))
        if abs(values[worst] - mean[key]) > 3.0 * errors[worst]:
            raise NotDetector(
                f"expected one detector model for every file, the {key}s differ (file {worst + 1}: "
                f"{values[worst]:.6g} +- {errors[worst]:.2g}, mean {mean[key]:.6g})"
            )
        mean[f"{key}_error"] = float(1.0 / math.sqrt(np.sum(weights)))
    return DetectorModel(
        offset=mean["offset"],
        gain=mean["gain"],
        read_noise=None,
        source=f"{models[0].source}; weighted mean over {len(models)} files",
        offset_error=mean["offset_error"],
        gain_error=mean["gain_error"],
        r2=min(m.r2 for m in models),
        levels=sum(m.levels for m in models),
        counts_median=float(np.median([m.counts_median or 0.0 for m in models])),
    )


def looks_like_counts(model: DetectorModel) -> bool:
    """Whether a fitted model says the values already are counts: gain 1 and offset 0 within 3 standard errors
    (or 10 % and half a count)."""
    gain_ok = abs(model.gain - 1.0) <= max(3.0 * model.gain_error, 0.1)
    return gain_ok and abs(model.offset) <= max(3.0 * model.offset_error, 0.5)


_OFFSET_MODELS: OrderedDict[tuple, DetectorModel | None] = OrderedDict()  # the last frames' answers, by content
_OFFSET_MODELS_KEPT = 32
# an offset worth modelling: beyond OFFSET_SIGNIFICANCE standard errors of its fit (structure in the frame makes
# the fit's error an underestimate: on 100 synthetic HRTEM frames of counts, 14 had a spurious offset beyond 3 and
# 2 beyond 5) and at least OFFSET_MIN_FRACTION of the frame's median value (a smaller one changes little)
OFFSET_SIGNIFICANCE = 5.0
OFFSET_MIN_FRACTION = 0.1


def _significant_offset(model: DetectorModel, values: np.ndarray) -> bool:
    median = float(np.median(values))
    return model.offset > OFFSET_SIGNIFICANCE * model.offset_error and model.offset > OFFSET_MIN_FRACTION * median


def offset_model(frame: np.ndarray) -> DetectorModel | None:
    """The fitted model of a frame of detector values on an offset, or None when the frame follows no such
    model or its values already are counts (:func:`looks_like_counts`, or no significant offset: beyond
    :data:`OFFSET_SIGNIFICANCE` standard errors and :data:`OFFSET_MIN_FRACTION` of the median value):
    then a plain count scale serves, and is the better estimate on small frames. Remembered for the last
    :data:`_OFFSET_MODELS_KEPT` frames by their bytes: a filter's tuning grid, the check and the scores ask
    again of one frame, and hashing it costs a few per cent of the fit."""
    values = np.ascontiguousarray(frame)
    key = (values.shape, values.dtype.str, hashlib.blake2b(values.data, digest_size=16).digest())
    if key in _OFFSET_MODELS:
        _OFFSET_MODELS.move_to_end(key)
        return _OFFSET_MODELS[key]
    try:
        model: DetectorModel | None = estimate_detector(values)
    except NotDetector:
        model = None
    if model is not None and (looks_like_counts(model) or not _significant_offset(model, values)):
        model = None
    _OFFSET_MODELS[key] = model
    if len(_OFFSET_MODELS) > _OFFSET_MODELS_KEPT:
        _OFFSET_MODELS.popitem(last=False)
    return model


@dataclass(frozen=True)
class Counts:
    """A frame as a filter of counts takes it (:func:`as_counts`): ``values`` with their count ``scale``, and the
    affine map ``offset + gain x result`` back to the frame's units (the identity for a frame that is counts)."""

    values: np.ndarray
    scale: float | None
    offset: float = 0.0
    gain: float = 1.0

    def back(self, result: np.ndarray) -> np.ndarray:
        """A result computed on :attr:`values`, in the frame's units."""
        return result if (self.offset, self.gain) == (0.0, 1.0) else self.offset + self.gain * result


def as_counts(frame: np.ndarray, scale: float | None) -> Counts:
    """``frame`` (float64) for a filter of counts: with no count ``scale`` and detector values on a significant
    offset (:func:`offset_model`), the counts above it (scale 1) and the map back; else the frame and ``scale``
    as they are."""
    frame = np.asarray(frame, dtype=np.float64)
    model = None if scale else offset_model(frame)
    if model is None:
        return Counts(frame, scale)
    return Counts(to_counts(frame, model), 1.0, model.offset, model.gain)


def offset_counts(frame: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    """The map values -> counts of :func:`offset_model` (None where it gives no model)."""
    model = offset_model(frame)
    return None if model is None else lambda values: to_counts(values, model)
